"""Data root resolution, checksums, join rules, hub fallback (without a hub)."""

import re

import pytest

from pruning import data
from pruning.data import DATASETS, load_rows, perplexity_text, resolve_data_root
from pruning.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


def test_env_var_and_config_root(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_root(str(other)) == other.resolve()  # config wins over the env var
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path / "missing"))
    with pytest.raises(DataError, match="PRUNING_DATA_ROOT=.*missing.* is not a directory"):
        resolve_data_root()


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match=r"unknown dataset 'wikitext103'; allowed: wikitext2, ptb, c4"):
        load_rows("wikitext103", "test")
    with pytest.raises(ConfigError, match="no split 'dev'; allowed: test, train, validation"):
        load_rows("wikitext2", "dev")
    with pytest.raises(ConfigError, match="data.source='web'"):
        load_rows("wikitext2", "test", source="web")


def test_checksum_mismatch_fails_loudly(tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text("not wikitext\n")
    with pytest.raises(DataError, match="checksum mismatch .*wiki.test.raw"):
        load_rows("wikitext2", "test", root=str(tmp_path))
    rows = load_rows("wikitext2", "test", root=str(tmp_path), verify=False)
    assert rows.rows == ["not wikitext\n"] and rows.info["checksum_verified"] is False


def test_local_only_without_file_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"wikitext2/train is not in the data root .*wiki.train.raw"):
        load_rows("wikitext2", "train", root=str(tmp_path), source="local")


def test_no_root_and_no_hub_is_clear(monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_LOCAL_ROOT", data.Path("/nonexistent/shared/data"))
    with pytest.raises(DataError, match="no local data root"):
        load_rows("ptb", "test", source="local")

    def offline(*a, **k):
        raise ConnectionError("offline")
    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load wikitext/wikitext-2-raw-v1 .*PRUNING_DATA_ROOT"):
        load_rows("wikitext2", "test")


def test_hub_fallback_uses_reference_ids(monkeypatch, tmp_path):
    calls = []

    def fake(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return {"text": ["a", "b"], "sentence": ["s"]}
    monkeypatch.setattr("datasets.load_dataset", fake)
    out = load_rows("c4", "validation", root=str(tmp_path))  # the root lacks it: falls back to the hub
    assert out.info["source"] == "hub" and out.rows == ["a", "b"]
    assert calls[-1] == ("allenai/c4", None, {"split": "validation",
                                              "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}})
    load_rows("wikitext2", "test", source="hub")
    assert calls[-1][:2] == ("wikitext", "wikitext-2-raw-v1")


def test_wikitext_rows_follow_hf(tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(" \n = A = \n \n text here . \n")
    rows = load_rows("wikitext2", "test", root=str(tmp_path), verify=False).rows
    assert rows == ["", " = A = \n", "", " text here . \n"]
    text = perplexity_text("wikitext2", "test", root=str(tmp_path), verify=False).rows[0]
    assert text == "" + "\n\n" + " = A = \n" + "\n\n" + "" + "\n\n" + " text here . \n"


@needs_shared
def test_published_checksums_agree_with_sources_md():
    """The sha256 table in pruning/data.py is the one published in SOURCES.md."""
    published = dict(re.findall(r"\| `([^`]+)` \|[^\n]*?\| ([0-9a-f]{64}) \|", (SHARED_DATA / "SOURCES.md").read_text()))
    ours = {lf.path: lf.sha256 for spec in DATASETS.values() for files in spec.local.values() for lf in files
            if lf.sha256 and (SHARED_DATA / lf.path).exists()}
    assert ours and all(published[path] == sha for path, sha in ours.items())


@needs_shared
@pytest.mark.parametrize("name, split, rows", [("wikitext2", "test", 4358), ("wikitext2", "validation", 3760),
                                               ("ptb", "test", 3761), ("ptb", "validation", 3370),
                                               ("c4", "train", 1000), ("c4", "validation", 2000)])
def test_shared_data_verifies(name, split, rows):
    out = load_rows(name, split)
    assert out.info["source"] == "local" and out.info["checksum_verified"] and len(out.rows) == rows
    assert out.info["exact"] == (name != "c4")

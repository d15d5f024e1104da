"""analysis.archive: keeping a sweep's records, and resuming the sweep from them on a fresh tree."""

import json

import pytest

from analysis.archive import archive, main as archive_main
from pruning.pipeline import run_job
from pruning.results import read_record
from tests.conftest import compose_cfg, tiny_overrides
from tests.test_analysis import record, write


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "outputs"
    write(root, "quick/m/apt_0.5", record("apt", 0.5))
    write(root, "quick/m/sparsegpt_0.5", record("sparsegpt", 0.5))
    write(root, "quick/m/wanda_0.5", record("wanda", 0.5, status="failed"))
    (root / "quick/m/torn").mkdir(parents=True)
    (root / "quick/m/torn/results.json").write_text('{"status": "comp')
    stale = record("sparsegpt", "2:4", model="gemma3-270m")
    stale["model"]["family"] = "gemma3"  # engine revision 1 (no versions.engine_revision) with calibration
    write(root, "quick/g/sparsegpt_2:4", stale)
    (root / "quick/m/apt_0.5/run.log").write_text("log")
    return root


def test_copies_complete_current_records_only_keeping_the_layout(outputs, tmp_path):
    dst = tmp_path / "records"
    report = archive(outputs, dst)
    assert sorted(report.copied) == ["quick/m/apt_0.5/results.json", "quick/m/sparsegpt_0.5/results.json"]
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == sorted(report.copied)
    for rel in report.copied:  # byte for byte
        assert (dst / rel).read_bytes() == (outputs / rel).read_bytes()
    why = report.left_out
    assert why["quick/m/wanda_0.5/results.json"] == "status 'failed'"
    assert why["quick/m/torn/results.json"] == "unreadable"
    assert why["quick/g/sparsegpt_2:4/results.json"].startswith("stale: engine revision 1")
    again = archive(outputs, dst)
    assert again.copied == [] and sorted(again.unchanged) == sorted(report.copied)


def test_zero_shot_samples_travel_with_their_record(outputs, tmp_path):
    """The zero-shot table's paired tests read each job's per-document results: kept beside the record."""
    samples = outputs / "quick/m/apt_0.5/zero_shot_samples.json"
    columns = {"doc_id": [0, 1], "doc_hash": ["a" * 64, "b" * 64], "target": [1, 0], "acc": [1.0, 0.0]}
    samples.write_text(json.dumps({"boolq": columns}, indent=2))  # as jobs wrote them before the compact form
    (outputs / "quick/m/wanda_0.5/zero_shot_samples.json").write_text("{}")  # a failed record's: left out
    dst = tmp_path / "records"
    archive(outputs, dst)
    kept = dst / "quick/m/apt_0.5/zero_shot_samples.json"
    compact = {"boolq": {**columns, "doc_hash": ["a" * 16, "b" * 16]}}
    assert json.loads(kept.read_text()) == compact and kept.read_text().count("\n") == 3  # one line per task
    assert not (dst / "quick/m/sparsegpt_0.5/zero_shot_samples.json").exists()  # it kept none
    assert not (dst / "quick/m/wanda_0.5").exists()
    kept.unlink()  # an archive made before samples were kept: filled in, the record unchanged
    report = archive(outputs, dst)
    assert report.copied == [] and json.loads(kept.read_text()) == compact


def test_a_different_complete_record_is_kept_unless_replace(outputs, tmp_path, capsys):
    dst = tmp_path / "records"
    theirs = write(dst, "quick/m/apt_0.5", record("apt", 0.5, ppl=41.0))
    before = theirs.read_bytes()
    assert archive_main([str(outputs), str(dst)]) == 1  # a conflict: exit 1, reported
    assert "kept 1 differing" in capsys.readouterr().out
    assert theirs.read_bytes() == before and (dst / "quick/m/sparsegpt_0.5/results.json").is_file()
    assert archive_main([str(outputs), str(dst), "--replace"]) == 0
    assert read_record(theirs)["metrics"]["perplexity"]["wikitext2"]["ppl"] == 40.0
    # an incomplete record at the destination is replaced without --replace
    (dst / "quick/m/sparsegpt_0.5/results.json").write_text(json.dumps(record("sparsegpt", 0.5, status="failed")))
    assert archive(outputs, dst).copied == ["quick/m/sparsegpt_0.5/results.json"]


def test_dry_run_and_bad_arguments(outputs, tmp_path, capsys):
    dst = tmp_path / "records"
    assert archive_main([str(outputs), str(dst), "--dry-run"]) == 0
    assert "would have copied 2" in capsys.readouterr().out and not dst.exists()
    assert archive_main([str(tmp_path / "nope"), str(dst)]) == 2
    assert "nope: no such directory" in capsys.readouterr().err
    assert archive_main([str(outputs), str(outputs / "quick" / "records")]) == 2
    assert "overlap" in capsys.readouterr().err


def test_restored_records_make_a_sweep_skip_its_jobs(tiny_data_root, tmp_path):
    """The archive round trip: a job's record kept, restored below a fresh outputs tree, and the same job
    run there is skipped (its record is not rewritten)."""
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "sparsity=0.5",
                                     "calibration.nsamples=2", "calibration.seqlen=32"))
    first = run_job(cfg, tmp_path / "machine-a" / "job")
    assert archive(tmp_path / "machine-a", tmp_path / "records").copied == ["job/results.json"]
    assert archive(tmp_path / "records", tmp_path / "machine-b").copied == ["job/results.json"]
    again = run_job(cfg, tmp_path / "machine-b" / "job")
    assert again["job"]["started"] == first["job"]["started"] and again["versions"]["cpu"] == first["versions"]["cpu"]

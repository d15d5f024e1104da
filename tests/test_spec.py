"""The typed job spec (pruning/spec.py): defaults in step with conf/config.yaml, strict parsing."""

from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from pruning.errors import ConfigError
from pruning.spec import (CalibrationSpec, DataSpec, EngineSpec, JobSpec, PathsSpec, PerplexitySpec, RuntimeSpec,
                          SaveSpec, ZeroShotSpec, as_spec, build, parse_job)
from tests.conftest import REPO, compose_cfg


@pytest.mark.parametrize("section, cls", [("data", DataSpec), ("engine", EngineSpec), ("runtime", RuntimeSpec),
                                          ("save", SaveSpec), ("paths", PathsSpec)])
def test_the_dataclass_defaults_are_the_config_files(section, cls):
    composed = OmegaConf.to_container(compose_cfg([]), resolve=True)[section]  # conf/config.yaml + conf/paths
    assert build(cls, composed, section) == cls()
    assert sorted(composed) == sorted(f.name for f in fields(cls))  # every key documented in the YAML


def test_paths_move_the_data_root_the_cache_and_the_lock_dir_but_not_the_hash(tmp_path):
    from pruning.results import config_hash

    moved = compose_cfg([f"paths.data_root={tmp_path / 'data'}", f"paths.cache={tmp_path / 'cache'}",
                         f"paths.outputs={tmp_path / 'out'}"])
    spec = parse_job(moved)
    assert spec.data.root == str(tmp_path / "data") and spec.model.cache_dir == str(tmp_path / "cache")
    assert spec.runtime.gpu_lock_dir == str(tmp_path / "out" / ".gpu-locks")
    plain = OmegaConf.to_container
    assert config_hash(plain(moved, resolve=True)) == config_hash(plain(compose_cfg([]), resolve=True))


def test_eval_defaults_are_the_eval_configs():
    ppl = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "ppl.yaml"))["perplexity"]
    assert build(PerplexitySpec, ppl, "eval.perplexity") == PerplexitySpec()
    zs = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "zeroshot.yaml"))["zero_shot"]
    assert build(ZeroShotSpec, zs, "eval.zero_shot") == ZeroShotSpec(tasks=tuple(zs["tasks"]))


def test_the_default_job_parses_into_frozen_typed_sections():
    spec = parse_job(compose_cfg([]))
    assert isinstance(spec, JobSpec) and spec.method.label == "apt-refit-dense-seq" and str(spec.sparsity) == "0.5"
    assert spec.calibration == CalibrationSpec("c4", "train", 32, 512, 0)  # the quick protocol
    assert spec.eval.perplexity.max_windows == 16 and not spec.eval.zero_shot_on
    with pytest.raises(AttributeError):
        spec.engine.batch_size = 4  # frozen
    with pytest.raises(TypeError):
        spec.method.params["blocksize"] = 64  # read-only mapping
    zs = parse_job(compose_cfg(["eval=zeroshot"])).eval.zero_shot
    assert zs.tasks[0] == "boolq" and isinstance(zs.tasks, tuple)


@pytest.mark.parametrize("cls, node, match", [
    (CalibrationSpec, {"dataset": "c4", "split": "train", "nsamples": 4}, "calibration lacks ['seqlen']"),
    (PerplexitySpec, {"datasets": "wikitext2"}, "eval.perplexity.datasets='wikitext2': need a list of strings"),
    (PerplexitySpec, {"max_windows": True}, "eval.perplexity.max_windows=True: need an integer or null"),
    (ZeroShotSpec, {"tasks": ["piqa"], "limit": 1.5}, "limit=1.5"),
    (ZeroShotSpec, {"tasks": ["piqa"], "batch_size": "big"}, "batch_size='big'"),
    (DataSpec, {"source": "web"}, "data.source='web'; allowed: auto, local, hub"),
])
def test_bad_sections_are_named(cls, node, match):
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        build(cls, node, {CalibrationSpec: "calibration", PerplexitySpec: "eval.perplexity",
                          ZeroShotSpec: "eval.zero_shot", DataSpec: "data"}[cls])


def test_library_functions_take_a_spec_or_a_mapping():
    assert as_spec(DataSpec, {"root": "/x"}, "data") == DataSpec(root="/x")
    spec = DataSpec(source="local")
    assert as_spec(DataSpec, spec, "data") is spec

"""The typed job spec (pruning/spec.py): defaults in step with conf/config.yaml, strict parsing."""

from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from pruning.errors import ConfigError
from pruning.spec import (CalibrationSpec, DataSpec, EngineSpec, JobSpec, PerplexitySpec, RuntimeSpec, SaveSpec,
                          ZeroShotSpec, as_spec, build, parse_job)
from tests.conftest import REPO, compose_cfg


@pytest.mark.parametrize("section, cls", [("data", DataSpec), ("engine", EngineSpec), ("runtime", RuntimeSpec),
                                          ("save", SaveSpec)])
def test_the_dataclass_defaults_are_the_config_files(section, cls):
    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "config.yaml")[section])
    assert build(cls, yaml, section) == cls()
    assert sorted(yaml) == sorted(f.name for f in fields(cls))  # every key documented in the YAML


def test_eval_defaults_are_the_eval_configs():
    ppl = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "ppl.yaml"))["perplexity"]
    assert build(PerplexitySpec, ppl, "eval.perplexity") == PerplexitySpec()
    zs = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "zeroshot.yaml"))["zero_shot"]
    assert build(ZeroShotSpec, zs, "eval.zero_shot") == ZeroShotSpec(tasks=tuple(zs["tasks"]))


def test_the_default_job_parses_into_frozen_typed_sections():
    spec = parse_job(compose_cfg([]))
    assert isinstance(spec, JobSpec) and spec.method.label == "apt-refit" and str(spec.sparsity) == "0.5"
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

"""Every config group composes; the CLI shows help and the config; job directories are named from choices."""

import subprocess
import sys

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from tests.conftest import CONF, REPO, compose_cfg, tiny_overrides

GROUPS = ["model", "method", "calibration", "eval", "logger", "protocol"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert {"model", "method", "calibration", "eval", "logger", "sparsity", "seed", "data"} <= set(container)
    assert container["model"]["name"] == (option if group == "model" else "smollm2-135m")


def test_protocol_presets_set_their_knobs():
    quick = compose_cfg([])
    assert (quick.protocol.name, quick.calibration.nsamples, quick.calibration.seqlen) == ("quick", 32, 512)
    assert quick.eval.perplexity.max_windows is not None
    paper = compose_cfg(["protocol=sparsegpt"])
    assert (paper.calibration.nsamples, paper.calibration.seqlen, paper.calibration.seed) == (128, 2048, 0)
    assert list(paper.eval.perplexity.datasets) == ["wikitext2", "ptb", "c4"]
    assert paper.eval.perplexity.max_windows is None and paper.eval.perplexity.seqlen == 2048
    # command-line overrides still win over the preset
    assert compose_cfg(["protocol=sparsegpt", "calibration.nsamples=16"]).calibration.nsamples == 16


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as e:
        compose_cfg(["model=gpt-5"])
    assert "gpt-5" in str(e.value) and "smollm2-135m" in str(e.value)


def test_sweep_values_keep_types():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    override = OverridesParser.create().parse_overrides(["sparsity=0.5,0.6,2:4"])[0]
    assert list(override.sweep_iterator()) == [0.5, 0.6, "2:4"]


def test_run_directory_is_named_from_choices():
    cfg = compose_cfg(["method=dense", "model=tiny-opt", "seed=3"], return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig
    HydraConfig.instance().set_config(cfg)
    run_dir = cfg.hydra.run.dir
    assert run_dir == "outputs/runs/quick/tiny-opt/dense/seed=3"


def test_run_tag_resolver():
    from experiments.run import override_suffix, run_tag
    assert run_tag("dense", 0.5, "c4") == "dense"
    assert run_tag("wanda", "2:4", "c4") == "wanda_2of4_c4"
    assert run_tag("apt", 0.6, "wikitext2") == "apt_s0.6_wikitext2"
    assert run_tag("apt", "bad value", "c4").startswith("apt_invalid-bad-value")
    assert override_suffix("") == "" and override_suffix("a=[1, 2]") == "/a=-1,-2-"
    assert override_suffix("allocation=uniform") == "" and override_suffix("allocation=owl") == "/allocation=owl"
    assert override_suffix("allocation=uniform,seed=1") == "/seed=1"
    assert override_suffix("a.b=2,allocation=uniform") == "/a.b=2"


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_help_and_cfg_job():
    help_out = _cli("--help")
    assert help_out.returncode == 0
    assert "model: gemma3-270m" in help_out.stdout and "protocol: quick, sparsegpt" in help_out.stdout
    job = _cli("--cfg", "job", "model=tiny-llama", "sparsity=2:4")
    assert job.returncode == 0 and "sparsity: '2:4'" in job.stdout and "name: tiny-llama" in job.stdout


def test_cli_multirun_tiny_sweep(tiny_data_root, tmp_path):
    """A tiny multirun of the default method (APT-refit-dense at 50%): one job per model, each with a complete
    record in a directory named from its choices."""
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_overrides("tiny-llama", tiny_data_root) if not a.startswith(("model=", "method="))]
    out = _cli("-m", "model=tiny-llama,tiny-opt,tiny-mamba", *args, "calibration.nsamples=4",
               "calibration.seqlen=32", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    for model in ("tiny-llama", "tiny-opt", "tiny-mamba"):
        found = list((sweep / "quick" / model / "apt-refit-dense-seq_s0.5_c4").rglob("results.json"))
        assert len(found) == 1  # below apt-refit-dense-seq_s0.5_c4/: one directory naming the extra overrides
        assert "eval.perplexity.seqlen=64" in found[0].parent.name
        rec = json.loads(found[0].read_text())
        assert rec["status"] == "complete" and rec["model"]["name"] == model
        assert rec["method"]["label"] == "apt-refit-dense-seq" and rec["method"]["params"]["refine_iters"] == 8
        assert rec["method"]["params"]["true_sequential"] is True
        assert rec["method"]["params"]["output_target"] == "dense" and rec["metrics"]["mean_rel_error"] > 0


def test_experiment_presets_compose():
    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        cfg = compose_cfg([f"+experiment={preset}"], return_hydra_config=True)
        OmegaConf.to_container(cfg, resolve=False)
        assert cfg.sweep_name
    study = compose_cfg(["+experiment=calibration_study"], return_hydra_config=True)
    assert dict(study.hydra.sweeper.params) == {"method": "wanda,sparsegpt", "calibration": "c4,wikitext2",
                                                "calibration.nsamples": "16,32,128"}
    assert list(study.eval.perplexity.datasets) == ["wikitext2", "c4"] and study.calibration.seqlen == 512


def test_apt_benchmark_preset_runs_and_writes_its_table(tiny_data_root, tmp_path):
    """The benchmark preset on a tiny model (2 methods x 2 sparsities): records, then the table."""
    sweep = tmp_path / "bench"
    args = [a for a in tiny_overrides("tiny-llama", tiny_data_root) if not a.startswith("method=")]
    out = _cli("-m", "+experiment=apt_benchmark", *args, "method=apt,sparsegpt", "sparsity=0.5,2:4",
               "calibration.nsamples=4", "calibration.seqlen=32", "method.blocksize=16", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list(sweep.rglob("results.json"))) == 4
    table = (sweep / "benchmark.md").read_text()
    assert "| APT − SparseGPT |" in table and "| 2:4 | apt |" in table
    assert (sweep / "benchmark.csv").read_text().startswith("sparsity,label,ppl_wikitext2")

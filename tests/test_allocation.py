"""Non-uniform layer sparsity: OWL's mapping and dense pass, user profiles, exact global targets."""

import json

import pytest
import torch

from pruning.adapters import prunable_linears
from pruning.allocation import allocate, check_config, load_profile, outlier_ratio, owl_ratios, profile
from pruning.engine import prune_model
from pruning.errors import ConfigError
from pruning.pipeline import run_job
from pruning.results import read_record
from pruning.solvers import SOLVERS
from pruning.sparsity import parse_sparsity
from tests.conftest import compose_cfg, tiny_overrides
from tests.test_engine import tiny, windows


# ----------------------------------------------------------------------------- OWL mapping
@pytest.mark.parametrize("s", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_owl_ratios_keep_the_weighted_mean_and_span_two_lambda(s):
    lam = 0.04 if s == 0.9 else 0.08
    outliers = [1.0, 3.5, 2.0, 7.0, 0.5, 4.0]
    params = [100, 100, 100, 250, 100, 100]
    ratios = owl_ratios(outliers, params, s, lam)
    assert sum(r * p for r, p in zip(ratios, params)) / sum(params) == pytest.approx(s, abs=1e-12)
    assert max(ratios) - min(ratios) == pytest.approx(2 * lam)
    assert all(s - 2 * lam - 1e-12 <= r <= s + 2 * lam + 1e-12 for r in ratios)
    order = sorted(range(6), key=lambda i: outliers[i])
    assert [ratios[i] for i in order] == sorted(ratios, reverse=True)  # more outliers, fewer pruned


def test_owl_equal_blocks_is_the_reference_mapping():
    outliers, s, lam = [2.0, 6.0, 4.0], 0.7, 0.08
    r = [(d - 2.0) / 4.0 * 2 * lam for d in outliers]
    expected = [1 - (x - sum(r) / 3 + (1 - s)) for x in r]  # lib/prune_all.py, equal blocks
    assert owl_ratios(outliers, [10, 10, 10], s, lam) == pytest.approx(expected)


def test_outlier_heavy_layer_gets_a_lower_ratio_than_a_flat_one():
    g = torch.Generator().manual_seed(0)
    flat = [torch.rand(64, 64, generator=g) + 0.5]
    heavy = [torch.rand(64, 64, generator=g) + 0.5]
    heavy[0][:, 3] *= 40  # one outlier input feature
    d = [outlier_ratio(flat, 5), outlier_ratio(heavy, 5)]
    assert d[0] == 0 and d[1] > 0
    ratios = owl_ratios(d, [1, 1], 0.6, 0.08)
    assert ratios[1] < 0.6 < ratios[0]


def test_owl_ratio_outside_unit_interval_is_an_error():
    with pytest.raises(ConfigError, match=r"lambda=0.2 at sparsity 0.9 gives block 0 a ratio of 1.2000, outside \[0, 1\)"):
        owl_ratios([0.0, 1.0, 1.0, 1.0], [1, 1, 1, 1], 0.9, 0.2)


# ----------------------------------------------------------------------------- on tiny models
@pytest.mark.parametrize("s", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_owl_with_apt_reaches_the_exact_global_target(s):
    lm = tiny("tiny-llama")
    sp = parse_sparsity(s)
    w = windows()
    cfg = {"name": "owl", "M": 5, "lambda": 0.04 if s == 0.9 else 0.08}
    alloc = allocate(cfg, None, sp, lm.model, lm.adapter, w)
    report = prune_model(lm.model, lm.adapter, w, SOLVERS["apt"], sp, {"blocksize": 16}, targets=alloc.target)
    linears = prunable_linears(lm.model, lm.adapter)
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    total = sum(m.weight.numel() for m in linears.values())
    assert abs(zeros - s * total) <= len(linears) / 2 + 1  # APT rounds each layer to whole weights
    assert alloc.info["weighted_target"] == pytest.approx(s, abs=1e-12)
    for row in report.layers:
        assert float(row["target"]) == pytest.approx(alloc.info["block_targets"][row["block"]])
        assert abs(row["sparsity"] - float(row["target"])) < 1.0 / 64 + 1e-9


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "apt", "alps"])
def test_owl_job_for_every_solver(tiny_data_root, tmp_path, method):
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, f"method={method}", "allocation=owl",
                                     "sparsity=0.6", "calibration.nsamples=4", "calibration.seqlen=32"))
    rec = run_job(cfg, tmp_path)
    alloc = rec["allocation"]
    assert rec["status"] == "complete" and alloc["name"] == "owl" and alloc["M"] == 5 and alloc["lambda"] == 0.08
    assert len(alloc["block_targets"]) == 2 and len(alloc["outlier_ratios"]) == 2
    assert all(0.6 - 0.16 <= t <= 0.6 + 0.16 for t in alloc["block_targets"])
    assert rec["sparsity"]["actual"] == pytest.approx(0.6, abs=0.02)
    assert rec["protocol"]["calibration"]["used"] and rec["timings"]["allocation_s"] > 0
    assert {r["target"] for r in rec["layers"]} == {f"{t:g}" for t in alloc["block_targets"]}


def test_owl_with_nm_is_a_clear_error_before_loading(tiny_data_root, tmp_path):
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "allocation=owl", "sparsity=2:4"))
    with pytest.raises(ConfigError, match="N:M patterns are uniform by definition"):
        run_job(cfg, tmp_path)
    assert read_record(tmp_path / "results.json")["stage"] == "validation"  # a failed record says why


@pytest.mark.parametrize("key, value, match", [("M", 0, "allocation.M=0"), ("lambda", 0.6, "allocation.lambda=0.6"),
                                               ("lambda", "x", "allocation.lambda='x'")])
def test_owl_knobs_are_checked(key, value, match):
    with pytest.raises(ConfigError, match=match):
        check_config({"name": "owl", "M": 5, "lambda": 0.08, key: value}, parse_sparsity(0.5))


def test_uniform_allocation_keeps_old_config_hashes():
    from pruning.results import config_hash
    cfg = {"method": {"name": "apt"}, "sparsity": 0.5}
    assert config_hash({**cfg, "allocation": {"name": "uniform"}}) == config_hash(cfg)
    assert config_hash({**cfg, "allocation": {"name": "owl", "M": 5, "lambda": 0.08}}) != config_hash(cfg)


# ----------------------------------------------------------------------------- profiles
def _names(blocks=2):
    short = ["self_attn.q_proj", "mlp.down_proj"]
    return {bi: {n: f"model.layers.{bi}.{n}" for n in short} for bi in range(blocks)}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_profile_round_trip(tmp_path, suffix):
    data = {"default": 0.5, "layers": {"1": 0.3, r".*mlp\.down_proj": 0.7}}
    path = tmp_path / f"p{suffix}"
    path.write_text(json.dumps(data))  # JSON is valid YAML too
    alloc = profile(load_profile(path), _names())
    assert alloc.info["layer_targets"] == {"model.layers.0.self_attn.q_proj": 0.5, "model.layers.0.mlp.down_proj": 0.7,
                                           "model.layers.1.self_attn.q_proj": 0.3, "model.layers.1.mlp.down_proj": 0.3}
    assert alloc.target(0, "mlp.down_proj").ratio == 0.7


@pytest.mark.parametrize("text, match", [
    ('{"default": 0.5, "layers": {"0": 1.0}}', r"0: 1.0 is not a sparsity ratio in \[0, 1\)"),
    ('{"default": -0.1}', r"default: -0.1 is not a sparsity ratio"),
    ('{"layers": {"(": 0.5}}', "neither a block index nor a valid regular expression"),
    ('{"ratios": {}}', "expected a mapping with keys 'default'"),
    ('[1, 2', "cannot parse the profile"),
])
def test_bad_profiles_fail_before_any_model_is_loaded(tiny_data_root, tmp_path, monkeypatch, text, match):
    import pruning.pipeline as pipeline
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before the profile check"))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "allocation=profile",
                                     f"allocation.path={path}"))
    with pytest.raises(ConfigError, match=match):
        run_job(cfg, tmp_path / "job")


@pytest.mark.parametrize("data, match", [
    ({"layers": {"0": 0.5}}, "layer model.layers.1.self_attn.q_proj matches no key and the profile has no 'default'"),
    ({"default": 0.5, "layers": {"7": 0.4, ".*nonexistent": 0.1}}, r"keys \['7', '.\*nonexistent'\] match no prunable layer"),
])
def test_profile_coverage_is_checked_against_the_model(tmp_path, data, match):
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=match):
        profile(load_profile(path), _names())


def test_profile_job_prunes_each_layer_to_its_ratio(tiny_data_root, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('default: 0.5\nlayers:\n  "0": 0.25\n  ".*mlp\\\\.down_proj": 0.0\n')
    # size-weighted: block 0 (36864 weights) at 0.25, block 1's down_proj (8192) at 0, its other 28672 at 0.5
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "allocation=profile",
                                     f"allocation.path={path}", "calibration.nsamples=4", "calibration.seqlen=32",
                                     "sparsity=0.32"))
    rec = run_job(cfg, tmp_path / "job")
    assert rec["allocation"]["weighted_target"] == pytest.approx(23552 / 73728)
    by = {r["name"]: r for r in rec["layers"]}
    assert by["model.layers.0.mlp.up_proj"]["sparsity"] == 0.25 and by["model.layers.1.mlp.up_proj"]["sparsity"] == 0.5
    assert by["model.layers.0.mlp.down_proj"]["sparsity"] == 0.25  # the first matching key in file order wins
    assert by["model.layers.1.mlp.down_proj"]["sparsity"] == 0.0 and by["model.layers.1.mlp.down_proj"]["target"] == "0"
    assert rec["allocation"]["layer_targets"]["model.layers.1.self_attn.q_proj"] == 0.5


# ----------------------------------------------------------------------------- analysis
def test_analysis_tells_allocations_apart_and_draws_block_sparsity(tiny_data_root, tmp_path):
    from analysis.collect import collect
    from analysis.plots import block_sparsity
    from analysis.ppl_tables import ppl_table

    for alloc in ("uniform", "owl"):
        run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", f"allocation={alloc}",
                                           "sparsity=0.7", "calibration.nsamples=4", "calibration.seqlen=32")),
                tmp_path / alloc)
    col = collect(tmp_path, layers=True)
    assert sorted(col.frame["label"]) == ["sparsegpt", "sparsegpt+owl"]
    assert sorted(col.frame["allocation"]) == ["owl", "uniform"]
    assert "SparseGPT+owl" in ppl_table(col.frame).to_markdown() or "sparsegpt+owl" in ppl_table(col.frame).to_markdown()
    owl_layers = col.layers[col.layers.label == "sparsegpt+owl"]
    assert owl_layers["target"].nunique() == 2 and owl_layers["numel"].notna().all()
    fig = block_sparsity(col.layers, "0.7")
    assert len(fig.axes[0].lines) == 4  # actual + target for each of the two rows

"""The sequential engine on tiny random models of every supported family."""

import pytest
import torch

from pruning.adapters import prunable_linears
from pruning.capture import capture_block_inputs
from pruning.engine import prune_model
from pruning.spec import EngineSpec, FitSpec
from pruning.errors import ConfigError
from pruning.models import load_model
from pruning.pipeline import run_job
from pruning.solvers import SOLVERS, Solver
from pruning.sparsity import nm_violations, parse_sparsity
from tests.conftest import TINY_FAMILIES, compose_cfg, tiny_overrides


def tiny(name):
    return load_model(compose_cfg([f"model={name}"]).model)


def windows(n=4, seqlen=32, seed=0):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_capture_keeps_every_kwarg():
    lm = tiny("tiny-llama")
    inputs, kwargs = capture_block_inputs(lm.model, lm.adapter, windows(2, 16))
    assert len(inputs) == 2 and inputs[0].shape == (1, 16, 64)
    assert kwargs.shared and kwargs.of(1) is kwargs.of(0) and len(kwargs.of(0)) == 2
    assert "position_embeddings" in kwargs.of(0)[0] and "position_ids" in kwargs.of(0)[0]
    cos, sin = kwargs.of(0)[0]["position_embeddings"]
    assert cos.shape[-2] == 16
    assert type(lm.adapter.blocks(lm.model)[0]).__name__ == "LlamaDecoderLayer"  # the stand-ins are gone


@pytest.mark.parametrize("model", TINY_FAMILIES)
def test_block_by_block_forward_matches_the_model(model):
    """The engine's block-by-block forward with the captured arguments reproduces every block's output
    in the model's own forward. On Gemma-3 the full-attention block gets other rotary embeddings and
    another mask than the sliding-window ones: block 0's arguments for every block would not do."""
    from pruning.capture import first_output as _first_output
    lm = tiny(model)
    blocks = lm.adapter.blocks(lm.model)
    ids = windows(4, 32)
    outputs = []
    hooks = [b.register_forward_hook(lambda mod, a, out: outputs.append(_first_output(out))) for b in blocks]
    with torch.no_grad():
        lm.model(input_ids=ids[2:], use_cache=False)
    for h in hooks:
        h.remove()
    inputs, kwargs = capture_block_inputs(lm.model, lm.adapter, ids, batch_size=2)
    assert kwargs.shared == (model != "tiny-gemma3") and len(inputs) == 2
    x = shared_x = inputs[1]
    with torch.no_grad():
        for bi, block in enumerate(blocks):
            x = _first_output(block(x, **kwargs.of(bi)[1]))
            torch.testing.assert_close(x, outputs[bi], rtol=1e-5, atol=1e-5)
            shared_x = _first_output(block(shared_x, **kwargs.of(0)[1]))
    assert model != "tiny-gemma3" or not torch.allclose(shared_x, outputs[-1], atol=1e-3)  # the old engine's error


def test_replay_check_passes_on_every_family_and_stops_a_wrong_capture(monkeypatch):
    from pruning import capture
    for model in TINY_FAMILIES:
        lm = tiny(model)
        assert capture.check_replay(lm.model, lm.adapter, windows(1, 32)) <= capture.REPLAY_RTOL
    monkeypatch.setattr(capture, "_same", lambda a, b: True)  # the references' capture: block 0's arguments for all
    lm = tiny("tiny-gemma3")
    with pytest.raises(RuntimeError, match="differs from the model's own at block 1 of the gemma3 model"):
        capture.check_replay(lm.model, lm.adapter, windows(1, 32))
    with pytest.raises(RuntimeError, match="at block 1"):  # a job stops before it calibrates on such inputs
        prune_model(lm.model, lm.adapter, windows(2, 32), SOLVERS["sparsegpt"], parse_sparsity(0.5))


@pytest.mark.parametrize("model", TINY_FAMILIES)
@pytest.mark.parametrize("method, spec", [("magnitude", 0.5), ("wanda", 0.5), ("sparsegpt", 0.5), ("apt", 0.5),
                                          ("alps", 0.5), ("wanda", "2:4"), ("sparsegpt", "2:4"), ("apt", "2:4"),
                                          ("alps", "2:4")])
def test_engine_reaches_target_and_touches_nothing_else(model, method, spec):
    lm = tiny(model)
    sp = parse_sparsity(spec)
    linears = prunable_linears(lm.model, lm.adapter)
    linear_params = {id(m.weight) for m in linears.values()}
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if id(p) not in linear_params}
    seen = {}  # the input weight and H of every solver call, to compare with the mask-only error
    solver = SOLVERS[method]

    def recording(w, sparsity, **kw):
        res = solver.fn(w, sparsity, **kw)
        seen[len(seen)] = (w.detach().float().clone(), kw.get("H"), res)
        return res

    report = prune_model(lm.model, lm.adapter, windows(), Solver(recording, solver.needs_hessian, solver.needs_norms), sp)
    assert len(report.layers) == len(linears)
    for name, m in linears.items():
        w = m.weight
        zeros = int((w == 0).sum())
        if sp.kind == "nm":  # exactly N of every M per row, and nothing else zeroed
            assert nm_violations(w, sp.n, sp.m) == 0 and zeros == w.numel() // 2, name
        elif method == "wanda":  # exactly int(cols * s) per row
            assert ((w == 0).sum(1) == int(w.shape[1] * 0.5)).all(), name
        elif method in ("apt", "alps"):  # exactly round(s * numel) per matrix
            assert zeros == w.numel() // 2, name
        elif method == "magnitude":  # the reference's `<= sort(|W|)[int(numel*s)]`: one weight more
            assert zeros == w.numel() // 2 + 1, name
        else:  # sparsegpt: the same rule per 128-column block
            assert zeros == w.numel() // 2 + -(-w.shape[1] // 128), name
    if method in ("sparsegpt", "apt", "alps"):  # the update beats leaving the kept weights as they were
        from pruning.solvers.common import relative_error
        for w0, H, res in seen.values():
            mask_only = relative_error(w0, w0.masked_fill(res.mask, 0), H)
            assert res.error < mask_only, (method, res.error, mask_only)
    for n, p in lm.model.named_parameters():
        if id(p) not in linear_params:
            assert torch.equal(p, before[n]), f"{n} changed"
    assert all(r["rel_error"] is not None and r["rel_error"] >= 0 for r in report.layers)
    assert report.timings["solver_s"] > 0 and torch.isfinite(lm.model(windows(1, 8)).logits).all()


def test_true_sequential_differs_and_is_valid():
    a, b = tiny("tiny-llama"), tiny("tiny-llama")
    sp = parse_sparsity(0.5)
    prune_model(a.model, a.adapter, windows(), SOLVERS["sparsegpt"], sp)
    prune_model(b.model, b.adapter, windows(), SOLVERS["sparsegpt"], sp, engine=EngineSpec(true_sequential=True))
    wa = a.model.model.layers[0].self_attn.o_proj.weight
    wb = b.model.model.layers[0].self_attn.o_proj.weight
    assert not torch.equal(wa, wb)  # o_proj saw the pruned q/k/v outputs
    # q/k/v are the first group: same statistics either way
    torch.testing.assert_close(a.model.model.layers[0].self_attn.q_proj.weight,
                               b.model.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.parametrize("fit, dense_passes", [(FitSpec(), 0), (FitSpec("dense"), 1)])
def test_a_pass_stops_once_its_group_has_its_inputs(fit, dense_passes):
    """true_sequential: the passes for q/k/v, o and gate/up stop before down_proj, which then runs only in
    its own group's passes (and the dense pass kept as the next block's input) and in the final re-run
    (without stopping: 4 pruned-input passes and 4 dense ones per window)."""
    lm = tiny("tiny-llama")
    ids = windows()
    calls = []
    hooks = [b.mlp.down_proj.register_forward_hook(lambda m, i, o: calls.append(1)) for b in lm.model.model.layers]
    prune_model(lm.model, lm.adapter, ids, SOLVERS["sparsegpt"], parse_sparsity(0.5),
                engine=EngineSpec(true_sequential=True), fit=fit)
    for h in hooks:
        h.remove()
    replay = 2  # check_replay: one window through the model, then block by block
    assert len(calls) == len(lm.model.model.layers) * (len(ids) * (2 + dense_passes) + replay)


def test_nm_width_error_names_the_layer():
    lm = tiny("tiny-mamba")  # dt_proj has 4 inputs: 4:8 cannot apply
    with pytest.raises(ConfigError, match="M=8 does not divide the input width 4 of mixer.dt_proj"):
        prune_model(lm.model, lm.adapter, windows(), SOLVERS["wanda"], parse_sparsity("4:8"))


def test_pruning_job_records_layers(tiny_data_root, tmp_path):
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "sparsity=2:4",
                                     "calibration.nsamples=4", "calibration.seqlen=32"))
    rec = run_job(cfg, tmp_path)
    assert rec["status"] == "complete" and rec["sparsity"]["actual"] == pytest.approx(0.5)
    assert len(rec["layers"]) == 14 and {"name", "shape", "sparsity", "rel_error", "solver_s"} <= set(rec["layers"][0])
    assert rec["protocol"]["calibration"]["used"] and rec["protocol"]["calibration"]["nsamples"] == 4
    assert {"calib_forward_s", "solver_s", "prune_total_s", "eval_ppl_s"} <= set(rec["timings"])
    assert 0 < rec["metrics"]["mean_rel_error"] < 1
    assert rec["memory"]["peak_rss_after_prune_bytes"] > 0


def test_unknown_method_parameter_is_an_error(tiny_data_root, tmp_path):
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "+method.blocksze=64"))
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['blocksze'\]; allowed: blocksize, percdamp"):
        run_job(cfg, tmp_path)


def test_mamba_dt_proj_statistics_come_from_x_proj():
    """transformers bypasses dt_proj's forward; its input is tapped from x_proj's output."""
    lm = tiny("tiny-mamba")
    report = prune_model(lm.model, lm.adapter, windows(), SOLVERS["sparsegpt"], parse_sparsity(0.5))
    dt = [r for r in report.layers if r["layer"] == "mixer.dt_proj"]
    assert len(dt) == 2 and all(0 < r["rel_error"] < 1 and "dead_columns" not in r for r in dt)


@pytest.mark.parametrize("dense", [False, True])
def test_linears_reading_one_input_share_statistics_bit_for_bit(dense, monkeypatch):
    """Llama's q/k/v and gate/up read one tensor: the engine accumulates their statistics once (one
    ``add_batch``/``add_cross`` per distinct input and window) and every value equals what each linear's own
    accumulation from its own hook gives."""
    from pruning.block_pass import BlockPass
    from pruning.stats import LayerStats
    lm = tiny("tiny-llama")
    ids = windows()
    inputs, kw = capture_block_inputs(lm.model, lm.adapter, ids)
    block = lm.adapter.blocks(lm.model)[0]
    linears = lm.adapter.prunable(block)
    calls = []
    real_add = LayerStats.add_batch
    monkeypatch.setattr(LayerStats, "add_batch", lambda self, *a: calls.append(1) or real_add(self, *a))
    dense_inputs = [x + 0.01 * torch.randn_like(x) for x in inputs] if dense else None
    stats, _ = BlockPass(block, 0, lm.adapter, linears, kw.of(0), True, True, torch.device("cpu")).statistics(
        tuple(linears), inputs, dense_inputs=dense_inputs)
    groups = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert sorted(n for g in groups for n in g) == sorted(linears)
    for g in groups:
        assert all(stats[n] is stats[g[0]] for n in g)
    assert len({id(s) for s in stats.values()}) == 4 and len(calls) == 4 * len(inputs)

    own = {n: LayerStats(m.in_features) for n, m in linears.items()}  # each linear's own hook, no sharing
    pruned_in = {}
    for x, xd, k in zip(inputs, dense_inputs or inputs, kw.of(0)):
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: pruned_in.__setitem__(n, inp[0]))
                 for n, m in linears.items()]
        block(x, **k)
        for n in linears:
            real_add(own[n], pruned_in[n])
        for h in hooks:
            h.remove()
        if dense:
            hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: own[n].add_cross(inp[0], pruned_in[n]))
                     for n, m in linears.items()]
            block(xd, **k)
            for h in hooks:
                h.remove()
    for n in linears:
        for attr in ("H", "sq_norms", "C", "G"):
            a, b = getattr(stats[n], attr), getattr(own[n], attr)
            assert (a is None and b is None and attr in "CG" and not dense) or torch.equal(a, b), (n, attr)


def test_input_sharing_that_changes_between_windows_stops_the_run():
    from pruning.block_pass import _SharedInputs
    shares = _SharedInputs()
    x, y = torch.ones(2, 3), torch.zeros(2, 3)
    shares.new_pass()
    assert shares.owner("q", x, True, False) is None and shares.owner("k", x, True, False) == "q"
    shares.new_pass()
    assert shares.owner("q", y, False, False) is None and shares.owner("k", y, False, False) == "q"
    shares.new_pass()
    shares.owner("q", x, False, False)
    with pytest.raises(RuntimeError, match="linear k read q's input on the first calibration window but not"):
        shares.owner("k", y, False, False)


def test_a_bypassed_linear_without_tap_is_a_loud_error():
    import dataclasses
    lm = tiny("tiny-mamba")
    no_tap = dataclasses.replace(lm.adapter, input_taps=())
    with pytest.raises(RuntimeError, match=r"no calibration input reached \['mixer.dt_proj'\]"):
        prune_model(lm.model, no_tap, windows(), SOLVERS["wanda"], parse_sparsity(0.5))


def test_magnitude_without_error_report_needs_no_data(tiny_data_root, tmp_path, monkeypatch):
    """No statistic is needed: no calibration data is read and no forward pass runs."""
    import pruning.engine as engine
    monkeypatch.setattr(engine, "capture_block_inputs", lambda *a, **k: pytest.fail("forward pass ran"))
    cfg = compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "method=magnitude", "engine.report_error=false"))
    rec = run_job(cfg, tmp_path)
    assert rec["protocol"]["calibration"]["used"] is False and rec["timings"]["calib_forward_s"] == 0.0
    assert rec["sparsity"]["actual"] >= 0.5 and all(r["rel_error"] is None for r in rec["layers"])


@pytest.mark.parametrize("method", ["apt", "apt-exact", "apt-refit", "apt-refit-dense", "apt-refit-dense-seq", "apt-swap", "alps",
                                    "alps-dense-seq"])
def test_reconstruction_job_end_to_end(tiny_data_root, tmp_path, method):
    blocks = [] if method.startswith("alps") else ["method.blocksize=16"]
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, f"method={method}", "sparsity=0.6",
                                     "calibration.nsamples=4", "calibration.seqlen=32", *blocks))
    rec = run_job(cfg, tmp_path)
    assert rec["status"] == "complete" and rec["sparsity"]["actual"] == pytest.approx(0.6, abs=1e-3)
    name = "alps" if method.startswith("alps") else "apt"
    assert rec["method"]["name"] == name and rec["method"]["label"] == method
    if name == "apt":
        assert rec["method"]["params"]["variant"] == ("exact" if method == "apt-exact" else "block")
    assert 0 < rec["metrics"]["mean_rel_error"] < 1 and len(rec["layers"]) == 14


def test_heldout_windows_measure_without_changing_the_solve():
    """The held-out set never reaches the solver (same weights as without it); on the calibration windows
    themselves the held-out error equals the fitted one, on other windows it differs."""
    sp = parse_sparsity(0.5)
    plain, same, other = tiny("tiny-llama"), tiny("tiny-llama"), tiny("tiny-llama")
    r_plain = prune_model(plain.model, plain.adapter, windows(), SOLVERS["sparsegpt"], sp)
    r_same = prune_model(same.model, same.adapter, windows(), SOLVERS["sparsegpt"], sp, heldout=windows())
    r_other = prune_model(other.model, other.adapter, windows(), SOLVERS["sparsegpt"], sp, heldout=windows(3, seed=5))
    for a, b in zip(plain.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)
    assert all("heldout_rel_error" not in r for r in r_plain.layers)
    assert [r["rel_error"] for r in r_other.layers] == [r["rel_error"] for r in r_plain.layers]
    for r in r_same.layers:
        assert r["heldout_rel_error"] == pytest.approx(r["rel_error"], rel=1e-4)
    assert any(r["heldout_rel_error"] != pytest.approx(r["rel_error"], rel=1e-2) for r in r_other.layers)
    assert r_other.timings["heldout_forward_s"] > 0 and "heldout_forward_s" not in r_plain.timings


def test_heldout_job_records_and_keeps_old_hashes(tiny_data_root, tmp_path):
    from pruning.results import config_hash
    over = tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude", "engine.report_error=false",
                          "calibration.nsamples=4", "calibration.seqlen=32")
    cfg = compose_cfg([*over, "calibration.heldout_nsamples=2"])
    rec = run_job(cfg, tmp_path)
    assert rec["status"] == "complete" and rec["protocol"]["calibration"]["used"]
    assert rec["protocol"]["calibration"]["heldout"]["nsamples"] == 2
    assert all(r["rel_error"] is None and 0 < r["heldout_rel_error"] < 1 for r in rec["layers"])
    assert rec["metrics"]["mean_heldout_rel_error"] == pytest.approx(
        sum(r["heldout_rel_error"] for r in rec["layers"]) / len(rec["layers"]))
    assert rec["timings"]["heldout_forward_s"] > 0
    from omegaconf import OmegaConf
    off = OmegaConf.to_container(compose_cfg(over), resolve=True)
    assert off["calibration"]["heldout_nsamples"] == 0
    without_key = {**off, "calibration": {k: v for k, v in off["calibration"].items() if k != "heldout_nsamples"}}
    assert config_hash(off) == config_hash(without_key)
    assert config_hash(OmegaConf.to_container(cfg, resolve=True)) != config_hash(off)

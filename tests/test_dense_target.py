"""method.output_target=dense: fit each layer to the dense model's layer outputs (pruning/solvers/dense_target.py)."""

import pytest
import torch

from pruning import engine
from pruning.engine import prune_model
from pruning.spec import EngineSpec, FitSpec
from pruning.errors import ConfigError
from pruning.pipeline import run_job
from pruning.solvers import SOLVERS
from pruning.solvers.dense_target import dense_output_error, dense_target_correction, dense_target_weights
from pruning.sparsity import parse_sparsity
from pruning.stats import LayerStats
from tests.conftest import TINY_FAMILIES, compose_cfg, tiny_overrides
from tests.test_engine import tiny, windows


def _stats(xp, xd):
    """LayerStats over sequences (``[seq, tokens, d]``), one sequence per batch as the engine feeds them."""
    st = LayerStats(xp.shape[-1], norms=False)
    for p, d in zip(xp, xd):
        st.add_batch(p[None])
        st.add_cross(d[None], p[None])
    return st


def _problem(g, seqs, tokens, d, out, noise):
    """A layer ``W`` and pruned / dense inputs that differ by ``noise``: (W, their statistics, X_p, X_d)."""
    xp = torch.randn(seqs, tokens, d, generator=g, dtype=torch.float64)
    xd = xp + noise * torch.randn(seqs, tokens, d, generator=g, dtype=torch.float64)
    W = torch.randn(out, d, generator=g, dtype=torch.float64)
    return W, _stats(xp, xd), xp.reshape(-1, d), xd.reshape(-1, d)


def test_cross_term_equals_h_bit_for_bit_on_equal_inputs_and_then_nothing_moves():
    x = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(0))
    st = _stats(x, x.clone())
    assert torch.equal(st.C, st.H) and torch.equal(st.G, st.H)
    W = torch.randn(4, 6)
    assert torch.equal(dense_target_weights(W, st.H, st.C), W)


def test_w_star_solves_the_dense_output_problem():
    """W* minimises ‖X_d Wᵀ − X_p Ŵᵀ‖² + λ‖Ŵ − W‖² (checked against a direct least-squares solve), and
    without damping the dense-output loss of any Ŵ is ‖(Ŵ − W*) X_p‖² plus a constant."""
    g = torch.Generator().manual_seed(1)
    seqs, tokens, d, out = 6, 20, 8, 5
    W, st, Xp, Xd = _problem(g, seqs, tokens, d, out, noise=0.3)
    scale = 2 / seqs  # H = (2/n) Σ x xᵀ over n sequences
    percdamp = 0.05
    lam = percdamp * float(torch.diagonal(st.H.double()).mean())
    # ridge around W: [sqrt(s) X_p; sqrt(λ) I] Ŵᵀ ≈ [sqrt(s) X_d Wᵀ; sqrt(λ) Wᵀ]
    A = torch.cat([scale ** 0.5 * Xp, lam ** 0.5 * torch.eye(d, dtype=torch.float64)])
    B = torch.cat([scale ** 0.5 * Xd @ W.t(), lam ** 0.5 * W.t()])
    ref = torch.linalg.lstsq(A, B).solution.t()
    torch.testing.assert_close(dense_target_weights(W, st.H, st.C, percdamp), ref, rtol=1e-4, atol=1e-5)
    w_star = dense_target_weights(W, st.H, st.C, percdamp=1e-12)
    loss = lambda w: float(((Xd @ W.t() - Xp @ w.t()) ** 2).sum())  # noqa: E731
    proxy = lambda w: float((((w - w_star) @ Xp.t()) ** 2).sum())  # noqa: E731
    a, b = torch.randn(out, d, generator=g, dtype=torch.float64), torch.randn(out, d, generator=g, dtype=torch.float64)
    assert loss(a) - loss(b) == pytest.approx(proxy(a) - proxy(b), rel=1e-5)
    assert loss(w_star) < loss(W)
    quarter = dense_target_weights(W, st.H, st.C, percdamp, alpha=0.25)
    torch.testing.assert_close(quarter - W, 0.25 * (ref - W), rtol=1e-4, atol=1e-6)  # a share of the correction


@pytest.mark.parametrize("alpha", [0.25, 0.7])
def test_the_blended_target_is_the_blend_of_the_two_objectives(alpha):
    """docs/methods.md, "Masks for the default's objective": with W_α = W + α (W* − W), the solver's loss
    (Ŵ − W_α)(H + λI)(Ŵ − W_α)ᵀ differs from α · dense-output loss + (1 − α) · own-output loss (both with the
    ridge λ‖Ŵ − W‖²) by a constant, so a mask search on (W_α, H) searches masks for that blend."""
    g = torch.Generator().manual_seed(2)
    seqs, tokens, d, out = 5, 16, 7, 4
    W, st, Xp, Xd = _problem(g, seqs, tokens, d, out, noise=0.4)
    scale, percdamp = 2 / seqs, 0.01
    lam = percdamp * float(torch.diagonal(st.H.double()).mean())
    w_alpha = dense_target_weights(W, st.H, st.C, percdamp, alpha=alpha)
    ridge = lambda w: lam * float(((w - W) ** 2).sum())  # noqa: E731
    dense_loss = lambda w: scale * float(((Xd @ W.t() - Xp @ w.t()) ** 2).sum()) + ridge(w)  # noqa: E731
    own_loss = lambda w: scale * float(((Xp @ (W - w).t()) ** 2).sum()) + ridge(w)  # noqa: E731
    Hl = st.H.double() + lam * torch.eye(d, dtype=torch.float64)
    solver_loss = lambda w: float((((w - w_alpha) @ Hl) * (w - w_alpha)).sum())  # noqa: E731
    gaps = []
    for _ in range(4):
        w = torch.randn(out, d, generator=g, dtype=torch.float64) * torch.rand(out, d, generator=g).round()
        gaps.append(alpha * dense_loss(w) + (1 - alpha) * own_loss(w) - solver_loss(w))
    # H and C are accumulated in float32 (1e-6 relative); a wrong share of the correction moves the gap by O(1)
    assert max(gaps) - min(gaps) == pytest.approx(0, abs=1e-5 * max(abs(x) for x in gaps))


def test_row_wise_and_matrix_correction_agree_and_the_matrix_is_formed_once_for_wide_layers():
    """A layer with fewer rows than columns (down_proj) gets W (C − H)(H + λI)⁻¹ row-wise, without forming
    the matrix; one with at least as many rows (q_proj, gate_proj) forms it once, and every later linear
    reading the same input reuses it. Both equal the explicit product."""
    g = torch.Generator().manual_seed(2)
    xp = torch.randn(4, 30, 12, generator=g)
    st = _stats(xp, xp + 0.2 * torch.randn(4, 30, 12, generator=g))
    Hd = st.H.double() + 0.01 * float(st.H.double().diagonal().mean()) * torch.eye(12, dtype=torch.float64)
    M = (st.C - st.H).double() @ torch.linalg.inv(Hd)
    narrow, wide = torch.randn(5, 12, generator=g), torch.randn(20, 12, generator=g)
    corr = dense_target_correction(st.H, st.C, 0.01)
    torch.testing.assert_close(corr.times(narrow), narrow.double() @ M, rtol=1e-9, atol=1e-12)
    assert corr.matrix is None  # row-wise: no cols x cols solve
    torch.testing.assert_close(corr.times(wide), wide.double() @ M, rtol=1e-9, atol=1e-12)
    formed = corr.matrix
    assert formed is not None
    torch.testing.assert_close(corr.times(narrow), narrow.double() @ M, rtol=1e-9, atol=1e-12)
    assert corr.matrix is formed  # reused, not formed again
    torch.testing.assert_close(dense_target_weights(narrow, st.H, st.C, 0.01, 0.25, correction=corr),
                               (narrow.double() + 0.25 * narrow.double() @ M).float())


def test_the_correction_releases_what_it_has_spent_and_overwriting_c_changes_no_bit():
    """Memory without a changed number: with overwrite_c the difference C − H is formed in C's storage (the
    same bits as C − H); a row-wise product with last=True releases the difference after its product and the
    factor after its solve; the matrix, once formed, is all a correction keeps. Every result equals the one of a
    correction that keeps everything."""
    g = torch.Generator().manual_seed(6)
    xp = torch.randn(4, 30, 12, generator=g)
    st = _stats(xp, xp + 0.2 * torch.randn(4, 30, 12, generator=g))
    narrow, wide = torch.randn(5, 12, generator=g), torch.randn(20, 12, generator=g)
    keep = dense_target_correction(st.H, st.C, 0.01)
    C = st.C.clone()
    lean = dense_target_correction(st.H, C, 0.01, overwrite_c=True)
    assert torch.equal(lean.diff, keep.diff) and torch.equal(lean.chol, keep.chol)
    assert torch.equal(C, st.C - st.H)  # C given up: it holds the difference now
    first = keep.times(narrow)
    assert torch.equal(dense_target_weights(narrow, st.H, None, 0.01, 0.25, correction=lean),
                       dense_target_weights(narrow, st.H, st.C, 0.01, 0.25, correction=keep))
    assert lean.diff is not None  # a shared correction is kept unless the caller says it is the last use
    assert torch.equal(lean.times(narrow, last=True), first) and lean.diff is None and lean.chol is None
    assert keep.diff is not None and keep.chol is not None  # not the last: kept for the next linear
    formed = dense_target_correction(st.H, st.C, 0.01)
    assert torch.equal(formed.times(wide), keep.times(wide)) and formed.diff is None and formed.chol is None
    assert torch.equal(formed.times(narrow), keep.times(narrow))  # through the matrix, as before
    with pytest.raises(ValueError, match="do not fit"):
        dense_target_weights(narrow, st.H, None, 0.01)  # no C and no correction: nothing to form it from


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        dense_target_weights(torch.zeros(3, 4), torch.eye(5), torch.eye(5))


def _block_input(lm, ids, block: int, name: str) -> torch.Tensor:
    """The input of linear ``name`` of ``block`` in a plain forward of ``ids``, float64 ``[tokens, columns]``."""
    got = []
    h = lm.adapter.prunable(lm.adapter.blocks(lm.model)[block])[name].register_forward_hook(
        lambda m, inp, out: got.append(inp[0].detach()))
    with torch.no_grad():
        lm.model(input_ids=ids, use_cache=False)
    h.remove()
    return got[0].double().reshape(-1, got[0].shape[-1])


PER_BLOCK = 4  # corrections per LLaMA block, in order: q/k/v's input, o's, gate/up's, down's


def _spy_corrections(monkeypatch) -> list:
    """Every correction the engine forms, as the (H, C) it was given (copied before it may overwrite C)."""
    seen = []
    real = engine.dense_target_correction

    def spy(H, C, percdamp, overwrite_c=False):
        seen.append((H.clone(), C.clone()))
        return real(H, C, percdamp, overwrite_c=overwrite_c)

    monkeypatch.setattr(engine, "dense_target_correction", spy)
    return seen


def test_engine_pairs_dense_and_pruned_inputs_token_for_token(monkeypatch):
    """The engine's H and C of a layer in block 1 are those of the pruned model's and the dense model's
    inputs of that layer (computed here from plain forward passes of both models); block 0's inputs are
    the same in both models, so its layers are not moved and prune exactly as with the usual target."""
    seen = _spy_corrections(monkeypatch)
    dense, pruned, plain = tiny("tiny-llama"), tiny("tiny-llama"), tiny("tiny-llama")
    ids = windows(4, 32)
    sp = parse_sparsity(0.5)
    report = prune_model(pruned.model, pruned.adapter, ids, SOLVERS["sparsegpt"], sp, fit=FitSpec("dense"))
    prune_model(plain.model, plain.adapter, ids, SOLVERS["sparsegpt"], sp)
    n0 = len(pruned.adapter.prunable(pruned.adapter.blocks(pruned.model)[0]))
    assert [r["target_shift"] for r in report.layers[:n0]] == [0.0] * n0
    assert all(r["target_shift"] > 0 for r in report.layers[n0:])
    n_blocks = len(pruned.adapter.blocks(pruned.model))
    assert len(seen) == PER_BLOCK * n_blocks  # per block: q/k/v share one, o, gate/up share one, down
    b0 = lambda lm: lm.adapter.blocks(lm.model)[0]  # noqa: E731
    for a, b in zip(b0(pruned).parameters(), b0(plain).parameters()):
        assert torch.equal(a, b)  # block 0: the same solve

    # block 1's q_proj input depends on block 0 and a norm only
    xd, xp = (_block_input(lm, ids, 1, "self_attn.q_proj") for lm in (dense, pruned))
    H_ref, C_ref = 2 / 4 * xp.t() @ xp, 2 / 4 * xd.t() @ xp
    H, C = seen[PER_BLOCK]  # block 1's first correction: q/k/v's input
    torch.testing.assert_close(H.double(), H_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(C.double(), C_ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(C_ref, H_ref, rtol=1e-2)


def test_dense_target_with_true_sequential_fits_each_group_to_the_dense_block(monkeypatch):
    """engine.true_sequential with output_target=dense: o_proj of block 1 gets H from its inputs in the block
    whose q/k/v are already pruned, and C pairs them with its inputs in the dense model (the dense block on
    the dense inputs, though the engine's copy of the block is partly pruned by then)."""
    seen = _spy_corrections(monkeypatch)
    ids = windows(4, 32)
    sp = parse_sparsity(0.5)
    pruned, together = tiny("tiny-llama"), tiny("tiny-llama")
    prune_model(pruned.model, pruned.adapter, ids, SOLVERS["sparsegpt"], sp, engine=EngineSpec(true_sequential=True),
                fit=FitSpec("dense"))
    seq = seen[:]
    seen.clear()
    prune_model(together.model, together.adapter, ids, SOLVERS["sparsegpt"], sp, fit=FitSpec("dense"))
    H, C = seq[PER_BLOCK + 1]  # block 1's o_proj, after its q/k/v
    # block 1's o_proj input in a plain forward: depends on blocks 0-1's q/k/v, not on o_proj
    xp, xd = (_block_input(lm, ids, 1, "self_attn.o_proj") for lm in (pruned, tiny("tiny-llama")))
    torch.testing.assert_close(H.double(), 2 / 4 * xp.t() @ xp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(C.double(), 2 / 4 * xd.t() @ xp, rtol=1e-4, atol=1e-5)
    H1, _ = seen[PER_BLOCK + 1]
    assert not torch.allclose(H1, H, rtol=1e-3)  # one pass through the still-dense block: another input


@pytest.mark.parametrize("model", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["apt-refit-dense", "apt-refit-dense-seq"])
def test_apt_refit_dense_job_runs_on_every_family(tiny_data_root, tmp_path, model, method):
    cfg = compose_cfg(tiny_overrides(model, tiny_data_root, f"method={method}", "sparsity=2:4",
                                     "method.blocksize=16", "calibration.nsamples=4", "calibration.seqlen=32"))
    rec = run_job(cfg, tmp_path)
    assert rec["status"] == "complete" and rec["method"]["label"] == method
    assert rec["method"]["params"].get("true_sequential", False) == method.endswith("-seq")
    assert rec["method"]["params"]["output_target"] == "dense" and rec["sparsity"]["actual"] == pytest.approx(0.5)
    assert rec["method"]["params"]["target_alpha"] == 0.25
    assert any(r.get("target_shift", 0) > 0 for r in rec["layers"])
    # the dense-output error report is engine.dense_error's (it needs G and costs time), not the method's
    assert "mean_dense_rel_error" not in rec["metrics"] and not any("dense_rel_error" in r for r in rec["layers"])


@pytest.mark.parametrize("overrides, match", [
    (["method=wanda", "+method.output_target=dense"], "no parameter"),
    (["method=apt-refit", "+method.output_target=model"], "allowed: pruned | dense"),
    (["method=apt-refit-dense", "method.target_alpha=0"], r"allowed: a number in \(0, 1\]"),
    (["method=apt-refit-dense-seq", "method.true_sequential=1"], "method.true_sequential=1; allowed: true | false"),
])
def test_bad_output_target_settings_are_refused_before_loading(tiny_data_root, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, *overrides)), tmp_path)


def test_the_method_knob_true_sequential_is_the_engine_option():
    """apt-refit-dense-seq's ``true_sequential: true`` prunes exactly as engine.true_sequential=true does, and
    not as the one-pass default."""
    ids, sp = windows(4, 32), parse_sparsity(0.5)
    knob, option, plain = tiny("tiny-llama"), tiny("tiny-llama"), tiny("tiny-llama")
    dense = FitSpec("dense", target_alpha=0.25)
    prune_model(knob.model, knob.adapter, ids, SOLVERS["sparsegpt"], sp,
                fit=FitSpec("dense", target_alpha=0.25, true_sequential=True))
    prune_model(option.model, option.adapter, ids, SOLVERS["sparsegpt"], sp, engine=EngineSpec(true_sequential=True),
                fit=dense)
    prune_model(plain.model, plain.adapter, ids, SOLVERS["sparsegpt"], sp, fit=dense)
    for a, b in zip(knob.model.parameters(), option.model.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(knob.model.parameters(), plain.model.parameters()))


def test_dense_output_error_from_the_statistics_equals_the_direct_one():
    g = torch.Generator().manual_seed(3)
    xp = torch.randn(4, 16, 6, generator=g)
    xd = xp + 0.2 * torch.randn(4, 16, 6, generator=g)
    W, W_new = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    st = _stats(xp, xd)
    Xp, Xd = xp.reshape(-1, 6).double(), xd.reshape(-1, 6).double()
    direct = float(((Xd @ W.double().t() - Xp @ W_new.double().t()) ** 2).sum() / ((Xd @ W.double().t()) ** 2).sum())
    assert dense_output_error(W, W_new, st.H, st.C, st.G) == pytest.approx(direct, rel=1e-4)
    same = _stats(xp, xp.clone())
    assert dense_output_error(W, W, same.H, same.C, same.G) == pytest.approx(0.0, abs=1e-6)


def test_dense_error_diagnostic_reports_every_layer_and_changes_no_weight():
    """engine.dense_error: with the usual target, every layer's row gets its error against the dense model's
    own layer output; the pruned weights are bit for bit those of the run without it. In block 0 both inputs
    are the dense model's, so that error is the usual layer error."""
    ids = windows(4, 32)
    sp = parse_sparsity(0.5)
    plain, measured = tiny("tiny-llama"), tiny("tiny-llama")
    base = prune_model(plain.model, plain.adapter, ids, SOLVERS["sparsegpt"], sp)
    report = prune_model(measured.model, measured.adapter, ids, SOLVERS["sparsegpt"], sp, engine=EngineSpec(dense_error=True))
    for a, b in zip(plain.model.parameters(), measured.model.parameters()):
        assert torch.equal(a, b)
    assert [r["rel_error"] for r in report.layers] == [r["rel_error"] for r in base.layers]
    n0 = len(measured.adapter.prunable(measured.adapter.blocks(measured.model)[0]))
    for row in report.layers[:n0]:
        assert row["dense_rel_error"] == pytest.approx(row["rel_error"], rel=1e-3)
    later = [r["dense_rel_error"] for r in report.layers[n0:]]
    assert all(0 < e < 1 for e in later) and "target_shift" not in report.layers[0]
    # an error against the dense output includes what earlier layers left: above the layer's own, on average
    assert sum(later) > sum(r["rel_error"] for r in report.layers[n0:])
    seq, seq_measured = tiny("tiny-llama"), tiny("tiny-llama")  # with true_sequential too
    prune_model(seq.model, seq.adapter, ids, SOLVERS["sparsegpt"], sp, engine=EngineSpec(true_sequential=True))
    report = prune_model(seq_measured.model, seq_measured.adapter, ids, SOLVERS["sparsegpt"], sp,
                         engine=EngineSpec(dense_error=True, true_sequential=True))
    for a, b in zip(seq.model.parameters(), seq_measured.model.parameters()):
        assert torch.equal(a, b)
    assert all(0 < r["dense_rel_error"] < 1 for r in report.layers[n0:])


@pytest.mark.parametrize("model", TINY_FAMILIES)
def test_one_dense_pass_per_block_gives_the_statistics_of_one_per_group(model, monkeypatch):
    """engine.dense_inputs=stored (one dense pass per block, each linear's dense input kept until its group is
    solved) hands every solver the very statistics (H, C, G) of the per-group dense passes (recompute), and
    prunes to the same weights, bit for bit (no tolerance: the same products in the same order); without
    engine.dense_error no G is accumulated, and H and C are the same again."""
    seen = {}

    def recording(mode):
        def to_target(layer, stats, percdamp, alpha, cache, **kw):
            if cache.get("stats") is not stats:  # the first linear reading this input: C before it is given up
                seen.setdefault(mode, []).append(tuple(None if t is None else t.clone()
                                                       for t in (stats.H, stats.C, stats.G)))
            return original(layer, stats, percdamp, alpha, cache, **kw)
        return to_target

    original = engine._to_dense_target
    ids, sp = windows(4, 32), parse_sparsity(0.5)
    fit = FitSpec("dense", target_alpha=0.25, true_sequential=True)
    runs = {}
    for mode, report in (("recompute", True), ("stored", True), ("lean", False)):
        monkeypatch.setattr(engine, "_to_dense_target", recording(mode))
        run = runs[mode] = tiny(model)
        spec = EngineSpec(dense_inputs="stored" if mode == "lean" else mode, dense_error=report)
        rows = prune_model(run.model, run.adapter, ids, SOLVERS["sparsegpt"], sp, engine=spec, fit=fit).layers
        assert all(("dense_rel_error" in r) == report for r in rows)
    assert len(seen["stored"]) == len(seen["recompute"]) == len(seen["lean"]) > 0
    for a, b, lean in zip(seen["recompute"], seen["stored"], seen["lean"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert torch.equal(lean[0], a[0]) and torch.equal(lean[1], a[1]) and lean[2] is None
    for other in ("stored", "lean"):
        for x, y in zip(runs["recompute"].model.parameters(), runs[other].model.parameters()):
            assert torch.equal(x, y)


def test_dense_error_job_records_its_mean_and_keeps_old_hashes(tiny_data_root, tmp_path):
    from omegaconf import OmegaConf

    from pruning.results import config_hash
    over = tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "calibration.nsamples=4",
                          "calibration.seqlen=32")
    cfg = compose_cfg([*over, "engine.dense_error=true"])
    rec = run_job(cfg, tmp_path)
    assert rec["status"] == "complete" and all(0 < r["dense_rel_error"] < 1 for r in rec["layers"])
    assert rec["metrics"]["mean_dense_rel_error"] == pytest.approx(
        sum(r["dense_rel_error"] for r in rec["layers"]) / len(rec["layers"]))
    off = OmegaConf.to_container(compose_cfg(over), resolve=True)
    assert off["engine"]["dense_error"] is False
    assert off["engine"]["dense_inputs"] == "stored"  # the default: the statistics of the records before the key
    without_key = {**off, "engine": {k: v for k, v in off["engine"].items() if k not in ("dense_error", "dense_inputs")}}
    assert config_hash(off) == config_hash(without_key)
    recompute = {**off, "engine": {**off["engine"], "dense_inputs": "recompute"}}
    assert config_hash(recompute) != config_hash(off)
    assert config_hash(OmegaConf.to_container(cfg, resolve=True)) != config_hash(off)


def test_the_correction_leaves_its_inputs_alone_in_any_dtype():
    """The correction factorises H + λI in place: on its own float64 copy, never on the caller's H."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    H, C = x.t() @ x, x.t() @ (x + 0.1 * torch.randn(40, 6, generator=g, dtype=torch.float64))
    before = H.clone(), C.clone()
    corr = dense_target_correction(H, C, 0.01)
    assert torch.equal(H, before[0]) and torch.equal(C, before[1])
    lam = 0.01 * float(torch.diagonal(H).mean())
    torch.testing.assert_close(corr.chol @ corr.chol.t(), H + lam * torch.eye(6, dtype=torch.float64))

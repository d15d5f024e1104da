"""Solvers on random matrices: identical to the reference transcriptions; patterns; error ordering."""

import pytest
import torch

from pruning.solvers import SOLVERS
from pruning.solvers.magnitude import magnitude
from pruning.solvers.sparsegpt import sparsegpt
from pruning.solvers.wanda import wanda
from pruning.sparsity import parse_sparsity
from pruning.stats import LayerStats
from tests.reference_impls import ref_hessian, ref_magnitude, ref_scaler_row, ref_sparsegpt, ref_wanda


def correlated_batches(columns=64, seqs=6, tokens=40, seed=0, outlier=8.0):
    """X = A · Z with one outlier feature: the correlated inputs where reconstruction matters."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(columns, columns, generator=g) / columns ** 0.5 + torch.eye(columns)
    scale = torch.ones(columns)
    scale[3] = outlier
    return [((torch.randn(tokens, columns, generator=g) @ A.t()) * scale).unsqueeze(0) for _ in range(seqs)]


def stats_for(batches, columns):
    s = LayerStats(columns)
    for b in batches:
        s.add_batch(b)
    return s


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    W = torch.randn(48, 64)
    batches = correlated_batches()
    return W, batches, stats_for(batches, 64)


def test_stats_match_reference_accumulators(layer):
    W, batches, s = layer
    torch.testing.assert_close(s.H, ref_hessian(batches, 64))
    torch.testing.assert_close(s.sq_norms, ref_scaler_row(batches, 64))


@pytest.mark.parametrize("spec", [0.3, 0.5, 0.8, "2:4", "4:8"])
def test_magnitude_matches_reference(layer, spec):
    W, _, _ = layer
    sp = parse_sparsity(spec)
    ref_w, ref_mask = ref_magnitude(W, sp.ratio, sp.n or 0, sp.m or 0)
    res = magnitude(W, sp)
    assert torch.equal(res.mask, ref_mask) and torch.equal(res.weight, ref_w)


@pytest.mark.parametrize("spec", [0.3, 0.5, 0.8, "2:4", "4:8"])
def test_wanda_matches_reference(layer, spec):
    W, _, s = layer
    sp = parse_sparsity(spec)
    ref_w, ref_mask = ref_wanda(W, s.sq_norms, sp.ratio, sp.n or 0, sp.m or 0)
    res = wanda(W, sp, sq_norms=s.sq_norms)
    assert torch.equal(res.mask, ref_mask) and torch.equal(res.weight, ref_w)
    if sp.kind == "unstructured":  # exact per-row sparsity
        assert (res.mask.sum(1) == int(64 * sp.ratio)).all()


@pytest.mark.parametrize("spec, blocksize", [(0.5, 128), (0.5, 16), (0.7, 32), ("2:4", 128), ("4:8", 16)])
def test_sparsegpt_matches_reference(layer, spec, blocksize):
    W, _, s = layer
    sp = parse_sparsity(spec)
    ref_w, ref_mask = ref_sparsegpt(W, s.H, sp.ratio, sp.n or 0, sp.m or 0, blocksize=blocksize)
    res = sparsegpt(W, sp, H=s.H, blocksize=blocksize)
    assert torch.equal(res.mask, ref_mask)
    torch.testing.assert_close(res.weight, ref_w, rtol=1e-5, atol=1e-6)
    assert (res.weight[res.mask] == 0).all()


def test_sparsegpt_block_count_is_the_references(layer):
    """Per block of columns, int(numel · s) + 1 weights are pruned (the reference's `<= thresh`)."""
    W, _, s = layer
    res = sparsegpt(W, parse_sparsity(0.5), H=s.H, blocksize=16)
    for i in range(0, 64, 16):
        assert int(res.mask[:, i:i + 16].sum()) == int(48 * 16 * 0.5) + 1


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4"])
def test_nm_patterns_are_valid(layer, name, spec):
    W, _, s = layer
    sp = parse_sparsity(spec)
    res = SOLVERS[name].fn(W, sp, H=s.H, sq_norms=s.sq_norms)
    groups = res.mask.view(48, 64 // sp.m, sp.m).sum(-1)
    assert (groups == sp.n).all()
    assert (res.weight.view(48, -1, sp.m) == 0).sum(-1).ge(sp.n).all()


@pytest.mark.parametrize("spec", [0.5, "2:4"])
def test_error_ordering_on_correlated_inputs(layer, spec):
    W, _, s = layer
    sp = parse_sparsity(spec)
    errs = {n: SOLVERS[n].fn(W, sp, H=s.H, sq_norms=s.sq_norms).error for n in ("sparsegpt", "wanda", "magnitude")}
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def test_error_is_relative_reconstruction_error(layer):
    W, batches, s = layer
    res = wanda(W, parse_sparsity(0.5), sq_norms=s.sq_norms, H=s.H)
    X = torch.cat([b.reshape(-1, 64) for b in batches]).double()
    direct = ((X @ (W - res.weight).double().t()) ** 2).sum() / ((X @ W.double().t()) ** 2).sum()
    assert res.error == pytest.approx(float(direct), rel=1e-6)


def test_cholesky_failure_escalates_damping_then_falls_back():
    torch.manual_seed(0)
    W = torch.randn(8, 4)
    H = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.05]))  # indefinite: 1% damping is not enough, 10% is
    res = sparsegpt(W, parse_sparsity(0.5), H=H, blocksize=4)
    assert res.info["damp_retries"] == 1 and res.info["percdamp_used"] == pytest.approx(0.1)
    assert torch.isfinite(res.weight).all()
    res = sparsegpt(W, parse_sparsity(0.5), H=-torch.eye(4), blocksize=4)  # never PD: identity Hinv
    assert res.info["hinv_fallback"] and torch.isfinite(res.weight).all()
    assert int(res.mask.sum()) == 8 * 4 // 2 + 1


def test_dead_columns_give_zero_weights_and_no_nan(layer):
    W, batches, _ = layer
    dead = [torch.cat([b[..., :60], torch.zeros(*b.shape[:-1], 4)], -1) for b in batches]
    s = stats_for(dead, 64)
    res = sparsegpt(W, parse_sparsity(0.5), H=s.H)
    assert res.info["dead_columns"] == 4 and (res.weight[:, 60:] == 0).all() and torch.isfinite(res.weight).all()


def test_bad_blocksize_for_nm(layer):
    from pruning.errors import ConfigError
    W, _, s = layer
    with pytest.raises(ConfigError, match="multiple of M=8"):
        sparsegpt(W, parse_sparsity("4:8"), H=s.H, blocksize=12)
    with pytest.raises(ConfigError, match="does not divide the input width 64"):
        magnitude(W, parse_sparsity("2:6"))


@pytest.mark.parametrize("pattern", ["0.5", "2:4", "0.9"])
def test_the_reported_layer_error_matches_a_float64_computation(pattern):
    """relative_error multiplies in float32 and sums in float64: on SparseGPT's own update (which
    minimises the trace, so rounding would show first) it stays within 1e-6 of float64."""
    from pruning.solvers.common import relative_error

    g = torch.Generator().manual_seed(0)
    cols, n = 256, 512
    X = (torch.randn(cols, cols, generator=g) / cols**0.5 + 0.05 * torch.eye(cols)) @ torch.randn(cols, n, generator=g)
    X[:3] *= 30  # outlier features
    H = X @ X.T / n
    w = torch.randn(128, cols, generator=g)
    out = SOLVERS["sparsegpt"].fn(w, parse_sparsity(pattern), H=H.clone()).weight
    w64, d64 = w.double(), (w - out).double()
    exact = float(((d64 @ H.double()) * d64).sum() / ((w64 @ H.double()) * w64).sum())
    assert relative_error(w, out, H) == pytest.approx(exact, rel=1e-6)
    assert relative_error(w, out, H) < relative_error(w, w.masked_fill(out == 0, 0), H)  # the update helps


def test_the_linear_time_threshold_is_the_sorted_value_ties_included():
    from pruning.solvers.common import sorted_value

    g = torch.Generator().manual_seed(1)
    score = torch.randint(0, 7, (33, 17), generator=g).float()  # heavy ties
    flat = torch.sort(score.flatten())[0]
    for index in (0, 1, 100, 280, score.numel() - 1):
        assert sorted_value(score, index) == flat[index]
    with pytest.raises(IndexError, match="sorted position 561 of 561"):
        sorted_value(score, score.numel())

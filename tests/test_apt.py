"""APT on random correlated inputs: every property of docs/methods.md, "APT: properties the tests check", fixed seeds, float64 math."""

import itertools
import math

import numpy as np
import pytest
import torch

from pruning.errors import ConfigError
from pruning.solvers.apt import (apt, apt_update, exact_reconstruction, joint_removal, masked_solve,
                                 nm_best_subsets, removal_coefficients, subset_inverses)
from pruning.solvers.common import inverse_hessian_factor, relative_error
from pruning.solvers.sparsegpt import sparsegpt
from pruning.sparsity import parse_sparsity
from tests.test_solvers import correlated_batches, stats_for

D = 64


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    W = torch.randn(48, D)
    return W, stats_for(correlated_batches(columns=D), D).H


@pytest.fixture(scope="module")
def hessian64(layer):
    """The damped float64 Hessian (1% of mean diag), its inverse and a dense row."""
    _, H = layer
    H = H.double()
    Hd = H + 0.01 * H.diag().mean() * torch.eye(D, dtype=torch.float64)
    return Hd, torch.linalg.inv(Hd)


def masked_ls(w, Hd, Q):
    """Direct masked least squares of F2: minimise (w'−w) Hd (w'−w)ᵀ with w'_Q = 0."""
    K = [j for j in range(len(w)) if j not in set(Q)]
    out = torch.zeros_like(w)
    out[K] = w[K] + torch.linalg.solve(Hd[K][:, K], Hd[K][:, Q] @ w[Q])
    return out


def loss(dw, Hd):
    return 0.5 * float(dw @ Hd @ dw)


# --------------------------------------------------------------------------- closed form (properties P1-P4)
@pytest.mark.parametrize("seed, k", [(0, 1), (1, 5), (2, 20), (3, 40)])
def test_closed_form_zeros_equals_least_squares_and_its_loss(hessian64, seed, k):
    Hd, P = hessian64
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    Q = sorted(torch.randperm(D, generator=g)[:k].tolist())
    mask = torch.zeros(1, D, dtype=torch.bool)
    mask[0, Q] = True
    delta, L = joint_removal(w.unsqueeze(0), P, mask)
    new = (w + delta[0])
    assert float(new[Q].abs().max()) <= 1e-12 * float(w.abs().max())  # P1, before any explicit zeroing
    ref = masked_ls(w, Hd, Q)
    assert float((new - ref).norm() / ref.norm()) < 1e-6  # P2
    assert float(L[0]) == pytest.approx(loss(delta[0], Hd), rel=1e-8)


def test_closed_form_equals_sequential_obs_in_any_order(hessian64):
    """P3: removing Q one weight at a time with full inverse downdates gives the same weights."""
    Hd, P = hessian64
    g = torch.Generator().manual_seed(7)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    Q = torch.randperm(D, generator=g)[:12].tolist()
    mask = torch.zeros(1, D, dtype=torch.bool)
    mask[0, Q] = True
    joint = w + joint_removal(w.unsqueeze(0), P, mask)[0][0]
    for order_seed in range(3):
        order = [Q[i] for i in torch.randperm(len(Q), generator=torch.Generator().manual_seed(order_seed))]
        cur, Pi = w.clone(), P.clone()
        for q in order:
            cur = cur - cur[q] / Pi[q, q] * Pi[q]
            Pi = Pi - torch.outer(Pi[:, q], Pi[q]) / Pi[q, q]
        torch.testing.assert_close(cur, joint, rtol=1e-8, atol=1e-10)


def test_single_removal_is_obs(hessian64):
    """P4: with k = 1 the update is δw = −(w_q / P_qq) P_q,: and the loss w_q² / (2 P_qq)."""
    _, P = hessian64
    w = torch.randn(1, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = torch.zeros(1, D, dtype=torch.bool)
    mask[0, 11] = True
    delta, L = joint_removal(w, P, mask)
    torch.testing.assert_close(delta[0], -(w[0, 11] / P[11, 11]) * P[11], rtol=1e-10, atol=1e-12)
    assert float(L[0]) == pytest.approx(float(w[0, 11] ** 2 / (2 * P[11, 11])), rel=1e-10)


def test_trailing_inverse_identity(layer):
    """P5: U_{i:,i:}ᵀ U_{i:,i:} = (H_{i:,i:})⁻¹, and G = its first B rows = U_bbᵀ U_b,:."""
    _, H = layer
    H = H.double() + 0.01 * H.double().diag().mean() * torch.eye(D, dtype=torch.float64)
    U, info = inverse_hessian_factor(H, percdamp=0.0)
    assert info["damp_retries"] == 0
    for i, B in ((0, 16), (16, 16), (40, 8), (60, 4)):
        trailing = torch.linalg.inv(H[i:, i:])
        torch.testing.assert_close(U[i:, i:].t() @ U[i:, i:], trailing, rtol=1e-8, atol=1e-10)
        G = U[i:i + B, i:i + B].t() @ U[i:i + B, i:]
        torch.testing.assert_close(G, trailing[:B], rtol=1e-8, atol=1e-10)


def test_padded_solve_is_the_restricted_solve(hessian64):
    """P6: rows with different set sizes, solved in one padded batch, equal their own solves."""
    Hd, _ = hessian64
    g = torch.Generator().manual_seed(5)
    sel = torch.rand(9, D, generator=g) < torch.linspace(0.05, 0.95, 9).unsqueeze(1)
    sel[0] = False  # an empty set gives zeros
    rhs = torch.randn(9, D, generator=g, dtype=torch.float64)
    z = masked_solve(Hd, sel, rhs)
    assert (z[~sel] == 0).all() and (z[0] == 0).all()
    for r in range(1, 9):
        S = sel[r].nonzero().flatten()
        torch.testing.assert_close(z[r, S], torch.linalg.solve(Hd[S][:, S], rhs[r, S]), rtol=1e-9, atol=1e-11)


def test_complement_form_equals_direct_solve(hessian64):
    """Above 50% sparsity the removal coefficients come from |K|-sized systems; same result."""
    _, P = hessian64
    U = torch.linalg.cholesky(P, upper=True)
    g = torch.Generator().manual_seed(9)
    mask = torch.rand(20, D, generator=g) < 0.8
    w = torch.randn(20, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(removal_coefficients(P, U, mask, w), masked_solve(P, mask, w), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- the solver (properties P7-P11)
def errors_same_mask(W, H, mask, blocksize):
    no_update = W.masked_fill(mask, 0)
    return {"exact": apt_update(W, mask, H=H, variant="exact", blocksize=blocksize).error,
            "apt": apt_update(W, mask, H=H, blocksize=blocksize).error,
            "none": relative_error(W, no_update, H)}


@pytest.mark.parametrize("spec", [0.5, 0.7, "2:4", "4:8"])
@pytest.mark.parametrize("blocksize", [16, 32])
def test_error_ordering_with_the_same_mask(layer, spec, blocksize):
    """P7: exact ≤ APT-block ≤ SparseGPT ≤ no update, all with SparseGPT's own mask."""
    W, H = layer
    sgpt = sparsegpt(W, parse_sparsity(spec), H=H, blocksize=blocksize)
    e = errors_same_mask(W, H, sgpt.mask, blocksize)
    assert e["exact"] <= e["apt"] * (1 + 1e-9) and e["apt"] < sgpt.error < e["none"], (e, sgpt.error)


@pytest.mark.parametrize("spec", [0.5, 0.6, 0.7, 0.8, "2:4", "4:8"])
def test_apt_beats_sparsegpt_and_exact_beats_apt(layer, spec):
    W, H = layer
    sp = parse_sparsity(spec)
    errs = {v: apt(W, sp, H=H, blocksize=16, variant=v).error for v in ("block", "exact")}
    assert errs["exact"] <= errs["block"] < sparsegpt(W, sp, H=H, blocksize=16).error


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "3:8", "1:2"])
@pytest.mark.parametrize("blocksize", [8, 16, 64])
@pytest.mark.parametrize("nm_update", ["group", "block"])
def test_nm_pattern_is_exact(layer, spec, blocksize, nm_update):
    """P8: every group of M inputs of every row has exactly N zeros; total sparsity N/M."""
    W, H = layer
    sp = parse_sparsity(spec)
    for variant in ("block", "exact"):
        res = apt(W, sp, H=H, blocksize=blocksize, variant=variant, nm_update=nm_update)
        assert (res.mask.view(48, -1, sp.m).sum(-1) == sp.n).all()
        assert (res.weight[res.mask] == 0).all() and torch.isfinite(res.weight).all()
        assert float(res.mask.float().mean()) == pytest.approx(sp.n / sp.m)


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("blocksize", [16, 64])
def test_nm_group_update_is_the_per_group_algorithm(layer, spec, blocksize):
    """``nm_update=group`` batches docs/methods.md (APT) with B = M lazily (in-block updates at once,
    the columns right of the block once per block): same masks and weights as blocks of M columns."""
    W, H = layer
    sp = parse_sparsity(spec)
    lazy = apt(W, sp, H=H, blocksize=blocksize, nm_update="group")
    per_group = apt(W, sp, H=H, blocksize=sp.m, nm_update="block")
    assert torch.equal(lazy.mask, per_group.mask)
    torch.testing.assert_close(lazy.weight, per_group.weight, rtol=1e-5, atol=1e-6)
    assert lazy.error == pytest.approx(per_group.error, rel=1e-6)


def test_nm_block_update_is_the_joint_removal_of_the_block_mask(layer, hessian64):
    """``nm_update=block`` with one block spanning the row: the final weights are the joint closed-form
    removal of the whole mask from the dense row, i.e. the exact masked least squares (the closed form)."""
    W, H = layer
    Hd, _ = hessian64
    res = apt(W, parse_sparsity("2:4"), H=H, blocksize=D, nm_update="block")
    for r in (0, 7, 31):
        Q = res.mask[r].nonzero().flatten().tolist()
        torch.testing.assert_close(res.weight[r].double(), masked_ls(W[r].double(), Hd, Q), rtol=1e-4, atol=1e-5)


def test_nm_choice_is_the_brute_force_optimum(hessian64):
    """P9: the chosen set minimises ½ w_Q [G_QQ]⁻¹ w_Qᵀ over all C(M, N) sets, row by row."""
    _, P = hessian64
    g = torch.Generator().manual_seed(11)
    for (n, m), start in itertools.product(((2, 4), (4, 8), (1, 4), (3, 8)), (0, 24)):
        G = P[start:start + m, start:start + m]
        w = torch.randn(30, m, generator=g, dtype=torch.float64)
        mask, z = nm_best_subsets(w, subset_inverses(G, n), n)
        for r in range(30):
            losses = {Q: 0.5 * float(w[r, list(Q)] @ torch.linalg.solve(G[list(Q)][:, list(Q)], w[r, list(Q)]))
                      for Q in itertools.combinations(range(m), n)}
            best = min(losses, key=losses.get)
            assert mask[r].nonzero().flatten().tolist() == list(best)
            b = list(best)
            torch.testing.assert_close(z[r, b], torch.linalg.solve(G[b][:, b], w[r, b]))


def test_nm_first_group_of_the_solver_is_the_brute_force_optimum(layer, hessian64):
    """With blocksize = M the solver's first group is chosen against G = (H_d⁻¹)[:M, :M]."""
    W, H = layer
    _, P = hessian64
    res = apt(W, parse_sparsity("2:4"), H=H, blocksize=4)
    G = P[:4, :4]
    for r in range(48):
        w = W[r, :4].double()
        losses = {Q: float(w[list(Q)] @ torch.linalg.solve(G[list(Q)][:, list(Q)], w[list(Q)]))
                  for Q in itertools.combinations(range(4), 2)}
        assert res.mask[r, :4].nonzero().flatten().tolist() == list(min(losses, key=losses.get))


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("granularity", ["block", "row"])
def test_unstructured_target_is_exact(layer, ratio, granularity):
    """P10: round(s · numel) zeros per layer (block granularity) or round(s · cols) per row."""
    W, H = layer
    res = apt(W, parse_sparsity(ratio), H=H, blocksize=24, granularity=granularity)
    assert (res.weight[res.mask] == 0).all() and torch.isfinite(res.weight).all()
    if granularity == "row":
        assert (res.mask.sum(1) == math.floor(ratio * D + 0.5)).all()
    else:
        assert int(res.mask.sum()) == math.floor(ratio * W.numel() + 0.5)
    assert int((res.weight == 0).sum()) == int(res.mask.sum())  # no kept weight is zero by accident


def test_ties_are_broken_deterministically():
    W = torch.ones(8, 16)  # every score ties
    H = torch.eye(16)
    a = apt(W, parse_sparsity(0.5), H=H, blocksize=16)
    b = apt(W, parse_sparsity(0.5), H=H, blocksize=16)
    assert torch.equal(a.mask, b.mask) and int(a.mask.sum()) == 64
    assert a.mask.view(-1)[:64].all()  # lowest flat index first


def test_scaling_h_changes_nothing(layer):
    """P11: the update and the mask do not depend on the scale of H (damping is relative)."""
    W, H = layer
    for spec in (0.5, "2:4"):
        a = apt(W, parse_sparsity(spec), H=H, blocksize=16)
        b = apt(W, parse_sparsity(spec), H=H * 37.0, blocksize=16)
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
        assert a.error == pytest.approx(b.error, rel=1e-6)


def test_dead_columns_give_zero_weights_and_no_nan(layer):
    W, _ = layer
    dead = [torch.cat([b[..., :60], torch.zeros(*b.shape[:-1], 4)], -1) for b in correlated_batches(columns=D)]
    H = stats_for(dead, D).H
    for spec in (0.5, "4:8"):
        for variant in ("block", "exact"):
            res = apt(W, parse_sparsity(spec), H=H, variant=variant)
            assert res.info["dead_columns"] == 4 and (res.weight[:, 60:] == 0).all()
            assert torch.isfinite(res.weight).all() and res.error is not None and math.isfinite(res.error)


def test_jitter_then_pseudo_inverse_on_singular_systems():
    """A singular G_QQ is solved with jitter; an indefinite one falls back to a pseudo-inverse."""
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    info = {}
    both = torch.ones(1, 2, dtype=torch.bool)
    z = masked_solve(singular, both, torch.tensor([[1.0, 1.0]], dtype=torch.float64), info)
    assert info["jitter_solves"] == 1 and torch.isfinite(z).all()
    torch.testing.assert_close(singular @ z[0], torch.tensor([1.0, 1.0], dtype=torch.float64), rtol=1e-4, atol=1e-4)
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    info = {}
    z = masked_solve(indefinite, both, torch.tensor([[2.0, 3.0]], dtype=torch.float64), info)
    assert info["fallback_solves"] == 1 and torch.allclose(z, torch.tensor([[2.0, -3.0]], dtype=torch.float64))


def test_indefinite_hessian_never_gives_nan():
    W = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    res = apt(W, parse_sparsity(0.5), H=-torch.eye(8), blocksize=4)  # never PD: identity inverse Hessian
    assert res.info["hinv_fallback"] and torch.isfinite(res.weight).all() and int(res.mask.sum()) == 32
    res = apt(W, parse_sparsity(0.5), H=-torch.eye(8), blocksize=4, variant="exact")
    assert torch.isfinite(res.weight).all()


# --------------------------------------------------------------------------- the exact variant
@pytest.mark.parametrize("spec", [0.3, 0.5, 0.8, "2:4"])
def test_exact_variant_equals_numpy_lstsq_on_the_support(layer, spec):
    """variant=exact: each row is the least-squares fit of the dense row's outputs on its support,
    under the damped Hessian (A with AᵀA = H_d stands in for the calibration inputs)."""
    W, H = layer
    res = apt(W, parse_sparsity(spec), H=H, variant="exact", blocksize=16)
    Hd = H.double() + 0.01 * H.double().diag().mean() * torch.eye(D, dtype=torch.float64)
    A = torch.linalg.cholesky(Hd).t().numpy()
    for r in range(0, 48, 7):
        K = (~res.mask[r]).nonzero().flatten().numpy()
        sol, *_ = np.linalg.lstsq(A[:, K], A @ W[r].double().numpy(), rcond=None)
        np.testing.assert_allclose(res.weight[r, K].numpy(), sol, rtol=2e-4, atol=2e-5)


def test_exact_reconstruction_forms_agree(hessian64):
    Hd, P = hessian64
    g = torch.Generator().manual_seed(2)
    W = torch.randn(10, D, generator=g, dtype=torch.float64)
    mask = torch.rand(10, D, generator=g) < 0.4
    a = exact_reconstruction(W, Hd, mask, P)  # pruned sets smaller: closed form
    b = exact_reconstruction(W, Hd, mask, None)  # kept-set solves
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- configuration errors
def test_bad_options_are_clear_errors(layer):
    W, H = layer
    with pytest.raises(ConfigError, match="method.variant='fast'.*allowed: block, exact"):
        apt(W, parse_sparsity(0.5), H=H, variant="fast")
    with pytest.raises(ConfigError, match="method.score='wanda'"):
        apt(W, parse_sparsity(0.5), H=H, score="wanda")
    with pytest.raises(ConfigError, match="method.granularity='column'"):
        apt(W, parse_sparsity(0.5), H=H, granularity="column")
    with pytest.raises(ConfigError, match="method.nm_update='joint'.*allowed: group, block"):
        apt(W, parse_sparsity("2:4"), H=H, nm_update="joint")
    with pytest.raises(ConfigError, match="multiple of M=8"):
        apt(W, parse_sparsity("4:8"), H=H, blocksize=12)
    with pytest.raises(ConfigError, match="max_subsets"):
        apt(W, parse_sparsity("8:16"), H=H, blocksize=16, max_subsets=100)
    with pytest.raises(ConfigError, match="method.refine_iters=-1"):
        apt(W, parse_sparsity(0.5), H=H, refine_iters=-1)
    with pytest.raises(ValueError, match="mask shape"):
        apt_update(W, torch.zeros(3, 3, dtype=torch.bool), H=H)


@pytest.mark.parametrize("spec", [0.5, 0.8, "2:4"])
def test_cg_refinement_only_lowers_the_loss_and_reaches_exact(layer, spec):
    W, H = layer
    sp = parse_sparsity(spec)
    errs = [apt(W, sp, H=H, blocksize=16, refine_iters=k).error for k in (0, 1, 3, 10)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errs, errs[1:])), errs
    exact = apt(W, sp, H=H, blocksize=16, variant="exact")
    refined = apt(W, sp, H=H, blocksize=16, refine_iters=200)
    assert torch.equal(refined.mask, exact.mask)
    torch.testing.assert_close(refined.weight, exact.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_sparsegpt_score_option_is_exact_beats_no_update_and_is_deterministic(layer, ratio):
    """score=sparsegpt (w²/diag(U)², SparseGPT's mask rule) inside APT's joint update."""
    W, H = layer
    sp = parse_sparsity(ratio)
    res = apt(W, sp, H=H, blocksize=24, score="sparsegpt")
    again = apt(W, sp, H=H, blocksize=24, score="sparsegpt")
    assert int(res.mask.sum()) == math.floor(ratio * W.numel() + 0.5)
    assert torch.equal(res.mask, again.mask) and torch.equal(res.weight, again.weight)
    assert res.error < relative_error(W, W.masked_fill(res.mask, 0), H)
    obs = apt(W, sp, H=H, blocksize=24, score="obs")
    assert not torch.equal(res.mask, obs.mask)  # the option changes the mask, not only a label


@pytest.mark.parametrize("dead", [False, True])
def test_flipped_inverse_factor_is_the_reference_factor_up_to_rounding(dead):
    """APT forms the upper Cholesky factor of (H + λI)⁻¹ from one Cholesky of the reversed matrix and one triangular
    inverse (half the arithmetic of Cholesky, inverse, Cholesky): the same factor to float64 rounding, the same
    damping, upper triangular with a positive diagonal; with dead inputs too (H_jj = 1 after prepare_layer)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 48, generator=g, dtype=torch.float64) @ torch.randn(48, 48, generator=g, dtype=torch.float64)
    H = X.t() @ X / 200
    if dead:
        H[:, 5] = H[5, :] = 0
        H[5, 5] = 1
    U_ref, info_ref = inverse_hessian_factor(H, 0.01)
    U, info = inverse_hessian_factor(H, 0.01, flipped=True)
    assert info == info_ref and torch.equal(U, U.triu()) and bool((U.diagonal() > 0).all())
    torch.testing.assert_close(U, U_ref, rtol=1e-9, atol=1e-12 * float(U_ref.abs().max()))
    Hd = H + info["damp"] * torch.eye(48, dtype=torch.float64)
    torch.testing.assert_close(U.t() @ U @ Hd, torch.eye(48, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("flipped", [False, True])
def test_the_factor_works_on_its_own_copies(flipped):
    """The factor is formed from a fresh working copy per damping attempt (no float64 H held beside it): the
    caller's H is untouched, and asking for the float64 factor of a float32 H with dead inputs gives what the
    float64 working copy with H_jj = 1 gives; prepare_layer without a working H returns the same factor."""
    from pruning.solvers.common import prepare_layer
    g = torch.Generator().manual_seed(4)
    X = torch.randn(300, 40, generator=g)
    H = X.t() @ X / 300
    H[:, 7] = H[7, :] = 0
    before = H.clone()
    dead = torch.diag(H).double() == 0
    H64 = H.double()
    H64[dead, dead] = 1
    U_ref, info_ref = inverse_hessian_factor(H64, 0.01, flipped=flipped)
    U, info = inverse_hessian_factor(H, 0.01, flipped=flipped, dtype=torch.float64, dead=dead)
    assert torch.equal(U, U_ref) and info == info_ref and torch.equal(H, before)
    W = torch.randn(6, 40, generator=g)
    kept = prepare_layer(W, H, 0.01, 6, torch.float32, flipped, torch.float64)
    lean = prepare_layer(W, H, 0.01, 6, torch.float32, flipped, torch.float64, keep_h=False)
    assert lean[1] is None and torch.equal(lean[3], U_ref) and torch.equal(kept[3], U_ref)
    assert torch.equal(lean[0], kept[0]) and kept[1][7, 7] == 1 and torch.equal(H, before)


def test_flipped_factor_escalates_damping_like_the_reference():
    """An indefinite H: both forms fail at the asked damping and succeed at the same escalated one."""
    H = torch.diag(torch.tensor([1.0, 1.0, -0.5], dtype=torch.float64))  # mean diag 0.5: needs percdamp > 1
    U_ref, info_ref = inverse_hessian_factor(H, 0.01)
    U, info = inverse_hessian_factor(H, 0.01, flipped=True)
    assert info["damp_retries"] == info_ref["damp_retries"] > 0 and info["percdamp_used"] == info_ref["percdamp_used"]
    torch.testing.assert_close(U, U_ref, rtol=1e-12, atol=1e-12)


def test_the_flipped_factor_is_an_option_checked_by_name():
    """method.factor=flipped runs APT with the flipped factor (a valid pruning at the exact target); an unknown form
    is refused with the allowed ones."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(64, 16, generator=g)
    H, W = X.t() @ X / 64, torch.randn(8, 16, generator=g)
    res = apt(W, parse_sparsity(0.5), H=H, blocksize=8, factor="flipped")
    assert int(res.mask.sum()) == 64 and res.error < 1
    with pytest.raises(ConfigError, match="method.factor='lu'; allowed: reference, flipped"):
        apt(W, parse_sparsity(0.5), H=H, factor="lu")

"""APT: several weights removed at once, with the optimal closed-form update (Zhao et al., arXiv
2410.15567; the math and the block algorithm are in ``docs/methods.md``).

For a row ``w`` and a pruned set ``Q``, with ``P = H⁻¹``, the update that keeps the layer output
closest to the dense one is ``δw = −w_Q [P_QQ]⁻¹ P_Q,:`` with loss ``½ w_Q [P_QQ]⁻¹ w_Qᵀ``; it equals
the exact least-squares reconstruction of the row for that mask (docs/methods.md (APT)).

Block algorithm (docs/methods.md, "APT in detail"), one Cholesky per layer: ``U`` = upper Cholesky factor of the damped ``H⁻¹``.
Columns are processed in blocks; at block ``[i, i+b)`` the exact inverse Hessian of the weights that
are still free is ``G = U[i:i+b, i:i+b]ᵀ U[i:i+b, i:]`` (trailing-inverse identity). The block's mask
is chosen on the current (already compensated) weights, then every row gets the joint update of its
pruned set, applied to the kept weights of the block *and* every column to the right. Columns left
of the block are frozen, so the result lies between SparseGPT and exact reconstruction.

* Unstructured: blocks of ``blocksize`` columns; score ``w²/diag(G)`` (``score=obs``, the exact
  single-removal saliency against the free weights) or SparseGPT's ``w²/diag(U)²``
  (``score=sparsegpt``); the lowest scores over the whole rows × block (``granularity=block``,
  SparseGPT's choice) or per row (``granularity=row``). Counts are allocated cumulatively so the
  layer reaches exactly ``round(s · numel)`` zeros (``round(s · cols)`` per row for ``row``).
* N:M: group by group, the joint loss of all C(M, N) candidate sets of a row is evaluated
  against the free weights' inverse Hessian and the smallest is taken (exact given the frozen
  prefix), followed by that group's joint update of every weight to its right.
  ``nm_update=group`` (default) is docs/methods.md (APT) with B = M, computed with SparseGPT's lazy
  batching: updates inside a block of ``blocksize`` columns at once, the columns right of the
  block once per block (same result as ``blocksize=M``, tested). ``nm_update=block`` then
  re-solves the block's whole mask jointly from the block's start, so kept weights of earlier
  groups absorb the error of later ones too: lower layer error, but one |Q| = N·B/M system per
  row and block (on CPU about 2-3× the solver time; the README's benchmark has the trade-off).
  ``blocksize`` must be a multiple of M.
* ``variant=exact``: the mask of the block algorithm, then every row re-solved from the dense
  weights by exact least squares on its support: the best any fixed-mask solver can reach.
* ``refine_iters=k`` (block variant, default 0): after the block pass, ``k`` steps of batched
  preconditioned conjugate gradients on the same per-row least-squares problems, starting from
  the block solution: the kept weights of frozen columns absorb later errors too, the layer loss
  can only go down, and enough steps reach ``variant=exact`` at one matrix product per step.

Numerics: float64 throughout; damping ``percdamp · mean(diag H)`` with the escalating fallback
shared with SparseGPT; every small system solved by Cholesky, retried with jitter
``ε · mean(diag)`` (ε = 1e-8 … 1e-2) and, if that fails, by a Hermitian pseudo-inverse (minimum-norm
solution); the counts are in ``info``. Deviation from docs/methods.md (APT): the last resort is the
pseudo-inverse rather than SparseGPT's per-column update, which keeps every fallback inside one
batched code path; pruned entries are zeroed explicitly either way.
"""

from __future__ import annotations

import itertools
import logging
import math
from functools import lru_cache

import torch

from pruning.errors import ConfigError
from pruning.solvers.common import (SolverResult, check_pattern, prepare_layer, relative_error, smallest_mask,
                                    working_copy)
from pruning.solvers.refit import refine_cg, swap_search
from pruning.sparsity import Sparsity

log = logging.getLogger(__name__)

VARIANTS = ("block", "exact")
SCORES = ("obs", "sparsegpt")
GRANULARITIES = ("block", "row")
NM_UPDATES = ("group", "block")
DTYPES = ("float64", "float32")
FACTORS = ("reference", "flipped")  # how the inverse-Hessian factor is formed (common.inverse_hessian_factor)
_JITTERS = tuple(10.0 ** e for e in range(-8, -1))
_CHUNK_BYTES = 1 << 27  # padded systems are gathered in chunks of rows of at most this many bytes
_CHUNK_ROWS = 256  # ... and at most this many rows (rows are sorted by set size, so padding stays small)


# ----------------------------------------------------------------------------- small SPD systems
def robust_cholesky(A: torch.Tensor, valid: torch.Tensor | None = None,
                    upper: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batched Cholesky factors of SPD matrices ``A`` (``[..., k, k]``), lower (``A = L Lᵀ``) or upper
    (``A = Uᵀ U``; on CPU about 20% faster for a batch of small matrices).

    A matrix whose factorisation fails is retried with ``ε · mean(diag)`` added to its diagonal
    (only on the ``valid`` positions when given), ε from 1e-8 to 1e-2. Returns the factors, a bool
    ``ok`` per matrix (False: still failed, the caller falls back) and the number of jittered ones.
    """
    L, status = torch.linalg.cholesky_ex(A, upper=upper)
    ok = status == 0
    jittered = 0
    if bool(ok.all()):
        return L, ok, 0
    bad = (~ok).nonzero(as_tuple=True)
    Ab = A[bad]
    vb = torch.ones(Ab.shape[:-1], dtype=torch.bool, device=A.device) if valid is None else valid[bad]
    diag = torch.diagonal(Ab, dim1=-2, dim2=-1)
    scale = (diag * vb).sum(-1) / vb.sum(-1).clamp(min=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    pending = torch.ones(len(Ab), dtype=torch.bool, device=A.device)
    Lb = L[bad].clone()
    for eps in _JITTERS:
        idx = pending.nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            break
        Aj = Ab[idx] + torch.diag_embed(eps * scale[idx, None] * vb[idx].to(A.dtype))
        Lj, sj = torch.linalg.cholesky_ex(Aj, upper=upper)
        good = sj == 0
        Lb[idx[good]] = Lj[good]
        pending[idx[good]] = False
        jittered += int(good.sum())
    L = L.clone()
    L[bad] = Lb
    ok = ok.clone()
    ok[bad] = ~pending
    return L, ok, jittered


def _cholesky_apply(U: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(Uᵀ U)⁻¹ b`` for a batch of upper factors, as two triangular solves (on CPU about half the
    time of ``torch.cholesky_solve``, which copies its operands first)."""
    y = torch.linalg.solve_triangular(U.mT, b.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(U, y, upper=True).squeeze(-1)


def _spd_solve(A: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, info: dict) -> torch.Tensor:
    """Solve ``A z = b`` for a batch (``A``: ``[c, k, k]``, ``b``: ``[c, k]``), robustly."""
    U, ok, jittered = robust_cholesky(A, valid, upper=True)
    if jittered:
        info["jitter_solves"] = info.get("jitter_solves", 0) + jittered
    if bool(ok.all()):
        return _cholesky_apply(U, b)
    z = torch.zeros_like(b)
    z[ok] = _cholesky_apply(U[ok], b[ok])
    bad = ~ok
    info["fallback_solves"] = info.get("fallback_solves", 0) + int(bad.sum())
    pinv = torch.linalg.pinv(torch.nan_to_num(A[bad]), hermitian=True)
    zb = (pinv @ b[bad].unsqueeze(-1)).squeeze(-1)
    z[bad] = torch.where(torch.isfinite(zb), zb, torch.zeros_like(zb))
    return z


def masked_solve(A: torch.Tensor, sel: torch.Tensor, rhs: torch.Tensor, info: dict | None = None) -> torch.Tensor:
    """For every row r: solve ``A[S_r, S_r] z = rhs[r, S_r]`` on the selected set ``S_r`` of that row,
    zeros elsewhere (docs/methods.md (APT)).

    ``A``: ``[n, n]`` symmetric positive definite; ``sel``: ``[rows, n]`` bool; ``rhs``: ``[rows, n]``.
    Rows are taken in order of their set size and solved in batched chunks; inside a chunk the
    smaller sets are padded to the chunk's largest size with identity rows/columns (padding slot
    ``p`` points at column ``n + p`` of ``A`` bordered by an identity, so one row and one column gather
    builds the padded systems) and zero right-hand sides, which leaves their solution unchanged.
    """
    info = {} if info is None else info
    rows, n = sel.shape
    counts = sel.sum(1)
    kmax = int(counts.max()) if rows else 0
    if kmax == 0:
        return torch.zeros_like(rhs)
    Ab = torch.zeros(n + kmax, n + kmax, dtype=A.dtype, device=A.device)  # A bordered by an identity
    Ab[:n, :n] = A
    Ab.diagonal()[n:] = 1.0
    rhs_b = torch.cat([rhs, rhs.new_zeros(rows, kmax)], dim=1)
    out = torch.zeros_like(rhs_b)
    by_count = torch.argsort(counts, stable=True)
    order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)  # each row's selected columns first
    step = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // (kmax * (n + kmax) * A.element_size())))
    slots = torch.arange(kmax, device=sel.device)
    for r0 in range(0, rows, step):
        r = by_count[r0:r0 + step]
        cnt = counts[r]
        k = int(cnt[-1])
        if k == 0:
            continue
        v = slots[:k].unsqueeze(0) < cnt.unsqueeze(1)
        idx = torch.where(v, order[r, :k], n + slots[:k])
        # rows of the bordered A, then their columns: about 4x faster on CPU than one 2-D advanced index
        Ag = Ab.index_select(0, idx.flatten()).view(len(r), k, -1).gather(2, idx.unsqueeze(1).expand(-1, k, -1))
        z = _spd_solve(Ag, rhs_b[r].gather(1, idx), v, info)
        out[r.unsqueeze(1), idx] = z
    return out[:, :n]


def joint_removal(w: torch.Tensor, G: torch.Tensor, mask: torch.Tensor, info: dict | None = None):
    """The multiple-removal closed form (docs/methods.md (APT)) for every row at once.

    ``w``: ``[rows, b]`` current weights of the ``b`` columns that ``G``'s rows refer to;
    ``G``: ``[b, n]`` rows of the inverse Hessian of the free weights (``G[:, :b]`` SPD; ``G = P``
    for a whole row); ``mask``: ``[rows, b]``, True on each row's pruned set ``Q_r``.
    Returns ``(δ, loss)``: ``δ = −w_Q [G_QQ]⁻¹ G_Q,:`` (``[rows, n]``) and ``½ w_Q [G_QQ]⁻¹ w_Qᵀ`` per row.
    """
    z = masked_solve(G[:, :w.shape[1]], mask, w, info)
    return -(z @ G), 0.5 * (z * w).sum(1)


def removal_coefficients(G: torch.Tensor, U: torch.Tensor, mask: torch.Tensor, w: torch.Tensor,
                         info: dict | None = None) -> torch.Tensor:
    """``z = w_Q [G_QQ]⁻¹`` per row (zeros off ``Q``), for ``G = UᵀU`` SPD, through the smaller system.

    Where the pruned sets are the larger side (sparsity above 50%), the Schur complement identity
    ``[G_QQ]⁻¹ = Hb_QQ − Hb_QK [Hb_KK]⁻¹ Hb_KQ`` with ``Hb = G⁻¹`` turns the |Q|-sized solves into
    |K|-sized ones: ``t = w_Q Hb``, ``y = t_K [Hb_KK]⁻¹``, ``z = (t − y Hb)_Q``.
    """
    if int(mask.sum(1).max()) <= int((~mask).sum(1).max()):
        return masked_solve(G, mask, w, info)
    Hb = torch.cholesky_inverse(U, upper=True)
    t = (w * mask) @ Hb
    y = masked_solve(Hb, ~mask, t, info)
    return (t - y @ Hb) * mask


# ----------------------------------------------------------------------------- mask selection
@lru_cache(maxsize=32)
def _subsets(m: int, n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.combinations(range(m), n)), dtype=torch.long)


def subset_inverses(G: torch.Tensor, n: int, info: dict | None = None) -> torch.Tensor:
    """``[G_QQ]⁻¹`` for every set ``Q`` of ``n`` out of ``M`` indices: ``G`` is ``[..., M, M]`` SPD,
    the result ``[..., C(M, n), n, n]`` (sets in ``itertools.combinations`` order)."""
    info = {} if info is None else info
    subsets = _subsets(G.shape[-1], n).to(G.device)
    Gq = G[..., subsets.unsqueeze(2), subsets.unsqueeze(1)]
    L, ok, jittered = robust_cholesky(Gq)
    if jittered:
        info["jitter_solves"] = info.get("jitter_solves", 0) + jittered
    if bool(ok.all()):
        return torch.cholesky_inverse(L)
    Ginv = torch.empty_like(Gq)
    Ginv[ok] = torch.cholesky_inverse(L[ok])
    info["fallback_solves"] = info.get("fallback_solves", 0) + int((~ok).sum())
    Ginv[~ok] = torch.linalg.pinv(torch.nan_to_num(Gq[~ok]), hermitian=True)
    return Ginv


def nm_best_subsets(w: torch.Tensor, Ginv: torch.Tensor, n: int):
    """Per row of ``w`` (``[rows, M]``), the set of ``n`` weights whose joint removal loss
    ``½ w_Q [G_QQ]⁻¹ w_Qᵀ`` is smallest over all C(M, n) candidates (first one on ties);
    ``Ginv = subset_inverses(G, n)``. Returns the mask and the removal coefficients
    ``z = w_Q [G_QQ]⁻¹`` (zeros off the chosen set).

    Each ``[G_QQ]⁻¹`` is embedded in an M × M matrix ``K_Q`` (zeros off ``Q``), so every candidate's
    loss is one product of the rows' outer products ``w ⊗ w`` with the flattened ``K``s.
    """
    rows, m = w.shape
    subsets = _subsets(m, n).to(w.device)
    count = len(subsets)
    K = w.new_zeros(count, m, m)
    c = torch.arange(count, device=w.device)[:, None, None]
    K[c, subsets[:, :, None], subsets[:, None, :]] = Ginv
    loss = 0.5 * (w.unsqueeze(2) * w.unsqueeze(1)).reshape(rows, m * m) @ K.reshape(count, m * m).t()
    best = torch.argmin(loss, dim=1)
    members = torch.zeros(count, m, dtype=torch.bool, device=w.device)
    members[c[:, :, 0], subsets] = True
    z = torch.bmm(w.unsqueeze(1), K[best]).squeeze(1)
    return members[best], z


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _unstructured_mask(score: torch.Tensor, ratio: float, c1: int, c2: int, granularity: str) -> torch.Tensor:
    """Lowest scores of the block of columns ``[c1, c2)``; counts allocated cumulatively so a layer
    ends at exactly ``round(s · numel)`` (``block``) or ``round(s · cols)`` per row (``row``)."""
    rows, b = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    if granularity == "row":
        k = _round(ratio * c2) - _round(ratio * c1)
        if k:
            mask.scatter_(1, torch.sort(score, dim=1, stable=True)[1][:, :k], True)
    else:
        mask = smallest_mask(score, _round(ratio * rows * c2) - _round(ratio * rows * c1))
    return mask


# ----------------------------------------------------------------------------- the solver
def _check(sparsity: Sparsity, blocksize: int, variant: str, score: str, granularity: str,
           max_subsets: int, nm_update: str = "group") -> None:
    if blocksize < 1:
        raise ConfigError(f"method.blocksize={blocksize}: need >= 1")
    for key, value, allowed in (("variant", variant, VARIANTS), ("score", score, SCORES),
                                ("granularity", granularity, GRANULARITIES), ("nm_update", nm_update, NM_UPDATES)):
        if value not in allowed:
            raise ConfigError(f"method.{key}={value!r} is not an APT option; allowed: {', '.join(allowed)}")
    if sparsity.kind == "nm":
        if blocksize % sparsity.m:
            raise ConfigError(f"method.blocksize={blocksize} must be a multiple of M={sparsity.m} for {sparsity} "
                              f"sparsity")
        count = math.comb(sparsity.m, sparsity.n)
        if count > max_subsets:
            raise ConfigError(f"sparsity {sparsity}: C({sparsity.m},{sparsity.n})={count} candidate sets per group "
                              f"exceed method.max_subsets={max_subsets}; raise it or choose a smaller M")


def _nm_groups(W1: torch.Tensor, U1: torch.Tensor, n: int, m: int, info: dict):
    """The groups of one block in turn: each group's set is the best of all C(M, N) against the inverse
    Hessian of the weights still free, then removed by its joint closed-form update, applied at once
    inside the block (so later groups see compensated weights).

    Returns the block mask, the compensated block and ``D`` (``[rows, b]``, group ``g``'s columns
    holding ``z_g U_ggᵀ``) such that the same updates on columns right of the block are one product,
    ``D @ U[i1:i2, i2:]`` (SparseGPT's lazy batching; ``U`` is upper triangular, so group ``g``'s row
    of ``U`` is zero left of the group).
    """
    W1 = W1.clone()
    mask = torch.zeros_like(W1, dtype=torch.bool)
    D = torch.zeros_like(W1)
    starts = range(0, W1.shape[1], m)
    Ug = torch.stack([U1[j:j + m, j:j + m] for j in starts])  # diagonal M × M blocks of U
    UgT = Ug.transpose(1, 2)
    Ginv = subset_inverses(UgT @ Ug, n, info)  # the groups' G_gg = U_ggᵀ U_gg
    for g, j1 in enumerate(starts):
        j2 = j1 + m
        mg, z = nm_best_subsets(W1[:, j1:j2], Ginv[g], n)
        d = z @ UgT[g]
        W1[:, j1:] -= d @ U1[j1:j2, j1:]
        D[:, j1:j2] = d
        mask[:, j1:j2] = mg
    return mask, W1.masked_fill_(mask, 0.0), D


def _block_pass(W: torch.Tensor, U: torch.Tensor, sparsity: Sparsity, blocksize: int, score: str,
                granularity: str, nm_update: str, fixed_mask: torch.Tensor | None, info: dict) -> torch.Tensor:
    """The block algorithm (docs/methods.md (APT)) in place on ``W``; returns the mask.

    Per block ``[i1, i2)``: ``G = U_bbᵀ U_b,:`` is the inverse Hessian of the free weights; the block
    mask is chosen on the current weights, then one joint solve per row removes the block's pruned
    set: ``z = w_Q [G_QQ]⁻¹`` and ``W[:, i1:] −= z G = (z U_bbᵀ) U_b,:`` (no B × cols matrix is formed).
    N:M with ``nm_update=group``: the groups' own updates (``_nm_groups``) are kept, and only their
    effect on the columns right of the block is applied here, as one product.
    """
    rows, cols = W.shape
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        U1 = U[i1:i2, i1:i2]
        G1 = U1.t() @ U1
        W1 = W[:, i1:i2]
        if fixed_mask is not None:
            mb = fixed_mask[:, i1:i2]
        elif sparsity.kind == "nm":
            mb, W1g, D = _nm_groups(W1, U1, sparsity.n, sparsity.m, info)
            if nm_update == "group":
                W[:, i2:] -= D @ U[i1:i2, i2:]
                W[:, i1:i2] = W1g
                mask[:, i1:i2] = mb
                continue
        else:
            denom = torch.diagonal(G1) if score == "obs" else torch.diagonal(U1) ** 2
            mb = _unstructured_mask(W1 ** 2 / denom.unsqueeze(0), sparsity.ratio, i1, i2, granularity)
        z = removal_coefficients(G1, U1, mb, W1, info)
        W[:, i1:] -= (z @ U1.t()) @ U[i1:i2, i1:]
        W[:, i1:i2] = W[:, i1:i2].masked_fill(mb, 0.0)
        mask[:, i1:i2] = mb
    return mask


def exact_reconstruction(W: torch.Tensor, Hd: torch.Tensor, mask: torch.Tensor, P: torch.Tensor | None = None,
                         info: dict | None = None) -> torch.Tensor:
    """Every row re-solved by exact least squares on its support: ``min (w' − w) Hd (w' − w)ᵀ``
    subject to ``w'_Q = 0``. Solves the smaller of the pruned set (closed form with ``P = Hd⁻¹``)
    and the kept set (``Hd_KK δ_Kᵀ = Hd_KQ w_Qᵀ``, docs/methods.md (APT))."""
    info = {} if info is None else info
    q_max, k_max = int(mask.sum(1).max()), int((~mask).sum(1).max())
    if P is not None and q_max <= k_max:
        info["exact_form"] = "pruned-set"
        delta, _ = joint_removal(W, P, mask, info)
        out = W + delta
    else:
        info["exact_form"] = "kept-set"
        out = W + masked_solve(Hd, ~mask, (W * mask) @ Hd, info)
    return out.masked_fill(mask, 0.0)


def _run(w: torch.Tensor, sparsity: Sparsity, H: torch.Tensor, fixed_mask: torch.Tensor | None, *,
         blocksize: int, percdamp: float, max_damp_tries: int, variant: str, score: str,
         granularity: str, nm_update: str = "group", refine_iters: int = 0, swap_rounds: int = 0,
         swaps_per_row: int = 8, swap_cg_iters: int = 2, dtype: str = "float64",
         factor: str = "reference") -> SolverResult:
    # The inverse-Hessian factor is formed in float64 even for dtype=float32: forming it in float32 (as
    # SparseGPT does) saved ~12% of the solver time but raised the layer error of APT-refit by 3-8% on
    # ill-conditioned synthetic layers. factor=flipped forms it from one Cholesky and one triangular inverse
    # (half the arithmetic); the same factor to float64 rounding, which can still move a float32 mask at a tie.
    dt = getattr(torch, dtype)  # float32: about half the cost of every product and factorisation on CPU
    # no working H beside the float64 factor (7B's down_proj: 0.97 GB fewer at the solver's peak)
    W, _, dead, U, info = prepare_layer(w, H, percdamp, max_damp_tries, dt, flipped=factor == "flipped",
                                        factor_dtype=torch.float64, keep_h=False)
    info.update(jitter_solves=0, fallback_solves=0)
    U = U.to(dt)
    Wd = W.clone()  # the prepared dense weights, the reference of exact / refined reconstruction
    Hd = None
    if (variant == "exact" or refine_iters or swap_rounds) and not info["hinv_fallback"]:
        Hd = working_copy(H, dt, dead)  # the damped Hessian whose inverse U factors
        Hd.diagonal().add_(info["damp"])
    mask = _block_pass(W, U, sparsity, blocksize, score, granularity, nm_update, fixed_mask, info)
    P = U.t() @ U if variant == "exact" and Hd is not None else None
    del U  # only the exact variant reads the factor after the block pass
    if Hd is not None:
        if variant == "exact":
            W = exact_reconstruction(Wd, Hd, mask, P, info)
        else:
            if swap_rounds:
                W, mask = swap_search(W, Wd, Hd, mask, sparsity, rounds=swap_rounds, swaps=swaps_per_row,
                                      cg_iters=swap_cg_iters, info=info)
            if refine_iters:
                W = refine_cg(W, Wd, Hd, mask, refine_iters)
                info["refine_iters"] = refine_iters
    W = W.masked_fill(mask, 0.0)
    if info["jitter_solves"] or info["fallback_solves"]:
        log.warning("APT: %d small systems needed jitter, %d fell back to a pseudo-inverse",
                    info["jitter_solves"], info["fallback_solves"])
    out = W.to(torch.float32)
    return SolverResult(out, mask, relative_error(w.float(), out, H), info)


def apt(w: torch.Tensor, sparsity: Sparsity, *, H: torch.Tensor, sq_norms: torch.Tensor | None = None,
        variant: str = "block", blocksize: int = 128, score: str = "obs", granularity: str = "block",
        nm_update: str = "group", percdamp: float = 0.01, max_damp_tries: int = 6, max_subsets: int = 20000,
        refine_iters: int = 0, swap_rounds: int = 0, swaps_per_row: int = 8, swap_cg_iters: int = 2,
        dtype: str = "float64", factor: str = "reference") -> SolverResult:
    """APT on one linear layer: choose the mask and apply the joint optimal update (module docstring)."""
    check_pattern(w, sparsity)
    _check(sparsity, blocksize, variant, score, granularity, max_subsets, nm_update)
    for key, value in (("refine_iters", refine_iters), ("swap_rounds", swap_rounds), ("swap_cg_iters", swap_cg_iters)):
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"method.{key}={value!r}: need an integer >= 0")
    if not isinstance(swaps_per_row, int) or swaps_per_row < 1:
        raise ConfigError(f"method.swaps_per_row={swaps_per_row!r}: need an integer >= 1")
    if dtype not in DTYPES:
        raise ConfigError(f"method.dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    if factor not in FACTORS:
        raise ConfigError(f"method.factor={factor!r}; allowed: {', '.join(FACTORS)}")
    if variant == "exact" and (refine_iters or swap_rounds):
        raise ConfigError("method.variant=exact already solves every row exactly; refine_iters and swap_rounds "
                          "apply to variant=block only")
    return _run(w, sparsity, H, None, blocksize=blocksize, percdamp=percdamp, max_damp_tries=max_damp_tries,
                variant=variant, score=score, granularity=granularity, nm_update=nm_update,
                refine_iters=refine_iters, swap_rounds=swap_rounds, swaps_per_row=swaps_per_row,
                swap_cg_iters=swap_cg_iters, dtype=dtype, factor=factor)


def apt_update(w: torch.Tensor, mask: torch.Tensor, *, H: torch.Tensor, variant: str = "block",
               blocksize: int = 128, percdamp: float = 0.01, max_damp_tries: int = 6) -> SolverResult:
    """APT's update for a given mask (e.g. SparseGPT's or Wanda's): the "external mask + APT update"
    arm of docs/methods.md (APT), and the same-mask comparisons of its property P7."""
    if mask.shape != w.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}")
    _check(Sparsity("unstructured", 0.5), blocksize, variant, "obs", "block", 1)
    return _run(w, Sparsity("unstructured", float(mask.float().mean())), H, mask.bool(), blocksize=blocksize,
                percdamp=percdamp, max_damp_tries=max_damp_tries, variant=variant, score="obs", granularity="block")

"""What every solver shares: the result type, N:M group masks, the layer error from H, the damped
inverse-Hessian factor with its escalating-damping fallback."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from pruning.sparsity import Sparsity

log = logging.getLogger(__name__)


@dataclass
class SolverResult:
    weight: torch.Tensor  # new weight, float32, same shape as the input
    mask: torch.Tensor  # bool, True where the weight was pruned
    error: float | None  # ‖(W − W')X‖² / ‖WX‖², from H; None without H
    info: dict = field(default_factory=dict)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive input columns of each row, the ``n`` lowest scores
    (``topk(largest=False)`` per group, as Wanda and SparseGPT do)."""
    rows, cols = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    for ii in range(0, cols, m):
        tmp = score[:, ii:ii + m].float()
        mask.scatter_(1, ii + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    return mask


def sorted_value(score: torch.Tensor, index: int) -> torch.Tensor:
    """``torch.sort(score.flatten())[0][index]`` (the reference's threshold) without the sort:
    ``kthvalue`` returns the same value in linear time (8x faster on a 14336 x 4096 layer)."""
    flat = score.flatten()
    if not 0 <= index < flat.numel():
        raise IndexError(f"sorted position {index} of {flat.numel()} values")
    return torch.kthvalue(flat, index + 1).values


def smallest_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """True on the ``k`` smallest entries of ``score`` (any shape), in linear time (``kthvalue``, not a
    sort: on CPU about 4x faster than ``topk`` for half of a layer); ties at the threshold go to the
    lowest flat index first, so exactly ``k`` entries are True."""
    flat = score.flatten()
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k >= flat.numel():
        return torch.ones_like(score, dtype=torch.bool)
    thresh = torch.kthvalue(flat, k).values
    below = flat < thresh
    ties = (flat == thresh).nonzero(as_tuple=True)[0][:k - int(below.sum())]
    below[ties] = True
    return below.view_as(score)


def relative_error(w: torch.Tensor, w_new: torch.Tensor, H: torch.Tensor | None) -> float | None:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``, i.e. ‖WX − W'X‖² / ‖WX‖² for H ∝ XXᵀ (no extra data).

    The products run in float32 (H is accumulated in float32) and the traces are summed in float64:
    within 1e-6 relative of an all-float64 computation on SparseGPT's outputs at 50%, 2:4 and 90%
    (ΔW minimises the trace, the case where rounding would show first), in 0.6x the time and
    half the memory (a LLaMA-3-8B down_proj: 39 s -> 23 s on 2 cores; it runs for every layer of
    every method)."""
    if H is None:
        return None
    H = H.float()
    w = w.float()
    dw = w - w_new.float()
    den = float((w @ H).mul_(w).sum(dtype=torch.float64))
    num = float((dw @ H).mul_(dw).sum(dtype=torch.float64))
    return num / den if den > 0 else float("nan")


def check_pattern(w: torch.Tensor, sparsity: Sparsity) -> None:
    sparsity.check_width(w.shape[1])


def _reference_factor(Hd: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    """SparseGPT's sequence on ``Hd + damp·I``: Cholesky, its inverse, the inverse's upper Cholesky factor (``4/3 n³``).
    ``Hd`` is a working copy the factor owns (damped in place, released once its Cholesky factor exists), so no
    more than two ``n × n`` matrices live at a time."""
    diag = torch.arange(Hd.shape[0], device=Hd.device)
    Hd[diag, diag] += damp
    L = torch.linalg.cholesky(Hd)
    del Hd
    Hinv = torch.cholesky_inverse(L)
    del L
    return torch.linalg.cholesky(Hinv, upper=True)


def _triangular_inverse(L: torch.Tensor) -> torch.Tensor:
    """``L⁻¹`` of a lower-triangular ``L``, in place on CPU (LAPACK ``trtri``, ``n³/3``: torch has no triangular
    inverse; its ``solve_triangular`` against an identity costs ``n³``), by a triangular solve elsewhere."""
    if L.device.type != "cpu":
        eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L, eye, upper=False)
    from scipy.linalg import lapack
    trtri = lapack.dtrtri if L.dtype == torch.float64 else lapack.strtri
    # L row-major is Lᵀ column-major: inverting that upper factor (in place) leaves L⁻¹ row-major
    inv, info = trtri(L.numpy().T, lower=0, overwrite_c=1)
    if info:
        raise torch.linalg.LinAlgError(f"triangular inverse: zero diagonal entry {info}")
    return torch.from_numpy(inv.T)


def _flipped_factor(Hd: torch.Tensor, damp: torch.Tensor) -> torch.Tensor:
    """The same factor in ``2/3 n³``: with ``J`` the order reversal and ``J Hd J = L Lᵀ`` (``Hd = H + damp·I``),
    ``R = J L J`` is upper triangular with ``Hd = R Rᵀ``, so ``Hd⁻¹ = (R⁻¹)ᵀ R⁻¹`` and ``U = R⁻¹ = J L⁻¹ J`` is the
    upper Cholesky factor of ``Hd⁻¹`` (unique, positive diagonal): one Cholesky and one triangular inverse, equal to
    the reference sequence up to rounding. ``Hd``: a working copy the factor owns; its reversed copy is damped,
    factorised and inverted in place."""
    F = Hd.flip(0, 1)
    del Hd
    F.diagonal().add_(damp)  # the diagonal of J H J is H's reversed: the same damping on every entry
    info = torch.empty((), dtype=torch.int32, device=F.device)
    torch.linalg.cholesky_ex(F, out=(F, info))
    if int(info):
        raise torch.linalg.LinAlgError(f"Cholesky: leading minor {int(info)} is not positive definite")
    return _triangular_inverse(F.tril_()).flip(0, 1)


def inverse_hessian_factor(H: torch.Tensor, percdamp: float, max_damp_tries: int = 6, flipped: bool = False,
                           dtype: torch.dtype | None = None, dead: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Upper Cholesky factor of ``(H + damp·I)⁻¹`` with escalating damping on failure; ``flipped``: formed by
    :func:`_flipped_factor` (half the arithmetic; APT) instead of the reference's sequence (SparseGPT, ALPS,
    whose results must match their authors' code). Formed in ``dtype`` (default ``H``'s) with ``H_jj = 1`` on the
    ``dead`` inputs (:func:`prepare_layer`); each attempt factors a fresh working copy of ``H``, so the caller
    need not hold one in ``dtype`` beside it (APT: a float64 ``cols × cols`` matrix fewer at the peak)."""
    dtype = dtype or H.dtype
    columns = H.shape[0]
    diag = torch.diag(H).to(dtype)
    if dead is not None:
        diag[dead] = 1
    mean_diag = torch.mean(diag)
    frac = percdamp
    for attempt in range(max_damp_tries + 1):
        try:
            U = (_flipped_factor if flipped else _reference_factor)(working_copy(H, dtype, dead), frac * mean_diag)
            if torch.isfinite(U).all():
                info = {"percdamp_used": frac, "damp": float(frac * mean_diag), "damp_retries": attempt,
                        "hinv_fallback": False}
                if attempt:
                    log.warning("Cholesky needed percdamp=%g (asked %g)", frac, percdamp)
                return U, info
        except torch.linalg.LinAlgError:
            pass
        frac *= 10
    log.warning("Cholesky failed up to percdamp=%g; using an identity inverse Hessian for this layer", frac / 10)
    return torch.eye(columns, device=H.device, dtype=dtype), {"percdamp_used": None, "damp_retries": max_damp_tries,
                                                              "hinv_fallback": True}


def working_copy(H: torch.Tensor, dtype: torch.dtype, dead: torch.Tensor | None) -> torch.Tensor:
    """``H`` in ``dtype``, a copy, with ``H_jj = 1`` on the dead inputs (as :func:`prepare_layer` handles them)."""
    A = H.to(dtype, copy=True)
    if dead is not None:
        A[dead, dead] = 1
    return A


def undamped(H: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """The Hessian the error is measured against: dead inputs carry no signal, so their 1 is removed."""
    H = H.clone()
    H[dead, dead] = 0
    return H


def prepare_layer(w: torch.Tensor, H: torch.Tensor, percdamp: float, max_damp_tries: int, dtype: torch.dtype,
                  flipped: bool = False, factor_dtype: torch.dtype | None = None, keep_h: bool = True):
    """Working copies of ``W`` and ``H`` in ``dtype`` with dead inputs handled as the reference does
    (``H_jj = 0``: set ``H_jj = 1`` and zero that weight column), and the upper Cholesky factor of
    the damped inverse (:func:`inverse_hessian_factor`) in ``factor_dtype`` (default ``dtype``). Returns
    ``(W, H, dead, U, info)``; ``keep_h=False``: no working ``H`` (None in its place; APT rebuilds the one it
    needs later in its own dtype). The working ``H`` is made after the factor, so it never lives beside it."""
    if not percdamp > 0:
        from pruning.errors import ConfigError
        raise ConfigError(f"method.percdamp={percdamp!r}: need > 0 (damping = percdamp * mean(diag H))")
    factor_dtype = factor_dtype or dtype
    dead = torch.diag(H).to(factor_dtype) == 0
    W = w.to(dtype, copy=True)
    W[:, dead] = 0
    U, info = inverse_hessian_factor(H, percdamp, max_damp_tries, flipped, dtype=factor_dtype, dead=dead)
    info["dead_columns"] = int(dead.sum())
    return W, working_copy(H, dtype, dead) if keep_h else None, dead, U, info

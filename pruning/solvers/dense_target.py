"""The dense-output target (``method.output_target=dense``): fit the pruned model's layer to the *dense*
model's layer outputs, not to its own dense weights' outputs on the already-pruned inputs.

Every reference solver (SparseGPT, Wanda, ALPS) and the APT paper minimise ``‖W X − Ŵ X‖²`` where
``X`` are the layer's inputs in the partly pruned model: the error of the earlier pruned layers is in
``X`` and is carried forward, never corrected. The dense model's layer computes ``W X_d`` on its own
inputs ``X_d``. Minimising ``‖W X_d − Ŵ X‖²`` instead (asymmetric calibration, as GPTAQ does for
quantisation, arXiv 2504.02692) needs no new solver: with ``H = X Xᵀ`` and ``C = X_d Xᵀ``,

    ‖W X_d − Ŵ X‖² = ‖(Ŵ − W*) X‖² + const,   W* = W C H⁻¹,

so any solver of the usual problem, given ``W*`` in place of ``W`` and the same ``H``, solves the
dense-output problem. ``H`` is damped as the solvers damp it, ``H + λI`` with ``λ = percdamp ·
mean(diag H)``, which makes ``W*`` the ridge solution around ``W``:

    W* = W (C + λI)(H + λI)⁻¹ = W + W (C − H)(H + λI)⁻¹,

the minimiser of ``‖W X_d − Ŵ X‖² + λ‖Ŵ − W‖²``. Where the inputs agree (``C = H``, e.g. the first
block) ``W* = W`` exactly.

The full correction over-fits: on SmolLM2-135M at 50% it moved layers' weights by up to 178% of their
norm (51% on average) and WikiText-2 perplexity went from 41 to 684 (docs/benchmarks.md). ``alpha`` applies a share
of it, ``W + α (W* − W)``; GPTAQ's reference code scales its correction the same way, by 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def dense_output_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor, C: torch.Tensor,
                       G: torch.Tensor) -> float:
    """``‖W X_d − W' X‖² / ‖W X_d‖²`` from ``H = X Xᵀ``, ``C = X_d Xᵀ``, ``G = X_d X_dᵀ`` (alike scaled): the
    layer's error against the dense model's own layer output, including what the earlier layers left."""
    W, W_new, H, C, G = (t.double() for t in (W, W_new, H, C, G))
    den = float(((W @ G) * W).sum())
    num = den - 2 * float(((W @ C) * W_new).sum()) + float(((W_new @ H) * W_new).sum())
    return max(num, 0.0) / den if den > 0 else float("nan")


@dataclass
class DenseCorrection:
    """``(C − H)`` and the Cholesky factor of ``H + λI`` of one layer input, float64: what
    :func:`dense_target_weights` needs to form ``W (C − H)(H + λI)⁻¹`` for any ``W`` reading that input.

    A layer with fewer rows than input columns gets it row-wise, ``[(H + λI)⁻¹ (W (C − H))ᵀ]ᵀ``: two
    products with ``rows`` right-hand sides instead of a solve with ``cols`` of them (``down_proj``; on
    Gemma-3-270M's, 640 × 2048, 0.74 s → 0.23 s on 2 CPU cores). A layer with at
    least as many rows as columns forms ``M = (C − H)(H + λI)⁻¹`` once; the linears that read the same
    input (q/k/v, gate/up) then reuse it. Both orders are the same product up to float64 rounding.

    Memory: what is spent is released at once (``diff`` and ``chol`` once ``M`` exists; with ``last``, ``diff``
    after its product and ``chol`` after its solve), since the solve holds a copy of the factor besides
    (7B's ``down_proj``: each of these is 0.97 GB)."""

    diff: torch.Tensor | None
    chol: torch.Tensor | None
    matrix: torch.Tensor | None = None

    def times(self, W: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``W (C − H)(H + λI)⁻¹`` in float64; ``last``: no later linear reads this correction."""
        if self.matrix is None and W.shape[0] < W.shape[1]:
            B = W.double() @ self.diff
            if last:
                self.diff = None
            out = torch.cholesky_solve(B.t(), self.chol).t()  # (the solve copies B column-major itself)
            if last:
                self.chol = None
            return out
        if self.matrix is None:  # (C − H)(H + λI)⁻¹ = [(H + λI)⁻¹ (C − H)ᵀ]ᵀ  (H symmetric)
            self.matrix = torch.cholesky_solve(self.diff.t(), self.chol).t()
            self.diff = self.chol = None  # every later linear reads the matrix
        return W.double() @ self.matrix


def dense_target_correction(H: torch.Tensor, C: torch.Tensor, percdamp: float = 0.01,
                            overwrite_c: bool = False) -> DenseCorrection | None:
    """The correction ``(C − H)(H + λI)⁻¹`` with ``λ = percdamp · mean(diag H)``, factorised in float64
    (:class:`DenseCorrection`), so that ``W* = W + W (C − H)(H + λI)⁻¹``; None where nothing moves
    (``C == H``: the inputs agree; or no input energy at all). Linears that read the same input (q/k/v,
    gate/up) share it: one factorisation for all of them. ``overwrite_c``: ``C − H`` is formed in ``C``'s own
    storage (the caller gives ``C`` up), so no third ``cols × cols`` matrix is allocated beside the factor."""
    if H.shape != C.shape or H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"dense target: H {tuple(H.shape)} and C {tuple(C.shape)} must be one square shape")
    if torch.equal(C, H):
        return None
    Hd = H.to(torch.float64, copy=True)  # factorised in place below: never the caller's H
    damp = percdamp * float(torch.diagonal(Hd).mean())
    if not damp > 0:
        return None
    Hd.diagonal().add_(damp)  # in place: no identity matrix, one float64 copy of H (7B's down_proj: 0.97 GB each)
    info = torch.empty((), dtype=torch.int32, device=Hd.device)
    torch.linalg.cholesky_ex(Hd, out=(Hd, info))  # factorised in place: the same factor, one matrix fewer
    if int(info):
        raise torch.linalg.LinAlgError(f"dense target: H + λI is not positive definite (leading minor {int(info)})")
    # the difference after the factor: the factorisation's own working copy never meets it
    return DenseCorrection((C.sub_(H) if overwrite_c else C - H).double(), Hd)


def dense_target_weights(W: torch.Tensor, H: torch.Tensor, C: torch.Tensor | None, percdamp: float = 0.01,
                         alpha: float = 1.0, correction: DenseCorrection | None = None,
                         last: bool = False) -> torch.Tensor:
    """``W + α W (C − H)(H + λI)⁻¹`` (:func:`dense_target_correction`; pass ``correction`` to reuse one
    computed for the same ``H`` and ``C``, then ``C`` may be None, and ``last=True`` lets it release what no
    later linear will read); returns W's dtype. ``H`` and ``C`` are scaled alike (:class:`pruning.stats.LayerStats`; ``C``
    accumulated from ``(x_dense, x_pruned)`` pairs as ``H`` is from ``(x_pruned, x_pruned)``)."""
    if (C is not None and H.shape != C.shape) or H.shape[0] != W.shape[1] or (C is None and correction is None):
        raise ValueError(f"dense target: W {tuple(W.shape)}, H {tuple(H.shape)} and C "
                         f"{None if C is None else tuple(C.shape)} do not fit")
    own = correction is None  # formed here for this W alone
    corr = dense_target_correction(H, C, percdamp) if own else correction
    if corr is None:
        return W.clone()
    return (W.double() + alpha * corr.times(W, last or own)).to(W.dtype)

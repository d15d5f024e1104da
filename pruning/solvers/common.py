"""What every solver shares: the result type, N:M group masks, the layer error from H."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pruning.sparsity import Sparsity


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


def relative_error(w: torch.Tensor, w_new: torch.Tensor, H: torch.Tensor | None) -> float | None:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``, i.e. ‖WX − W'X‖² / ‖WX‖² for H ∝ XXᵀ (no extra data)."""
    if H is None:
        return None
    H = H.double()
    w = w.double()
    dw = w - w_new.double()
    den = float(((w @ H) * w).sum())
    num = float(((dw @ H) * dw).sum())
    return num / den if den > 0 else float("nan")


def check_pattern(w: torch.Tensor, sparsity: Sparsity) -> None:
    sparsity.check_width(w.shape[1])

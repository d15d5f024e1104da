"""Wanda (Sun et al., arXiv 2306.11695), as in locuslab/wanda ``prune_wanda`` (docs/evaluation.md, "Method details that change numbers").

Score ``|W| · sqrt(scaler_row)`` with ``scaler_row`` the running mean over calibration sequences of
each input feature's squared L2 norm. Unstructured: per output row, a stable ascending sort and
the first ``int(cols · s)`` entries pruned (exact per-row sparsity). N:M: the N lowest scores in
each group of M inputs of a row. No weight update.
"""

from __future__ import annotations

import torch

from pruning.solvers.common import SolverResult, check_pattern, nm_mask, relative_error
from pruning.sparsity import Sparsity


def wanda(w: torch.Tensor, sparsity: Sparsity, *, sq_norms: torch.Tensor, H: torch.Tensor | None = None) -> SolverResult:
    check_pattern(w, sparsity)
    w = w.float()
    metric = w.abs() * torch.sqrt(sq_norms.float().reshape(1, -1))
    if sparsity.kind == "nm":
        mask = nm_mask(metric, sparsity.n, sparsity.m)
    else:
        mask = torch.zeros_like(metric, dtype=torch.bool)
        indices = torch.sort(metric, dim=-1, stable=True)[1][:, :int(metric.shape[1] * sparsity.ratio)]
        mask.scatter_(1, indices, True)
    out = w.clone()
    out[mask] = 0
    return SolverResult(out, mask, relative_error(w, out, H))

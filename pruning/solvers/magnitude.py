"""Magnitude pruning, as in Wanda's ``prune_magnitude`` (docs/evaluation.md, "Method details that change numbers").

Unstructured: one threshold per weight matrix, ``thresh = sort(|W|)[int(numel · s)]``, and every
weight with ``|W| <= thresh`` is zeroed; this prunes one weight more than ``int(numel · s)`` (plus
ties), exactly like the reference. N:M: the N smallest ``|W|`` in each group of M inputs of a row.
No weight update.
"""

from __future__ import annotations

import torch

from pruning.solvers.common import SolverResult, check_pattern, nm_mask, relative_error, sorted_value
from pruning.sparsity import Sparsity


def magnitude(w: torch.Tensor, sparsity: Sparsity, *, H: torch.Tensor | None = None,
              sq_norms: torch.Tensor | None = None) -> SolverResult:
    check_pattern(w, sparsity)
    w = w.float()
    metric = w.abs()
    if sparsity.kind == "nm":
        mask = nm_mask(metric, sparsity.n, sparsity.m)
    else:
        thresh = sorted_value(metric, int(w.numel() * sparsity.ratio))
        mask = metric <= thresh
    out = w.clone()
    out[mask] = 0
    return SolverResult(out, mask, relative_error(w, out, H))

"""Running input statistics of one linear layer, accumulated exactly as the reference code does.

* ``H = (2/n) Σ x xᵀ`` over calibration *sequences* (SparseGPT's ``add_batch``), float32;
* ``sq_norms[j] = (1/n) Σ_seq ‖X_j‖²`` (Wanda's ``scaler_row``), float32;
* with ``method.output_target=dense`` also ``C = (2/n) Σ x_dense x_prunedᵀ`` (:meth:`LayerStats.add_cross`,
  not in the references), the dense model's inputs paired with the pruned model's, scaled as ``H``.

Both are running averages where ``n`` counts sequences, so the order of batches does not matter
and the scale of H cancels in every solver (docs/methods.md (APT)).
"""

from __future__ import annotations

import math

import torch


def _columns(inp: torch.Tensor, sequences: int) -> tuple[torch.Tensor, int]:
    """A layer input as float32 ``[columns, tokens]`` and the number of calibration sequences it holds
    (``[sequences · tokens, columns]`` inputs, flattened by the model, say so through ``sequences``)."""
    if inp.dim() == 2:
        inp = inp.reshape(sequences, -1, inp.shape[-1])
    return inp.reshape(-1, inp.shape[-1]).t().float(), inp.shape[0]


class LayerStats:
    def __init__(self, columns: int, *, hessian: bool = True, norms: bool = True, device=None):
        self.nsamples = 0
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device) if hessian else None
        self.sq_norms = torch.zeros(columns, dtype=torch.float32, device=device) if norms else None
        self.C = self.G = None  # the dense/pruned cross term and the dense inputs' H, from add_cross

    @torch.no_grad()
    def add_batch(self, inp: torch.Tensor, sequences: int = 1) -> None:
        """``inp``: the layer input, ``[batch, tokens, columns]``, or ``[sequences · tokens, columns]`` for
        models that flatten the batch before a linear (OPT's fc1/fc2): ``sequences`` then says how many
        calibration sequences it holds, so each counts once in the running mean."""
        x, tmp = _columns(inp, sequences)
        scale = self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        if self.H is not None:
            self.H *= scale
            xs = math.sqrt(2 / self.nsamples) * x
            self.H += xs @ xs.t()
        if self.sq_norms is not None:
            self.sq_norms *= scale
            self.sq_norms += torch.norm(x, p=2, dim=1) ** 2 / self.nsamples

    @torch.no_grad()
    def add_cross(self, dense: torch.Tensor, pruned: torch.Tensor, sequences: int = 1, gram: bool = True) -> None:
        """``C`` (and, with ``gram``, ``G``: the dense inputs' own ``H``, which only the dense-output error report
        reads) for the batch :meth:`add_batch` has just counted from ``pruned``: ``dense`` is the same layer's input
        in the dense model, token for token. Scaled exactly as ``H``, so ``C == G == H`` bit for bit when the two
        inputs are equal."""
        if dense.shape != pruned.shape:
            raise ValueError(f"dense input {tuple(dense.shape)} and pruned input {tuple(pruned.shape)} differ in shape")
        xp, tmp = _columns(pruned, sequences)
        xd, _ = _columns(dense, sequences)
        if self.C is None:
            self.C = torch.zeros(xp.shape[0], xp.shape[0], dtype=torch.float32, device=xp.device)
            self.G = torch.zeros_like(self.C) if gram else None
        scale = (self.nsamples - tmp) / self.nsamples
        factor = math.sqrt(2 / self.nsamples)
        xd, xp = factor * xd, factor * xp
        self.C *= scale
        self.C += xd @ xp.t()
        if self.G is not None:
            self.G *= scale
            self.G += xd @ xd.t()


STAT_FIELDS = ("H", "sq_norms", "C", "G")  # the running means a LayerStats may hold, all scaled by nsamples


def weighted_sum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``Σ_k weights[k] · tensors[k]``, added in list order, one elementwise product and sum at a time: the
    same bits whether a tensor is combined whole or row chunk by row chunk (:meth:`pruning.distributed.Comm.merge_stats`)."""
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        out += t * w
    return out


def shard_weights(counts: list[int]) -> list[float]:
    """Each shard's share of the sequences: the weight of its running mean in the whole one."""
    total = sum(counts)
    return [c / total for c in counts]


def merge_stats(parts: list[LayerStats]) -> LayerStats:
    """The statistics of contiguous shards of the calibration windows, each a running mean over its own
    sequences, combined in order into the running mean over all of them (``H = Σ_k (n_k / n) H_k``, the same
    for the norms, ``C`` and ``G``). Equal to one accumulation over every window up to float32 rounding (the
    sums are grouped differently); one part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    return merged_stats([p.nsamples for p in parts], parts[0],
                        lambda name, weights: weighted_sum([getattr(p, name) for p in parts], weights))


def merged_stats(counts: list[int], like: LayerStats, combine) -> LayerStats:
    """The statistics over shards of ``counts`` sequences each: every field ``like`` holds is ``combine(name,
    weights)`` (the shards' values of it summed with their :func:`shard_weights`), the others None."""
    weights = shard_weights(counts)
    out = LayerStats.__new__(LayerStats)
    out.nsamples = sum(counts)
    for name in STAT_FIELDS:
        setattr(out, name, None if getattr(like, name) is None else combine(name, weights))
    return out


def merge_parts(parts: list[dict], merge=merge_stats) -> dict:
    """Per-linear statistics of several shards (``{name: LayerStats}`` each) combined by ``merge``, linear by
    linear in the first shard's order; linears sharing one statistics object (q/k/v, gate/up) share the
    combined one. Every shard must share the same way."""
    first, out, reps = parts[0], {}, {}
    for name, st in first.items():
        rep = reps.setdefault(id(st), name)
        if rep != name and any(p[name] is not p[rep] for p in parts[1:]):
            raise RuntimeError(f"linear {name} shares {rep}'s statistics in one calibration shard but not in another")
        out[name] = out[rep] if rep != name else merge([p[name] for p in parts])
    return out

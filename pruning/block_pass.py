"""Step 2 of the engine (:mod:`pruning.engine`): one statistics pass over a block. Hooks on its prunable
linears accumulate each one's statistics (:class:`pruning.stats.LayerStats`) while the calibration
inputs run through the block; linears reading one tensor (q/k/v, gate/up) share one accumulation
(:class:`_SharedInputs`). With the dense model's inputs beside them (``output_target=dense``,
``engine.dense_error``) every linear gets the cross statistics of the two streams: either each window also
runs through the dense block in the same pass (:meth:`BlockPass.statistics` with ``dense_inputs``), or one
dense pass per block keeps every linear's dense input (:meth:`BlockPass.dense_pass`) and each group's pass
pairs its pruned inputs with them (``dense_stored``): the dense stream does not depend on pruning, so a block
calibrated group by group needs it once, not once per group. :func:`block_wanda_scores` is OWL's pass through
the dense model.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from pruning.adapters import FamilyAdapter
from pruning.capture import StopForward, capture_block_inputs, first_output, to_device
from pruning.offload import ResidentStore
from pruning.reuse import OutputReuse
from pruning.stats import LayerStats, merge_parts, merge_stats


def _hook_inputs(adapter, linears, group, fn) -> list:
    """Forward hooks calling ``fn(name, input)`` with the input of every linear in ``group`` (a tapped
    linear's input is its source's output, ``adapter.input_taps``); returns the handles."""
    taps = {t: src for t, src in adapter.input_taps if t in group and src in linears}
    handles = [linears[n].register_forward_hook(lambda mod, inp, out, n=n: fn(n, inp[0].detach()))
               for n in group if n not in taps]
    handles += [linears[src].register_forward_hook(
        lambda mod, inp, out, n=t: fn(n, out[..., :linears[n].in_features].detach())) for t, src in taps.items()]
    return handles


class _SharedInputs:
    """Which linears of a block read the very same input tensor (Llama's q/k/v and gate/up, OPT's q/k/v,
    Gemma's too): their statistics are the same sums of the same products, so they are accumulated once
    and shared, bit for bit what separate accumulation gives (H, C and G of the dense stream included).
    The first calibration window (of each shard, ``engine.shards``) decides; a linear that shared then must
    share in every later pass, else the run stops (its statistics would otherwise mix another linear's inputs in).
    Tensors seen in the running pass are kept referenced until it ends, so no later input of that pass
    can reuse their memory and be taken for the same tensor."""

    def __init__(self):
        self.owners: dict[str, str] = {}  # linear -> the earlier linear whose input it reads
        self.current: dict[tuple, tuple[str, torch.Tensor]] = {}

    def new_pass(self) -> None:
        self.current = {}

    def owner(self, n: str, x: torch.Tensor, first_window: bool, dense: bool) -> str | None:
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)
        first = self.current.setdefault(key, (n, x))[0]
        if first_window and not dense:
            if first != n:
                self.owners[n] = first
            return self.owners.get(n)
        owner = self.owners.get(n)
        if owner is not None and owner != first:
            raise RuntimeError(f"block input sharing changed: linear {n} read {owner}'s input on the first calibration "
                               "window but not on this one; the engine shares statistics only between linears that "
                               "always read the same tensor")
        return owner


class _Accumulator:
    """The hooks' side of one statistics pass: routes each linear's input to its statistics (a shared one,
    the pruned stream's ``H``/norms, or the dense stream's cross terms) and stops a forward pass once every
    linear of the group has what the pass needs."""

    def __init__(self, stats: dict, group: tuple, paired: bool, stored: dict | None = None, gram: bool = True):
        self.stats, self.group, self.paired, self.stored, self.gram = stats, group, paired, stored, gram
        self.shares, self.seen, self.fired = _SharedInputs(), {}, set()
        self.sequences, self.index, self.first, self.dense, self.stop = 1, 0, True, False, False
        self.seconds = 0.0  # spent accumulating statistics (inside the forward passes)

    def start(self, index: int, first: bool, sequences: int, dense: bool, stop: bool) -> None:
        self.index, self.first, self.sequences, self.dense, self.stop = index, first, sequences, dense, stop
        self.shares.new_pass()
        self.fired.clear()

    def __call__(self, n: str, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        try:
            self._accumulate(n, x)
        finally:
            self.seconds += time.perf_counter() - t0
        if self.stop and len(self.fired) == len(self.group):
            raise StopForward  # the rest of the block would compute nothing this pass needs

    def _accumulate(self, n: str, x: torch.Tensor) -> None:
        owner = self.shares.owner(n, x, self.first, self.dense)
        if owner is not None:  # the same tensor as an earlier linear's input (q/k/v, gate/up): its statistics
            self.stats[n] = self.stats[owner]
        elif not self.dense:
            self.stats[n].add_batch(x, self.sequences)
            if self.stored is not None:  # the dense input kept by BlockPass.dense_pass for this window
                self.stats[n].add_cross(self.stored[n][self.index], x, self.sequences, self.gram)
            elif self.paired:
                self.seen[n] = x
        else:
            self.stats[n].add_cross(x, self.seen.pop(n), self.sequences, self.gram)
        self.fired.add(n)


@dataclass
class BlockPass:
    """What every statistics pass over one block shares: the block, its index, the family adapter, its
    prunable linears by name, the keyword arguments it receives per batch, which statistics to accumulate
    (``hessian``: ``H``; ``norms``: the inputs' squared norms; ``gram``: with the dense stream, also ``G``, the
    dense inputs' own ``H``, which only the dense-output error report reads) and the device they live on."""
    block: torch.nn.Module
    index: int
    adapter: FamilyAdapter
    linears: dict
    kwargs: list
    hessian: bool
    norms: bool
    device: torch.device
    gram: bool = True
    merge: Callable = merge_stats  # one linear's statistics over the parts (Comm.merge_stats: across ranks too)
    reuse: OutputReuse | None = None  # submodule outputs kept from one calibration pass for the next (pruning/reuse.py)
    stats_s: float = 0.0  # seconds accumulating statistics, over this block's passes
    dense_s: float = 0.0  # seconds of the dense stream's passes (output_target=dense, engine.dense_error)

    def statistics(self, group: tuple, inputs: list, *, keep_outputs: bool = False, dense_inputs: list | None = None,
                   dense_weights: dict | None = None, dense_stored: dict | None = None,
                   parts: list[range] | None = None) -> tuple[dict, list]:
        """Run ``inputs`` through the block with hooks accumulating the statistics of the linears in ``group``;
        returns the statistics and (``keep_outputs``) the block's outputs. A pass whose outputs are not needed
        stops as soon as every linear of ``group`` has seen its input.

        ``dense_inputs`` (``method.output_target=dense``, ``engine.dense_error``): the dense model's inputs of
        this block, window for window beside ``inputs``; each window then also runs through the dense block
        from its dense input, every linear's statistics get ``C = (2/n) Σ x_dense x_prunedᵀ`` (scaled as
        ``H``) and the returned outputs are the *dense* ones (the next block's dense inputs).
        ``dense_weights`` (the block's linears' dense weights, by name; ``true_sequential``, where earlier
        groups are already pruned) are put in place for that pass and the pruned ones back after it.
        ``dense_stored`` (from :meth:`dense_pass`) instead: the linears' dense inputs, window for window, paired
        with the pruned ones as they arrive; no dense pass runs (the same statistics, bit for bit).
        ``parts`` (``engine.shards``): ranges of batches accumulated apart, one after the other, and combined by
        :attr:`merge` (:mod:`pruning.distributed`: across ranks too). With :attr:`reuse` (and no ``dense_inputs``)
        submodules whose outputs the last pass left unchanged answer from them (:mod:`pruning.reuse`)."""
        per_part, outputs = [], []
        reuse = self.reuse if dense_inputs is None else None
        with reuse.pass_over(group, self.linears) if reuse is not None else contextlib.nullcontext():
            for part in parts or [range(len(inputs))]:
                stats, outs = self._accumulate(group, inputs, part, keep_outputs, dense_inputs, dense_weights,
                                               dense_stored, reuse)
                per_part.append(stats)
                outputs += outs
        stats = merge_parts(per_part, self.merge)
        self._check_reached(stats, group)
        return stats, outputs

    def _accumulate(self, group, inputs, part, keep_outputs, dense_inputs, dense_weights, dense_stored, reuse):
        """One part's pass of :meth:`statistics`: its own running means, and the outputs it keeps."""
        linears = self.linears
        stats = {n: LayerStats(linears[n].in_features, hessian=self.hessian, norms=self.norms, device=self.device)
                 for n in group}
        acc = _Accumulator(stats, group, paired=dense_inputs is not None, stored=dense_stored, gram=self.gram)

        def run(i: int, x, kw, dense: bool):
            stop = not keep_outputs or (not dense and dense_inputs is not None)
            acc.start(i, i == part.start, x.shape[0], dense, stop=stop)
            if reuse is not None:
                reuse.window(i)
            t0 = time.perf_counter()
            try:
                return self.block(x, **kw)
            except StopForward:
                return None
            finally:
                self.dense_s += (time.perf_counter() - t0) if dense else 0.0

        handles = _hook_inputs(self.adapter, linears, group, acc)
        outputs = []
        try:
            for i in part:
                y = run(i, inputs[i], self.kwargs[i], False)
                if dense_inputs is not None:
                    with _weights(linears, dense_weights):
                        y = run(i, dense_inputs[i], self.kwargs[i], True)
                if keep_outputs:
                    outputs.append(first_output(y))
        finally:
            for h in handles:
                h.remove()
            self.stats_s += acc.seconds
        return stats, outputs

    def dense_pass(self, dense_inputs: list) -> tuple[dict, list]:
        """Every window through the block as it is (still dense) from its dense input, once: returns each
        prunable linear's input per window (by name; linears reading one tensor keep references to that one
        tensor, so it is held once) and the block's outputs (the next block's dense inputs)."""
        kept: dict = {n: [] for n in self.linears}
        handles = _hook_inputs(self.adapter, self.linears, tuple(self.linears), lambda n, x: kept[n].append(x))
        outputs = []
        t0 = time.perf_counter()
        try:
            for x, kw in zip(dense_inputs, self.kwargs):
                outputs.append(first_output(self.block(x, **kw)))
        finally:
            for h in handles:
                h.remove()
            self.dense_s += time.perf_counter() - t0
        return kept, outputs

    def _check_reached(self, stats: dict, group: tuple) -> None:
        silent = [n for n in group if stats[n].nsamples == 0]
        if silent:
            raise RuntimeError(
                f"block {self.index}: no calibration input reached {silent}: the model uses their weights without "
                f"calling the module, so forward hooks never fire. Add an input tap for them to the "
                f"{self.adapter.family} adapter (pruning/adapters.py)")


@contextlib.contextmanager
def _weights(linears: dict, weights: dict | None):
    """``weights`` (by linear name) in place of the linears' own for the duration; nothing when None."""
    own = {n: linears[n].weight.data for n in (weights or {})}
    try:
        for n, w in (weights or {}).items():
            linears[n].weight.data = w
        yield
    finally:
        for n, w in own.items():
            linears[n].weight.data = w


@torch.no_grad()
def block_wanda_scores(model, adapter: FamilyAdapter, windows: torch.Tensor, score, *, device=None,
                       batch_size: int = 1, store=None) -> list:
    """One pass through the *dense* model (OWL's first pass): for each block, ``score(block_index,
    {name: |W| · sqrt(‖X_j‖²)})`` on its prunable linears; the dense block's outputs feed the next block.
    Returns the scores per block."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    store = store or ResidentStore()
    inputs, kwargs = capture_block_inputs(model, adapter, windows, batch_size)
    inputs = [to_device(x, device) for x in inputs]
    kwargs = kwargs.to(device)
    out = []
    for bi, block in enumerate(tqdm(adapter.blocks(model), desc="outlier scores (dense)", unit="block")):
        store.hold(bi, block, device)
        linears = adapter.prunable(block)
        stats, inputs = BlockPass(block, bi, adapter, linears, kwargs.of(bi), hessian=False, norms=True,
                                  device=device).statistics(tuple(linears), inputs, keep_outputs=True)
        out.append(score(bi, {n: linears[n].weight.detach().float().abs() * stats[n].sq_norms.sqrt().unsqueeze(0)
                              for n in linears}))
        store.put_back(bi, block)
    return out

"""The sequential layer-wise driver shared by every solver and every model family.

1. Capture the inputs of the first block once, with a forward pre-hook that keeps *every* keyword
   argument the model passes (attention mask, position ids, position embeddings, cache position …),
   so a new transformers release cannot silently drop one (docs/evaluation.md, "Lessons from the reference repositories").
2. For each block in turn: move it to the compute device; hook its prunable linears to accumulate
   statistics (:class:`pruning.stats.LayerStats`); run the calibration windows through it; call the
   solver on every linear; remove the hooks; re-run the block with the pruned weights to produce the
   next block's inputs; move it back.

By default every sublayer of a block is calibrated from one pass through the still-dense block (the
reference default); ``true_sequential=True`` re-runs the block per group of sublayers
(``FamilyAdapter.sequential_groups``), so later groups see the already-pruned earlier ones.

With ``heldout`` windows (not in the references) a second set of inputs travels through the same
blocks beside the calibration inputs; their Hessians are accumulated at the same points but never
reach the solver, and each layer's row gets ``heldout_rel_error`` = ``‖(W − W')X_h‖² / ‖WX_h‖²`` on
them: how much of a solver's layer-error gain is fitted to its own calibration windows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pruning.adapters import FamilyAdapter
from pruning.offload import ResidentStore
from pruning.solvers import Solver, SolverResult
from pruning.solvers.common import relative_error
from pruning.sparsity import Sparsity
from pruning.stats import LayerStats

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


@dataclass
class EngineReport:
    layers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def _layer_row(adapter, bi: int, name: str, layer, res, seconds: float, target: Sparsity) -> dict:
    row = {"name": f"{adapter.blocks_path}.{bi}.{name}", "block": bi, "layer": name,
           "shape": list(layer.weight.shape), "target": str(target), "sparsity": float(res.mask.float().mean()),
           "rel_error": res.error, "solver_s": round(seconds, 4)}
    row.update({k: v for k, v in res.info.items() if v not in (None, False, 0)})
    return row


def _check_finite(t: torch.Tensor, message: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(message)


def _unpruned(layer) -> SolverResult:
    """A layer whose target is 0 (a profile can ask for it): left as it is, no solver call."""
    return SolverResult(layer.weight.data, torch.zeros_like(layer.weight.data, dtype=torch.bool), 0.0)


def _solve_layer(solver, adapter, bi: int, name: str, layer, target: Sparsity, params: dict, stats=None) -> tuple[dict, float]:
    """Solve one layer, check it, write the new weight back; returns its report row and solver seconds."""
    t0 = time.perf_counter()
    if target.ratio == 0:
        res = _unpruned(layer)
    elif stats is None:
        res = solver.fn(layer.weight.data, target, **params)
    else:
        res = solver.fn(layer.weight.data, target, H=stats.H, sq_norms=stats.sq_norms, **params)
    if layer.weight.device.type == "cuda":
        torch.cuda.synchronize(layer.weight.device)
    dt = time.perf_counter() - t0
    _check_finite(res.weight, f"block {bi}, layer {name}: the {solver.fn.__name__} solver returned non-finite weights")
    layer.weight.data = res.weight.to(layer.weight.dtype).reshape(layer.weight.shape)
    return _layer_row(adapter, bi, name, layer, res, dt, target), dt


def _prune_without_data(model, adapter, solver, sparsity, params, t_total, store, targets=None) -> "EngineReport":
    """Solvers that read only the weights (magnitude) with no error report: no forward pass at all."""
    report = EngineReport()
    solver_s = 0.0
    for bi, block in enumerate(tqdm(adapter.blocks(model), desc=f"prune {sparsity}", unit="block")):
        store.hold(bi, block)
        for n, layer in adapter.prunable(block).items():
            row, dt = _solve_layer(solver, adapter, bi, n, layer, targets(bi, n) if targets else sparsity, params)
            solver_s += dt
            report.layers.append(row)
        store.put_back(bi, block)
    report.timings = {"calib_forward_s": 0.0, "solver_s": round(solver_s, 3),
                      "prune_total_s": round(time.perf_counter() - t_total, 3)}
    return report


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(model, adapter: FamilyAdapter, windows: torch.Tensor, batch_size: int = 1):
    """Hidden states entering block 0 and the keyword arguments it receives, one entry per batch."""
    block0 = adapter.blocks(model)[0]
    inputs, kwargs_list = [], []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append(hidden)
        kwargs_list.append(kwargs)
        raise _StopForward

    device = next(model.parameters()).device
    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in windows.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return inputs, kwargs_list


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _block_statistics(block, bi, adapter, linears, group, inputs, kwargs_list, want_h, want_norms, device,
                      keep_outputs: bool = False):
    """Run the calibration inputs through ``block`` with hooks accumulating the statistics of the
    linears in ``group``; returns the statistics and (``keep_outputs``) the block's outputs."""
    stats = {n: LayerStats(linears[n].in_features, hessian=want_h, norms=want_norms, device=device) for n in group}
    taps = {t: src for t, src in adapter.input_taps if t in group and src in linears}
    batch = {"sequences": 1}  # of the forward pass running now: a flattened linear input holds that many
    handles = [linears[n].register_forward_hook(
        lambda mod, inp, out, n=n: stats[n].add_batch(inp[0].detach(), batch["sequences"]))
        for n in group if n not in taps]
    handles += [linears[src].register_forward_hook(
        lambda mod, inp, out, n=t: stats[n].add_batch(out[..., :linears[n].in_features].detach(), batch["sequences"]))
        for t, src in taps.items()]
    outputs = []
    try:
        for x, kw in zip(inputs, kwargs_list):
            batch["sequences"] = x.shape[0]
            y = block(x, **kw)
            if keep_outputs:
                outputs.append(_first_output(y))
    finally:
        for h in handles:
            h.remove()
    silent = [n for n in group if stats[n].nsamples == 0]
    if silent:
        raise RuntimeError(
            f"block {bi}: no calibration input reached {silent}: the model uses their weights without "
            f"calling the module, so forward hooks never fire. Add an input tap for them to the "
            f"{adapter.family} adapter (pruning/adapters.py)")
    return stats, outputs


@torch.no_grad()
def block_wanda_scores(model, adapter: FamilyAdapter, windows: torch.Tensor, score, *, device=None,
                       batch_size: int = 1, store=None) -> list:
    """One pass through the *dense* model (OWL's first pass): for each block, ``score(block_index,
    {name: |W| · sqrt(‖X_j‖²)})`` on its prunable linears; the dense block's outputs feed the next block.
    Returns the scores per block."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    store = store or ResidentStore()
    inputs, kwargs_list = capture_block_inputs(model, adapter, windows, batch_size)
    inputs = [_to(x, device) for x in inputs]
    kwargs_list = [_to(k, device) for k in kwargs_list]
    out = []
    for bi, block in enumerate(tqdm(adapter.blocks(model), desc="outlier scores (dense)", unit="block")):
        store.hold(bi, block, device)
        linears = adapter.prunable(block)
        stats, inputs = _block_statistics(block, bi, adapter, linears, tuple(linears), inputs, kwargs_list,
                                          False, True, device, keep_outputs=True)
        out.append(score(bi, {n: linears[n].weight.detach().float().abs() * stats[n].sq_norms.sqrt().unsqueeze(0)
                              for n in linears}))
        store.put_back(bi, block)
    return out


@torch.no_grad()
def prune_model(model, adapter: FamilyAdapter, windows: torch.Tensor | None, solver: Solver, sparsity: Sparsity,
                params: dict | None = None, *, device=None, true_sequential: bool = False,
                report_error: bool = True, batch_size: int = 1, store=None, targets=None,
                heldout: torch.Tensor | None = None) -> EngineReport:
    """Prune every prunable linear of every block in place; returns the per-layer report and timings.

    ``store``: where the blocks live between their turns (:class:`pruning.offload.ResidentStore`, the
    default: in memory; :class:`pruning.offload.BlockStore`: on disk, each loaded, pruned, written back
    and released in turn, so one block is in memory at a time). ``targets(block, name)``
    (:class:`pruning.allocation.Allocation`): per-layer targets instead of ``sparsity`` everywhere.
    ``heldout``: token windows, disjoint from ``windows``, on which every layer's error is measured too
    (``heldout_rel_error``, ``timings.heldout_forward_s``); they never reach the solver."""
    params = dict(params or {})
    report = EngineReport()
    t_total = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    store = store or ResidentStore()
    for name, m in adapter.prunable(adapter.blocks(model)[0]).items():
        sparsity.check_width(m.in_features, name)

    fit = solver.needs_data(report_error)  # False: the solver fits nothing; only held-out windows (if any) travel
    if not fit and heldout is None:
        return _prune_without_data(model, adapter, solver, sparsity, params, t_total, store, targets)
    if fit and windows is None:
        raise ValueError(f"{solver.fn.__name__} needs calibration windows")
    t0 = time.perf_counter()
    inputs, kwargs_list = capture_block_inputs(model, adapter, windows, batch_size) if fit else ([], [])
    inputs = [_to(x, device) for x in inputs]
    kwargs_list = [_to(k, device) for k in kwargs_list]
    forward_s = time.perf_counter() - t0
    held = None
    if heldout is not None:
        t0 = time.perf_counter()
        held = [[_to(o, device) for o in part] for part in capture_block_inputs(model, adapter, heldout, batch_size)]
        heldout_s = time.perf_counter() - t0
    solver_s = 0.0
    want_h = solver.needs_hessian or report_error

    blocks = adapter.blocks(model)
    for bi, block in enumerate(tqdm(blocks, desc=f"prune {sparsity}", unit="block")):
        store.hold(bi, block, device)
        linears = adapter.prunable(block)
        if true_sequential:
            groups = [tuple(n for n in g if n in linears) for g in adapter.sequential_groups]
            rest = tuple(n for n in linears if not any(n in g for g in groups))
            groups = [g for g in groups + [rest] if g]
        else:
            groups = [tuple(linears)]
        for group in groups:
            t0 = time.perf_counter()
            stats, _ = _block_statistics(block, bi, adapter, linears, group, inputs, kwargs_list, want_h,
                                         solver.needs_norms, device) if fit else ({}, None)
            forward_s += time.perf_counter() - t0
            if held is not None:
                t0 = time.perf_counter()
                held_stats, _ = _block_statistics(block, bi, adapter, linears, group, *held, True, False, device)
                heldout_s += time.perf_counter() - t0
            for n in group:
                dense_w = linears[n].weight.data.clone() if held is not None else None
                row, dt = _solve_layer(solver, adapter, bi, n, linears[n], targets(bi, n) if targets else sparsity,
                                       params, stats.get(n))
                if held is not None:
                    row["heldout_rel_error"] = relative_error(dense_w.float(), linears[n].weight.data.float(),
                                                              held_stats.pop(n).H)
                solver_s += dt
                report.layers.append(row)
                stats.pop(n, None)
        t0 = time.perf_counter()
        inputs = [_first_output(block(x, **kw)) for x, kw in zip(inputs, kwargs_list)]
        forward_s += time.perf_counter() - t0
        for x in inputs:
            _check_finite(x, f"block {bi}: the pruned block's outputs are not finite (its inputs were "
                             f"{'finite' if bi else 'the embeddings'}); the model or its calibration windows overflow")
        if held is not None:
            t0 = time.perf_counter()
            held[0] = [_first_output(block(x, **kw)) for x, kw in zip(*held)]
            heldout_s += time.perf_counter() - t0
        store.put_back(bi, block)
    report.timings = {"calib_forward_s": round(forward_s, 3), "solver_s": round(solver_s, 3),
                      "prune_total_s": round(time.perf_counter() - t_total, 3)}
    if held is not None:
        report.timings["heldout_forward_s"] = round(heldout_s, 3)
    return report

"""The sequential layer-wise driver shared by every solver and every model family.

1. Capture the inputs of the first block once, keeping *every* keyword argument the model passes
   (attention mask, position ids, position embeddings, cache position …), each block's own where they
   differ (Gemma-3), and check that replaying the blocks with them reproduces the model's forward
   (:mod:`pruning.capture`; docs/evaluation.md, "Lessons from the reference repositories").
2. For each block in turn: move it to the compute device; hook its prunable linears to accumulate
   statistics while the calibration windows run through it (:class:`pruning.block_pass.BlockPass`;
   linears reading one tensor, q/k/v and gate/up, share one accumulation); call the solver on every
   linear; re-run the block with the pruned weights to produce the next block's inputs; move it back.

What the engine does is set by two specs passed whole: :class:`pruning.spec.EngineSpec` (the job's
``engine`` section: batch size, device, ``true_sequential``, the error reports) and
:class:`pruning.spec.FitSpec` (the method's engine knobs: the dense-output target, ``true_sequential``).

By default every sublayer of a block is calibrated from one pass through the still-dense block (the
reference default); ``true_sequential=True`` re-runs the block per group of sublayers
(``FamilyAdapter.sequential_groups``), so later groups see the already-pruned earlier ones.

With ``method.output_target=dense`` (not in the references) the dense model's inputs travel too: each
calibration window also runs through the still-dense block from its dense input, hooks pair the two
inputs of every linear token for token (``C``, :meth:`pruning.stats.LayerStats.add_cross`), and each
solver gets ``W*`` instead of ``W`` (:mod:`pruning.solvers.dense_target`). The dense stream does not depend
on pruning, so with ``true_sequential`` one dense pass per block keeps every linear's dense input until its
group is solved (``engine.dense_inputs=stored``, the default); ``recompute`` instead runs one dense pass per
group with the block's dense weights put back (the earlier groups are pruned by then): less memory, more
forward time, the same statistics bit for bit. Each layer's error against the dense model's own output
(``dense_rel_error``) needs the dense inputs' own ``H`` too and is reported only with ``engine.dense_error``.

With ``heldout`` windows (not in the references) a second set of inputs travels through the same
blocks beside the calibration inputs; their Hessians are accumulated at the same points but never
reach the solver, and each layer's row gets ``heldout_rel_error`` = ``‖(W − W')X_h‖² / ‖WX_h‖²`` on
them: how much of a solver's layer-error gain is fitted to its own calibration windows.

Across several processes (``comm``, :mod:`pruning.distributed`) each rank runs its own contiguous shard of the
windows (and of the dense and held-out streams) through every block; the statistics of a group are merged
across ranks in rank order before any solver reads them, the group's linears are solved on different ranks and
their weights broadcast, so every rank enters the next block with the same weights. ``engine.shards`` does the
same accumulation in one process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pruning.adapters import FamilyAdapter
from pruning.block_pass import BlockPass
from pruning.capture import BlockKwargs, capture_block_inputs, check_replay, first_output, to_device
from pruning.distributed import LOCAL, Comm, balance, batch_parts
from pruning.offload import ResidentStore
from pruning.resume import agree
from pruning.reuse import OutputReuse
from pruning.solvers import ENGINE_KNOBS, OUTPUT_TARGETS, Solver, SolverResult
from pruning.solvers.common import relative_error
from pruning.solvers.dense_target import dense_output_error, dense_target_correction, dense_target_weights
from pruning.sparsity import Sparsity
from pruning.spec import EngineSpec, FitSpec

log = logging.getLogger(__name__)


@dataclass
class EngineReport:
    layers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    replay_rel_diff: float | None = None  # check_replay's largest block difference (None: not checked)
    block_kwargs: str | None = None  # "shared" (block 0's serve every block) | "per_block"; None: no capture
    resumed_from_block: int | None = None  # the prune went on from a saved state at this block (pruning/resume.py)
    rank_timings: list | None = None  # a distributed prune: every rank's timings, in rank order
    reused_calls: int = 0  # submodule calls answered from the last pass's outputs (engine.reuse_outputs)

    def engine_info(self) -> dict:
        """What a record keeps of how the engine ran (``protocol.engine``; its revision is
        ``versions.engine_revision``, written for every job)."""
        out = {"block_kwargs": self.block_kwargs, "replay_max_rel_diff": self.replay_rel_diff}
        if self.resumed_from_block is not None:
            out["resumed_from_block"] = self.resumed_from_block
        if self.reused_calls:
            out["reused_module_calls"] = self.reused_calls
        return out


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


@dataclass
class _Stream:
    """Block inputs travelling through the blocks beside the calibration inputs (the held-out windows)."""
    inputs: list
    kwargs: "BlockKwargs"


def _to_dense_target(layer, stats, percdamp: float, alpha: float, cache: dict, last: bool,
                     keep_c: bool) -> tuple[float, float]:
    """``method.output_target=dense``: replace the layer's weight by ``W*`` (:mod:`pruning.solvers.dense_target`)
    before its solver runs; returns the seconds taken (counted as solver time) and ``‖W* − W‖ / ‖W‖``.
    ``cache`` keeps the last correction: linears reading the same input share one statistics object
    (:class:`pruning.block_pass._SharedInputs`), so one correction serves them all; ``last``: no later linear of
    the group reads it (what it holds is released as it is spent). Unless ``keep_c`` (the dense-output error
    report reads ``C``), ``C`` is given up to the correction, which forms ``C − H`` in its storage."""
    t0 = time.perf_counter()
    w = layer.weight.data.float()
    if cache.get("stats") is not stats:
        cache.update(stats=stats, correction=dense_target_correction(stats.H, stats.C, percdamp, overwrite_c=not keep_c))
        if not keep_c:
            stats.C = None
    corr = cache["correction"]  # None: C == H, nothing moves
    target = (w if corr is None
              else dense_target_weights(w, stats.H, stats.C, percdamp, alpha, correction=corr, last=last))
    shift = float(torch.linalg.norm(target - w) / torch.linalg.norm(w).clamp_min(1e-30))
    layer.weight.data = target.to(layer.weight.dtype)
    return time.perf_counter() - t0, round(shift, 6)


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


class _Pruner:
    """What travels from block to block while :func:`prune_model` runs: the calibration inputs (and the
    dense model's, and the held-out windows'), the blocks' keyword arguments, the report and the clocks."""

    def __init__(self, model, adapter: FamilyAdapter, solver: Solver, sparsity: Sparsity, params: dict,
                 engine: EngineSpec, fit: FitSpec, device: torch.device, store, targets, comm: Comm = LOCAL):
        self.model, self.adapter, self.solver, self.sparsity, self.params = model, adapter, solver, sparsity, params
        self.fit, self.device, self.store, self.targets, self.comm = fit, device, store, targets, comm
        self.batch_size, self.shards = engine.batch_size, engine.shards
        self.parts = self.held_parts = None  # engine.shards > 1: the batch ranges accumulated apart
        self.cost_hint: dict = {}  # each linear's solver seconds in the last block: how ranks share a group's solves
        self.true_sequential = engine.true_sequential or fit.true_sequential
        self.dense_stream = fit.dense_target or engine.dense_error  # the dense model's block inputs travel too
        self.dense_report = engine.dense_error  # each layer's dense_rel_error (needs G and the dense weights)
        self.store_dense = engine.dense_inputs == "stored"
        self.reuse_outputs = engine.reuse_outputs
        self.want_h = solver.needs_hessian or engine.report_error or engine.dense_error
        self.report = EngineReport()
        self.forward_s = self.solver_s = self.heldout_s = self.stats_s = self.dense_s = self.report_s = 0.0
        self.inputs, self.kwargs, self.dense_inputs, self.held = [], BlockKwargs([[]], shared=True), None, None
        self.earlier_s = 0.0  # pruning time of the runs before a resume

    def capture(self, windows: torch.Tensor | None, heldout: torch.Tensor | None) -> None:
        """The first block's inputs (``windows``: None when only held-out windows travel), the replay check,
        and the held-out windows' inputs."""
        t0 = time.perf_counter()
        windows, heldout = self.comm.shard(windows, self.batch_size), self.comm.shard(heldout, self.batch_size)
        if windows is not None:
            self.parts = batch_parts(windows.shape[0], self.batch_size, self.shards)
        if heldout is not None:
            self.held_parts = batch_parts(heldout.shape[0], self.batch_size, self.shards)
        home = next(self.model.parameters()).device
        if not self.store.on_disk and (home.type, home.index or 0) == (self.device.type, self.device.index or 0):
            # (blocks on disk would all be loaded once more, a model held elsewhere than the compute device
            # would run the check there: not checked)
            self.report.replay_rel_diff = check_replay(self.model, self.adapter,
                                                       (windows if windows is not None else heldout)[:1])
        if windows is not None:
            inputs, kwargs = capture_block_inputs(self.model, self.adapter, windows, self.batch_size)
            self.inputs, self.kwargs = [to_device(x, self.device) for x in inputs], kwargs.to(self.device)
            self.report.block_kwargs = "shared" if kwargs.shared else "per_block"
        self.dense_inputs = list(self.inputs) if self.dense_stream else None  # block 0: the same
        self.forward_s += time.perf_counter() - t0
        if heldout is not None:
            t0 = time.perf_counter()
            held_inputs, held_kwargs = capture_block_inputs(self.model, self.adapter, heldout, self.batch_size)
            self.held = _Stream([to_device(x, self.device) for x in held_inputs], held_kwargs.to(self.device))
            self.heldout_s += time.perf_counter() - t0

    CLOCKS = ("forward_s", "solver_s", "heldout_s", "stats_s", "dense_s", "report_s")

    def state(self, bi: int, t_total: float) -> dict:
        """What travels to the next block after block ``bi`` (pruning/resume.py)."""
        return {"next_block": bi + 1, "inputs": self.inputs, "dense_inputs": self.dense_inputs,
                "held_inputs": self.held.inputs if self.held is not None else None, "layers": self.report.layers,
                "clocks": {k: getattr(self, k) for k in self.CLOCKS},
                "elapsed_s": self.earlier_s + time.perf_counter() - t_total}

    def restore(self, state: dict | None) -> int:
        """Go on from a saved :meth:`state`; the first block to prune (0 without one)."""
        if state is None:
            return 0
        self.inputs = [x.to(self.device) for x in state["inputs"]]
        self.dense_inputs = None if state["dense_inputs"] is None else [x.to(self.device) for x in state["dense_inputs"]]
        if self.held is not None:
            self.held.inputs = [x.to(self.device) for x in state["held_inputs"]]
        self.report.layers = list(state["layers"])
        for k, v in state["clocks"].items():
            setattr(self, k, getattr(self, k) + v)  # this run's capture, plus the earlier runs' clocks
        self.earlier_s = state["elapsed_s"]
        self.report.resumed_from_block = state["next_block"]
        log.info("resume: going on from block %d (the earlier run's %.0f s of pruning kept)", state["next_block"],
                 state["elapsed_s"])
        return state["next_block"]

    def groups(self, linears: dict) -> list[tuple]:
        """The block's linears in the groups calibrated one after another (one group unless true_sequential)."""
        if not self.true_sequential:
            return [tuple(linears)]
        groups = [tuple(n for n in g if n in linears) for g in self.adapter.sequential_groups]
        rest = tuple(n for n in linears if not any(n in g for g in groups))
        return [g for g in groups + [rest] if g]

    def block(self, bi: int, block, fit_data: bool) -> None:
        """Calibrate, solve and re-run one block; its outputs become the next block's inputs."""
        linears = self.adapter.prunable(block)
        groups = self.groups(linears)
        # group by group with the dense stream: its inputs of every linear from one dense pass per block
        # (engine.dense_inputs=stored), or one pass per group with the block's dense weights put back (recompute)
        per_group_dense = fit_data and self.dense_stream and len(groups) > 1
        stored = per_group_dense and self.store_dense
        # the block's dense weights: the reference of the dense-output and held-out errors, and what recomputed
        # dense passes run with
        keep = self.dense_report or self.held is not None or (per_group_dense and not stored)
        block_dense = {n: m.weight.data.clone() for n, m in linears.items()} if keep else None
        # group by group, a submodule the last pass computed before the group just solved answers from that output
        reuse = (OutputReuse(block, linears, self.reuse_outputs, self.adapter.input_taps)
                 if fit_data and len(groups) > 1 else None)
        calib = BlockPass(block, bi, self.adapter, linears, self.kwargs.of(bi) if fit_data else [], self.want_h,
                          self.solver.needs_norms, self.device, gram=self.dense_report, merge=self.comm.merge_stats,
                          reuse=reuse)
        t0 = time.perf_counter()
        kept, dense_out = calib.dense_pass(self.dense_inputs) if stored else (None, None)
        self.forward_s += time.perf_counter() - t0
        for gi, group in enumerate(groups):
            last = gi == len(groups) - 1
            t0 = time.perf_counter()
            if not fit_data:
                stats = {}
            elif stored:
                stats, _ = calib.statistics(group, self.inputs, dense_stored=kept, parts=self.parts)
                for n in group:
                    kept.pop(n, None)  # this group's dense inputs are spent
            else:
                stats, out = calib.statistics(group, self.inputs, keep_outputs=self.dense_stream and last,
                                              dense_inputs=self.dense_inputs,
                                              dense_weights=block_dense if len(groups) > 1 else None, parts=self.parts)
                dense_out = out if self.dense_stream and last else dense_out
            self.forward_s += time.perf_counter() - t0
            held_stats = self.held_statistics(block, bi, linears, group)
            owners = self.owners(group, linears)
            mine = tuple(n for n in group if owners[n] == self.comm.rank)
            shifts = self.dense_targets(mine, linears, stats)
            rows = {n: self.solve(bi, n, linears[n], stats, block_dense, held_stats, shifts[n]) for n in mine}
            self.report.layers += self.share(group, linears, rows, owners)
            for n in group:
                stats.pop(n, None)
        self.stats_s, self.dense_s = self.stats_s + calib.stats_s, self.dense_s + calib.dense_s
        self.propagate(bi, block, dense_out, reuse)
        self.report.reused_calls += reuse.reused if reuse is not None else 0

    def held_statistics(self, block, bi: int, linears: dict, group: tuple) -> dict | None:
        if self.held is None:
            return None
        t0 = time.perf_counter()
        held_stats, _ = BlockPass(block, bi, self.adapter, linears, self.held.kwargs.of(bi), True, False, self.device,
                                  merge=self.comm.merge_stats).statistics(group, self.held.inputs, parts=self.held_parts)
        self.heldout_s += time.perf_counter() - t0
        return held_stats

    def owners(self, group: tuple, linears: dict) -> dict:
        """Which rank solves each linear of ``group`` (:func:`pruning.distributed.balance`; all rank 0's in one
        process): by the last block's solver seconds of the same linear, else ``rows · cols²``."""
        if not self.comm.active:
            return {n: 0 for n in group}
        costs = {n: self.cost_hint.get(n, float(linears[n].out_features * linears[n].in_features ** 2)) for n in group}
        return balance(costs, self.comm.world)

    def share(self, group: tuple, linears: dict, rows: dict, owners: dict) -> list[dict]:
        """Every rank gets each linear's new weight and report row from the rank that solved it; returns the rows
        in ``group``'s order."""
        if not self.comm.active:
            return [rows[n] for n in group]
        out = []
        for n in group:
            self.comm.broadcast_(linears[n].weight.data, owners[n])
            out.append(self.comm.broadcast_object(rows.get(n), owners[n]))
            self.cost_hint[n] = out[-1]["solver_s"]
        return out

    def dense_targets(self, group: tuple, linears: dict, stats: dict) -> dict:
        """``output_target=dense``: every linear of the group gets ``W*`` in place of its weight before any of
        them is solved, so each shared correction (q/k/v, gate/up) is freed before the solvers run, and so is
        ``C`` (as the correction is formed) unless the dense-output error report reads it. Returns
        ``(seconds, shift)`` per linear."""
        if not self.fit.dense_target:
            return {n: (0.0, None) for n in group}
        cache: dict = {}
        return {n: _to_dense_target(linears[n], stats[n], self.fit.percdamp, self.fit.target_alpha, cache,
                                    last=all(stats[m] is not stats[n] for m in group[i + 1:]),
                                    keep_c=self.dense_report)
                for i, n in enumerate(group)}

    def solve(self, bi: int, n: str, layer, stats: dict, block_dense: dict | None, held_stats: dict | None,
              shift: tuple) -> dict:
        """One layer (its dense target already in place): the solver, and the errors of its report row."""
        shift_s, shift = shift
        target = self.targets(bi, n) if self.targets else self.sparsity
        row, dt = _solve_layer(self.solver, self.adapter, bi, n, layer, target, self.params, stats.get(n))
        if shift is not None:
            row["target_shift"] = shift
        dense_w = block_dense[n] if block_dense is not None else None
        t0 = time.perf_counter()
        if self.dense_report:
            st = stats[n]
            row["dense_rel_error"] = dense_output_error(dense_w.float(), layer.weight.data.float(), st.H, st.C, st.G)
        if held_stats is not None:
            row["heldout_rel_error"] = relative_error(dense_w.float(), layer.weight.data.float(), held_stats.pop(n).H)
        self.report_s += time.perf_counter() - t0
        self.solver_s += dt + shift_s
        stats.pop(n, None)
        return row

    def propagate(self, bi: int, block, dense_out: list | None, reuse: OutputReuse | None = None) -> None:
        """The pruned block's outputs (and the held-out windows') become the next block's inputs; ``reuse``: the
        submodules the last group's pass left unchanged answer from their outputs."""
        t0 = time.perf_counter()
        outputs = []
        with reuse.pass_over((), {}, record=False) if reuse is not None else contextlib.nullcontext():
            for i, (x, kw) in enumerate(zip(self.inputs, self.kwargs.of(bi))):
                if reuse is not None:
                    reuse.window(i)
                outputs.append(first_output(block(x, **kw)))
        self.inputs = outputs
        self.forward_s += time.perf_counter() - t0
        if self.dense_stream:
            self.dense_inputs = dense_out
        for x in self.inputs:
            _check_finite(x, f"block {bi}: the pruned block's outputs are not finite (its inputs were "
                             f"{'finite' if bi else 'the embeddings'}); the model or its calibration windows overflow")
        if self.held is not None:
            t0 = time.perf_counter()
            self.held.inputs = [first_output(block(x, **kw)) for x, kw in zip(self.held.inputs, self.held.kwargs.of(bi))]
            self.heldout_s += time.perf_counter() - t0

    def timings(self, t_total: float) -> dict:
        out = {"calib_forward_s": round(self.forward_s, 3), "solver_s": round(self.solver_s, 3),
               "prune_total_s": round(time.perf_counter() - t_total, 3),
               # parts of calib_forward_s: statistics accumulated in the hooks, the dense stream's passes
               "calib_stats_s": round(self.stats_s, 3), "calib_dense_forward_s": round(self.dense_s, 3),
               "error_report_s": round(self.report_s, 3)}  # dense-output and held-out errors of the layers' rows
        if self.held is not None:
            out["heldout_forward_s"] = round(self.heldout_s, 3)
        return out


def _check_settings(solver: Solver, params: dict, fit: FitSpec) -> None:
    misplaced = sorted(set(params) & set(ENGINE_KNOBS))
    if misplaced:
        raise ValueError(f"{misplaced} are engine knobs, not solver arguments: pass them in a FitSpec "
                         "(pruning.spec.split_params splits a method's knobs)")
    if fit.output_target not in OUTPUT_TARGETS:
        raise ValueError(f"output_target={fit.output_target!r}; allowed: {', '.join(OUTPUT_TARGETS)}")
    if fit.dense_target and not solver.needs_hessian:
        raise ValueError("output_target=dense needs a solver that reads H (sparsegpt, apt, alps)")


@torch.no_grad()
def prune_model(model, adapter: FamilyAdapter, windows: torch.Tensor | None, solver: Solver, sparsity: Sparsity,
                params: dict | None = None, engine: EngineSpec | None = None, fit: FitSpec | None = None, *,
                store=None, targets=None, heldout: torch.Tensor | None = None, progress=None,
                comm: Comm = LOCAL) -> EngineReport:
    """Prune every prunable linear of every block in place; returns the per-layer report and timings.

    ``params``: the solver's own knobs; ``engine`` (:class:`pruning.spec.EngineSpec`, the job's ``engine``
    section): batch size, device, ``true_sequential``, the error reports; ``fit``
    (:class:`pruning.spec.FitSpec`, the method's engine knobs): the dense-output target and whether the method
    calibrates group by group. ``store``: where the blocks live between their turns
    (:class:`pruning.offload.ResidentStore`, the default: in memory; :class:`pruning.offload.BlockStore`: on
    disk, each loaded, pruned, written back and released in turn, so one block is in memory at a time).
    ``targets(block, name)`` (:class:`pruning.allocation.Allocation`): per-layer targets instead of
    ``sparsity`` everywhere. ``heldout``: token windows, disjoint from ``windows``, on which every layer's
    error is measured too (``heldout_rel_error``, ``timings.heldout_forward_s``); they never reach the solver.
    ``engine.dense_error``: the dense model's inputs travel beside the calibration inputs, as for
    ``output_target=dense``, and every layer's row gets ``dense_rel_error`` (its error against the dense
    model's own layer output) whatever the method fits; the weights are those of the run without it.
    ``progress`` (:class:`pruning.resume.Progress`, blocks on disk only): saved after every block, and a saved
    state of the same config makes the prune go on from the block after it. ``comm``
    (:mod:`pruning.distributed`): this process's rank among several pruning one model together; the windows
    are split between them, their statistics combined and a group's solves shared out; every rank ends with
    the same weights. ``engine.shards`` > 1 in one process: the statistics accumulated in that many shards
    and combined as that many ranks would."""
    engine, fit, params = engine or EngineSpec(), fit or FitSpec(), dict(params or {})
    _check_settings(solver, params, fit)
    t_total = time.perf_counter()
    device = torch.device(engine.device) if engine.device is not None else next(model.parameters()).device
    store = store or ResidentStore()
    for name, m in adapter.prunable(adapter.blocks(model)[0]).items():
        sparsity.check_width(m.in_features, name)
    fit_data = solver.needs_data(engine.report_error or engine.dense_error)  # False: only held-out windows travel
    if not fit_data and heldout is None:
        return _prune_without_data(model, adapter, solver, sparsity, params, t_total, store, targets)
    if fit_data and windows is None:
        raise ValueError(f"{solver.fn.__name__} needs calibration windows")
    if comm.active and engine.shards != 1:
        raise ValueError("a distributed prune does not take engine.shards: its ranks are the shards")
    run = _Pruner(model, adapter, solver, sparsity, params, engine, fit, device, store, targets, comm)
    run.capture(windows if fit_data else None, heldout)
    blocks = adapter.blocks(model)
    if progress is not None and not store.on_disk:
        raise ValueError("progress (resuming a prune) needs the blocks on disk: a pruning.offload.BlockStore")
    start = run.restore(agree(progress, comm)) if progress is not None else 0
    if progress is not None:
        store.settle(start)
    for bi in tqdm(range(start, len(blocks)), desc=f"prune {sparsity}", unit="block", initial=start, total=len(blocks)):
        store.hold(bi, blocks[bi], device)
        run.block(bi, blocks[bi], fit_data)
        if progress is None:
            store.put_back(bi, blocks[bi])
        else:  # the pruned block replaces the dense one only once the progress counts it as done
            store.stage(bi, blocks[bi])
            progress.save(run.state(bi, t_total))
            comm.barrier()  # every rank's progress counts the block done before any rank commits it (resume.agree)
            store.commit(bi)
    run.report.timings = run.timings(t_total - run.earlier_s)
    if comm.active:
        run.report.rank_timings = comm.gather_objects(run.report.timings)
    return run.report

"""The sequential layer-wise driver shared by every solver and every model family.

1. Capture the inputs of the first block once, keeping *every* keyword argument the model passes
   (attention mask, position ids, position embeddings, cache position …), so a new transformers
   release cannot silently drop one (docs/evaluation.md, "Lessons from the reference repositories").
   The references reuse block 0's keyword arguments for every block. Models whose blocks receive
   different ones (Gemma-3: sliding-window and full-attention layers with their own rotary
   embeddings and masks) would then be calibrated on activations the model never produces. So the
   blocks are replaced by stand-ins that record their arguments and pass the hidden states on
   (no block runs); when some block's arguments differ from block 0's on the first batch, every
   block's own are kept for every batch (:class:`BlockKwargs`), otherwise block 0's serve all, as
   in the references.
   Before pruning, one window is run through the dense model and replayed block by block
   (:func:`check_replay`): a block whose replayed output differs from the model's own stops the job.
2. For each block in turn: move it to the compute device; hook its prunable linears to accumulate
   statistics (:class:`pruning.stats.LayerStats`; linears reading one tensor, q/k/v and gate/up, share
   one accumulation: :class:`_SharedInputs`); run the calibration windows through it; call the
   solver on every linear; remove the hooks; re-run the block with the pruned weights to produce the
   next block's inputs; move it back.

By default every sublayer of a block is calibrated from one pass through the still-dense block (the
reference default); ``true_sequential=True`` re-runs the block per group of sublayers
(``FamilyAdapter.sequential_groups``), so later groups see the already-pruned earlier ones.

With ``method.output_target=dense`` (not in the references) the dense model's inputs travel too: each
calibration window also runs through the still-dense block from its dense input, hooks pair the two
inputs of every linear token for token (``C``, :meth:`pruning.stats.LayerStats.add_cross`), and each
solver gets ``W*`` instead of ``W`` (:mod:`pruning.solvers.dense_target`). With ``true_sequential`` each
group's dense pass runs the block with its dense weights put back (the earlier groups are pruned by then).

With ``heldout`` windows (not in the references) a second set of inputs travels through the same
blocks beside the calibration inputs; their Hessians are accumulated at the same points but never
reach the solver, and each layer's row gets ``heldout_rel_error`` = ``‖(W − W')X_h‖² / ‖WX_h‖²`` on
them: how much of a solver's layer-error gain is fitted to its own calibration windows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pruning.adapters import FamilyAdapter
from pruning.offload import ResidentStore
from pruning.solvers import OUTPUT_TARGETS, Solver, SolverResult
from pruning.solvers.common import relative_error
from pruning.solvers.dense_target import dense_output_error, dense_target_correction, dense_target_weights
from pruning.sparsity import Sparsity
from pruning.stats import LayerStats

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


@dataclass
class EngineReport:
    layers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    replay_rel_diff: float | None = None  # check_replay's largest block difference (None: not checked)
    block_kwargs: str | None = None  # "shared" (block 0's serve every block) | "per_block"; None: no capture

    def engine_info(self) -> dict:
        """What a record keeps of how the engine ran (``protocol.engine``; its revision is
        ``versions.engine_revision``, written for every job)."""
        return {"block_kwargs": self.block_kwargs, "replay_max_rel_diff": self.replay_rel_diff}


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


def _to_dense_target(layer, stats, percdamp: float, alpha: float, cache: dict) -> tuple[float, float]:
    """``method.output_target=dense``: replace the layer's weight by ``W*`` (:mod:`pruning.solvers.dense_target`)
    before its solver runs; returns the seconds taken (counted as solver time) and ``‖W* − W‖ / ‖W‖``.
    ``cache`` keeps the last correction: linears reading the same input share one statistics object
    (:class:`_SharedInputs`), so one correction serves them all."""
    t0 = time.perf_counter()
    w = layer.weight.data.float()
    if cache.get("stats") is not stats:
        cache.update(stats=stats, correction=dense_target_correction(stats.H, stats.C, percdamp))
    target = dense_target_weights(w, stats.H, stats.C, percdamp, alpha, correction=cache["correction"])
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


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _same(a, b) -> bool:
    """Whether two captured keyword-argument values are the same (tensors by value)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==: only identity counts
        return False


@dataclass
class BlockKwargs:
    """The keyword arguments the blocks receive, per block and batch: ``of(bi)[batch]``. ``shared``:
    every block receives block 0's (Llama, OPT, Mamba), so only those are kept."""

    per_block: list[list[dict]]  # [block][batch]; one entry (block 0's) when shared
    shared: bool

    def of(self, bi: int) -> list[dict]:
        return self.per_block[0 if self.shared else bi]

    def to(self, device) -> "BlockKwargs":
        memo: dict = {}  # a tensor that several blocks share (one mask, one rotary table) is moved once
        return BlockKwargs([[_to(k, device, memo) for k in batches] for batches in self.per_block], self.shared)


class _Recorder(torch.nn.Module):
    """Stands in for block ``bi`` while the inputs are captured: keeps the keyword arguments it is
    called with and passes the hidden states on unchanged (blocks return their hidden states in
    transformers 5), so capturing runs no block and loads no offloaded one; other attributes are
    read from the block it replaces."""

    def __init__(self, bi: int, block: torch.nn.Module, capture: "_Capture"):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: stays out of parameters() and hooks
        self.bi, self.capture = bi, capture

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, *args, **kwargs):
        return self.capture.record(self.bi, args, kwargs)


class _Capture:
    def __init__(self, n_blocks: int):
        self.inputs: list[torch.Tensor] = []
        self.per_block: list[list[dict]] = [[] for _ in range(n_blocks)]
        self.stop_at = n_blocks - 1  # the first batch is followed through every block
        self.passed = None

    def record(self, bi: int, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if bi == 0:
            self.inputs.append(hidden)
        elif hidden is not self.passed:
            raise RuntimeError(f"capturing block inputs: block {bi} did not receive block {bi - 1}'s output as it "
                               "was returned (the model transforms the hidden states between its blocks), so "
                               "the engine's block-by-block forward would not match the model's")
        self.per_block[bi].append(kwargs)
        if bi >= self.stop_at:
            raise _StopForward
        self.passed = hidden
        return hidden


@torch.no_grad()
def capture_block_inputs(model, adapter: FamilyAdapter, windows: torch.Tensor,
                         batch_size: int = 1) -> tuple[list[torch.Tensor], BlockKwargs]:
    """Hidden states entering block 0, one entry per batch, and the keyword arguments every block
    receives (module docstring, step 1). The blocks are swapped for :class:`_Recorder` stand-ins
    meanwhile, so no block runs."""
    blocks = adapter.blocks(model)
    originals = list(blocks)
    capture = _Capture(len(blocks))
    device = next(model.parameters()).device
    shared = True
    try:
        for bi, block in enumerate(originals):
            blocks[bi] = _Recorder(bi, block, capture)
        for i, batch in enumerate(windows.split(batch_size)):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
            if i == 0:
                differ = [bi for bi in range(1, len(blocks))
                          if not _same(capture.per_block[bi][0], capture.per_block[0][0])]
                shared = not differ
                if shared:  # the references' assumption holds: block 0's arguments serve every block
                    capture.stop_at = 0
                    del capture.per_block[1:]
                else:
                    log.info("blocks %s receive other keyword arguments than block 0 (e.g. their own attention "
                             "type): each block gets its own", differ)
    finally:
        for bi, block in enumerate(originals):
            blocks[bi] = block
    return capture.inputs, BlockKwargs(capture.per_block, shared)


def _to(obj, device, memo: dict | None = None):
    """``obj`` (tensors inside tuples, lists, dicts) on ``device``; ``memo`` (by ``id``) keeps a tensor
    that appears several times one tensor there."""
    if isinstance(obj, torch.Tensor):
        if memo is None:
            return obj.to(device)
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # the source is kept alive so its id is not reused
        return memo[id(obj)][1]
    if isinstance(obj, tuple):
        return tuple(_to(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, memo) for k, v in obj.items()}
    return obj


REPLAY_RTOL = 1e-4  # largest relative difference allowed between a replayed block's output and the model's own


@torch.no_grad()
def check_replay(model, adapter: FamilyAdapter, window: torch.Tensor) -> float:
    """Run ``window`` (``[1, seqlen]`` tokens) through the dense model, then block by block with the captured
    inputs and arguments as the engine does, and compare every block's output with the model's own.
    Raises when one differs by more than :data:`REPLAY_RTOL` (the engine would calibrate on activations the
    model never produces: a family whose blocks need something the capture does not give them);
    returns the largest relative difference."""
    blocks = adapter.blocks(model)
    own = []
    hooks = [b.register_forward_hook(lambda mod, args, out: own.append(_first_output(out))) for b in blocks]
    try:
        model(input_ids=window.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    inputs, kwargs = capture_block_inputs(model, adapter, window)
    x, worst = inputs[0], 0.0
    for bi, block in enumerate(blocks):
        x = _first_output(block(x, **kwargs.of(bi)[0]))
        diff = float((x.float() - own[bi].float()).norm() / own[bi].float().norm().clamp_min(1e-30))
        worst = max(worst, diff)
        if not diff <= REPLAY_RTOL:
            raise RuntimeError(
                f"the engine's block-by-block forward differs from the model's own at block {bi} of the "
                f"{adapter.family} model (relative difference {diff:.2e} > {REPLAY_RTOL:g}): it would calibrate "
                "on activations the model never produces. The block needs inputs the capture does not give "
                "it (pruning/engine.py, capture_block_inputs)")
    return worst


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
    The first calibration window decides; a linear that shared then must share in every later pass, else
    the run stops (its statistics would otherwise mix another linear's inputs in).
    Tensors seen in the running pass are kept referenced until it ends, so no later input of that pass
    can reuse their memory and be taken for the same tensor."""

    def __init__(self):
        self.owners: dict[str, str] = {}  # linear -> the earlier linear whose input it reads
        self.current: dict[tuple, tuple[str, torch.Tensor]] = {}

    def new_pass(self) -> None:
        self.current = {}

    def owner(self, n: str, x: torch.Tensor, index: int, dense: bool) -> str | None:
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)
        first = self.current.setdefault(key, (n, x))[0]
        if index == 0 and not dense:
            if first != n:
                self.owners[n] = first
            return self.owners.get(n)
        owner = self.owners.get(n)
        if owner is not None and owner != first:
            raise RuntimeError(f"block input sharing changed: linear {n} read {owner}'s input on the first calibration "
                               "window but not on this one; the engine shares statistics only between linears that "
                               "always read the same tensor")
        return owner


def _block_statistics(block, bi, adapter, linears, group, inputs, kwargs_list, want_h, want_norms, device,
                      keep_outputs: bool = False, dense_inputs: list | None = None, dense_weights: dict | None = None):
    """Run the calibration inputs through ``block`` with hooks accumulating the statistics of the
    linears in ``group``; returns the statistics and (``keep_outputs``) the block's outputs. A pass
    whose outputs are not needed stops as soon as every linear of ``group`` has seen its input.

    ``dense_inputs`` (``method.output_target=dense``): the dense model's inputs of this block, window
    for window beside ``inputs``; each window then also runs through the dense block from its dense
    input, every linear's statistics get ``C = (2/n) Σ x_dense x_prunedᵀ`` (scaled as ``H``) and the
    returned outputs are the *dense* ones (the next block's dense inputs). ``dense_weights`` (the block's
    linears' dense weights, by name; ``true_sequential``, where earlier groups are already pruned) are
    put in place for that pass and the pruned ones back after it."""
    stats = {n: LayerStats(linears[n].in_features, hessian=want_h, norms=want_norms, device=device) for n in group}
    batch = {"sequences": 1, "dense": False, "index": 0, "stop": False}  # the forward pass running now (a flattened
    seen: dict[str, torch.Tensor] = {}                                    # input holds "sequences" sequences)
    fired: set[str] = set()
    shares = _SharedInputs()

    def tap(n, x):
        owner = shares.owner(n, x, batch["index"], batch["dense"])
        if owner is not None:  # the same tensor as an earlier linear's input (q/k/v, gate/up): its statistics
            stats[n] = stats[owner]
        elif not batch["dense"]:
            stats[n].add_batch(x, batch["sequences"])
            if dense_inputs is not None:
                seen[n] = x
        else:
            stats[n].add_cross(x, seen.pop(n), batch["sequences"])
        fired.add(n)
        if batch["stop"] and len(fired) == len(group):
            raise _StopForward  # the rest of the block would compute nothing this pass needs

    def run(x, kw, dense: bool):
        batch.update(dense=dense, stop=not keep_outputs or (not dense and dense_inputs is not None))
        shares.new_pass()
        fired.clear()
        try:
            return block(x, **kw)
        except _StopForward:
            return None

    handles = _hook_inputs(adapter, linears, group, tap)
    outputs = []
    try:
        for i, (x, kw) in enumerate(zip(inputs, kwargs_list)):
            batch.update(sequences=x.shape[0], index=i)
            y = run(x, kw, False)
            if dense_inputs is not None:
                with _weights(linears, dense_weights):
                    y = run(dense_inputs[i], kw, True)
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
    inputs = [_to(x, device) for x in inputs]
    kwargs = kwargs.to(device)
    out = []
    for bi, block in enumerate(tqdm(adapter.blocks(model), desc="outlier scores (dense)", unit="block")):
        store.hold(bi, block, device)
        linears = adapter.prunable(block)
        stats, inputs = _block_statistics(block, bi, adapter, linears, tuple(linears), inputs, kwargs.of(bi),
                                          False, True, device, keep_outputs=True)
        out.append(score(bi, {n: linears[n].weight.detach().float().abs() * stats[n].sq_norms.sqrt().unsqueeze(0)
                              for n in linears}))
        store.put_back(bi, block)
    return out


@torch.no_grad()
def prune_model(model, adapter: FamilyAdapter, windows: torch.Tensor | None, solver: Solver, sparsity: Sparsity,
                params: dict | None = None, *, device=None, true_sequential: bool = False,
                report_error: bool = True, batch_size: int = 1, store=None, targets=None,
                heldout: torch.Tensor | None = None, dense_error: bool = False) -> EngineReport:
    """Prune every prunable linear of every block in place; returns the per-layer report and timings.

    ``store``: where the blocks live between their turns (:class:`pruning.offload.ResidentStore`, the
    default: in memory; :class:`pruning.offload.BlockStore`: on disk, each loaded, pruned, written back
    and released in turn, so one block is in memory at a time). ``targets(block, name)``
    (:class:`pruning.allocation.Allocation`): per-layer targets instead of ``sparsity`` everywhere.
    ``heldout``: token windows, disjoint from ``windows``, on which every layer's error is measured too
    (``heldout_rel_error``, ``timings.heldout_forward_s``); they never reach the solver. ``dense_error``
    (``engine.dense_error``): the dense model's inputs travel beside the calibration inputs, as for
    ``output_target=dense``, and every layer's row gets ``dense_rel_error`` (its error against the dense
    model's own layer output) whatever the method fits; the weights are those of the run without it."""
    params = dict(params or {})
    output_target = params.pop("output_target", "pruned")  # engine knobs of the method (solvers.ENGINE_KNOBS)
    alpha = params.pop("target_alpha", 1.0)
    true_sequential = bool(params.pop("true_sequential", False)) or true_sequential
    dense_target = output_target == "dense"
    if output_target not in OUTPUT_TARGETS:
        raise ValueError(f"output_target={output_target!r}; allowed: {', '.join(OUTPUT_TARGETS)}")
    if dense_target and not solver.needs_hessian:
        raise ValueError("output_target=dense needs a solver that reads H (sparsegpt, apt, alps)")
    dense_stream = dense_target or dense_error  # the dense model's block inputs travel beside the pruned ones
    report = EngineReport()
    t_total = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    store = store or ResidentStore()
    for name, m in adapter.prunable(adapter.blocks(model)[0]).items():
        sparsity.check_width(m.in_features, name)

    fit = solver.needs_data(report_error or dense_error)  # False: the solver fits nothing; only held-out windows travel
    if not fit and heldout is None:
        return _prune_without_data(model, adapter, solver, sparsity, params, t_total, store, targets)
    if fit and windows is None:
        raise ValueError(f"{solver.fn.__name__} needs calibration windows")
    t0 = time.perf_counter()
    replay = None
    home = next(model.parameters()).device
    if not store.on_disk and (home.type, home.index or 0) == (device.type, device.index or 0):
        # (blocks on disk would all be loaded once more, a model held elsewhere than the compute device
        # would run the check there: not checked)
        replay = check_replay(model, adapter, (windows if fit else heldout)[:1])
    inputs, kwargs = (capture_block_inputs(model, adapter, windows, batch_size) if fit
                      else ([], BlockKwargs([[]], shared=True)))
    inputs = [_to(x, device) for x in inputs]
    kwargs = kwargs.to(device)
    dense_inputs = list(inputs) if dense_stream else None  # the dense model's stream (block 0: the same)
    forward_s = time.perf_counter() - t0
    held = None
    if heldout is not None:
        t0 = time.perf_counter()
        held_inputs, held_kwargs = capture_block_inputs(model, adapter, heldout, batch_size)
        held = _Stream([_to(x, device) for x in held_inputs], held_kwargs.to(device))
        heldout_s = time.perf_counter() - t0
    solver_s = 0.0
    want_h = solver.needs_hessian or report_error or dense_error
    shared: dict = {}  # output_target=dense: the last correction, reused by linears with the same input

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
        # the block's dense weights: the reference of the dense-output and held-out errors, and (true_sequential with
        # the dense stream) what later groups' dense passes run with
        block_dense = {n: m.weight.data.clone() for n, m in linears.items()} if dense_stream or held is not None else None
        for gi, group in enumerate(groups):
            t0 = time.perf_counter()
            stats, dense_out = _block_statistics(block, bi, adapter, linears, group, inputs, kwargs.of(bi), want_h,
                                                 solver.needs_norms, device,
                                                 keep_outputs=dense_stream and gi == len(groups) - 1,
                                                 dense_inputs=dense_inputs,
                                                 dense_weights=block_dense if len(groups) > 1 else None) if fit else ({}, None)
            forward_s += time.perf_counter() - t0
            if held is not None:
                t0 = time.perf_counter()
                held_stats, _ = _block_statistics(block, bi, adapter, linears, group, held.inputs, held.kwargs.of(bi),
                                                  True, False, device)
                heldout_s += time.perf_counter() - t0
            for n in group:
                dense_w = block_dense[n] if block_dense is not None else None
                shift_s, shift = (_to_dense_target(linears[n], stats[n], params.get("percdamp", 0.01), alpha, shared)
                                  if dense_target else (0.0, None))
                row, dt = _solve_layer(solver, adapter, bi, n, linears[n], targets(bi, n) if targets else sparsity,
                                       params, stats.get(n))
                dt += shift_s
                if shift is not None:
                    row["target_shift"] = shift
                if dense_stream:
                    st = stats[n]
                    row["dense_rel_error"] = dense_output_error(dense_w.float(), linears[n].weight.data.float(),
                                                                st.H, st.C, st.G)
                if held is not None:
                    row["heldout_rel_error"] = relative_error(dense_w.float(), linears[n].weight.data.float(),
                                                              held_stats.pop(n).H)
                solver_s += dt
                report.layers.append(row)
                stats.pop(n, None)
        t0 = time.perf_counter()
        inputs = [_first_output(block(x, **kw)) for x, kw in zip(inputs, kwargs.of(bi))]
        forward_s += time.perf_counter() - t0
        if dense_stream:
            dense_inputs = dense_out
        for x in inputs:
            _check_finite(x, f"block {bi}: the pruned block's outputs are not finite (its inputs were "
                             f"{'finite' if bi else 'the embeddings'}); the model or its calibration windows overflow")
        if held is not None:
            t0 = time.perf_counter()
            held.inputs = [_first_output(block(x, **kw)) for x, kw in zip(held.inputs, held.kwargs.of(bi))]
            heldout_s += time.perf_counter() - t0
        store.put_back(bi, block)
    report.timings = {"calib_forward_s": round(forward_s, 3), "solver_s": round(solver_s, 3),
                      "prune_total_s": round(time.perf_counter() - t_total, 3)}
    report.replay_rel_diff = replay
    if fit:
        report.block_kwargs = "shared" if kwargs.shared else "per_block"
    if held is not None:
        report.timings["heldout_forward_s"] = round(heldout_s, 3)
    return report

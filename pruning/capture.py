"""Step 1 of the engine (:mod:`pruning.engine`): the inputs of the first block and the keyword arguments
every block receives, captured once without running any block, and the check that replaying the blocks
with them reproduces the model's own forward.

The references reuse block 0's keyword arguments for every block. Models whose blocks receive different
ones (Gemma-3: sliding-window and full-attention layers with their own rotary embeddings and masks) would
then be calibrated on activations the model never produces. So the blocks are replaced by stand-ins that
record their arguments and pass the hidden states on (no block runs); when some block's arguments differ
from block 0's on the first batch, every block's own are kept for every batch (:class:`BlockKwargs`),
otherwise block 0's serve all, as in the references. :func:`check_replay` runs one window through the
dense model and replays it block by block: a block whose output differs from the model's own stops the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pruning.adapters import FamilyAdapter

log = logging.getLogger(__name__)


class StopForward(Exception):
    pass


def first_output(out):
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
        return BlockKwargs([[to_device(k, device, memo) for k in batches] for batches in self.per_block], self.shared)


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
            raise StopForward
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
            except StopForward:
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


def to_device(obj, device, memo: dict | None = None):
    """``obj`` (tensors inside tuples, lists, dicts) on ``device``; ``memo`` (by ``id``) keeps a tensor
    that appears several times one tensor there."""
    if isinstance(obj, torch.Tensor):
        if memo is None:
            return obj.to(device)
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # the source is kept alive so its id is not reused
        return memo[id(obj)][1]
    if isinstance(obj, tuple):
        return tuple(to_device(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device, memo) for k, v in obj.items()}
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
    hooks = [b.register_forward_hook(lambda mod, args, out: own.append(first_output(out))) for b in blocks]
    try:
        model(input_ids=window.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    inputs, kwargs = capture_block_inputs(model, adapter, window)
    x, worst = inputs[0], 0.0
    for bi, block in enumerate(blocks):
        x = first_output(block(x, **kwargs.of(bi)[0]))
        diff = float((x.float() - own[bi].float()).norm() / own[bi].float().norm().clamp_min(1e-30))
        worst = max(worst, diff)
        if not diff <= REPLAY_RTOL:
            raise RuntimeError(
                f"the engine's block-by-block forward differs from the model's own at block {bi} of the "
                f"{adapter.family} model (relative difference {diff:.2e} > {REPLAY_RTOL:g}): it would calibrate "
                "on activations the model never produces. The block needs inputs the capture does not give "
                "it (pruning/engine.py, capture_block_inputs)")
    return worst

"""Sublayer outputs reused between the passes of a block calibrated group by group (``engine.reuse_outputs``).

With ``true_sequential`` the engine runs the calibration windows through a block once per sublayer group
(q/k/v, o, gate/up, down for Llama), then once more to make the next block's inputs. Between two passes only
the group just solved changes its weights. A submodule of the block that *completed* in the last pass before
any linear of that group was called computed its output from inputs and weights that the next pass sees
unchanged, so the next pass gets the same output bit for bit: :class:`OutputReuse` keeps it and returns it
instead of running the module again. On Llama the attention sublayer (q/k/v, rotary, attention, o) then runs
twice per block instead of four times (the down-projection's pass and the output pass reuse it).

Which submodules are kept (``engine.reuse_outputs``):

* ``sublayers`` (default): modules that hold two or more prunable linears (attention, MLP, mixer); each kept
  output is one hidden-size activation per window, like the calibration inputs themselves.
* ``all``: single prunable linears too (the q/k/v outputs in the gate/up pass, the gate/up outputs in the
  output pass): more forward time saved, more memory (Llama-2-7B, 16 x 512 tokens: about 1.3 GB against
  0.13 GB).
* ``none``: every pass runs the whole block up to where it stops (the engine before this existed).

The outputs are the same either way, so the key is not part of a job's config hash. A module called twice in
one window cannot be reused safely: it is never kept, and if it were (a pass that stopped between its two
calls) its second call stops the run with an error instead of returning a stale output.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from pruning.spec import REUSE_OUTPUTS


def _copy(out):
    """A private copy of a module's output (tensors, or tuples / lists of tensors and None); None when the
    output holds anything else (it is then never reused)."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        items = [None if o is None else _copy(o) for o in out]
        if any(o is not None and c is None for o, c in zip(out, items)):
            return None
        return type(out)(items)
    return None


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(None if o is None else _clone(o) for o in out)


class OutputReuse:
    """One block's reusable submodule outputs (module docstring). The engine calls :meth:`window` before each
    calibration window's forward pass and runs every calibration pass of the block inside :meth:`pass_over`."""

    def __init__(self, block: torch.nn.Module, linears: dict, mode: str = "sublayers", taps: tuple = ()):
        if mode not in REUSE_OUTPUTS:
            raise ValueError(f"engine.reuse_outputs={mode!r}; allowed: {', '.join(REUSE_OUTPUTS)}")
        # a tapped linear (Mamba's dt_proj) is never called: its weight is used once its source's output exists
        self.taps = {target: source for target, source in taps if target in linears and source in linears}
        prunable = {id(m) for m in linears.values()}
        self.modules: dict[str, torch.nn.Module] = {}
        for name, mod in block.named_modules():
            held = sum(id(m) in prunable for m in mod.modules())
            if name and mode != "none" and (held >= 2 or (mode == "all" and held == 1)):
                self.modules[name] = mod
        self.inner = {a: [b for b in self.modules if b.startswith(a + ".")] for a in self.modules}
        self.kept: dict[str, dict] = {}  # outputs reusable in the next pass: {module: {window: output}}
        self.fresh: dict[str, dict] = {}  # recorded in the running pass
        self.banned: set[str] = set()  # called more than once in a window
        self.reused = 0  # module calls answered from kept outputs, over the block
        self.window_index, self.tripped, self.calls = 0, False, {}

    def window(self, index: int) -> None:
        self.window_index, self.tripped, self.calls = index, False, {}

    @contextlib.contextmanager
    def pass_over(self, group: tuple, linears: dict, record: bool = True):
        """One pass of the calibration windows with ``group``'s linears about to be calibrated (empty: the output
        pass). Modules kept from the last pass answer from their outputs; those that complete before the first
        linear of ``group`` is called (a tapped one: before its source completes) are kept for the next pass
        (``record``)."""
        handles = [linears[self.taps[n]].register_forward_hook(lambda *a: self._trip(None, None)) if n in self.taps
                   else linears[n].register_forward_pre_hook(self._trip) for n in group]
        own = {}
        for name, mod in self.modules.items():
            if name in self.kept:
                own[name] = mod.__dict__.get("forward")
                mod.forward = partial(self._answer, name, mod.forward)
            handles.append(mod.register_forward_hook(partial(self._done, name, record)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for name, fwd in own.items():
                del self.modules[name].forward
                if fwd is not None:
                    self.modules[name].forward = fwd
            fresh = {n: v for n, v in self.fresh.items() if v and n not in self.banned} if record else {}
            self.kept, self.fresh = fresh, {}

    def _trip(self, module, args) -> None:
        self.tripped = True

    def _count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def _answer(self, name: str, forward, *args, **kwargs):
        out = self.kept[name].get(self.window_index)
        if out is None:  # not kept for this window (it did not complete in time there): computed
            return forward(*args, **kwargs)
        self.reused += 1
        return _clone(out)

    def _done(self, name: str, record: bool, module, args, out) -> None:
        if self._count(name) > 1:
            if name in self.kept:
                raise RuntimeError(f"engine.reuse_outputs: {name} ran twice in one window, so its kept output may be "
                                   "stale; run with engine.reuse_outputs=none")
            self.banned.add(name)
            self.fresh.get(name, {}).pop(self.window_index, None)
            return
        if not record or self.tripped or name in self.banned:
            return
        kept = self.kept.get(name, {}).get(self.window_index)
        kept = _copy(out) if kept is None else kept
        if kept is None:
            self.banned.add(name)
            return
        self.fresh.setdefault(name, {})[self.window_index] = kept
        for inner in self.inner[name]:  # answered by this module's output from now on
            self.fresh.get(inner, {}).pop(self.window_index, None)

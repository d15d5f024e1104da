"""Layer-wise solvers: pure functions ``(W, sparsity, *, H, sq_norms, **params) -> SolverResult``.

``SOLVERS`` maps a method name to its function and the statistics it needs, so the engine
accumulates only what is used (H is also accumulated for the per-layer error report).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from pruning.errors import ConfigError
from pruning.solvers.alps import alps
from pruning.solvers.apt import apt
from pruning.solvers.common import SolverResult
from pruning.solvers.magnitude import magnitude
from pruning.solvers.sparsegpt import sparsegpt
from pruning.solvers.wanda import wanda


@dataclass(frozen=True)
class Solver:
    fn: Callable[..., SolverResult]
    needs_hessian: bool
    needs_norms: bool

    def needs_data(self, report_error: bool) -> bool:
        """Whether calibration forward passes are needed at all (magnitude without the error report: no)."""
        return self.needs_hessian or self.needs_norms or report_error

    def engine_knobs(self) -> dict[str, tuple[Callable[[object], bool], str]]:
        """The method knobs the engine reads for this solver (:data:`ENGINE_KNOBS`): (check, what is allowed)."""
        return ENGINE_KNOBS if self.needs_hessian else {}

    def params(self) -> tuple[str, ...]:
        """The solver's own knobs (its keyword-only parameters besides the statistics)."""
        sig = inspect.signature(self.fn)
        return tuple(n for n, p in sig.parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("H", "sq_norms"))

    def check_params(self, method: str, params: dict) -> None:
        """Before any model is loaded: a clear error for knobs the solver does not have (a typo in
        ``method.<knob>=...``), for values of the wrong type (the type of the knob's default) and for
        the shared knobs' ranges (:data:`RANGES`). Solver-specific choices are checked by the solver."""
        engine_knobs = self.engine_knobs()
        allowed = self.params() + tuple(engine_knobs)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"method {method!r} has no parameter(s) {unknown}; allowed: {', '.join(allowed) or 'none'}")
        defaults = {n: p.default for n, p in inspect.signature(self.fn).parameters.items()}
        for key, value in params.items():
            if key in engine_knobs:
                check, allowed_values = engine_knobs[key]
                if not check(value):
                    raise ConfigError(f"method.{key}={value!r}; allowed: {allowed_values}")
                continue
            want = type(defaults.get(key))
            ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
                  float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                  str: lambda v: isinstance(v, str)}.get(want, lambda v: True)(value)
            if not ok:
                raise ConfigError(f"method.{key}={value!r}: need a {want.__name__} (default {defaults[key]!r})")
            if key in RANGES and not RANGES[key][0](value):
                raise ConfigError(f"method.{key}={value!r}: need {RANGES[key][1]}")


# Knobs of a method that the engine reads, not the solver (allowed on the solvers that read H): a check and
# what is allowed. output_target: whose layer outputs the solver reproduces on the pruned model's inputs —
# "pruned" (absent = this): the layer's own dense weights' (every reference); "dense": the dense model's,
# which also corrects the error the earlier pruned layers left in the inputs; target_alpha: the share of
# that correction applied (pruning/solvers/dense_target.py); true_sequential: the method calibrates each
# block group by group whatever engine.true_sequential says (either one turns it on).
OUTPUT_TARGETS = ("pruned", "dense")
ENGINE_KNOBS: dict[str, tuple[Callable[[object], bool], str]] = {
    "output_target": (lambda v: v in OUTPUT_TARGETS, " | ".join(OUTPUT_TARGETS)),
    "target_alpha": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
                     "a number in (0, 1]"),
    "true_sequential": (lambda v: isinstance(v, bool), "true | false"),
}

# Ranges of the knobs several solvers share (checked with the config, before any model is loaded).
RANGES = {
    "percdamp": (lambda v: v > 0, "> 0 (damping = percdamp * mean(diag H); 0 leaves a singular H singular)"),
    "blocksize": (lambda v: v >= 1, ">= 1"),
    "max_damp_tries": (lambda v: v >= 0, ">= 0"),
    "refine_iters": (lambda v: v >= 0, ">= 0"),
    "swap_rounds": (lambda v: v >= 0, ">= 0"),
    "swap_cg_iters": (lambda v: v >= 0, ">= 0"),
    "swaps_per_row": (lambda v: v >= 1, ">= 1"),
    "max_iter": (lambda v: v >= 1, ">= 1"),
    "cg_iters": (lambda v: v >= 0, ">= 0"),
    "rho": (lambda v: v > 0, "> 0"),
}

def check_method(method, target, eval_only: tuple[str, ...] = ()) -> None:
    """A :class:`pruning.spec.MethodSpec` against the solvers, before any model is loaded: the name, the
    knobs (:meth:`Solver.check_params`), an N:M block size, and a target that prunes something."""
    if method.name in eval_only:
        return
    if method.name not in SOLVERS:  # SOLVERS, not a copy: a registered solver is valid
        raise ConfigError(f"method.name={method.name!r} is not implemented; allowed: "
                          f"{', '.join((*eval_only, *SOLVERS))}")
    params = dict(method.params)
    SOLVERS[method.name].check_params(method.name, params)
    if target.kind == "nm" and isinstance(params.get("blocksize"), int) and params["blocksize"] % target.m:
        raise ConfigError(f"method.blocksize={params['blocksize']} must be a multiple of M={target.m} for "
                          f"sparsity {target}")
    if target.kind == "dense":
        raise ConfigError(f"sparsity={target} prunes nothing; use method=dense for the unpruned model")


SOLVERS: dict[str, Solver] = {
    "magnitude": Solver(magnitude, needs_hessian=False, needs_norms=False),
    "wanda": Solver(wanda, needs_hessian=False, needs_norms=True),
    "sparsegpt": Solver(sparsegpt, needs_hessian=True, needs_norms=False),
    "apt": Solver(apt, needs_hessian=True, needs_norms=False),
    "alps": Solver(alps, needs_hessian=True, needs_norms=False),
}

__all__ = ["ENGINE_KNOBS", "OUTPUT_TARGETS", "SOLVERS", "Solver", "SolverResult", "check_method"]

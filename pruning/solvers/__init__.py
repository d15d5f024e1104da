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

    def params(self) -> tuple[str, ...]:
        """The solver's own knobs (its keyword-only parameters besides the statistics)."""
        sig = inspect.signature(self.fn)
        return tuple(n for n, p in sig.parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("H", "sq_norms"))

    def check_params(self, method: str, params: dict) -> None:
        """A clear error for knobs the solver does not have (a typo in ``method.<knob>=...``)."""
        allowed = self.params()
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"method {method!r} has no parameter(s) {unknown}; allowed: {', '.join(allowed) or 'none'}")


SOLVERS: dict[str, Solver] = {
    "magnitude": Solver(magnitude, needs_hessian=False, needs_norms=False),
    "wanda": Solver(wanda, needs_hessian=False, needs_norms=True),
    "sparsegpt": Solver(sparsegpt, needs_hessian=True, needs_norms=False),
    "apt": Solver(apt, needs_hessian=True, needs_norms=False),
    "alps": Solver(alps, needs_hessian=True, needs_norms=False),
}

__all__ = ["SOLVERS", "Solver", "SolverResult"]

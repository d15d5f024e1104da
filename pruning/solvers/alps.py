"""ALPS (Meng et al., "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning of LLMs",
arXiv 2406.07831), after the authors' ``ALPS_prune.ALPS_admm`` (mazumder-lab/ALPS, ``alps.py``):
the layer-wise ℓ0-constrained least squares solved jointly over mask and weights by ADMM, then a
conjugate-gradient refit on the final support (docs/methods.md, "ALPS").

Per layer (``W``: rows × cols, ``H`` the Hessian of the project's accumulators):

1. Damp ``H`` by ``percdamp · mean(diag H)`` (the reference's ridge term) and normalise it to a unit
   diagonal: ``Hn = S⁻¹ H S⁻¹``, ``S = diag(sqrt(diag H) + 1e-8)``; work on ``B = W S`` so that ``rho``
   is scale-free. The objective is ``½ (b − b0) Hn (b − b0)ᵀ`` per row (``b0`` the dense row).
2. ``D`` = projection of ``B`` on the pattern: unstructured keeps the ``round((1 − s) · numel)``
   largest ``|B|`` of the *whole layer* (not per row); N:M keeps the ``M − N`` largest of every group.
3. ADMM, ``V`` the scaled dual: ``B ← (b0 Hn − V + ρ D)(Hn + ρ I)⁻¹``, ``D ← proj(B + V/ρ)``,
   ``V ← V + ρ (B − D)``; ``(Hn + ρ I)⁻¹`` from one eigendecomposition of ``Hn``.
4. Every ``update_iter`` steps the penalty follows the reference's schedule on the share of support
   changes since the last check (``c`` = changed entries / kept entries): ``c > 0.1``: ρ × 1.3;
   ``c > 0.005``: ρ × 1.2; any change: ρ × 1.1 once ρ has grown, else ρ / 5 and a restart from the
   initial point; no change: stop once ρ has grown, else ρ / 5; ρ ≤ 1e6. After ``switch_iter`` steps
   it stops when ``c < 0.0003``; at most ``max_iter`` steps.
5. Final support = ``proj(B)``; ``cg_iters`` conjugate-gradient steps on that support from the
   projected ``B`` (the reference: 10 steps, no preconditioner).

Defaults are the reference's (``rho=0.1``, ``max_iter=300``, ``update_iter=3``, ``switch_iter=30``,
``cg_iters=10``, 1% damping). Deviations, all on purpose:

* Dead inputs (``H_jj = 0``) are handled as in every solver of the project (``H_jj = 1``, the weight
  column zeroed) before damping; the reference leaves them to the ridge term.
* The reference's CG stopping test (``‖A X − B‖ ≤ 1e-4 ‖B‖`` on the *unmasked* residual) can never
  hold on a sparse support, so it always runs its 10 steps; here exactly ``cg_iters`` steps run.
* ``keep_best`` (default on): if the final layer loss exceeds the loss of the initial projection
  (ADMM is a heuristic for a non-convex problem), the initial projection is returned; counted in
  ``info``. The reference has no such guard.
* ``init=apt`` (not in the reference; default ``magnitude`` is the reference): warm start from APT's
  solution (mask and weights), so ADMM searches masks around APT's. ``init=apt-refit``: from the
  solution of the default method's solver (APT with :data:`DEFAULT_SOLVER`'s knobs, the ones
  ``conf/method/apt-refit-dense.yaml`` composes); with ``output_target: dense`` the engine hands every
  solver ``W_α = W + α (W* − W)`` for ``W``, so ADMM then searches masks for the default's own objective,
  starting from the default's mask (docs/methods.md, "Masks for the default's objective").
* float64 for the eigendecomposition, float32 (as the reference) or float64 (``dtype``) elsewhere.
"""

from __future__ import annotations

import logging

import torch

from pruning.errors import ConfigError
from pruning.solvers.common import SolverResult, check_pattern, relative_error, smallest_mask, undamped
from pruning.solvers.refit import refine_cg
from pruning.sparsity import Sparsity

log = logging.getLogger(__name__)

INITS = ("magnitude", "apt", "apt-refit")
# The default method's APT knobs (conf/method/apt-refit-dense.yaml over apt-refit.yaml; a test keeps them equal)
DEFAULT_SOLVER = {"blocksize": 64, "dtype": "float32", "refine_iters": 8}
DTYPES = ("float32", "float64")


def project(B: torch.Tensor, sparsity: Sparsity, keep: int) -> torch.Tensor:
    """The pruned mask of the projection of ``B`` on the pattern (True = zero): unstructured keeps the
    ``keep`` largest ``|B|`` of the whole matrix (ties at the threshold: the higher flat index is kept;
    the reference's ``topk`` leaves ties unspecified); N:M the ``M − N`` largest of every group of a row."""
    rows, cols = B.shape
    if sparsity.kind == "nm":
        m = sparsity.m
        top = torch.topk(B.abs().view(rows, cols // m, m), m - sparsity.n, dim=2).indices
        mask = torch.ones(rows, cols // m, m, dtype=torch.bool, device=B.device)
        return mask.scatter_(2, top, False).view(rows, cols)
    return smallest_mask(B.abs(), B.numel() - keep)  # the reference's topk of the kept, in linear time


def _ridge_inverse(evals: torch.Tensor, Q: torch.Tensor, rho: float, dtype) -> torch.Tensor:
    return ((Q / (evals + rho)) @ Q.t()).to(dtype)


def _admm(B0, Hn, Y, D0, sparsity, keep, rho, max_iter, update_iter, switch_iter):
    """Steps 3-4 of the module docstring; returns the final ``B``, the step count and the final ρ."""
    evals, Q = torch.linalg.eigh(Hn.double())
    inv = _ridge_inverse(evals, Q, rho, Hn.dtype)
    B, D, V = B0.clone(), D0.clone(), torch.zeros_like(B0)
    supp_prev = D0 == 0
    grown = False
    steps = 0
    for it in range(max_iter):
        steps = it + 1
        B = (Y - V + rho * D) @ inv
        T = B + V / rho
        D = T.masked_fill(project(T, sparsity, keep), 0.0)
        V = V + rho * (B - D)
        if (it + 1) % update_iter:
            continue
        supp = D == 0
        change = int((supp != supp_prev).sum())
        ratio = change / keep
        if ratio > 0.1:
            grown, rho = True, rho * 1.3
        elif ratio > 0.005:
            grown, rho = True, rho * 1.2
        elif change > 0:
            if grown:
                rho *= 1.1
            else:
                rho /= 5
                B, D, V = B0.clone(), D0.clone(), torch.zeros_like(B0)
        elif grown:
            break
        else:
            rho /= 5
        supp_prev = supp
        rho = min(rho, 1e6)
        inv = _ridge_inverse(evals, Q, rho, Hn.dtype)
        if it >= switch_iter and ratio < 0.0003:
            break
    return B, steps, rho


def alps(w: torch.Tensor, sparsity: Sparsity, *, H: torch.Tensor, sq_norms: torch.Tensor | None = None,
         rho: float = 0.1, max_iter: int = 300, update_iter: int = 3, switch_iter: int = 30, cg_iters: int = 10,
         percdamp: float = 0.01, init: str = "magnitude", keep_best: bool = True,
         dtype: str = "float32") -> SolverResult:
    """ALPS on one linear layer (module docstring)."""
    check_pattern(w, sparsity)
    _check(rho, max_iter, update_iter, switch_iter, cg_iters, percdamp, init, dtype)
    dt = getattr(torch, dtype)
    W, Hf, dead, info = _prepare(w, H)
    rows, cols = W.shape
    damp = percdamp * float(Hf.diagonal().mean())
    Hd = Hf.clone()
    Hd.diagonal().add_(damp)
    scale = Hd.diagonal().sqrt() + 1e-8
    Hn = (Hd / scale.unsqueeze(0) / scale.unsqueeze(1)).to(dt)
    B0 = (W * scale).to(dt)
    Y = B0 @ Hn  # the linear term b0 Hn of every row
    numel = W.numel()
    keep = numel - numel * sparsity.n // sparsity.m if sparsity.kind == "nm" else int(round((1 - sparsity.ratio) * numel))
    if init != "magnitude":
        from pruning.solvers.apt import apt  # the warm start: APT's defaults, or the default method's solver
        start = apt(w, sparsity, H=H, percdamp=percdamp, **(DEFAULT_SOLVER if init == "apt-refit" else {}))
        D0 = (start.weight.double() * scale).to(dt).masked_fill(start.mask, 0.0)
    else:
        D0 = B0.masked_fill(project(B0, sparsity, keep), 0.0)
    B, steps, rho_end = _admm(B0, Hn, Y, D0, sparsity, keep, rho, max_iter, update_iter, switch_iter)
    mask = project(B, sparsity, keep)
    B = refine_cg(B.masked_fill(mask, 0.0), B0, Hn, mask, cg_iters, jacobi=False)
    info.update(admm_iters=steps, rho_final=rho_end, damp=damp)
    if keep_best:
        init_mask = D0 == 0 if init == "magnitude" else start.mask
        losses = [float(((X - B0) @ Hn * (X - B0)).sum()) for X in (B, D0)]
        if losses[0] > losses[1]:
            info["kept_init"] = True
            log.warning("ALPS: the ADMM solution (loss %.4g) is worse than its initial point (%.4g); kept the "
                        "initial point for this layer", losses[0], losses[1])
            B, mask = D0, init_mask
    out = (B.double() / scale).masked_fill(mask, 0.0).to(torch.float32)
    return SolverResult(out, mask, relative_error(w.float(), out, undamped(Hf, dead)), info)


def _prepare(w: torch.Tensor, H: torch.Tensor):
    """Dead inputs as every solver of the project handles them; no Cholesky is needed here."""
    W = w.double().clone()
    Hf = H.double().clone()
    dead = torch.diag(Hf) == 0
    Hf[dead, dead] = 1
    W[:, dead] = 0
    return W, Hf, dead, {"dead_columns": int(dead.sum())}


def _check(rho, max_iter, update_iter, switch_iter, cg_iters, percdamp, init, dtype) -> None:
    if not rho > 0:
        raise ConfigError(f"method.rho={rho!r}: need > 0")
    for key, value, low in (("max_iter", max_iter, 1), ("update_iter", update_iter, 1),
                            ("switch_iter", switch_iter, 0), ("cg_iters", cg_iters, 0)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"method.{key}={value!r}: need an integer >= {low}")
    if not percdamp > 0:
        raise ConfigError(f"method.percdamp={percdamp!r}: need > 0 (the ridge term keeps Hn + rho I well posed)")
    if init not in INITS:
        raise ConfigError(f"method.init={init!r}; allowed: {', '.join(INITS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"method.dtype={dtype!r}; allowed: {', '.join(DTYPES)}")

"""Solver-only timing on a model's layer shapes: ``python -m experiments.solver_timing [-m] [overrides]``.

No model and no data: for every shape of ``conf/shapes/<name>.yaml`` a random weight and a random
correlated Hessian ``H = B Bᵀ/r + 0.01·I`` (``B``: ``cols × r`` Gaussian mixed across columns, so
inputs are correlated as in real layers) are built, the solver of ``conf/method/<name>.yaml`` runs
once to warm up and ``repeats`` times timed (CUDA synchronised), and the job writes
``results.json`` with seconds per shape and the per-model total (seconds × linears of that
shape). At the end of a multirun :class:`experiments.callbacks.SolverTimingTable` writes
``solver_timing.csv`` / ``.md`` with the ratio of each method to SparseGPT. Skips a job whose
complete record exists for the same config (``force=true`` re-runs it).

A method's engine knobs (``MethodSpec.fit``, split from its solver's knobs once) are not solver arguments. With
``output_target=dense`` the timed work is the engine's per layer: forming the target ``W*`` from ``H``
and a cross-covariance ``C`` (here ``H`` plus a random 5% perturbation), then the solver on ``W*``;
the engine shares one factorisation among linears reading the same input (q/k/v, gate/up), so this
is an upper bound. ``true_sequential`` costs calibration forwards, which no solver timing includes.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import experiments.run  # noqa: F401  (registers override_suffix)
from pruning.errors import ConfigError
from pruning.results import benchmark_job, utc_now, versions, write_json_atomic
from pruning.solvers import SOLVERS, check_method
from pruning.solvers.dense_target import dense_target_weights
from pruning.spec import MethodSpec, parse_method

log = logging.getLogger(__name__)


def random_layer(rows: int, cols: int, rank: int, seed: int, device, dtype=torch.float32):
    """A random weight and a correlated positive-definite Hessian of the layer's input width."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype)
    r = min(rank, cols)
    mix = torch.randn(cols, r, generator=g, dtype=dtype) * torch.rand(cols, 1, generator=g, dtype=dtype).add(0.1)
    w, mix = w.to(device), mix.to(device)
    H = mix @ mix.T / r
    H.diagonal().add_(0.01)
    return w, H


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so a timing covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cross_covariance(H: torch.Tensor, seed: int) -> torch.Tensor:
    """A stand-in for ``C = X_dense Xᵀ``: ``H`` perturbed by 5% of its mean diagonal, as when the dense
    and the pruned model's inputs differ a little."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(H.shape, generator=g, dtype=H.dtype).to(H.device)
    return H + 0.05 * float(H.diagonal().mean()) * noise


def time_solver(method: MethodSpec, w, H, sparsity, repeats: int, seed: int = 0) -> tuple[list[float], object]:
    solver, fit = SOLVERS[method.name], method.fit
    kwargs = dict(method.solver_params)
    dense_target = fit.dense_target
    C = cross_covariance(H, seed) if dense_target else None
    if solver.needs_hessian:
        kwargs["H"] = H
    if solver.needs_norms:
        kwargs["sq_norms"] = H.diagonal().clone()  # ∝ ‖X_j‖²; only the ranking matters

    def solve(wc):
        if dense_target:  # the engine's work per layer (pruning/engine.py): the target W*, then the solver on it
            wc = dense_target_weights(wc, H, C, fit.percdamp, fit.target_alpha)
        return solver.fn(wc, sparsity, **kwargs)

    res = solve(w.clone())  # warm-up (allocations, kernels)
    seconds = []
    for _ in range(repeats):
        wc = w.clone()
        sync(w.device)
        t0 = time.perf_counter()
        res = solve(wc)
        sync(w.device)
        seconds.append(time.perf_counter() - t0)
    return seconds, res


def run_timing(cfg: DictConfig, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    path, chash, existing = benchmark_job(config, out_dir, bool(cfg.force))
    if existing is not None:
        return existing
    spec, sparsity = parse_method(config["method"], config["sparsity"], eval_only=())
    if spec.name not in SOLVERS:
        raise ConfigError(f"method={spec.name!r} has no solver to time; allowed: {', '.join(SOLVERS)}")
    check_method(spec, sparsity)  # the job's own checks: name, knobs, N:M block size, a target that prunes
    method, params = spec.name, dict(spec.params)
    if int(cfg.repeats) < 1:
        raise ConfigError(f"repeats={cfg.repeats!r}; allowed: an integer >= 1")
    shapes = dict(config["shapes"]["layers"])
    wanted = cfg.layers or list(shapes)
    missing = [n for n in wanted if n not in shapes]
    if missing:
        raise ConfigError(f"layers={missing} are not shapes of {config['shapes']['name']}; allowed: {', '.join(shapes)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu")
    for name in wanted:
        sparsity.check_width(shapes[name][1], name)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    record = {"status": "running", "kind": "solver_timing", "config_hash": chash, "config": config,
              "versions": versions(), "job": {"started": utc_now(), "output_dir": str(out_dir.resolve())},
              "method": {"name": method, "label": spec.label, "params": params}, "sparsity": sparsity.as_dict(),
              "layers": []}
    total = 0.0
    for i, name in enumerate(wanted):
        rows, cols, count = shapes[name]
        w, H = random_layer(rows, cols, int(cfg.hessian_rank), int(cfg.seed) + i, cfg.device)
        seconds, res = time_solver(spec, w, H, sparsity, int(cfg.repeats), int(cfg.seed) + i)
        median = statistics.median(seconds)
        total += median * count
        record["layers"].append({"layer": name, "rows": rows, "cols": cols, "count": count, "seconds": median,
                                 "seconds_all": seconds, "rel_error": res.error,
                                 "sparsity": float(res.mask.float().mean())})
        log.info("%s %s %dx%d: %.3f s (x%d per model)", method, name, rows, cols, median, count)
    record.update(status="complete", model_seconds=total, device=str(cfg.device))
    record["job"]["finished"] = utc_now()
    write_json_atomic(path, record)
    log.info("%s on %s shapes at %s: %.1f s of solver time per model; wrote %s", method, config["shapes"]["name"],
             sparsity, total, path)
    return record


@hydra.main(config_path="../conf", config_name="solver_timing", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_timing(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()

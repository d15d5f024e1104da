"""Hydra entry point: ``python -m experiments.run [overrides]`` (``--help`` lists the options).

Thin on purpose: it registers the config resolvers, takes a GPU from ``runtime.gpus`` when jobs
share a machine, and hands the composed config and the job's output directory to
:func:`pruning.pipeline.run_job`. In a multirun a failing job does not stop the sweep: its
``failed`` record holds the error, the failure is listed in ``<sweep dir>/failed_jobs.jsonl``, and
:class:`experiments.callbacks.SweepSummary` makes the process exit non-zero at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pruning.errors import ConfigError, DataError, ModelLoadError
from pruning.results import JobCollision
from pruning.sparsity import parse_sparsity

log = logging.getLogger(__name__)

FAILED_JOBS = "failed_jobs.jsonl"
SWEEP_PARENT = "PRUNING_SWEEP_PARENT"  # the sweep's parent PID, inherited by its worker processes
USER_ERRORS = (ConfigError, DataError, ModelLoadError)  # bad input: a message, no traceback


def run_tag(method: str, sparsity, calibration: str) -> str:
    """Directory name of a job from its choices: ``dense``, ``wanda_s0.5_c4``, ``apt_2of4_c4``."""
    if method in ("dense", "none"):  # nothing pruned: sparsity and calibration do not apply
        return method
    try:
        tag = parse_sparsity(sparsity).tag
    except ConfigError:  # let the job itself report the bad value, with the allowed forms
        tag = "invalid-" + re.sub(r"[^A-Za-z0-9.]+", "-", str(sparsity))
    return f"{method}_{tag}_{calibration}"


def override_suffix(override_dirname: str) -> str:
    """Extra overrides (not already in the path) as a last path component, file-system safe.
    ``allocation=uniform`` is the default and changes nothing (nor the config hash), so a sweep over
    ``allocation=uniform,owl`` puts its uniform jobs where a sweep without that key has them."""
    override_dirname = re.sub(r"(^|,)allocation=uniform(?=,|$)", "", override_dirname).lstrip(",")
    if not override_dirname:
        return ""
    return "/" + re.sub(r"[^A-Za-z0-9.,=_+-]+", "-", override_dirname)


OmegaConf.register_new_resolver("run_tag", run_tag, replace=True)
OmegaConf.register_new_resolver("override_suffix", override_suffix, replace=True)
OmegaConf.register_new_resolver("sparsity_tag", lambda s: parse_sparsity(s).tag, replace=True)  # benchmark apps


def record_failure(sweep_dir: str | Path, hc, error: BaseException) -> None:
    """Append one line for a failed job (O_APPEND: safe from parallel worker processes)."""
    line = json.dumps({"num": hc.job.num, "overrides": list(hc.overrides.task), "output_dir": hc.runtime.output_dir,
                       "error": f"{type(error).__name__}: {error}"}) + "\n"
    fd = os.open(Path(sweep_dir) / FAILED_JOBS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _join(cfg: DictConfig):
    """This process's place in a distributed job (``runtime.distributed=true``), its process group joined; the
    rank's GPU is its local rank's when the job computes on CUDA."""
    from pruning.distributed import init
    from pruning.models import resolve_device

    device = resolve_device((cfg.get("engine") or {}).get("device") or cfg.model.get("device"))
    return init(cfg.runtime.get("distributed_backend") or "auto", use_cuda=device.type == "cuda")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pruning.pipeline import run_job
    from pruning.placement import gpu_from_pool, use_gpu

    hc = HydraConfig.get()
    runtime = cfg.get("runtime") or {}
    if os.environ.get(SWEEP_PARENT, str(os.getpid())) != str(os.getpid()):
        # a sweep's worker process: between jobs a terminal's Ctrl-C is the parent's to handle (it ends the
        # running jobs one by one, experiments.termination); an idle worker dying of it would make loky kill
        # every other worker, perhaps while it writes its record. During a job, the job's own handler rules.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if runtime.get("distributed"):  # one job across torchrun's processes or a SLURM job's tasks
            run_job(cfg, hc.runtime.output_dir, _join(cfg))
            return
        with gpu_from_pool(runtime.get("gpus"), runtime.get("gpu_lock_dir") or cfg.paths.gpu_locks) as gpu:
            use_gpu(gpu)
            run_job(cfg, hc.runtime.output_dir)
    except Exception as e:
        if hc.mode != RunMode.MULTIRUN:
            if isinstance(e, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                # a message for the person at the shell, not a traceback wall (the record keeps the traceback)
                where = ("this job wrote no record: the directory is the running job's" if isinstance(e, JobCollision)
                         else f"record: {Path(hc.runtime.output_dir) / 'results.json'}")
                sys.exit(f"error: {type(e).__name__}: {e}\n({where}; HYDRA_FULL_ERROR=1 shows the traceback)")
            raise
        log.error("job %d failed (%s: %s); the sweep goes on. Traceback:\n%s", hc.job.num, type(e).__name__, e,
                  traceback.format_exc())
        record_failure(hc.sweep.dir, hc, e)


if __name__ == "__main__":
    main()

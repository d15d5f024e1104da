"""Hydra callbacks used by experiment presets (``hydra.callbacks`` in ``conf/experiment/*.yaml``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class BenchmarkTable(Callback):
    """At the end of a multirun, write ``benchmark.md`` / ``benchmark.csv`` into the sweep directory
    (``python -m analysis.tables <sweep dir> --table benchmark`` prints it again at any time)."""

    def __init__(self, dataset: str = "wikitext2") -> None:
        self.dataset = dataset

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from analysis.ppl_tables import write_benchmark

        try:
            for path in write_benchmark(config.hydra.sweep.dir, self.dataset):
                log.info("wrote %s", path)
        except Exception as e:  # the jobs' records are safe on disk; the table can be rebuilt later
            log.error("benchmark table not written (%s: %s); run: python -m analysis.tables %s --table benchmark",
                      type(e).__name__, e, config.hydra.sweep.dir)


class SweepSummary(Callback):
    """Multirun bookkeeping (registered in ``conf/config.yaml`` for every run).

    Start: clear the failure list of an earlier invocation of the same sweep (those jobs run again), and
    make SIGTERM / SIGINT end the sweep's running jobs with their failed records (:mod:`experiments.termination`).
    End: log every failed job and exit non-zero, so a scheduler or shell script sees the failure.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from experiments import termination
        from experiments.run import FAILED_JOBS, SWEEP_PARENT

        path = Path(config.hydra.sweep.dir) / FAILED_JOBS
        if path.exists():
            path.unlink()
        os.environ[SWEEP_PARENT] = str(os.getpid())  # inherited by the worker processes started from now on
        termination.install()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from experiments.run import FAILED_JOBS

        path = Path(config.hydra.sweep.dir) / FAILED_JOBS
        if not path.exists():
            return
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not failed:
            return
        lines = "\n".join(f"  #{f['num']} {' '.join(f['overrides'])}: {f['error']} ({f['output_dir']})" for f in failed)
        log.error("%d job(s) of the sweep failed (their records hold the traceback; re-running the sweep redoes "
                  "them and skips the complete ones):\n%s", len(failed), lines)
        raise SystemExit(1)


class _BenchmarkTables(Callback):
    """End of a benchmark multirun: the tables of ``module``'s ``write_tables`` in the sweep directory; a
    failure is logged with the command that writes them later (the records are safe on disk)."""
    module = ""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        import importlib

        try:
            for path in importlib.import_module(self.module).write_tables(config.hydra.sweep.dir):
                log.info("wrote %s", path)
        except Exception as e:
            log.error("tables not written (%s: %s); run: python -m %s %s", type(e).__name__, e, self.module,
                      config.hydra.sweep.dir)


class SolverTimingTable(_BenchmarkTables):
    """End of a solver-timing multirun: ``solver_timing.csv`` (per shape) and ``.md`` (per model,
    with the ratio to SparseGPT) in the sweep directory."""
    module = "analysis.solver_timing"


class ScaleTable(_BenchmarkTables):
    """End of a scale-benchmark multirun: ``scale.md`` and ``scale.csv`` in the sweep directory."""
    module = "analysis.scale"

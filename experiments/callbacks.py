"""Hydra callbacks used by experiment presets (``hydra.callbacks`` in ``conf/experiment/*.yaml``)."""

from __future__ import annotations

import logging

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class BenchmarkTable(Callback):
    """At the end of a multirun, write ``benchmark.md`` / ``benchmark.csv`` into the sweep directory
    (``python -m analysis.tables <sweep dir> --table benchmark`` prints it again at any time)."""

    def __init__(self, dataset: str = "wikitext2") -> None:
        self.dataset = dataset

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from analysis.tables import write_benchmark

        try:
            for path in write_benchmark(config.hydra.sweep.dir, self.dataset):
                log.info("wrote %s", path)
        except Exception as e:  # the jobs' records are safe on disk; the table can be rebuilt later
            log.error("benchmark table not written (%s: %s); run: python -m analysis.tables %s --table benchmark",
                      type(e).__name__, e, config.hydra.sweep.dir)

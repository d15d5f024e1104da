"""Experiment tracking: W&B (offline by default) or nothing.

``results.json`` stays the source of truth; W&B is a view of it. An online run that cannot reach
its server within ``logger.init_timeout`` seconds falls back to an offline run in the job directory
(one warning; ``wandb sync`` uploads it later), so a cluster node without network loses nothing and
waits at most that long. If W&B cannot start at all, the job goes on without it and says so. Every run is finished at the end of its job, so sequential
multirun jobs never log into one another's run (wandb/wandb#1314).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class NullTracker:
    enabled = False
    url = None
    run_dir = None

    def log_summary(self, metrics: dict) -> None:
        pass

    def log_table(self, key: str, rows: list[dict]) -> None:
        pass

    def log_bar(self, key: str, rows: list[dict], label: str, value: str, title: str) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker(NullTracker):
    enabled = True

    def __init__(self, cfg, run_config: dict, out_dir, name: str):
        # Nothing needs an account: offline unless the user chose otherwise (env or logger.mode).
        if cfg.get("mode"):
            os.environ["WANDB_MODE"] = str(cfg["mode"])
        else:
            os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        kwargs = dict(project=cfg.get("project"), entity=cfg.get("entity"), group=cfg.get("group"),
                      job_type=cfg.get("job_type"), tags=list(cfg.get("tags") or []), name=name,
                      config=run_config, dir=str(out_dir), reinit="create_new")
        timeout = float(cfg.get("init_timeout") or 30)
        try:
            self.run = wandb.init(settings=wandb.Settings(init_timeout=timeout), **kwargs)
        except Exception as e:
            if os.environ["WANDB_MODE"] == "offline":
                raise
            log.warning("W&B could not start an %s run within %.0f s (%s: %s); logging to an offline run in %s "
                        "instead (upload it later with `wandb sync`)", os.environ["WANDB_MODE"], timeout,
                        type(e).__name__, str(e)[:200], out_dir)
            os.environ["WANDB_MODE"] = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        self.run_dir = getattr(self.run, "dir", None)
        self.url = getattr(self.run, "url", None)
        log.info("W&B run %s (%s mode) in %s", self.run.id, os.environ["WANDB_MODE"], self.run_dir)

    def log_summary(self, metrics: dict) -> None:
        for key, value in metrics.items():
            self.run.summary[key] = value

    def log_table(self, key: str, rows: list[dict]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        table = self._wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self.run.log({key: table})

    def log_bar(self, key: str, rows: list[dict], label: str, value: str, title: str) -> None:
        """A bar chart (a W&B plot over a table of ``label`` and ``value``), e.g. accuracy per task."""
        rows = [r for r in rows if isinstance(r.get(value), (int, float))]
        if not rows:
            return
        table = self._wandb.Table(columns=[label, value], data=[[r[label], r[value]] for r in rows])
        self.run.log({key: self._wandb.plot.bar(table, label, value, title=title)})

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def make_tracker(cfg, run_config: dict, out_dir, name: str):
    """A tracker from a ``logger`` config node (``backend: wandb | none``)."""
    backend = (cfg or {}).get("backend", "none")
    if backend == "none":
        return NullTracker()
    if backend != "wandb":
        from pruning.errors import ConfigError
        raise ConfigError(f"logger.backend={backend!r}; allowed: wandb, none")
    try:
        return WandbTracker(cfg, run_config, out_dir, name)
    except Exception as e:  # W&B must never take a job down
        log.warning("W&B could not start (%s: %s); continuing without it (results.json is unaffected)",
                    type(e).__name__, e)
        return NullTracker()

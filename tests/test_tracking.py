"""W&B offline: a run with the summary keys; failures never take the job down."""

import pytest

from pruning.pipeline import run_job
from pruning.tracking import NullTracker, make_tracker
from tests.conftest import compose_cfg, tiny_overrides


def test_offline_wandb_run_has_summary_keys(tiny_data_root, tmp_path, monkeypatch):
    from pruning.tracking import WandbTracker
    seen = {}
    original = WandbTracker.finish

    def finish(self, exit_code=0):  # offline runs keep the summary in the binary .wandb log: read it live
        seen["summary"] = dict(self.run.summary)
        seen["config"] = dict(self.run.config)
        seen["group"], seen["job_type"] = self.run.group, self.run.job_type
        original(self, exit_code)
    monkeypatch.setattr(WandbTracker, "finish", finish)
    overrides = [o for o in tiny_overrides("tiny-llama", tiny_data_root) if o != "logger=none"]
    cfg = compose_cfg(overrides + ["logger=wandb", "sweep_name=unit"])
    rec = run_job(cfg, tmp_path)
    assert rec["tracking"]["enabled"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    summary = seen["summary"]
    assert summary["wikitext2/ppl"] == pytest.approx(rec["metrics"]["perplexity"]["wikitext2"]["ppl"])
    assert {"sparsity/actual", "time/total_s", "memory/peak_rss_gb"} <= set(summary)
    assert seen["config"]["model"]["name"] == "tiny-llama"
    assert (seen["group"], seen["job_type"]) == ("unit", "dense")


def test_wandb_failure_falls_back(monkeypatch, tmp_path, caplog):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("no wandb today")
    monkeypatch.setattr(wandb, "init", broken)
    tracker = make_tracker({"backend": "wandb"}, {}, tmp_path, "x")
    assert isinstance(tracker, NullTracker)
    assert "W&B could not start" in caplog.text and "no wandb today" in caplog.text


def test_logger_none_and_bad_backend(tmp_path):
    assert not make_tracker({"backend": "none"}, {}, tmp_path, "x").enabled
    from pruning.errors import ConfigError
    with pytest.raises(ConfigError, match="logger.backend='mlflow'"):
        make_tracker({"backend": "mlflow"}, {}, tmp_path, "x")


def test_online_run_without_network_falls_back_to_offline_in_bounded_time(tmp_path):
    """W&B pointed at an unreachable local address: at most init_timeout, then an offline run in the job dir.
    A fresh interpreter: wandb keeps process-wide state from earlier (offline) runs of the test session."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import json, logging, time\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "from pruning.tracking import make_tracker\n"
            "t0 = time.perf_counter()\n"
            f"t = make_tracker({{'backend': 'wandb', 'project': 'p', 'init_timeout': 5}}, {{'a': 1}}, {str(tmp_path)!r}, 'u')\n"
            "elapsed = time.perf_counter() - t0\n"
            "t.log_summary({'x': 1.0}); t.finish()\n"
            "print(json.dumps({'enabled': t.enabled, 'elapsed': elapsed}))\n")
    env = {**os.environ, "WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40,
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["enabled"] and result["elapsed"] < 60
    assert "logging to an offline run" in out.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_a_zero_shot_job_logs_a_per_task_bar_chart(tiny_data_root, tmp_path, monkeypatch):
    from wandb.plot.custom_chart import CustomChart

    from pruning.tracking import WandbTracker
    logged = []
    original = WandbTracker.log_bar

    def log_bar(self, key, rows, label, value, title):
        calls = []
        monkeypatch.setattr(self.run, "log", lambda d, **k: calls.append(d))
        original(self, key, rows, label, value, title)
        logged.append((key, [r[label] for r in rows], calls))
    monkeypatch.setattr(WandbTracker, "log_bar", log_bar)
    overrides = [o for o in tiny_overrides("tiny-llama", tiny_data_root, "eval=zeroshot",
                                           "eval.zero_shot.tasks=[piqa,boolq]") if o != "logger=none"]
    rec = run_job(compose_cfg(overrides + ["logger=wandb"]), tmp_path)
    assert rec["metrics"]["zero_shot"]["tasks"]["piqa"]["acc"] is not None
    (key, tasks, calls), = logged
    assert key == "zero_shot_acc" and tasks == ["piqa", "boolq"]
    assert isinstance(calls[0][key], CustomChart)  # a W&B plot, not only a table

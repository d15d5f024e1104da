"""Sweeps at scale: launchers, failure isolation, resume after SIGKILL, the GPU pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pruning.errors import ConfigError
from pruning.placement import gpu_from_pool
from tests.conftest import REPO, compose_cfg, tiny_overrides


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, **kwargs)


def _records(sweep: Path) -> dict[str, dict]:
    """Records by job tag (``<protocol>/<model>/<tag>/<extra overrides>/results.json``)."""
    return {p.relative_to(sweep).parts[2]: json.loads(p.read_text()) for p in sweep.rglob("results.json")}


def _tiny(data_root, *extra) -> list[str]:
    return tiny_overrides("tiny-llama", data_root, *extra) + ["runtime.threads=1"]


@pytest.mark.parametrize("launcher, target", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("slurm_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("local", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
])
def test_launcher_configs_compose_without_a_cluster(launcher, target):
    cfg = compose_cfg([f"hydra/launcher={launcher}", "+experiment=zeroshot_table"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_ == target
    if launcher == "slurm":
        assert node.gpus_per_node == 1 and node.timeout_min == 360 and node.array_parallelism == 16
        assert node.mem_gb == 64 and node.max_num_timeout == 0
    out = _cli(f"hydra/launcher={launcher}", "--cfg", "hydra")  # what a user runs to inspect it
    assert out.returncode == 0 and target in out.stdout, out.stderr[-2000:]


def test_zeroshot_table_preset_turns_zero_shot_on():
    cfg = compose_cfg(["+experiment=zeroshot_table"], return_hydra_config=True)
    assert cfg.eval.zero_shot.enabled and cfg.sweep_name == "zeroshot-table"
    assert cfg.eval.zero_shot.limit == 400  # eval=zeroshot_quick: the CPU protocol; eval=zeroshot for full sets
    assert dict(cfg.hydra.sweeper.params) == {
        "method": "dense,magnitude,wanda,sparsegpt,apt,apt-refit-dense-seq", "sparsity": "0.5,2:4"}
    full = compose_cfg(["+experiment=zeroshot_table", "eval=zeroshot"])
    assert full.eval.zero_shot.limit is None
    gemma = compose_cfg(["+experiment=zeroshot_table_gemma"], return_hydra_config=True)
    assert gemma.model.name == "gemma3-270m" and gemma.eval.zero_shot.enabled and gemma.eval.zero_shot.limit == 200
    assert gemma.hydra.sweeper.params == cfg.hydra.sweeper.params and gemma.sweep_name == "zeroshot-table"


def test_joblib_multirun_of_tiny_jobs_completes(tiny_data_root, tmp_path):
    sweep = tmp_path / "sweep"
    out = _cli("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *_tiny(tiny_data_root),
               "method=magnitude,wanda", "sparsity=0.5,2:4", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    records = _records(sweep)
    assert len(records) == 4 and all(r["status"] == "complete" for r in records.values())
    assert len({r["job"]["host"] + str(r["config_hash"]) for r in records.values()}) == 4


def test_parallel_jobs_that_differ_only_in_eval_keep_both_records(tiny_data_root, tmp_path):
    """`eval` is not part of the directory name: the two configs share one name, each gets a directory."""
    sweep = tmp_path / "sweep"
    out = _cli("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *_tiny(tiny_data_root), "method=wanda",
               "eval=ppl,none", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    paths = sorted(sweep.rglob("results.json"))
    records = [json.loads(p.read_text()) for p in paths]
    assert len(records) == 2 and all(r["status"] == "complete" for r in records)
    assert len({r["config_hash"] for r in records}) == 2
    names = sorted(str(p.parent.relative_to(sweep)) for p in paths)
    assert names[0].startswith("quick/tiny-llama/wanda_s0.5_c4/") and names[1].startswith(names[0] + "@")
    assert sorted(bool(r["metrics"]["perplexity"]) for r in records) == [False, True]


def test_a_failing_job_does_not_stop_the_sweep(tiny_data_root, tmp_path):
    """2:3 cannot tile the width-64 layers: that job fails at pruning time, the others complete, the
    failure is listed and the process exits non-zero."""
    sweep = tmp_path / "sweep"
    args = [*_tiny(tiny_data_root, "method=magnitude"), "sparsity=0.5,2:3,2:4", f"hydra.sweep.dir={sweep}"]
    out = _cli("-m", *args)
    assert out.returncode != 0
    log = out.stdout + out.stderr  # Hydra's logging goes to stdout
    assert "1 job(s) of the sweep failed" in log and "magnitude_2of3_c4" in log
    records = _records(sweep)
    status = {k: r["status"] for k, r in records.items()}
    assert status == {"magnitude_s0.5_c4": "complete", "magnitude_2of3_c4": "failed", "magnitude_2of4_c4": "complete"}
    failed = next(r for r in records.values() if r["status"] == "failed")
    assert "M=3 does not divide the input width 64" in failed["error"] and "Traceback" in failed["traceback"]
    listed = [json.loads(x) for x in (sweep / "failed_jobs.jsonl").read_text().splitlines()]
    assert len(listed) == 1 and listed[0]["num"] == 1

    # Re-running redoes only the failed job (it fails again) and keeps the complete ones untouched.
    before = {k: r["job"]["finished"] for k, r in records.items() if r["status"] == "complete"}
    time.sleep(1.1)  # record timestamps have one-second resolution
    again = _cli("-m", *args)
    assert again.returncode != 0
    after = _records(sweep)
    assert {k: after[k]["job"]["finished"] for k in before} == before
    assert len((sweep / "failed_jobs.jsonl").read_text().splitlines()) == 1  # this invocation's failures only


def test_single_run_failure_still_raises(tiny_data_root, tmp_path):
    out = _cli(*_tiny(tiny_data_root, "method=magnitude"), "sparsity=2:3", f"hydra.run.dir={tmp_path / 'job'}")
    assert out.returncode != 0 and "does not divide" in out.stdout + out.stderr
    assert json.loads((tmp_path / "job" / "results.json").read_text())["status"] == "failed"


def test_sigkill_mid_sweep_then_rerun_redoes_only_the_unfinished_jobs(tiny_data_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *_tiny(tiny_data_root), "method=magnitude,wanda,sparsegpt", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    second = sweep / "quick" / "tiny-llama" / "wanda_s0.5_c4"
    deadline = time.monotonic() + 300
    try:
        while not list(second.rglob("config.resolved.yaml")):  # job 2 has started
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before job 2 started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = _records(sweep)
    assert [k for k, r in first.items() if r["status"] == "complete"] == ["magnitude_s0.5_c4"]
    assert not list(second.rglob("results.json"))  # killed mid-job: no record, never a partial one
    done = next(iter(first.values()))
    time.sleep(1.1)
    out = _cli(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _records(sweep)
    assert len(after) == 3 and all(r["status"] == "complete" for r in after.values())
    kept = after["magnitude_s0.5_c4"]
    assert kept["job"]["started"] == done["job"]["started"] and kept["job"]["finished"] == done["job"]["finished"]
    for name in ("wanda_s0.5_c4", "sparsegpt_s0.5_c4"):
        assert after[name]["job"]["started"] > done["job"]["finished"]


def test_gpu_pool_hands_out_distinct_gpus_and_waits_when_full(tmp_path):
    with gpu_from_pool(None, tmp_path) as none:
        assert none is None
    with gpu_from_pool([3, 5], tmp_path) as a:
        # a second process sees GPU 3 locked and takes 5; with both taken it times out
        code = ("import sys; from pruning.placement import gpu_from_pool\n"
                "with gpu_from_pool([3, 5], sys.argv[1]) as g: print(g)\n"
                "try:\n  with gpu_from_pool([3], sys.argv[1], poll_s=0.05, timeout_s=0.2): print('no')\n"
                "except TimeoutError as e: print('timeout', e)")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert a == 3 and out.stdout.splitlines()[0] == "5", out.stderr
        assert out.stdout.splitlines()[1].startswith("timeout no free GPU among [3]")
    with gpu_from_pool([3, 5], tmp_path) as again:  # released when the job ended
        assert again == 3
    with pytest.raises(ConfigError, match="runtime.gpus='0,1'"):
        with gpu_from_pool("0,1", tmp_path):
            pass


def test_solver_timing_benchmark_writes_per_model_totals(tmp_path):
    import pandas as pd

    sweep = tmp_path / "timing"
    out = subprocess.run([sys.executable, "-m", "experiments.solver_timing", "-m", "shapes=tiny",
                          "method=apt,sparsegpt,wanda", "sparsity=0.5,2:4", "threads=1", "hessian_rank=16",
                          f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    frame = pd.read_csv(sweep / "solver_timing.csv")
    assert len(frame) == 3 * 2 * 2 and set(frame["layer"]) == {"attn", "mlp"}
    assert (frame["seconds"] > 0).all()
    assert (frame[frame["method"] != "wanda"]["rel_error"] > 0).all()  # wanda's solver reads no H: no error
    table = (sweep / "solver_timing.md").read_text()
    assert table.count("| tiny | 0.5 | cpu | sparsegpt | blocksize=128,max_damp_tries=6,percdamp=0.01 |") == 1
    assert "| 1.00× |" in table and table.count("\n") == 2 + 6
    rec = json.loads(next(sweep.rglob("results.json")).read_text())
    assert rec["kind"] == "solver_timing" and rec["layers"][0]["count"] == 2
    from analysis.collect import collect  # timing records are not pruning jobs: collect leaves them out

    col = collect(sweep)
    assert col.frame.empty and not col.skipped


def test_solver_timing_rejects_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.solver_timing", "shapes=tiny", "method=dense",
                          f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "method='dense' has no solver to time" in out.stderr


def test_solver_timing_times_the_dense_target_methods_as_the_engine_runs_them():
    """Engine knobs are not solver arguments; with output_target=dense the timed work is W* then the solver."""
    from experiments.solver_timing import cross_covariance, random_layer, time_solver
    from omegaconf import OmegaConf
    from pruning.solvers import SOLVERS
    from pruning.solvers.dense_target import dense_target_weights
    from pruning.spec import parse_method

    cfg = compose_cfg(["method=apt-refit-dense-seq", "sparsity=2:4"])
    spec, sparsity = parse_method(OmegaConf.to_container(cfg.method, resolve=True), cfg.sparsity, eval_only=())
    params = dict(spec.params)
    assert params["output_target"] == "dense" and params["true_sequential"] is True
    w, H = random_layer(8, 32, 16, seed=3, device="cpu")
    seconds, res = time_solver(spec, w, H, sparsity, repeats=2, seed=5)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    target = dense_target_weights(w, H, cross_covariance(H, 5), params["percdamp"], params["target_alpha"])
    assert not torch.equal(target, w)  # the target moved: the timing includes a real correction
    kwargs = {k: v for k, v in params.items() if k not in ("output_target", "target_alpha", "true_sequential")}
    assert kwargs == dict(spec.solver_params)
    expected = SOLVERS[spec.name].fn(target, sparsity, H=H, **kwargs)
    assert torch.equal(res.weight, expected.weight) and torch.equal(res.mask, expected.mask)
    assert float(res.mask.float().mean()) == 0.5


SLOW_EVAL = '''
import os, time
if os.environ.get("SLOW_EVAL_S"):  # tests: every job's perplexity evaluation takes this long
    import pruning.pipeline as _p
    _real = _p.evaluate_perplexity
    def _slow(*a, **k):
        print("evaluating", os.getpid(), flush=True)
        time.sleep(float(os.environ["SLOW_EVAL_S"]))
        return _real(*a, **k)
    _p.evaluate_perplexity = _slow
'''


def _alive_in_group(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the sweep's signal handling reads /proc")
def test_sigterm_to_a_local_launcher_sweep_ends_its_workers_with_failed_records_and_a_rerun_resumes(
        tiny_data_root, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_EVAL)
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "experiments.run", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
            *_tiny(tiny_data_root, "method=magnitude"), "sparsity=0.5,0.6,0.7", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "SLOW_EVAL_S": "600"}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        evaluating, deadline = set(), time.monotonic() + 300
        while len(evaluating) < 2:  # both workers are inside a job
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "the sweep ended before two jobs ran"
            if line.startswith("evaluating"):
                evaluating.add(line.split()[1])
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        took = time.monotonic() - t0
        time.sleep(1.0)
        left = _alive_in_group(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in left:  # never leave them running, whatever the assertions below say
        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGTERM and took < 60, (proc.returncode, took, out[-3000:])
    assert not left, f"processes of the sweep still running after it ended: {left}"
    assert "2 running job(s) ended" in out and "Re-run the same command to resume" in out, out[-3000:]
    records = _records(sweep)
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) >= 2 and all(r["reason"] == "terminated" for r in failed), records
    assert not [r for r in records.values() if r["status"] == "complete"]

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**env, "SLOW_EVAL_S": ""})  # no JobCollision: the locks died with the workers
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    records = _records(sweep)
    assert len(records) == 3 and all(r["status"] == "complete" for r in records.values())

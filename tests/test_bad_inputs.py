"""Bad inputs and faults: every one fails with a message naming the key/value/file, config errors fail
before any model is loaded, and no complete record of another config is lost."""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import pruning.pipeline as pipeline
from pruning.errors import ConfigError
from pruning.pipeline import run_job
from pruning.results import read_record
from tests.conftest import REPO, compose_cfg, tiny_overrides

BAD_CONFIGS = [
    ("method.percdamp=0", "method.percdamp=0: need > 0"),
    ("method.percdamp=-1", "method.percdamp=-1: need > 0"),
    ("method.percdamp=abc", "method.percdamp='abc': need a float"),
    ("method.blocksize=0", "method.blocksize=0: need >= 1"),
    ("method.blocksize=2.5", "method.blocksize=2.5: need a int"),
    ("engine.batch_size=0", "engine.batch_size=0: need an integer >= 1"),
    ("engine.device=cuda:7", "engine.device='cuda:7': no such CUDA device"),
    ("engine.device=tpu0", "engine.device='tpu0' is not a device"),
    ("eval.perplexity.max_windows=0", "eval.perplexity.max_windows=0: need an integer >= 1 or null"),
    ("eval.perplexity.seqlen=0", "eval.perplexity.seqlen=0: need an integer >= 2"),
    ("seed=abc", "seed='abc': need an integer >= 0"),
    ("data.source=web", "data.source='web'; allowed: auto, local, hub"),
    ("calibration.nsamples=0", "calibration.nsamples=0: need an integer >= 1"),
    ("sparsity=1.5", "sparsity=1.5 is outside"),
    ("+foo=1", "unknown top-level key(s) ['foo']"),
    ("method.blocksize=6 sparsity=2:4", "method.blocksize=6 must be a multiple of M=4"),
    ("+engine.batchsize=4", "unknown key(s) of engine ['batchsize']"),
    ("+save.where=x", "unknown key(s) of save ['where']"),
    ("runtime.threads=0", "runtime.threads=0: need an integer >= 1 or null"),
    ("runtime.offload=ram", "runtime.offload='ram'; allowed: null, disk"),
    ("runtime.zero_shot_logits_gb=0", "runtime.zero_shot_logits_gb=0.0: need a number > 0 or null"),
    ("runtime.zero_shot_shared_context=maybe", "runtime.zero_shot_shared_context='maybe': need true or false"),
    ("runtime.zero_shot_shared_context=true runtime.zero_shot_logits_gb=null",
     "runtime.zero_shot_shared_context=true needs runtime.zero_shot_logits_gb"),
    ("engine.report_error=maybe", "engine.report_error='maybe': need true or false"),
    ("calibration.seqlen=1.5", "calibration.seqlen=1.5: need an integer"),
] + ([] if torch.cuda.is_available() else [
    ("model.device=cuda", "model.device='cuda' but CUDA is not available here"),  # validation, not the load
])


@pytest.mark.parametrize("override, match", BAD_CONFIGS)
def test_config_errors_fail_before_the_model_is_loaded(tiny_data_root, tmp_path, monkeypatch, override, match):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", *override.split()))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=re.escape(match)):
        run_job(cfg, tmp_path)
    assert time.perf_counter() - t0 < 5
    rec = read_record(tmp_path / "results.json")  # a failed record says why (also in a multirun)
    assert rec["status"] == "failed" and rec["stage"] == "validation" and match.split(":")[0] in rec["error"]


def test_non_finite_perplexity_is_null_with_a_warning(tiny_data_root, tmp_path, monkeypatch):
    real = pipeline.evaluate_perplexity

    def overflow(*args, **kwargs):
        out = real(*args, **kwargs)
        for r in out.values():
            r.update(ppl=float("inf"), nll=812.5)
        return out

    monkeypatch.setattr(pipeline, "evaluate_perplexity", overflow)
    rec = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["perplexity"]["wikitext2"]["ppl"] is None
    assert saved["metrics"]["perplexity"]["wikitext2"]["nll"] == 812.5
    assert any("wikitext2 perplexity is not finite" in w for w in saved["warnings"])
    from analysis.collect import collect
    assert math.isinf(collect(tmp_path).frame["ppl_wikitext2"].iloc[0])  # shown as exploded, not missing
    assert rec["status"] == "complete"


def test_identity_fallback_of_too_many_layers_fails_the_job(tiny_data_root, tmp_path, monkeypatch):
    import pruning.solvers.common as common
    monkeypatch.setattr(common.torch.linalg, "cholesky", lambda *a, **k: (_ for _ in ()).throw(
        torch.linalg.LinAlgError("not positive definite")))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "calibration.nsamples=4",
                                     "calibration.seqlen=32"))
    with pytest.raises(RuntimeError, match=r"14 of 14 layers fell back to an identity inverse Hessian"):
        run_job(cfg, tmp_path)
    rec = json.loads((tmp_path / "results.json").read_text())
    assert rec["status"] == "failed" and "max_fallback_share=0.1" in rec["error"]


def test_non_finite_weights_fail_naming_block_and_layer(tiny_data_root, tmp_path, monkeypatch):
    from pruning.solvers import SOLVERS, Solver
    from pruning.solvers.common import SolverResult

    def nan_solver(w, sparsity, *, H=None, sq_norms=None):
        return SolverResult(w * float("nan"), torch.zeros_like(w, dtype=torch.bool), 0.0)

    monkeypatch.setitem(SOLVERS, "magnitude", Solver(nan_solver, needs_hessian=False, needs_norms=False))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude", "calibration.nsamples=4",
                                     "calibration.seqlen=32"))
    with pytest.raises(FloatingPointError, match=r"block 0, layer self_attn.q_proj: the nan_solver solver returned "
                                                 r"non-finite weights"):
        run_job(cfg, tmp_path)


def test_sigterm_leaves_a_failed_record_with_reason_terminated(tiny_data_root, tmp_path):
    out = tmp_path / "job"
    code = (
        "import sys, time\n"
        "import experiments.run\n"
        "import pruning.pipeline as p\n"
        "from tests.conftest import compose_cfg, tiny_overrides\n"
        "real = p.evaluate_perplexity\n"
        "def slow(*a, **k):\n"
        "    print('evaluating', flush=True); time.sleep(60); return real(*a, **k)\n"
        "p.evaluate_perplexity = slow\n"
        f"p.run_job(compose_cfg(tiny_overrides('tiny-opt', {str(tiny_data_root)!r})), {str(out)!r})\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == "evaluating":
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    rec = json.loads((out / "results.json").read_text())
    assert proc.returncode != 0 and rec["status"] == "failed" and rec["reason"] == "terminated"
    assert "Terminated: signal SIGTERM" in rec["error"]


def test_readme_smoke_sweep_runs_with_the_defaults(tmp_path):
    """`python -m experiments.run -m model=tiny-llama,tiny-opt,tiny-mamba logger=none sweep_name=smoke`
    (README): tiny models accept the quick protocol's 2048-token evaluation windows."""
    data = REPO.parent / "shared" / "data"
    if not data.is_dir():
        pytest.skip("needs the shared data root (CI has it)")
    out = subprocess.run([sys.executable, "-m", "experiments.run", "-m", "model=tiny-llama,tiny-opt,tiny-mamba",
                          "logger=none", "sweep_name=smoke", f"hydra.sweep.dir={tmp_path / 'smoke'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = list((tmp_path / "smoke").rglob("results.json"))
    assert len(records) == 3 and all(json.loads(p.read_text())["status"] == "complete" for p in records)


def _copy_root(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _fails_before_load(monkeypatch, cfg, out, error, match):
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    t0 = time.perf_counter()
    with pytest.raises(error, match=match):
        run_job(cfg, out)
    assert time.perf_counter() - t0 < 5
    rec = read_record(out / "results.json")
    assert rec["status"] == "failed" and rec["stage"] == "validation"
    return rec


def test_evaluation_data_checksum_fails_before_the_model_is_loaded(tiny_data_root, tmp_path, monkeypatch):
    """The synthetic files are not the published ones: with checksums on, the job stops before loading."""
    from pruning.errors import DataError
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "data.verify_checksums=true"))
    rec = _fails_before_load(monkeypatch, cfg, tmp_path / "job", DataError,
                             r"checksum mismatch for .*wikitext2/wiki\.test\.raw")
    assert "wiki.test.raw" in rec["error"]


def test_calibration_data_checksum_fails_before_the_model_is_loaded(tiny_data_root, tmp_path, monkeypatch):
    from pruning.errors import DataError
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "eval=none",
                                     "data.verify_checksums=true"))
    _fails_before_load(monkeypatch, cfg, tmp_path / "job", DataError,
                       r"checksum mismatch for .*c4_train_shard00000_first1000\.jsonl")


def test_a_truncated_gzip_is_named_before_the_model_is_loaded(tiny_data_root, tmp_path, monkeypatch):
    import gzip

    from pruning.errors import DataError
    root = _copy_root(tiny_data_root, tmp_path / "root")
    blob = gzip.compress(b"".join(json.dumps({"text": f"document {i} " * 50}).encode() + b"\n" for i in range(200)))
    bad = root / "c4" / "c4-validation.00000-of-00008.json.gz"  # the user-supplied full shard (no published sha)
    bad.write_bytes(blob[: len(blob) // 2])
    cfg = compose_cfg(tiny_overrides("tiny-llama", root, "eval.perplexity.datasets=[c4]"))
    _fails_before_load(monkeypatch, cfg, tmp_path / "job", DataError,
                       rf"{re.escape(str(bad))} is a truncated or corrupt gzip")
    from pruning.data import load_rows  # read directly, the reader names the file too
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))} is unreadable"):
        load_rows("c4", "validation", root=str(root), verify=False)


def test_eval_window_longer_than_the_context_fails_before_the_model_is_loaded(tiny_data_root, tmp_path,
                                                                              monkeypatch):
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "eval.perplexity.seqlen=4096"))
    _fails_before_load(monkeypatch, cfg, tmp_path / "job", ConfigError,
                       r"eval.perplexity.seqlen=4096 exceeds max_position_embeddings=2048 of tiny-llama")


@pytest.mark.parametrize("content, match", [((), "it is empty"), (("weights.bin",), "it holds: weights.bin")])
def test_a_local_model_dir_without_a_model_is_named_before_loading(tiny_data_root, tmp_path, monkeypatch, content,
                                                                   match):
    from pruning.errors import ModelLoadError
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    for name in content:
        (model_dir / name).write_bytes(b"\0")
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "model=local", f"model.path={model_dir}"))
    _fails_before_load(monkeypatch, cfg, tmp_path / "job", ModelLoadError,
                       rf"model.path='{re.escape(str(model_dir))}' has no config.json.*{match}")


def test_a_bad_value_on_the_command_line_prints_a_message_not_a_traceback(tmp_path):
    args = [sys.executable, "-m", "experiments.run", "model=tiny-llama", "logger=none", "method=sparsegpt",
            "method.percdamp=0", f"hydra.run.dir={tmp_path / 'job'}"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "error: ConfigError: method.percdamp=0: need > 0" in out.stderr and "HYDRA_FULL_ERROR=1" in out.stderr
    full = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr


# ----------------------------------------------------------------------------- issue 43: contents, not paths
def _wanda_profile(tiny_data_root, path, *extra):
    return compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "allocation=profile",
                                      f"allocation.path={path}", "calibration.nsamples=4", "calibration.seqlen=32",
                                      *extra))


def test_an_edited_profile_reruns_the_job_and_says_why(tiny_data_root, tmp_path, caplog):
    profile = tmp_path / "low.yaml"
    profile.write_text("default: 0.5\n")
    first = run_job(_wanda_profile(tiny_data_root, profile), tmp_path / "job")
    assert first["inputs"]["allocation.path"]["sha256"] == hashlib.sha256(b"default: 0.5\n").hexdigest()
    assert run_job(_wanda_profile(tiny_data_root, profile), tmp_path / "job")["job"] == first["job"]  # skipped
    profile.write_text('layers:\n  "0": 0.4\n  "1": 0.6\n')  # same path, same global target, other contents
    second = run_job(_wanda_profile(tiny_data_root, profile), tmp_path / "job")
    assert second["inputs"] != first["inputs"] and {round(r["sparsity"], 1) for r in second["layers"]} == {0.4, 0.6}
    assert "allocation.path" in caplog.text and "changed (sha256" in caplog.text
    assert read_record(tmp_path / "job" / "results.stale.json")["job"] == first["job"]  # kept, not lost


def test_a_profile_that_misses_the_global_target_is_an_error_naming_its_mean(tiny_data_root, tmp_path):
    profile = tmp_path / "low.yaml"
    profile.write_text("default: 0.3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{profile} prunes 0.3000 of this model's prunable weights")
                       + r".*but sparsity=0\.5.*Set sparsity=0\.3"):
        run_job(_wanda_profile(tiny_data_root, profile), tmp_path / "job")
    assert read_record(tmp_path / "job" / "results.json")["status"] == "failed"


def _saved(tiny_data_root, tmp_path, sparsity: str):
    run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude", f"sparsity={sparsity}",
                                       "eval=none", "save.enabled=true")), tmp_path / f"prune{sparsity}")
    return tmp_path / f"prune{sparsity}" / "model"


def _score(tiny_data_root, model_dir, out):
    return run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "model=local", f"model.path={model_dir}",
                                              "method=none")), out)


def test_a_replaced_checkpoint_is_scored_again_and_a_lying_sidecar_is_flagged(tiny_data_root, tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(_saved(tiny_data_root, tmp_path, "0.5"), ckpt)
    first = _score(tiny_data_root, ckpt, tmp_path / "score")
    assert first["sparsity"]["actual"] == pytest.approx(0.5, abs=0.01) and first["inputs"]["model.path"]["files"] >= 3
    shutil.rmtree(ckpt)
    shutil.copytree(_saved(tiny_data_root, tmp_path, "0.7"), ckpt)  # the same path, another model
    side = json.loads((ckpt / "sparsity.json").read_text())
    side.update(actual_sparsity=0.9, sparsity={"kind": "nm", "ratio": 0.5, "n": 2, "m": 4, "spec": "2:4"})
    (ckpt / "sparsity.json").write_text(json.dumps(side))  # and its sidecar lies
    second = _score(tiny_data_root, ckpt, tmp_path / "score")
    assert second["sparsity"]["actual"] == pytest.approx(0.7, abs=0.01)
    assert "model.path" in caplog.text and "changed (sha256" in caplog.text
    warnings = " | ".join(second["warnings"])
    assert "sparsity.json claims actual sparsity 0.9000, the weights have 0.70" in warnings
    assert "sparsity.json claims 2:4, but" in warnings and "groups of 4 weights have fewer than 2 zeros" in warnings


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"not json at all", b"[1, 2]"])
def test_an_unreadable_sidecar_is_named_in_a_warning(tiny_data_root, tmp_path, content):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(_saved(tiny_data_root, tmp_path, "0.5"), ckpt)
    (ckpt / "sparsity.json").write_bytes(content)
    rec = _score(tiny_data_root, ckpt, tmp_path / "score")
    assert rec["status"] == "complete" and rec["model"]["saved_sparsity"] is None
    assert any(f"{ckpt / 'sparsity.json'}" in w and "pruning history is unknown" in w for w in rec["warnings"])


@pytest.mark.parametrize("content, why", [(os.urandom(300).replace(b"{", b"") + b"\xff", "not UTF-8 text"),
                                          (b'{"status": "complete", "config_ha', "not JSON")])
def test_an_unreadable_record_is_set_aside_named_and_the_job_reruns(tiny_data_root, tmp_path, caplog, content, why):
    job = tmp_path / "job"
    job.mkdir()
    (job / "results.json").write_bytes(content)
    rec = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), job)
    assert rec["status"] == "complete"
    aside = list(job.glob("results.unreadable-*.json"))
    assert len(aside) == 1 and aside[0].read_bytes() == content  # moved, byte for byte
    assert f"{job / 'results.json'} is not a readable result record ({why}" in caplog.text and aside[0].name in caplog.text
    from analysis.collect import collect
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_bytes(content)
    col = collect(tmp_path)  # analysis warns and skips; the good record is read
    assert len(col.frame) == 1 and [s["status"] for s in col.skipped] == ["unreadable"] and why in col.skipped[0]["error"]


@pytest.mark.parametrize("record", [[1, 2], {"status": "complete", "schema_version": 1}])
def test_collect_skips_records_that_are_lists_or_lack_fields(tmp_path, record, caplog):
    from analysis.collect import collect
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "results.json").write_text(json.dumps(record))
    col = collect(tmp_path)
    assert col.frame.empty and col.skipped[0]["status"] in ("unreadable", "malformed")
    assert "left out" in caplog.text


def test_a_directory_in_the_records_place_fails_before_any_work(tiny_data_root, tmp_path, monkeypatch):
    (tmp_path / "job" / "results.json").mkdir(parents=True)
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'job' / 'results.json'} is a directory")):
        run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), tmp_path / "job")


def test_calibration_draws_are_limited_per_window_not_in_all():
    from pruning.calibration import draw_documents
    from pruning.models import byte_tokenizer
    docs = ["short"] * 9 + ["a long document " * 20]  # one in ten can hold a 64-token window
    windows, used = draw_documents(docs, byte_tokenizer(), 300, 64, seed=0, max_draws=100)
    assert windows.shape == (300, 64) and set(used) == {9}  # ~3000 draws in all, never 100 for one window


def test_an_empty_data_root_fails_before_the_model_load_naming_where_it_came_from(tiny_data_root, tmp_path,
                                                                                   monkeypatch):
    from pruning.errors import DataError
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PRUNING_DATA_ROOT", str(empty))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "data.root=null", "data.source=auto"))
    rec = _fails_before_load(monkeypatch, cfg, tmp_path / "job", DataError,
                             rf"wikitext2/test is not in the data root {re.escape(str(empty))} \(from "
                             rf"PRUNING_DATA_ROOT='{re.escape(str(empty))}'; looked for: .*and the hub is off")
    assert "set PRUNING_DATA_ROOT" not in rec["error"]


def test_a_collision_with_a_running_job_does_not_name_its_record_as_ours(tmp_path):
    import fcntl
    job = tmp_path / "job"
    job.mkdir()
    with open(job / ".job.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live job (of unknown config) owns the directory
        lock.write("busy")
        lock.flush()
        out = subprocess.run([sys.executable, "-m", "experiments.run", "model=tiny-llama", "method=dense",
                              "logger=none", "eval=none", f"hydra.run.dir={job}"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert out.returncode != 0 and "JobCollision" in out.stderr, out.stderr[-2000:]
    assert "this job wrote no record" in out.stderr and "(record:" not in out.stderr


def test_a_failed_forced_rerun_keeps_the_config_beside_the_standing_record(tiny_data_root, tmp_path, monkeypatch):
    cfg = tiny_overrides("tiny-opt", tiny_data_root)
    run_job(compose_cfg(cfg), tmp_path)
    before = (tmp_path / "config.resolved.yaml").read_text()
    monkeypatch.setattr(pipeline, "evaluate_perplexity", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        run_job(compose_cfg(cfg + ["force=true"]), tmp_path)
    assert (tmp_path / "config.resolved.yaml").read_text() == before  # still the standing record's config
    assert "force: true" in (tmp_path / "config.failed.yaml").read_text()
    assert read_record(tmp_path / "results.failed.json")["status"] == "failed"


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    from pruning.results import write_json_atomic
    path = tmp_path / "results.json"
    write_json_atomic(path, {"v": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match=re.escape(f"No space left while writing {path}")):
        write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

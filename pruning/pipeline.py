"""One job: load, (prune), evaluate, record. ``experiments/run.py`` calls :func:`run_job`.

The job validates its config before any heavy work, skips itself when a complete record of the
same config already exists (unless ``force=true``), and always leaves a record behind: ``complete``
when it finished, ``failed`` (with the error and traceback) when it did not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pruning.calibration import build_calibration
from pruning.artifact import read_sidecar, sidecar_mismatch
from pruning.data import dataset_spec, perplexity_text, preflight
from pruning.distributed import LOCAL, Comm
from pruning.allocation import check_config as check_allocation
from pruning.api import mean_layer_value, needs_calibration, prune_loaded
from pruning.errors import ConfigError, DataError, ModelLoadError
from pruning.evaluation.perplexity import evaluate_perplexity, tokenize_text
from pruning.evaluation.zero_shot import check_task_data, evaluate_zero_shot
from pruning.inputs import job_inputs
from pruning.memory_check import check_memory
from pruning.models import load_model, model_preflight, resolve_device
from pruning.record import check_record
from pruning.offload import measure_stored_sparsity
from pruning.resume import Progress
from pruning.results import (FAILED_FILE, RESULTS_FILE, SCHEMA_VERSION, ZERO_SHOT_SAMPLES, claim_job_dir, config_hash,
                             is_complete, peak_memory, read_record, reset_peak_memory, reusable_record, utc_now, versions,
                             write_failed_record, write_json_atomic, write_samples_atomic, write_text_atomic)
from pruning.solvers import check_method
from pruning.spec import JobSpec, parse_job
from pruning.tracking import NullTracker, make_tracker

log = logging.getLogger(__name__)

# Method name -> solver; `dense` evaluates the unpruned model.
# Methods that prune nothing: `dense` evaluates the model as loaded (the baseline row), `none` evaluates a
# checkpoint as it is (e.g. one this project saved) and records its measured sparsity.
EVAL_ONLY = ("dense", "none")
CONFIG_FILE = "config.resolved.yaml"  # the resolved config of the record beside it
FAILED_CONFIG_FILE = "config.failed.yaml"  # ... of results.failed.json (a failed forced re-run)


def validate(cfg: DictConfig) -> JobSpec:
    """Check the config before any heavy work (its structure, the method's knobs, the data and the model
    files); returns the job spec."""
    spec = parse_job(cfg, eval_only=EVAL_ONLY)
    method, target = spec.method.name, spec.sparsity
    check_method(spec.method, target, EVAL_ONLY)
    _check_device(spec.engine.device)
    resolve_device(spec.model.device)  # model.device=cuda without CUDA: a config error now, not at load
    for name in spec.eval.perplexity.datasets:
        dataset_spec(name)
        spec.eval.perplexity.split(name)
    dataset_spec(spec.calibration.dataset)
    profile = None if method in EVAL_ONLY else check_allocation(dict(spec.allocation), target)
    if spec.runtime.distributed and spec.engine.shards != 1:
        raise ConfigError(f"runtime.distributed=true with engine.shards={spec.engine.shards}: the ranks are the shards; "
                          "engine.shards reproduces a distributed run in one process. Drop engine.shards")
    if spec.runtime.offload and spec.eval.zero_shot_on:
        raise ConfigError("runtime.offload=disk does not support zero-shot evaluation yet (lm-eval needs the whole "
                          "model in memory); use eval=ppl or run without offload")
    spec = replace(spec, profile=profile)
    _preflight_inputs(spec, calibrates(spec))
    return spec


def calibrates(spec: JobSpec) -> bool:
    """Whether the job runs calibration forward passes (:func:`pruning.api.needs_calibration`)."""
    return spec.method.name not in EVAL_ONLY and needs_calibration(
        spec.method.name, report_error=spec.engine.report_error, dense_error=spec.engine.dense_error,
        allocation=spec.allocation.get("name"), heldout_nsamples=spec.calibration.heldout_nsamples)


def _preflight_inputs(spec: JobSpec, calibrating: bool) -> None:
    """Every file the job will read, before the model is loaded: the data (checksums, intact gzip), the
    model's files, and the eval/calibration window lengths against the model's context where its config
    is readable without the weights."""
    data, ppl = spec.data, spec.eval.perplexity
    kw = {"root": data.root, "source": data.source, "verify": data.verify_checksums}
    if ppl.enabled:
        for name in ppl.datasets:
            preflight(name, ppl.split(name), **kw)
    if calibrating:
        preflight(spec.calibration.dataset, spec.calibration.split, **kw)
    if spec.eval.zero_shot_on:
        check_task_data(list(spec.eval.zero_shot.tasks), data)
    model_info = model_preflight(spec.model)
    check_context(model_info, spec, calibrating=calibrating)
    check_memory(model_info, spec, calibrating=calibrating)


def _check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"engine.device={device!r} is not a device; e.g. cpu, cuda, cuda:1, or null") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"engine.device={device!r}: no such CUDA device here "
                          f"({torch.cuda.device_count()} visible); use null (where the model is) or cpu")


def check_context(model_info: dict, spec: JobSpec, calibrating: bool) -> None:
    """Windows longer than the model's context are an error, not garbage (OPT's learned positions)."""
    limit = model_info.get("max_position_embeddings")
    if not limit:
        return
    checks = [("eval.perplexity.seqlen", spec.eval.perplexity.seqlen)]
    if calibrating:
        checks.append(("calibration.seqlen", spec.calibration.seqlen))
    for key, value in checks:
        if int(value) > int(limit):
            raise ConfigError(f"{key}={value} exceeds max_position_embeddings={limit} of {model_info['name']}; "
                              f"use at most {limit}")


def _summary(record: dict) -> dict:
    out = {f"{name}/ppl": r["ppl"] for name, r in record["metrics"]["perplexity"].items()}
    zero_shot = record["metrics"].get("zero_shot") or {}
    for task, scores in (zero_shot.get("tasks") or {}).items():
        out.update({f"zeroshot/{task}/{k}": v for k, v in scores.items() if v is not None})
    if zero_shot.get("mean_acc") is not None:
        out["zeroshot/mean_acc"] = zero_shot["mean_acc"]
    for key in ("mean_rel_error", "mean_heldout_rel_error"):
        if record["metrics"].get(key) is not None:
            out[f"layers/{key}"] = record["metrics"][key]
    out["sparsity/target"] = record["sparsity"]["target"]["ratio"]
    out["sparsity/actual"] = record["sparsity"]["actual"]
    out.update({f"time/{k}": v for k, v in record["timings"].items()})
    out["memory/peak_rss_gb"] = record["memory"]["peak_rss_bytes"] / 2**30
    return out


def run_job(cfg: DictConfig, out_dir: str | Path, comm: Comm = LOCAL) -> dict | None:
    """Run one job in ``out_dir``, which it owns (:func:`pruning.results.claim_job_dir`) until it returns;
    when another config's record or live job holds ``out_dir``, in its sibling ``<name>@<hash[:8]>``.
    ``comm`` (``runtime.distributed``): rank 0 does all that; the other ranks compute beside it, write nothing
    and return None."""
    out_dir = Path(out_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(config)
    if not comm.writer:
        with _terminations_raise():
            return _run_worker(cfg, out_dir, config, chash, comm)
    with claim_job_dir(out_dir, chash) as own, _terminations_raise():
        return _run_locked(cfg, own, config, chash, comm)


def _run_worker(cfg: DictConfig, out_dir: Path, config: dict, chash: str, comm: Comm) -> None:
    """A rank other than 0: rank 0 says whether the job runs (or stands complete), then the same stages with
    their collectives, writing nothing."""
    decision, where = comm.broadcast_object(None)
    if decision == "skip":
        return None
    spec = validate(cfg)
    _Job(spec, config, chash, Path(where), job_inputs(config), comm).run()  # rank 0's directory (its store paths)
    return None


class Terminated(BaseException):
    """SIGTERM (a scheduler's cancel or timeout) or SIGINT during a job: it ends as a ``failed`` record."""


@contextmanager
def _terminations_raise():
    """While a job runs in the main thread, SIGTERM and SIGINT raise :class:`Terminated`, so the job's failure
    path writes a ``failed`` record with reason ``terminated``; a second signal while it does is ignored (it
    must not cut the record short). The previous handlers come back only after the record is written: a
    sweep's parent waits for that (:mod:`experiments.termination`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ignore(signum, frame):
        log.warning("%s ignored: the job is already ending", signal.Signals(signum).name)

    def handler(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, ignore)
        raise Terminated(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


def _check_numerics(record: dict, layers: list[dict], max_share: float) -> None:
    """Warnings for layers whose inverse Hessian fell back to the identity (the update degenerates to
    magnitude pruning there); a job where more than ``max_share`` of the layers fell back fails."""
    fallen = [r["name"] for r in layers if r.get("hinv_fallback")]
    if not fallen:
        return
    msg = (f"{len(fallen)} of {len(layers)} layers fell back to an identity inverse Hessian (Cholesky failed even "
           f"with raised damping): {', '.join(fallen[:5])}{' …' if len(fallen) > 5 else ''}")
    record["warnings"].append(msg)
    log.warning(msg)
    if len(fallen) > max_share * len(layers):
        raise RuntimeError(f"{msg}; more than runtime.max_fallback_share={max_share} of the layers, so the result is "
                           f"not the method's. Check method.percdamp and the calibration data")


NONE_TARGET = {"kind": "none", "ratio": None, "n": None, "m": None, "spec": "none"}  # method=none: as loaded


def _save_missing(record: dict, config: dict) -> bool:
    """A complete record whose job should have saved the model but has no (verified) copy of it: re-run."""
    save = config.get("save") or {}
    if not save.get("enabled"):
        return False
    saved = record.get("save") or {}
    if not saved.get("dir") or not (Path(saved["dir"]) / "config.json").is_file():
        log.info("the complete record has no saved model: re-running to save it (save.enabled=true)")
        return True
    if save.get("verify", True) and not (saved.get("verification") or {}).get("passed"):
        log.info("the saved model was not verified: re-running (save.verify=true)")
        return True
    return False


def _first_window(spec: JobSpec, loaded, windows) -> tuple[torch.Tensor, str]:
    """One window of token ids for the saved model's loss check: the first evaluation window, else the
    first calibration window, else seeded random tokens."""
    ppl, data = spec.eval.perplexity, spec.data
    if ppl.enabled and ppl.datasets:
        name = ppl.datasets[0]
        text = perplexity_text(name, ppl.split(name), root=data.root, source=data.source,
                               verify=data.verify_checksums)
        ids = tokenize_text(loaded.tokenizer, text.rows[0])[: ppl.seqlen].unsqueeze(0)
        return ids, f"the first {name} evaluation window"
    if windows is not None:
        return windows[:1], "the first calibration window"
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, loaded.model.config.vocab_size, (1, 128), generator=gen), "128 seeded random tokens"


def _save_model(spec: JobSpec, loaded, record: dict, out_dir: Path, windows) -> dict:
    """save.enabled: the pruned model as a checkpoint with its sidecar, then (save.verify) reloaded and checked;
    an offloaded model block by block (:mod:`pruning.artifact_offload`)."""
    from pruning.artifact import save_pruned, stale_staging, verify_saved
    from pruning.artifact_offload import save_offloaded, verify_offloaded

    target = spec.sparsity
    where = Path(spec.save.dir or out_dir / "model")
    for leftover in stale_staging(where):  # a killed save's partial copy
        if spec.save.dir:  # not in the job's own directory: another host's save could be writing it
            log.warning("%s looks like the partial copy of a killed save; remove it if no save is running", leftover)
        else:  # the job owns its directory (its lock): nobody else writes there
            log.warning("removing %s, the partial copy of a killed save", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    sidecar = {"method": record["method"], "sparsity": record["sparsity"]["target"],
               "config_hash": record["config_hash"], "record": str((out_dir / RESULTS_FILE).resolve()),
               "model": {k: record["model"].get(k) for k in ("name", "source", "hub_id", "gguf", "gguf_sha256")
                         if record["model"].get(k) is not None},
               "versions": record["versions"], "created": utc_now()}
    nm = target if target.kind == "nm" else None
    if not loaded.store.on_disk:
        info = save_pruned(loaded.model, loaded.tokenizer, where, sidecar)
    else:
        info = save_offloaded(loaded.model, loaded.adapter, loaded.store, loaded.tokenizer, where, sidecar)
    if spec.save.verify:
        ids, what = _first_window(spec, loaded, windows)
        check = verify_saved(where, loaded.model, ids, nm) if not loaded.store.on_disk else \
            verify_offloaded(where, loaded.model, loaded.adapter, loaded.store, ids, nm)
        info["verification"] = {**check, "window": what}
    return info


def _run_locked(cfg: DictConfig, out_dir: Path, config: dict, chash: str, comm: Comm = LOCAL) -> dict:
    """validate → skip if done → load → calibrate → prune → evaluate → save → record."""
    path = out_dir / RESULTS_FILE
    inputs = job_inputs(config)  # checksums of the profile / checkpoint files: a changed file re-runs the job
    existing = reusable_record(path, chash, bool(cfg.get("force", False)), inputs)
    skip = existing is not None and not _save_missing(existing, config)
    comm.broadcast_object(("skip" if skip else "run", str(out_dir)))
    if skip:
        return existing
    try:
        spec = validate(cfg)
    except (ConfigError, DataError, ModelLoadError) as e:  # a record says why, also in a multirun (nothing computed)
        write_failed_record(path, {"schema_version": SCHEMA_VERSION, "status": "failed", "stage": "validation",
                                 "config_hash": chash, "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc(), "config": config,
                                 "job": {"output_dir": str(out_dir.resolve()), "host": socket.gethostname(),
                                         "finished": utc_now()}, "versions": versions()})
        raise
    if spec.method.name in EVAL_ONLY and cfg.sparsity is not None:
        log.info("method=%s prunes nothing; sparsity=%s is ignored", spec.method.name, cfg.sparsity)
    return _Job(spec, config, chash, out_dir, inputs, comm).run()


class _Job:
    """The stages of one validated job around its record; any failure becomes a ``failed`` record."""

    def __init__(self, spec: JobSpec, config: dict, chash: str, out_dir: Path, inputs: dict, comm: Comm = LOCAL):
        self.spec, self.config, self.chash, self.out_dir, self.comm = spec, config, chash, out_dir, comm
        self.method, self.target = spec.method.name, spec.sparsity
        self.path = out_dir / RESULTS_FILE
        self.loaded, self.windows, self.offload_dir, self.temporary_store = None, None, None, False
        self.progress = None  # block-level checkpoints with the blocks on disk (pruning/resume.py)
        self.heldout, self.zero_shot_samples, self.prune_timings, self.ranks_done = None, None, {}, False
        if comm.writer:  # the other ranks of a distributed job write nothing
            out_dir.mkdir(parents=True, exist_ok=True)
            # the config beside the record it belongs to: a forced re-run leaves a standing record's copy alone
            # until it has its own record (finish), and a failure of it goes to config.failed.yaml (fail)
            if not is_complete(read_record(self.path)):
                write_text_atomic(out_dir / CONFIG_FILE, OmegaConf.to_yaml(config))
        self.record = {
            "schema_version": SCHEMA_VERSION, "status": "running", "config_hash": chash,
            "job": {"output_dir": str(out_dir.resolve()), "host": socket.gethostname(), "started": utc_now(),
                    "slurm_job_id": os.environ.get("SLURM_JOB_ID")},  # set under a SLURM launcher
            "versions": versions(), "config": config, "inputs": inputs,
            "method": {"name": self.method, "label": spec.method.label, "params": dict(spec.method.params)},
            "sparsity": {"target": NONE_TARGET if self.method == "none" else self.target.as_dict(), "actual": None},
            "protocol": {"name": spec.protocol.get("name"), "calibration": None,
                         "eval": config["eval"]},
            "metrics": {"perplexity": {}}, "timings": {}, "memory": {}, "layers": [], "warnings": [],
        }
        self.tracker = self._tracker() if comm.writer else NullTracker()

    def _tracker(self):
        logger_cfg = dict(self.spec.logger)
        if logger_cfg.get("job_type") is None:
            logger_cfg["job_type"] = self.method
        name = f"{self.spec.model.name}:{self.method}" + (
            "" if self.method in EVAL_ONLY else f":{self.target}:{self.spec.calibration.dataset}")
        tracker = make_tracker(logger_cfg, self.config, self.out_dir, name=name)
        self.record["tracking"] = {"backend": logger_cfg.get("backend", "none"), "enabled": tracker.enabled,
                                   "run_dir": tracker.run_dir}
        return tracker

    def run(self) -> dict:
        self.t_start = time.perf_counter()
        self.record["memory"]["peak_scope"] = reset_peak_memory()
        try:
            self.load()
            self.calibrate()
            self.prune()
            self.evaluate()
            self.save()
            return self.finish()
        except BaseException as e:
            self.fail(e)
            if self.comm.writer and self.ranks_done:  # the other ranks wait for the outcome (finish)
                with contextlib.suppress(Exception):
                    self.comm.outcome("failed")
            if self.progress is not None and self.progress.exists():
                log.error("kept the block store with the prune's progress in %s: the same command goes on from "
                          "the last finished block", self.offload_dir)
            raise
        finally:
            if self.temporary_store and self.offload_dir is not None and not (
                    self.progress is not None and self.progress.exists()):
                shutil.rmtree(self.offload_dir, ignore_errors=True)
                if self.comm.active:  # <job dir>/offload/rank<r>: the last rank out removes the parent too
                    with contextlib.suppress(OSError):
                        self.offload_dir.parent.rmdir()

    def load(self) -> None:
        record, runtime = self.record, self.spec.runtime
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        # after runtime.threads took effect (versions() ran before it, when the record was made)
        record["job"]["torch_threads"] = record["versions"]["torch_threads"] = torch.get_num_threads()
        torch.manual_seed(self.spec.seed)
        if runtime.offload:
            self.offload_dir = Path(runtime.offload_dir or self.out_dir / "offload")
            if self.comm.active:  # a store (and a progress) per rank: each prunes and evaluates its own copy
                self.offload_dir = self.offload_dir / f"rank{self.comm.rank}"
            self.temporary_store = not runtime.offload_dir
            self.progress = self._progress()
        self.loaded = load_model(self.spec.model, offload_dir=self.offload_dir)
        record["model"] = self.loaded.info
        if self.method == "none" and self.loaded.info.get("source") == "local":
            sidecar, problem = read_sidecar(self.spec.model.path)  # who pruned it, if we did
            record["model"]["saved_sparsity"] = sidecar
            if problem:
                self._warn(problem)
        record["timings"]["load_s"] = self.loaded.info["load_seconds"]
        check_context(self.loaded.info, self.spec, calibrating=self.method not in EVAL_ONLY)

    def _progress(self) -> Progress | None:
        """The store's block-level checkpoints; another config's progress (or one under a non-uniform allocation,
        scored on the dense model) is discarded with the store's blocks before the model loads."""
        progress = Progress(self.offload_dir, self.chash)
        if progress.exists():
            if self.method in EVAL_ONLY:
                progress.discard(f"method={self.method} evaluates the checkpoint, not a partly pruned store")
            elif progress.load() is None:
                progress.discard("the block store holds another config's (or an unreadable) progress")
            elif self.spec.allocation["name"] != "uniform":
                progress.discard(f"allocation={self.spec.allocation['name']} scores the dense model, which a "
                                 "partly pruned store no longer holds")
            else:
                log.info("resume: %s holds this job's progress; the prune goes on from it", self.offload_dir)
        return None if self.method in EVAL_ONLY else progress

    def calibrate(self) -> None:
        record, method, spec = self.record, self.method, self.spec
        calibration = asdict(spec.calibration)
        allocation = spec.allocation["name"]
        if method in EVAL_ONLY:
            record["protocol"]["calibration"] = {"used": False, "reason": f"method={method} calibrates nothing",
                                                 **calibration}
        elif calibrates(spec):
            t0 = time.perf_counter()
            calib = build_calibration(spec.calibration, self.loaded.tokenizer, spec.data)
            record["protocol"]["calibration"] = {"used": True, **calib.info}
            record["timings"]["calib_data_s"] = round(time.perf_counter() - t0, 3)
            self.windows, self.heldout = calib.windows, calib.heldout
        else:
            record["protocol"]["calibration"] = {
                "used": False, "reason": f"{method} reads only the weights, engine.report_error=false and "
                                         f"allocation={allocation}", **calibration}

    def prune(self) -> None:
        record, loaded = self.record, self.loaded
        if self.method in EVAL_ONLY:
            record["timings"]["prune_s"] = 0.0
            return
        spec = self.spec
        t0 = time.perf_counter()
        report, alloc = prune_loaded(loaded.model, loaded.adapter, self.windows, spec.method, self.target,
                                     dict(spec.allocation), spec.profile, spec.engine, store=loaded.store,
                                     heldout=self.heldout, progress=self.progress, comm=self.comm)
        self.prune_timings = report.timings
        record["timings"]["allocation_s"] = round(time.perf_counter() - t0 - report.timings["prune_total_s"], 3)
        record["allocation"] = alloc.info
        record["layers"] = report.layers
        _check_numerics(record, report.layers, spec.runtime.max_fallback_share)
        record["memory"]["peak_rss_after_prune_bytes"] = peak_memory()["peak_rss_bytes"]
        record["timings"].update(report.timings)
        record["timings"]["prune_s"] = report.timings["prune_total_s"]
        record["metrics"]["mean_rel_error"] = mean_layer_value(report.layers, "rel_error")
        record["protocol"]["engine"] = report.engine_info()
        if self.heldout is not None:
            record["metrics"]["mean_heldout_rel_error"] = mean_layer_value(report.layers, "heldout_rel_error")
        dense_error = mean_layer_value(report.layers, "dense_rel_error")  # output_target=dense, engine.dense_error
        if dense_error is not None:
            record["metrics"]["mean_dense_rel_error"] = dense_error
        self.tracker.log_table("layers", report.layers)

    def evaluate(self) -> None:
        record, loaded, spec = self.record, self.loaded, self.spec
        t_eval = time.perf_counter()
        if spec.eval.perplexity.enabled:
            record["metrics"]["perplexity"] = evaluate_perplexity(loaded.model, loaded.tokenizer, spec.eval.perplexity,
                                                                  spec.data, self.comm)
        record["timings"]["eval_ppl_s"] = round(time.perf_counter() - t_eval, 3)
        if self.comm.active:  # the job's last collective but finish's outcome: the other ranks end here
            record["job"]["distributed"] = self._ranks()
            self.ranks_done = True
            if not self.comm.writer:
                return
        for name, r in record["metrics"]["perplexity"].items():
            if not math.isfinite(r["ppl"]):
                self._warn(f"{name} perplexity is not finite (mean log-loss {r['nll']:.4g}); recorded as null")
        if spec.eval.zero_shot_on:
            t_zs = time.perf_counter()
            zs = evaluate_zero_shot(loaded.model, loaded.tokenizer, spec.eval.zero_shot, spec.data,
                                    spec.runtime.zero_shot_logits_gb, spec.runtime.zero_shot_shared_context)
            # per-document correctness beside the record (paired tests between methods; analysis.significance),
            # written with the record (finish): a re-run that fails later keeps the samples of the record that stays
            self.zero_shot_samples = zs.pop("samples")
            zs["samples_file"] = ZERO_SHOT_SAMPLES
            record["metrics"]["zero_shot"] = zs
            record["timings"]["eval_zeroshot_s"] = round(time.perf_counter() - t_zs, 3)
            rows = [{"task": task, **scores, "chance": zs["task_info"][task].get("chance")}
                    for task, scores in zs["tasks"].items()]
            self.tracker.log_table("zero_shot", rows)
            self.tracker.log_bar("zero_shot_acc", rows, "task", "acc", "zero-shot accuracy per task")
        self.record["sparsity"].update(  # actual, zeros, total, n_linears
            measure_stored_sparsity(loaded.model, loaded.adapter, loaded.store))
        claimed = record["model"].get("saved_sparsity")
        if self.method == "none" and claimed:
            measured = self.record["sparsity"]["actual"]
            for problem in sidecar_mismatch(claimed, measured, loaded.model, loaded.adapter, loaded.store):
                self._warn(problem)

    def _ranks(self) -> dict:
        """``job.distributed``: the world, and each rank's host, prune timings, peak memory and bytes sent."""
        mine = {"rank": self.comm.rank, "host": socket.gethostname(), "torch_threads": torch.get_num_threads(),
                "timings": self.prune_timings, "sent_bytes": self.comm.sent_bytes,
                "comm_s": round(self.comm.comm_s, 3), **peak_memory()}
        return {**self.comm.info(), "ranks": self.comm.gather_objects(mine)}

    def save(self) -> None:
        if self.spec.save.enabled and self.comm.writer:
            t_save = time.perf_counter()
            self.record["save"] = _save_model(self.spec, self.loaded, self.record, self.out_dir, self.windows)
            self.record["timings"]["save_s"] = round(time.perf_counter() - t_save, 3)

    def _warn(self, msg: str) -> None:
        self.record["warnings"].append(msg)
        log.warning(msg)

    def finish(self) -> dict | None:
        if not self.comm.writer:  # rank 0's record decides whether this rank's progress (and store) can go
            self.loaded = None  # the model is not needed while rank 0 scores zero-shot tasks and saves
            if self.comm.outcome() == "complete" and self.progress is not None:
                self.progress.done()
            return None
        record = self.record
        record["timings"]["total_s"] = round(time.perf_counter() - self.t_start, 3)
        record["memory"].update(peak_memory())
        record["status"] = "complete"
        record["job"]["finished"] = utc_now()
        problems = check_record(record)
        if problems:  # a bug in this code, not in the job's input: never write a record readers cannot trust
            raise RuntimeError(f"the record breaks its schema (pruning/record.py): {'; '.join(problems)}")
        reusable_record(self.path, self.chash, self.spec.force)  # again, right before writing
        if self.zero_shot_samples is not None:
            write_samples_atomic(self.out_dir / ZERO_SHOT_SAMPLES, self.zero_shot_samples)
        write_text_atomic(self.out_dir / CONFIG_FILE, OmegaConf.to_yaml(self.config))
        write_json_atomic(self.path, record)
        if self.progress is not None:
            self.progress.done()  # the record is complete: a kept store holds the pruned model, nothing to resume
        self.comm.outcome("complete")
        self.tracker.log_summary(_summary(record))
        self.tracker.finish()
        log.info("wrote %s", self.path)
        return record

    def fail(self, e: BaseException) -> None:
        if not self.comm.writer:
            log.error("rank %d failed: %s: %s", self.comm.rank, type(e).__name__, e)
            return
        record = self.record
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if isinstance(e, (Terminated, KeyboardInterrupt)):
            record["reason"] = "terminated"
        record["job"]["finished"] = utc_now()
        record["timings"]["total_s"] = round(time.perf_counter() - self.t_start, 3)
        record["memory"].update(peak_memory())
        try:
            where = write_failed_record(self.path, record)
            if where.name == FAILED_FILE:  # a complete record stands: its config copy stays beside it
                write_text_atomic(self.out_dir / FAILED_CONFIG_FILE, OmegaConf.to_yaml(self.config))
        finally:
            self.tracker.finish(exit_code=1)

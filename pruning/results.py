"""The result record: one ``results.json`` per job, the contract between jobs and ``analysis/``.

A record is written atomically (a temporary file in the same directory, fsync, then
``os.replace``), so a reader sees either the previous file or the complete new one. A job is
*complete* only when its record says ``status: complete``; failed jobs write ``status: failed``
with the error, so a sweep can be resumed and the failure inspected.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import socket
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
import logging
from pathlib import Path

import torch

from pruning.errors import ConfigError
from pruning.inputs import changed_inputs
from pruning.provenance import cpu_name, machine, proc_kib
from pruning.record import ENGINE_REVISION, SCHEMA_VERSION, stale_reason  # noqa: F401  (the schema: pruning/record.py)
from pruning.version import __version__

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
LOCK_FILE = ".job.lock"  # flock'ed by the job that owns the directory, for its whole lifetime

# Config keys that do not change what a job computes: left out of the config hash.
HASH_EXCLUDE = ("force", "logger", "sweep_name", "data.root", "model.cache_dir", "model.device", "runtime", "save",
                "paths")

_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "lm_eval", "accelerate", "safetensors", "gguf",
             "hydra-core", "omegaconf", "wandb", "pandas", "numpy")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _drop(d: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head in d:
        if rest:
            if isinstance(d[head], dict):
                _drop(d[head], rest)
        else:
            del d[head]


# A dense job prunes nothing: what it would calibrate on and at which sparsity does not change it, so
# the dense job of a sweep over sparsities or calibration sets runs once and is skipped after.
DENSE_HASH_EXCLUDE = ("sparsity", "calibration", "engine", "allocation")


def config_hash(config: dict) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a resolved config, minus HASH_EXCLUDE
    (and minus DENSE_HASH_EXCLUDE for ``method.name: dense`` or ``none``; minus ``allocation`` when it is uniform,
    ``calibration.heldout_nsamples`` when it is 0, ``engine.dense_error`` when it is false, ``engine.dense_inputs``
    when it is ``stored``, ``engine.shards`` when it is 1, ``method.factor`` when it is ``reference`` and
    ``engine.reuse_outputs`` always, so those hashes equal the ones of records written before these keys existed)."""
    cfg = json.loads(json.dumps(config, sort_keys=True, default=str))
    if (cfg.get("allocation") or {}).get("name") == "uniform":  # = records from before the allocation group
        cfg.pop("allocation")
    if (cfg.get("calibration") or {}).get("heldout_nsamples") == 0:  # = records from before held-out windows
        cfg["calibration"].pop("heldout_nsamples")
    if (cfg.get("engine") or {}).get("dense_error") is False:  # = records from before engine.dense_error
        cfg["engine"].pop("dense_error")
    if (cfg.get("engine") or {}).get("dense_inputs") == "stored":  # the same statistics as the records before it
        cfg["engine"].pop("dense_inputs")
    if (cfg.get("engine") or {}).get("shards") == 1:  # = records from before engine.shards
        cfg["engine"].pop("shards")
    (cfg.get("engine") or {}).pop("reuse_outputs", None)  # the same outputs whichever (pruning/reuse.py)
    if (cfg.get("method") or {}).get("factor") == "reference":  # = records from before method.factor
        cfg["method"].pop("factor")
    dense = (cfg.get("method") or {}).get("name") in ("dense", "none")
    for key in HASH_EXCLUDE + (DENSE_HASH_EXCLUDE if dense else ()):
        _drop(cfg, key)
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_info(path: Path | None = None) -> dict:
    path = path or Path(__file__).resolve().parent.parent
    def git(*args):
        # --no-optional-locks: `git status` must not take .git/index.lock (a job killed meanwhile would leave
        # it behind and block the user's next commit)
        return subprocess.run(["git", "--no-optional-locks", "-C", str(path), *args], capture_output=True, text=True,
                              timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None}


def versions() -> dict:
    out = {"python": platform.python_version(), "package": __version__, "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git"] = git_info()
    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    out["cpu"] = cpu_name()  # perplexity differs by ~0.5% between CPUs: compare methods on one machine
    out["machine"] = machine()  # the stable fingerprint: CPU ids, cores, memory, GPUs, a hash of the host
    out["torch_threads"] = torch.get_num_threads()
    out["engine_revision"] = ENGINE_REVISION
    return out


def reset_peak_memory() -> str:
    """Start a new peak-memory window for this job; returns the scope peaks will have.

    Hydra's basic launcher runs sequential jobs in one process, so a process-wide peak would carry
    over from job to job. On Linux, writing "5" to /proc/self/clear_refs resets VmHWM (the peak
    RSS) to the current RSS; elsewhere the peak stays process-wide and is labelled so.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "job"
    except OSError:
        return "process"


def peak_memory() -> dict:
    """Peak resident set size (since :func:`reset_peak_memory` where supported) and peak CUDA memory, bytes."""
    rss = proc_kib("/proc/self/status", "VmHWM")
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss *= 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    out = {"peak_rss_bytes": int(rss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj):
    """JSON has no NaN/inf: they are written as null (the pipeline records a warning for every
    non-finite metric, and perplexity keeps its finite mean log-loss ``nll``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    return write_text_atomic(path, text + "\n")


ZERO_SHOT_SAMPLES = "zero_shot_samples.json"  # per task: doc_id, doc_hash, target, pred, acc, acc_norm
DOC_HASH_CHARS = 16  # 64 bits of lm-eval's SHA-256 document hash: enough to tell two documents apart


def _compact_column(name: str, values: list) -> list:
    if name == "doc_hash":
        return [h[:DOC_HASH_CHARS] if isinstance(h, str) else h for h in values]
    if name == "target":  # the right choice's index; a task whose target is its answer text keeps none
        return [t if isinstance(t, int) else None for t in values]
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]  # 0/1 scores as 0/1


def write_samples_atomic(path: str | os.PathLike, samples: dict) -> Path:
    """A zero-shot job's per-document results (task -> columns), compact and without task text: one line
    per task, document hashes cut to :data:`DOC_HASH_CHARS` hex digits, targets as choice indices only
    (WinoGrande's are its answer texts), 0/1 scores as integers. Written indented with full digests a
    job's file was ~380 kB for 8 tasks x 400 documents; this way ~95 kB. Readers compare hashes on their
    common prefix, so files written either way stay comparable."""
    lines = []
    for task, cols in samples.items():
        cols = {name: _compact_column(name, values) for name, values in cols.items()}
        body = json.dumps(_finite(cols), separators=(",", ":"), default=_json_default, allow_nan=False)
        lines.append(f"  {json.dumps(task)}: {body}")
    return write_text_atomic(path, "{\n" + ",\n".join(lines) + "\n}\n")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Temp file in the same directory, fsync, rename: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; teammates on a shared cluster must read records
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only, permissions: say which file (the old one, if any, is intact)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"{e.strerror or e} while writing {path} (any earlier version of it is unchanged)",
                      str(path)) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def inspect_record(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """``(record, None)`` for a readable record, ``(None, None)`` when there is no file, and ``(None, why)``
    when a file is there but is no record: not UTF-8, not JSON (a torn or corrupt file), JSON but not an
    object, or a directory."""
    path = Path(path)
    if path.is_dir():
        return None, "it is a directory, not a file"
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text ({e.reason} at byte {e.start})"
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at line {e.lineno} column {e.colno}; a torn or corrupt file)"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not isinstance(record, dict):
        return None, f"JSON {type(record).__name__}, not an object"
    return record, None


def read_record(path: str | os.PathLike) -> dict | None:
    """The record at ``path``, or None if absent or unreadable (a torn file never counts as complete; a
    file that is there but is no record is reported by path and treated as no record)."""
    record, problem = inspect_record(path)
    if problem:
        log.warning("%s is not a readable result record (%s); treated as incomplete", path, problem)
    return record


UNREADABLE_PREFIX = "results.unreadable"  # results.unreadable-<UTC time>.json: kept for inspection, never deleted


def set_aside(path: Path, problem: str) -> Path:
    """Move an unreadable record out of the job's way (renamed beside it, never deleted); where it went."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{UNREADABLE_PREFIX}-{stamp}.json")
    os.replace(path, aside)
    log.warning("%s is not a readable result record (%s): moved to %s, the job runs again", path, problem, aside.name)
    return aside


STALE_FILE = "results.stale.json"  # a stale record, moved aside when its job re-runs
FAILED_FILE = "results.failed.json"  # a failed run's record where a complete record already stands


def write_failed_record(path: str | os.PathLike, record: dict) -> Path:
    """Write a failed job's ``record`` to ``path``, or beside it as ``results.failed.json`` where a complete
    record already stands there (a ``force=true`` re-run of its config, or another config's): a failure never
    replaces a result. Returns where it went."""
    path = Path(path)
    if is_complete(read_record(path)):
        path = path.with_name(FAILED_FILE)
        log.error("%s holds a complete record, kept; this run's failure is in %s", path.with_name(RESULTS_FILE),
                  FAILED_FILE)
    write_json_atomic(path, record)
    return path


def reusable_record(path: str | os.PathLike, chash: str, force: bool, inputs: dict | None = None) -> dict | None:
    """The complete record at ``path`` when it holds this config and was computed from the same input files
    (``inputs``: :func:`pruning.inputs.job_inputs`; the job is skipped), else None.
    A complete record of *another* config is never overwritten: :class:`ConfigError`. A stale record
    of this config (:func:`pruning.record.stale_reason`, or input files whose checksums changed) is moved
    aside to ``results.stale.json`` and the job runs again; so is an unreadable file, to
    ``results.unreadable-<time>.json``. A directory in the record's place is an error, before any work."""
    path = Path(path)
    existing, problem = inspect_record(path)
    if problem and path.is_dir():
        raise ConfigError(f"{path} is a directory, where this job writes its result record; move it away or "
                          "choose another hydra.run.dir")
    if problem:
        set_aside(path, problem)
        return None
    if not is_complete(existing) or force:
        return None
    reason = stale_reason(existing) if existing.get("config_hash") == chash else None
    changed = changed_inputs(existing, inputs or {}) if existing.get("config_hash") == chash else []
    if reason or changed:
        os.replace(path, path.with_name(STALE_FILE))
        log.warning("%s is stale (%s): moved to %s, re-running the job", path, reason or "; ".join(changed),
                    STALE_FILE)
        return None
    if existing.get("config_hash") == chash:
        log.info("complete record with the same config exists at %s: skipping (force=true re-runs)", path)
        return existing
    raise ConfigError(
        f"{path} holds a complete record of another config (hash {existing.get('config_hash')}, this job "
        f"{chash}); refusing to overwrite it. Pass force=true, or choose another hydra.run.dir"
    )


def benchmark_job(config: dict, out_dir: str | os.PathLike, force: bool) -> tuple[Path, str, dict | None]:
    """A benchmark app's job (``experiments.solver_timing``, ``experiments.scale``): where its record goes, its
    config hash (``threads`` left out: it changes the timings, not what is computed) and the complete record of
    the same config to return instead of running (:func:`reusable_record`), if any."""
    chash = config_hash({k: v for k, v in config.items() if k not in ("threads",)})
    path = Path(out_dir) / RESULTS_FILE
    return path, chash, reusable_record(path, chash, force)


def is_complete(record: dict | None, expected_hash: str | None = None) -> bool:
    if not record or record.get("status") != "complete":
        return False
    return expected_hash is None or record.get("config_hash") == expected_hash


class JobCollision(ConfigError):
    """Another live job owns the output directory."""

    def __init__(self, message: str, owner_hash: str | None = None):
        super().__init__(message)
        self.owner_hash = owner_hash


def _lock(out_dir: Path, chash: str) -> int:
    """An exclusive ``flock`` on ``<out_dir>/.job.lock`` holding this job's identity; its fd."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        try:
            owner_hash = json.loads(owner).get("config_hash")
        except (ValueError, AttributeError):
            owner_hash = None
        raise JobCollision(
            f"{out_dir} is in use by another running job ({owner}); this job (config hash {chash}) would race it "
            f"for {RESULTS_FILE}. Wait for the other job to finish, or give this one its own directory "
            f"(hydra.run.dir=..., or another sweep_name)", owner_hash) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(),
                              "config_hash": chash}).encode(), 0)
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextmanager
def job_lock(out_dir: str | os.PathLike, chash: str):
    """Own ``out_dir`` for the lifetime of the job: an exclusive ``flock`` on ``<out_dir>/.job.lock``
    (released by the kernel when the process dies, so a killed job never leaves a stale lock). A second
    job pointed at the same directory stops at once with :class:`JobCollision`, naming the owner, instead
    of racing it to ``results.json``."""
    fd = _lock(Path(out_dir), chash)
    try:
        yield
    finally:
        _unlock(fd)


def _sibling(out_dir: Path, chash: str) -> Path:
    return out_dir.with_name(f"{out_dir.name}@{chash[:8]}")


def own_dir(out_dir: Path, chash: str) -> Path:
    """The directory this config's record belongs in: ``out_dir``, unless another config already owns it
    (its record there, any status), then the sibling ``<name>@<hash[:8]>``. Directory names are built
    from the choices (method, sparsity, calibration, overrides); keys such as ``eval`` or a preset's
    settings are not in them, so two configs can map to one name: each still gets a directory of its own."""
    sibling = _sibling(out_dir, chash)
    if (read_record(sibling / RESULTS_FILE) or {}).get("config_hash") == chash:
        return sibling  # moved there before: resume in place
    owner = (read_record(out_dir / RESULTS_FILE) or {}).get("config_hash")
    return out_dir if owner in (None, chash) else sibling


@contextmanager
def claim_job_dir(out_dir: str | os.PathLike, chash: str):
    """Lock the job's own directory (:func:`own_dir`) for its lifetime and yield it. When a live job of
    another config holds ``out_dir``, this one moves to its ``@hash`` sibling; a live job of the *same*
    config there is a :class:`JobCollision` (the same job twice)."""
    out_dir = Path(out_dir)
    target = own_dir(out_dir, chash)
    try:
        fd = _lock(target, chash)
    except JobCollision as e:
        if target != out_dir or e.owner_hash in (None, chash):
            raise
        target = _sibling(out_dir, chash)
        fd = _lock(target, chash)
    if target != out_dir:
        log.warning("%s belongs to another config; this job (config hash %s) writes to %s", out_dir, chash, target)
    try:
        yield target
    finally:
        _unlock(fd)

"""SIGTERM / SIGINT to a sweep that runs its jobs in worker processes (``hydra/launcher=local``: joblib's
loky workers; ``slurm_local``: submitit's) ends the jobs with their ``failed`` records, then the sweep.

Without this the parent died at once and its workers, re-parented to PID 1, went on: they wrote complete
records nobody waited for, hung on a pipe to the dead parent, and held their job directories' locks, so
an immediate re-run failed every job with ``JobCollision``. On SLURM a job's time limit sends exactly
this signal.

The parent (:func:`install`, from :class:`experiments.callbacks.SweepSummary`) forwards SIGTERM to each
worker that is running a job. A running job catches SIGTERM (:func:`pruning.pipeline.run_job`), raises
``Terminated`` and writes its ``failed`` record with ``reason: terminated``; it restores the default
handler only once that record is on disk. So the parent waits until no worker catches SIGTERM any more
(``SigCgt`` in ``/proc/<pid>/status``), at most :data:`GRACE_S`, then kills the idle workers and exits
with the signal's status. Workers are never killed while they write a record: loky kills every worker
with SIGKILL as soon as one of them dies, so none is ended before all jobs are done. Linux only (``/proc``);
elsewhere the parent ends as before.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_S = 25.0  # below SLURM's default KillWait (30 s) between its SIGTERM and SIGKILL
_installed = False


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from ``/proc``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return sorted(out)


def catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler installed for ``signum`` (a job running in it)."""
    mask = _status(pid).get("SigCgt")
    return bool(mask) and bool(int(mask, 16) >> (signum - 1) & 1)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_workers(grace_s: float = GRACE_S) -> tuple[int, int]:
    """End this process's running jobs through their own SIGTERM handler, wait for their records, then kill
    the idle workers. Returns (jobs signalled, processes killed after the grace period or when idle)."""
    me, signalled, deadline = os.getpid(), set(), time.monotonic() + grace_s
    while time.monotonic() < deadline:
        running = [pid for pid in children(me) if catches(pid, signal.SIGTERM)]
        for pid in running:  # a job a worker took up meanwhile is ended too (its record: terminated)
            if pid not in signalled:
                _kill(pid, signal.SIGTERM)
                signalled.add(pid)
        if not running:
            break
        time.sleep(0.2)
    leftover = children(me)
    for pid in leftover:  # idle workers (and any job past the grace period)
        _kill(pid, signal.SIGKILL)
    return len(signalled), len(leftover)


def _handler(signum, frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut this short
        signal.signal(sig, signal.SIG_IGN)
    name = signal.Signals(signum).name
    log.error("sweep received %s: ending its running jobs (each writes its failed record, reason: terminated; "
              "at most %.0f s)", name, GRACE_S)
    jobs, killed = stop_workers()
    log.error("sweep stopped by %s: %d running job(s) ended, %d worker process(es) stopped. Re-run the same command "
              "to resume: complete jobs are skipped, the others run again", name, jobs, killed)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # exit with the signal's status, as without this handler


def install() -> None:
    """In a sweep's parent process (Linux): SIGTERM and SIGINT end the sweep's jobs cleanly (module docstring)."""
    global _installed
    if _installed or not Path("/proc/self/status").exists():
        return
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    _installed = True

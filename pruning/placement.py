"""Which GPU a job uses when several jobs run side by side on one machine (joblib launcher).

``runtime.gpus: [0, 1, 2, 3]`` gives a pool: each job takes the first GPU nobody else holds, by an
exclusive ``flock`` on ``<lock_dir>/gpu<k>.lock``, and keeps it until the job ends (the lock dies
with the process, so a killed job never leaves a GPU reserved). When every GPU is taken, the job
waits. Locks, not job numbers: joblib hands jobs to whichever worker is free, so ``num % n`` would
put two running jobs on one GPU while another idles.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pruning.errors import ConfigError

log = logging.getLogger(__name__)


@contextmanager
def gpu_from_pool(gpus, lock_dir: str | Path, *, poll_s: float = 2.0, timeout_s: float | None = None):
    """Yield a GPU index from ``gpus`` held exclusively by this process (``None`` when no pool is set)."""
    if not gpus:
        yield None
        return
    if isinstance(gpus, (str, int)) or not all(isinstance(g, int) and g >= 0 for g in gpus):
        raise ConfigError(f"runtime.gpus={gpus!r}; allowed: null or a list of GPU indices, e.g. [0,1,2,3]")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start, announced = time.monotonic(), False
    while True:
        for gpu in gpus:
            fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                log.info("job holds GPU %d (lock %s)", gpu, lock_dir / f"gpu{gpu}.lock")
                yield gpu
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free GPU among {list(gpus)} after {timeout_s:.0f} s (locks in {lock_dir})")
        if not announced:
            log.info("all GPUs %s are taken by other jobs; waiting", list(gpus))
            announced = True
        time.sleep(poll_s)


def use_gpu(gpu: int | None) -> None:
    """Make ``cuda`` mean GPU ``gpu`` in this process (``model.device=auto|cuda`` then lands there)."""
    if gpu is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"runtime.gpus assigns GPU {gpu}, but torch sees no CUDA device")
    if gpu >= torch.cuda.device_count():
        raise ConfigError(f"runtime.gpus assigns GPU {gpu}; this machine has {torch.cuda.device_count()}")
    torch.cuda.set_device(gpu)

"""What pins a result to where and on what it ran: a stable fingerprint of the machine, and fingerprints of
the token windows a job calibrated and evaluated on.

* :func:`machine` (``versions.machine`` of every record): CPU model and identifiers, the instruction-set
  extensions the matrix kernels pick from, logical and usable cores, memory, GPUs, and ``host`` (a salted
  hash of ``/etc/machine-id``, else of the host name: it tells two hosts apart and reveals neither); ``id``
  hashes all of them, so "one machine" is a comparison of two short strings. Perplexity differs by about
  0.5% between machines, so methods are compared only within one.
* :func:`windows_sha256` (``protocol.calibration.windows_sha256``, ``metrics.perplexity.<set>.windows_sha256``):
  the sha256 of the token ids as little-endian int64 with their shape, so records paired as "the same
  calibration windows" can be checked to be, whatever commit or machine drew them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from functools import lru_cache

import torch


_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "fma", "asimd", "sve")
_CPU_KEYS = {"cpu family": "family", "model": "model", "stepping": "stepping", "vendor_id": "vendor"}
_SALT = "pruning-host-v1:"  # the host hash is of this and the identity, never the identity alone


def cpu_name() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform.processor()`` says, else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpuinfo() -> dict:
    """Identifiers and the relevant flags of the first CPU in /proc/cpuinfo (empty elsewhere)."""
    out: dict = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block only
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in _CPU_KEYS:
                    out[_CPU_KEYS[key]] = value
                elif key in ("flags", "Features"):
                    have = set(value.split())
                    out["flags"] = [f for f in _FLAGS if f in have]
    except OSError:
        pass
    return out


def proc_kib(path: str, key: str) -> int | None:
    """A ``key:  <n> kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes; None where
    there is no such file or line (not Linux)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _host_hash() -> str:
    try:
        with open("/etc/machine-id", encoding="utf-8") as f:
            identity = f.read().strip()
    except OSError:
        identity = ""
    identity = identity or socket.gethostname()
    return hashlib.sha256((_SALT + identity).encode()).hexdigest()[:12]


@lru_cache(maxsize=1)
def _static() -> dict:
    cpu = _cpuinfo()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = proc_kib("/proc/meminfo", "MemTotal")
    return {"cpu": cpu_name(), "cpu_id": "/".join(cpu.get(k, "?") for k in ("vendor", "family", "model", "stepping")),
            "cpu_flags": cpu.get("flags", []), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "memory_gib": round(mem / 2**30, 1) if mem else None, "host": _host_hash()}


def machine() -> dict:
    """The machine's fingerprint (module docstring); ``id`` is a hash of every other field."""
    out = dict(_static())
    out["gpus"] = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                   if torch.cuda.is_available() else [])
    blob = repr(sorted(out.items())).encode()
    out["id"] = hashlib.sha256(blob).hexdigest()[:12]
    return out


def windows_sha256(ids: torch.Tensor) -> str:
    """sha256 (first 16 hex digits) of token ids: their shape, then the values as little-endian int64."""
    ids = ids.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.sha256(repr(tuple(ids.shape)).encode())
    h.update(ids.numpy().astype("<i8", copy=False).tobytes())
    return h.hexdigest()[:16]

"""Before a model is loaded: a lower bound on the host memory the job needs, against what is available.

A 70B model loaded on a 24 GB machine otherwise dies in the loader with the kernel's OOM kill and no
message. The bound counts only what the job cannot avoid holding at once, so it never refuses a job
that would fit:

- the weights in memory: all of them, or with ``runtime.offload=disk`` those outside the decoder blocks
  plus the largest block (the checkpoint dtype's bytes: float32 on the CPU unless ``model.dtype`` says
  otherwise);
- the calibration activations of one block: its inputs and outputs for every calibration token;
- the largest layer's Hessian (``cols × cols`` in float32), which every method but magnitude without an
  error report accumulates.

Solvers need several such matrices more (benchmarks.md, "Scale", working memory); they are not counted.
Available memory is ``MemAvailable`` of ``/proc/meminfo``, or less where a cgroup (a SLURM job, a
container) caps the process. The check runs where the model's config is readable before loading
(:func:`pruning.models.model_preflight`) and the model lives on the CPU; ``runtime.memory_check=false``
skips it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pruning.errors import ConfigError
from pruning.provenance import proc_kib

GB = 1e9


def available_bytes() -> int | None:
    """Memory this process can still take: ``MemAvailable``, capped by a cgroup v2 ``memory.max``."""
    avail = proc_kib("/proc/meminfo", "MemAvailable")
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
        root = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (root / "memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int((root / "memory.current").read_text())
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def memory_floor(config, dtype: torch.dtype, offload: bool, tokens: int, hessian: bool) -> dict:
    """The lower bound (module docstring) for a model config, in bytes, term by term."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from pruning.adapters import adapter_for

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    adapter = adapter_for(model)
    size = dtype.itemsize
    blocks = adapter.blocks(model)
    per_block = [sum(p.numel() for p in b.parameters()) * size for b in blocks]
    total = sum(p.numel() for p in model.parameters()) * size  # a tied head counted once
    weights = total - sum(per_block) + max(per_block) if offload else total
    cols = max(linear.in_features for b in blocks for linear in adapter.prunable(b).values())
    floor = {"weights": weights, "activations": 2 * tokens * int(config.hidden_size) * 4,
             "hessian": cols * cols * 4 if hessian and tokens else 0}
    return {**floor, "total": sum(floor.values()), "model_bytes": total}


def check_memory(model_info: dict, spec, calibrating: bool, available: int | None = None) -> dict | None:
    """Refuse a job whose lower bound exceeds the available memory, naming both and what would help."""
    from pruning.models import resolve_device

    config = model_info.get("config")
    if not spec.runtime.memory_check or config is None or resolve_device(spec.model.device).type != "cpu":
        return None
    dtype = torch.float32 if spec.model.dtype in (None, "auto") else getattr(torch, spec.model.dtype)
    tokens = spec.calibration.nsamples * spec.calibration.seqlen if calibrating else 0
    hessian = spec.method.name != "magnitude" or spec.engine.report_error
    floor = memory_floor(config, dtype, bool(spec.runtime.offload), tokens, hessian)
    available = available_bytes() if available is None else available
    if available is None or floor["total"] <= available:
        return floor
    where = "one decoder block at a time (runtime.offload=disk)" if spec.runtime.offload else "all of them"
    advice = [] if spec.runtime.offload else ["runtime.offload=disk (decoder blocks on disk, one in memory)"]
    if floor["activations"] > 0.2 * floor["total"]:
        advice.append(f"fewer calibration tokens (calibration.nsamples={spec.calibration.nsamples})")
    raise ConfigError(
        f"model {model_info.get('name')!r} needs at least {floor['total'] / GB:.1f} GB of memory here: weights "
        f"{floor['weights'] / GB:.1f} GB in {str(dtype).replace('torch.', '')} ({where}), calibration activations "
        f"{floor['activations'] / GB:.1f} GB, the largest layer's Hessian {floor['hessian'] / GB:.1f} GB; "
        f"{available / GB:.1f} GB are available. Use {' or '.join(advice + ['a machine with more memory'])}; "
        "runtime.memory_check=false tries anyway")

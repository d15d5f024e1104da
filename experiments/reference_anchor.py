"""The reference SparseGPT as the scale benchmark's anchor: ``SparseGPT.add_batch`` / ``fasterprune`` of
IST-DASLab/sparsegpt, imported from a checkout outside this repository (never copied into it), run on the
same block weights and calibration inputs as the engine's row.

    git clone https://github.com/IST-DASLab/sparsegpt /somewhere/sparsegpt
    python -m experiments.scale arch=llama-2-7b method=sparsegpt anchor=/somewhere/sparsegpt

What runs is the reference's ``llama_sequential`` body for one block (all linears at once, its default
without ``--true-sequential``): forward hooks feed every linear's inputs to ``add_batch`` while the
calibration windows pass through the block one at a time, each linear is pruned by ``fasterprune``
(sparsity, N:M, ``blocksize`` and ``percdamp`` of the method's config), then the windows pass once more to
produce the next block's inputs. Two deviations, both needed to run it here and neither changing a
number: the block is called with the keyword arguments transformers 5 gives it (rotary embeddings; the
reference's script passes only ``attention_mask``, written for an older transformers), and on a machine
without CUDA ``torch.cuda.synchronize`` (which ``fasterprune`` calls unconditionally) is a no-op during
the call. Its per-layer prints (time, error) are discarded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path

import torch

from pruning.capture import first_output
from pruning.errors import ConfigError
from pruning.sparsity import Sparsity


def load_reference(path: str | Path):
    """The ``SparseGPT`` class of the checkout at ``path`` (its ``sparsegpt.py`` imports ``quant``, so the
    checkout goes on ``sys.path`` while it loads) and the checkout's commit."""
    path = Path(path).expanduser().resolve()
    if not (path / "sparsegpt.py").is_file():
        raise ConfigError(f"anchor={str(path)!r}: no sparsegpt.py there; clone IST-DASLab/sparsegpt and pass its directory")
    sys.path.insert(0, str(path))
    try:
        spec = importlib.util.spec_from_file_location("reference_sparsegpt", path / "sparsegpt.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path))
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return module.SparseGPT, commit


@contextlib.contextmanager
def _cpu_safe_sync():
    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = original


def run_reference(reference, block, linears: dict, inputs: list[torch.Tensor], kwargs: list[dict],
                  target: Sparsity, params: dict, sync) -> tuple[dict, list[torch.Tensor]]:
    """Prune ``block`` in place with the reference (module docstring); its timings in seconds and its
    outputs (the next block's inputs)."""
    gpts = {name: reference(layer) for name, layer in linears.items()}
    handles = [layer.register_forward_hook(lambda _m, inp, out, n=name: gpts[n].add_batch(inp[0].data, out.data))
               for name, layer in linears.items()]
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, kw in zip(inputs, kwargs):
            block(x, **kw)
        sync()
    for h in handles:
        h.remove()
    t1 = time.perf_counter()
    prunen, prunem = (target.n, target.m) if target.kind == "nm" else (0, 0)
    with _cpu_safe_sync(), contextlib.redirect_stdout(io.StringIO()):
        for name in linears:
            gpts[name].fasterprune(target.ratio, prunen=prunen, prunem=prunem, blocksize=int(params["blocksize"]),
                                   percdamp=float(params["percdamp"]))
            gpts[name].free()
    sync()
    t2 = time.perf_counter()
    with torch.no_grad():
        outputs = [first_output(block(x, **kw)) for x, kw in zip(inputs, kwargs)]
        sync()
    t3 = time.perf_counter()
    return {"calib_forward_s": round(t1 - t0 + t3 - t2, 3), "solver_s": round(t2 - t1, 3),
            "prune_total_s": round(t3 - t0, 3)}, outputs

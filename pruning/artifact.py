"""The pruned model as an artifact: save it, reload it in a fresh object and check it is the same model.

:func:`save_pruned` writes a plain Hugging Face checkpoint (``save_pretrained``: safetensors, config,
tokenizer) and a ``sparsity.json`` sidecar (method, target, per-layer sparsity, config hash, the record,
versions). A model loaded from a GGUF is saved without the GGUF quantizer state, so it reloads without
the ``gguf`` package. The directory appears atomically (written beside it, then renamed), so a reader
never finds half a checkpoint.

:func:`verify_saved` reloads the directory with ``AutoModelForCausalLM.from_pretrained`` and compares it
with the in-memory model: every weight bit for bit (or, after a dtype cast, the zero pattern and the
largest difference), the N:M pattern where one was asked for, and the loss of one evaluation window.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from pruning.adapters import adapter_for, prunable_linears
from pruning.sparsity import Sparsity, nm_violations

log = logging.getLogger(__name__)

SIDECAR = "sparsity.json"
LOSS_RTOL = 1e-6  # relative difference allowed between the first-window losses (same weights, same kernels)


class ArtifactError(RuntimeError):
    """A saved model is missing, unreadable, or not the model that was pruned."""


def staging_dir(out_dir: Path) -> Path:
    """An empty directory beside ``out_dir`` to write the new copy into."""
    tmp = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def stale_staging(out_dir: Path) -> list[Path]:
    """Staging copies (``<name>.tmp<PID>``, ``<name>.old<PID>``) that a killed save left beside ``out_dir``."""
    pattern = re.compile(re.escape(out_dir.name) + r"\.(tmp|old)\d+")
    return sorted(p for p in out_dir.parent.glob(out_dir.name + ".*") if pattern.fullmatch(p.name) and p.is_dir())


@contextmanager
def staged(out_dir: Path):
    """A fresh staging directory for a new copy of ``out_dir``; whatever goes wrong inside, it is removed (a
    failed save of a 7B model would otherwise leave gigabytes behind), and a file-system error names the
    directory being saved."""
    tmp = staging_dir(out_dir)
    try:
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(e.errno, f"{e.strerror or e} while saving the pruned model to {out_dir} (the partial copy "
                               f"{tmp.name} was removed; an earlier copy at {out_dir}, if any, is unchanged)") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _readable(tmp: Path) -> None:
    """Files as the user's umask says (safetensors writes 0600): teammates on a cluster load the checkpoint."""
    mask = os.umask(0o022)
    os.umask(mask)
    for p in tmp.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def publish(tmp: Path, out_dir: Path) -> dict:
    """Move the complete copy ``tmp`` to ``out_dir`` (an existing one is replaced only now); what was written."""
    _readable(tmp)
    old = out_dir.with_name(f"{out_dir.name}.old{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    files = sorted(p.name for p in out_dir.iterdir())
    size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    log.info("saved the pruned model to %s (%d files, %.1f MB)", out_dir, len(files), size / 2**20)
    return {"dir": str(out_dir.resolve()), "files": files, "bytes": size}


@contextmanager
def plain_config(model):
    """The model as a plain checkpoint while it is saved: without the GGUF quantizer a GGUF-loaded
    model carries (a saved copy must reload without ``gguf``), with ``use_cache`` on (the saved config
    is for users generating text, not for pruning)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = True
    try:
        yield
    finally:
        model.config.use_cache = use_cache


def write_sidecar(tmp: Path, sidecar: dict | None, zeros: dict[str, tuple[int, int]]) -> None:
    """``sparsity.json``: ``sidecar`` plus the measured sparsity (``zeros``: linear -> (zeros, weights))."""
    total = sum(n for _, n in zeros.values())
    meta = {**(sidecar or {}), "actual_sparsity": sum(z for z, _ in zeros.values()) / total if total else 0.0,
            "layers": {name: z / n for name, (z, n) in zeros.items()}}
    (tmp / SIDECAR).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def save_pruned(model, tokenizer, out_dir: str | os.PathLike, sidecar: dict | None = None) -> dict:
    """Save ``model`` (and ``tokenizer``) to ``out_dir`` with a ``sparsity.json`` sidecar; returns what was
    written (dir, files, bytes). An existing ``out_dir`` is replaced only once the new copy is complete."""
    out_dir = Path(out_dir)
    with staged(out_dir) as tmp:
        with plain_config(model):
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        linears = prunable_linears(model, adapter_for(model))
        write_sidecar(tmp, sidecar, {name: (int((m.weight == 0).sum()), m.weight.numel())
                                     for name, m in linears.items()})
        return publish(tmp, out_dir)


def read_sidecar(model_dir: str | os.PathLike) -> tuple[dict | None, str | None]:
    """The ``sparsity.json`` of a saved model directory and None; ``(None, None)`` without one; ``(None, why)``
    for a file that is there but unreadable (not UTF-8, not JSON, not an object), naming it."""
    path = Path(model_dir) / SIDECAR
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"{path} is unreadable ({type(e).__name__}: {e}); the checkpoint's pruning history is unknown"
    if not isinstance(meta, dict):
        return None, f"{path} is JSON {type(meta).__name__}, not an object; the checkpoint's pruning history is unknown"
    return meta, None


SIDECAR_TOLERANCE = 0.005  # claimed vs measured sparsity: more than half a point apart is a lie, not rounding


def sidecar_mismatch(meta: dict, measured: float, model, adapter, store) -> list[str]:
    """Where a checkpoint's ``sparsity.json`` disagrees with its weights: the claimed actual sparsity or
    unstructured target against ``measured``, and a claimed N:M pattern against every prunable linear."""
    problems = []
    claimed = meta.get("actual_sparsity")
    if isinstance(claimed, (int, float)) and abs(claimed - measured) > SIDECAR_TOLERANCE:
        problems.append(f"{SIDECAR} claims actual sparsity {claimed:.4f}, the weights have {measured:.4f}")
    target = meta.get("sparsity") if isinstance(meta.get("sparsity"), dict) else {}
    if target.get("kind") == "unstructured" and isinstance(target.get("ratio"), (int, float)) \
            and measured + SIDECAR_TOLERANCE < target["ratio"]:
        problems.append(f"{SIDECAR} claims a {target['ratio']:g} target, the weights have {measured:.4f}")
    if target.get("kind") == "nm" and target.get("n") and target.get("m"):
        bad = total = 0
        for i, block in enumerate(adapter.blocks(model)):
            store.hold(i, block)
            for lin in adapter.prunable(block).values():
                w = lin.weight
                total += w.numel() // target["m"]
                bad += nm_violations(w, target["n"], target["m"]) if w.shape[1] % target["m"] == 0 else 0
            store.release(block)
        if bad:
            problems.append(f"{SIDECAR} claims {target['n']}:{target['m']}, but {bad} of {total} groups of "
                            f"{target['m']} weights have fewer than {target['n']} zeros")
    return [f"{p}: the record states the measured sparsity" for p in problems]


class Comparison:
    """A pruned model against its reloaded copy, tensor by tensor (both verifications feed it): how many
    differ and by how much, whether the zero pattern of the prunable weights is the same, and the
    groups of the reloaded weights that break an N:M target."""

    def __init__(self, target: Sparsity | None):
        self.nm = target if target is not None and target.kind == "nm" else None
        self.tensors, self.differing, self.max_abs_diff = 0, [], 0.0
        self.pattern_equal, self.nm_violations = True, 0

    def add(self, name: str, mine: torch.Tensor, theirs: torch.Tensor, prunable: bool) -> None:
        self.tensors += 1
        if not torch.equal(mine, theirs):
            self.differing.append(name)
            self.max_abs_diff = max(self.max_abs_diff, float((mine.float() - theirs.float()).abs().max()))
        if prunable:
            self.pattern_equal &= torch.equal(mine == 0, theirs == 0)
            if self.nm is not None:
                self.nm_violations += nm_violations(theirs, self.nm.n, self.nm.m)

    def figures(self) -> dict:
        return {"parameters": self.tensors, "identical_parameters": self.tensors - len(self.differing),
                "max_abs_diff": self.max_abs_diff, "zero_pattern_equal": self.pattern_equal,
                "nm_violations": self.nm_violations if self.nm is not None else None}

    @property
    def first_differing(self) -> str | None:
        return self.differing[0] if self.differing else None


def window_loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(ids.to(next(model.parameters()).device), labels=ids).loss)


def verify_saved(model_dir: str | os.PathLike, model, ids: torch.Tensor, target: Sparsity | None = None) -> dict:
    """Reload ``model_dir`` into a fresh model and compare it with ``model`` (see the module docstring).
    ``ids``: one window ``[1, seqlen]`` of token ids for the loss check. Returns the figures; raises
    :class:`ArtifactError` naming what differs."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=model.dtype)
    except Exception as e:
        raise ArtifactError(f"the saved model at {model_dir} does not reload: {type(e).__name__}: {e}") from e
    reloaded.eval()
    reloaded.config.use_cache = False
    reloaded.to(next(model.parameters()).device)
    mine = {n: p.detach() for n, p in model.named_parameters()}
    theirs = {n: p.detach() for n, p in reloaded.named_parameters()}
    if set(mine) != set(theirs):
        missing = sorted(set(mine) ^ set(theirs))[:5]
        raise ArtifactError(f"the saved model at {model_dir} has other parameters than the pruned one: {missing}")
    weights = {f"{name}.weight" for name in prunable_linears(model, adapter_for(model))}
    comparison = Comparison(target)
    for name in mine:
        comparison.add(name, mine[name], theirs[name], name in weights)
    model_was_cache = model.config.use_cache
    model.config.use_cache = False
    try:
        loss, loss_reloaded = window_loss(model, ids), window_loss(reloaded, ids)
    finally:
        model.config.use_cache = model_was_cache
    out = {"dir": str(model_dir.resolve()), **comparison.figures(), "window_tokens": int(ids.shape[-1]),
           "loss": loss, "loss_reloaded": loss_reloaded}
    del reloaded
    return verdict(model_dir, out, comparison.first_differing, target)


def verdict(model_dir: Path, out: dict, first_differing: str | None, target: Sparsity | None) -> dict:
    """``out`` (the figures of a reload check) with the losses' relative difference and ``passed``; raises
    :class:`ArtifactError` naming every difference found."""
    out["loss_rel_diff"] = abs(out["loss"] - out["loss_reloaded"]) / max(abs(out["loss"]), 1e-12)
    problems = []
    if first_differing is not None:
        problems.append(f"{out['parameters'] - out['identical_parameters']} parameter(s) differ "
                        f"(max |diff| {out['max_abs_diff']:.3g}; first: {first_differing})")
    if not out["zero_pattern_equal"]:
        problems.append("the zero pattern of the prunable weights differs")
    if out["nm_violations"]:
        problems.append(f"{out['nm_violations']} groups violate the {target} pattern")
    if not out["loss_rel_diff"] <= LOSS_RTOL:
        problems.append(f"the window loss differs: {out['loss']:.8g} in memory vs {out['loss_reloaded']:.8g} reloaded "
                        f"(relative {out['loss_rel_diff']:.3g} > {LOSS_RTOL:g})")
    out["passed"] = not problems
    if problems:
        raise ArtifactError(f"the saved model at {model_dir} is not the pruned model: " + "; ".join(problems))
    log.info("verified %s: %d/%d parameters identical, window loss %.6f (relative difference %.2g)", model_dir,
             out["identical_parameters"], out["parameters"], out["loss"], out["loss_rel_diff"])
    return out

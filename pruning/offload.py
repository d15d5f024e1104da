"""Blocks streamed from disk: prune (and evaluate) a model larger than the host's memory.

With ``runtime.offload=disk`` the model is built on the ``meta`` device; only the parts outside
the decoder blocks (embeddings, final norm, LM head) are materialised in memory. Each block's
tensors live in a safetensors file of a :class:`BlockStore`; the engine loads one block, prunes
it, writes it back and releases it, and forward hooks do the same for any later forward pass
(perplexity, zero-shot), so at most one block is resident at a time.

Peak memory ≈ non-block weights + one block + the engine's activations and statistics + runtime
(README, "Memory"). A checkpoint's blocks are read from its own files when first needed (safetensors
``safe_open``: one block's tensors, never the whole model, never copied); the store holds what the
engine writes back. Random models are initialised block by block straight into the store.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from pruning.adapters import FamilyAdapter
from pruning.errors import ConfigError, ModelLoadError



PROGRESS_FILE = "progress.pt"  # a prune's block-level checkpoint (pruning/resume.py): the store is mid-prune
PROGRESS_PREV = "progress.prev.pt"  # the one saved before it


def resuming(root: str | Path) -> bool:
    """The store holds a prune's progress: its blocks are kept as they are (neither re-initialised nor cleared)."""
    return (Path(root) / PROGRESS_FILE).exists() or (Path(root) / PROGRESS_PREV).exists()


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the allocator's own policy applies
        return None


_LIBC = _libc()


_M_MMAP_THRESHOLD = -3


def bound_allocator() -> None:
    """Serve every allocation of 1 MiB or more by its own mmap, returned to the OS on free. glibc
    otherwise raises this threshold to the largest block freed so far (up to 32 MiB) and keeps
    freed tensors in its heap, so transient solver buffers pile up in the RSS."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and a block-sized hole per
    block adds up to the size of the model in RSS)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _materialized(block: nn.Module) -> bool:
    return not any(p.is_meta for p in block.parameters())


class ResidentStore:
    """The block store of a model held in memory (the default): :meth:`hold` moves a block to the device
    it is worked on, :meth:`put_back` returns it where it lives; nothing is written or released. The
    engine, OWL's scoring pass and the sparsity measurement walk every model through a store, this one or
    a :class:`BlockStore`."""

    on_disk = False

    def __init__(self):
        self._home: dict[int, torch.device] = {}

    def hold(self, i: int, block: nn.Module, device=None) -> None:
        self._home[i] = next(block.parameters()).device
        if device is not None:
            block.to(device)

    def put_back(self, i: int, block: nn.Module) -> None:
        block.to(self._home.pop(i))

    def release(self, block: nn.Module) -> None:
        """Nothing to release: the block stays in memory."""


class BlockStore:
    """One safetensors file per decoder block under ``root``."""

    on_disk = True

    def __init__(self, root: str | os.PathLike, adapter: FamilyAdapter, source: "CheckpointSource | None" = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.adapter = adapter
        self.source = source
        self._hooked: set[int] = set()
        bound_allocator()

    def path(self, i: int) -> Path:
        return self.root / f"block{i:05d}.safetensors"

    def tensors(self, i: int, device="cpu") -> dict[str, torch.Tensor]:
        """Block ``i``'s state: its file in the store once written, else the checkpoint it was read from."""
        from safetensors.torch import load_file

        if self.path(i).exists():
            return load_file(str(self.path(i)), device=str(device))
        if self.source is not None and i in self.source.blocks:
            return self.source.read(i, device)
        raise ModelLoadError(f"offloaded block {i} is missing from {self.root}")

    def save_tensors(self, i: int, tensors: dict[str, torch.Tensor], path: Path | None = None) -> None:
        """Write block ``i``'s tensors to its file (or ``path``) atomically: a reader sees the old file or the new."""
        from safetensors.torch import save_file

        path = path or self.path(i)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)

    def save(self, i: int, block: nn.Module) -> None:
        self.save_tensors(i, block.state_dict())

    def load(self, i: int, block: nn.Module, device="cpu") -> None:
        """Materialise block ``i`` from its file (no-op when it is already in memory)."""
        if _materialized(block):
            return
        tensors = self.tensors(i, device)
        block.to_empty(device=device)
        block.load_state_dict(tensors, strict=True)

    @staticmethod
    def release(block: nn.Module) -> None:
        block.to("meta")
        return_freed_memory()

    def hold(self, i: int, block: nn.Module, device="cpu") -> None:
        """Load block ``i`` for the engine: it stays in memory until :meth:`put_back`, whatever
        forward passes run through it meanwhile."""
        self._hooked.discard(i)
        self.load(i, block, device)

    def put_back(self, i: int, block: nn.Module) -> None:
        """Write the (pruned) block to its file and release its memory."""
        self.save(i, block)
        self.release(block)

    def _staged(self, i: int) -> Path:
        return self.root / f"block{i:05d}.staged"

    def stage(self, i: int, block: nn.Module) -> None:
        """Write the pruned block beside its file (not over it) and release it: a prune that saves its progress
        (pruning/resume.py) commits it only once the progress says the block is done, so a kill in between
        never leaves a pruned block where the resumed prune expects the dense one."""
        self.save_tensors(i, block.state_dict(), self._staged(i))
        self.release(block)

    def commit(self, i: int) -> None:
        self._staged(i).replace(self.path(i))

    def settle(self, next_block: int) -> None:
        """After a kill: staged blocks the progress counts as done are committed, later ones dropped."""
        for f in self.root.glob("block*.staged"):
            i = int(f.stem[len("block"):])
            if i < next_block:
                self.commit(i)
            else:
                f.unlink()

    def attach(self, model: nn.Module) -> None:
        """Forward hooks that load a released block before its forward and release it after."""
        for i, block in enumerate(self.adapter.blocks(model)):
            def pre(mod, args, kwargs, i=i):
                if not _materialized(mod):
                    self._hooked.add(i)
                    device = kwargs.get("hidden_states", args[0] if args else None)
                    self.load(i, mod, device.device if isinstance(device, torch.Tensor) else "cpu")

            def post(mod, args, output, i=i):
                if i in self._hooked:
                    self._hooked.discard(i)
                    self.release(mod)

            block.register_forward_pre_hook(pre, with_kwargs=True)
            block.register_forward_hook(post)

    def clear(self) -> None:
        """Remove the block files (written, half-written, staged) an earlier job left in a kept store: a fresh
        load must not read them in place of the checkpoint's blocks, nor commit them on a later resume."""
        for f in self.root.glob("block*.*"):
            f.unlink()

    def nbytes(self) -> int:
        """Bytes of the blocks: their files in the store, and the checkpoint's tensors of those not written yet."""
        unread = 0
        if self.source is not None:
            unread = self.source.nbytes(exclude={i for i in self.source.blocks if self.path(i).exists()})
        return sum(p.stat().st_size for p in self.root.glob("block*.safetensors")) + unread


def check_offloadable(model: nn.Module, adapter: FamilyAdapter) -> None:
    """Buffers a block does not save (non-persistent) would be lost when the block is released."""
    block = adapter.blocks(model)[0]
    lost = set(dict(block.named_buffers())) - set(block.state_dict())
    if lost:
        raise ConfigError(f"runtime.offload=disk: {adapter.family} blocks hold non-persistent buffers {sorted(lost)} "
                          "that a block store cannot keep; run without offload")


def _materialize_outside_blocks(model: nn.Module, adapter: FamilyAdapter, values: dict[str, torch.Tensor] | None,
                                dtype: torch.dtype) -> list[str]:
    """Allocate every parameter outside the blocks (from ``values`` or the model's own init);
    returns the names that ``values`` did not provide."""
    from accelerate.utils import set_module_tensor_to_device

    prefix = adapter.blocks_path + "."
    missing = []
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        if name.startswith(prefix) or not param.is_meta:
            continue
        if values is not None and name in values:
            set_module_tensor_to_device(model, name, "cpu", value=values[name].to(dtype))
        else:
            missing.append(name)
            if values is None:
                set_module_tensor_to_device(model, name, "cpu", value=torch.empty(param.shape, dtype=dtype))
    return missing


def _empty_model(config, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) stay real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def random_offloaded(config, adapter_for, store_root: str | os.PathLike, seed: int, dtype=torch.float32):
    """A random model with its blocks initialised one at a time straight into a store."""
    model = _empty_model(config, dtype)
    adapter = adapter_for(model)
    check_offloadable(model, adapter)
    store = BlockStore(store_root, adapter)
    resume = resuming(store_root)
    if not resume:
        store.clear()
    torch.manual_seed(seed)
    _materialize_outside_blocks(model, adapter, None, dtype)
    prefix = adapter.blocks_path + "."
    for name, module in model.named_modules():
        if not name.startswith(prefix) and name != adapter.blocks_path and not any(
                p.is_meta for p in module.parameters(recurse=False)):
            model._init_weights(module)
    for i, block in enumerate(adapter.blocks(model)):
        if resume and store.path(i).exists():
            continue  # a resumed prune: pruned or still dense, the block is the store's
        torch.manual_seed(seed + 1 + i)
        block.to_empty(device="cpu")
        for module in block.modules():
            model._init_weights(module)
        store.save(i, block)
        store.release(block)
    model.tie_weights()
    return model, adapter, store


class CheckpointSource:
    """Where each block's tensors are in a safetensors checkpoint, read on demand (``safe_open``: only
    that block's tensors) and never copied: a store over a 140 GB checkpoint writes nothing until a
    block is pruned. Tensors are cast to the run's dtype as they are read."""

    def __init__(self, where: Path, dtype: torch.dtype):
        self.where, self.dtype = where, dtype
        self.blocks: dict[int, list[tuple[str, str, str]]] = {}  # block -> (file, key in file, name in block)
        self._bytes: dict[int, int] = {}

    def add(self, i: int, fname: str, key: str, rest: str, numel: int) -> None:
        self.blocks.setdefault(i, []).append((fname, key, rest))
        self._bytes[i] = self._bytes.get(i, 0) + numel * self.dtype.itemsize

    def read(self, i: int, device="cpu") -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        out, by_file = {}, {}
        for fname, key, rest in self.blocks[i]:
            by_file.setdefault(fname, []).append((key, rest))
        for fname, entries in by_file.items():
            with safe_open(str(self.where / fname), framework="pt") as f:
                for key, rest in entries:
                    t = f.get_tensor(key)
                    out[rest] = t.to(device=device, dtype=self.dtype if t.is_floating_point() else t.dtype)
        return out

    def nbytes(self, exclude=()) -> int:
        return sum(b for i, b in self._bytes.items() if i not in exclude)


def checkpoint_offloaded(where: str | os.PathLike, config, adapter_for, store_root: str | os.PathLike,
                         dtype=torch.float32):
    """A model over a local safetensors checkpoint (``save_pretrained`` layout): the non-block weights
    read into memory, the blocks read from the checkpoint's files when they are first needed
    (:class:`CheckpointSource`); the store holds only the blocks written since (the pruned ones)."""
    from safetensors import safe_open

    where = Path(where)
    index = where / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    if not (where / files[0]).exists():
        raise ModelLoadError(f"runtime.offload=disk needs safetensors weights in {where} (found none)")
    model = _empty_model(config, dtype)
    adapter = adapter_for(model)
    check_offloadable(model, adapter)
    source = CheckpointSource(where, dtype)
    store = BlockStore(store_root, adapter, source)
    if not resuming(store_root):
        store.clear()
    names = set(dict(model.named_parameters(remove_duplicate=False))) | set(model.state_dict())
    prefix = adapter.blocks_path + "."
    outside: dict[str, torch.Tensor] = {}
    for fname in files:
        with safe_open(str(where / fname), framework="pt") as f:
            for key in f.keys():
                name = key if key in names else f"{model.base_model_prefix}.{key}"
                if name not in names:
                    raise ModelLoadError(f"checkpoint tensor {key!r} in {fname} matches no parameter of "
                                         f"{type(model).__name__}")
                if name.startswith(prefix):
                    i, rest = name[len(prefix):].split(".", 1)
                    source.add(int(i), fname, key, rest, math.prod(f.get_slice(key).get_shape()))
                else:
                    outside[name] = f.get_tensor(key)
    blocks = adapter.blocks(model)
    absent = [i for i in range(len(blocks)) if i not in source.blocks]
    if absent:
        raise ModelLoadError(f"checkpoint {where}: no tensors for blocks {absent}")
    incomplete = [i for i, b in enumerate(blocks) if {r for _, _, r in source.blocks[i]} != set(b.state_dict())]
    if incomplete:
        raise ModelLoadError(f"checkpoint {where}: blocks {incomplete} are incomplete")
    missing = _materialize_outside_blocks(model, adapter, outside, dtype)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    still = [n for n in missing if params[n].is_meta]
    if still:
        raise ModelLoadError(f"checkpoint {where} lacks {still}")
    return model, adapter, store


def measure_stored_sparsity(model: nn.Module, adapter: FamilyAdapter, store: BlockStore | ResidentStore) -> dict:
    """:func:`pruning.sparsity.measure_sparsity` over the blocks' linears, one block held at a time."""
    from pruning.sparsity import measure_sparsity

    zeros = total = n = 0
    for i, block in enumerate(adapter.blocks(model)):
        store.hold(i, block)
        m = measure_sparsity(adapter.prunable(block))
        store.release(block)
        zeros, total, n = zeros + m["zeros"], total + m["total"], n + m["n_linears"]
    return {"actual": zeros / total if total else 0.0, "zeros": zeros, "total": total, "n_linears": n}

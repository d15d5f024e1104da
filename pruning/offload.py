"""Blocks streamed from disk: prune (and evaluate) a model larger than the host's memory.

With ``runtime.offload=disk`` the model is built on the ``meta`` device; only the parts outside
the decoder blocks (embeddings, final norm, LM head) are materialised in memory. Each block's
tensors live in a safetensors file of a :class:`BlockStore`; the engine loads one block, prunes
it, writes it back and releases it, and forward hooks do the same for any later forward pass
(perplexity, zero-shot), so at most one block is resident at a time.

Peak memory ≈ non-block weights + one block + the engine's activations and statistics + runtime
(README, "Memory"). The store is written from the checkpoint file by file (safetensors
``safe_open``; never the whole model at once) or, for random test models, initialised block by
block.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from pruning.adapters import FamilyAdapter
from pruning.errors import ConfigError, ModelLoadError



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

    def __init__(self, root: str | os.PathLike, adapter: FamilyAdapter):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.adapter = adapter
        self._hooked: set[int] = set()
        bound_allocator()

    def path(self, i: int) -> Path:
        return self.root / f"block{i:05d}.safetensors"

    def save_tensors(self, i: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tmp = self.path(i).with_suffix(".tmp")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(self.path(i))  # atomic: a reader sees the old block or the new one

    def save(self, i: int, block: nn.Module) -> None:
        self.save_tensors(i, block.state_dict())

    def load(self, i: int, block: nn.Module, device="cpu") -> None:
        """Materialise block ``i`` from its file (no-op when it is already in memory)."""
        from safetensors.torch import load_file

        if _materialized(block):
            return
        if not self.path(i).exists():
            raise ModelLoadError(f"offloaded block {i} is missing from {self.root}")
        block.to_empty(device=device)
        block.load_state_dict(load_file(str(self.path(i)), device=str(device)), strict=True)

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

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("block*.safetensors"))


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
    torch.manual_seed(seed)
    _materialize_outside_blocks(model, adapter, None, dtype)
    prefix = adapter.blocks_path + "."
    for name, module in model.named_modules():
        if not name.startswith(prefix) and name != adapter.blocks_path and not any(
                p.is_meta for p in module.parameters(recurse=False)):
            model._init_weights(module)
    for i, block in enumerate(adapter.blocks(model)):
        torch.manual_seed(seed + 1 + i)
        block.to_empty(device="cpu")
        for module in block.modules():
            model._init_weights(module)
        store.save(i, block)
        store.release(block)
    model.tie_weights()
    return model, adapter, store


def checkpoint_offloaded(where: str | os.PathLike, config, adapter_for, store_root: str | os.PathLike,
                         dtype=torch.float32):
    """Stream a local safetensors checkpoint (``save_pretrained`` layout) into a store, one file
    and one tensor at a time; only the non-block weights are kept in memory."""
    from safetensors import safe_open

    where = Path(where)
    index = where / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    if not (where / files[0]).exists():
        raise ModelLoadError(f"runtime.offload=disk needs safetensors weights in {where} (found none)")
    model = _empty_model(config, dtype)
    adapter = adapter_for(model)
    check_offloadable(model, adapter)
    store = BlockStore(store_root, adapter)
    names = set(dict(model.named_parameters(remove_duplicate=False))) | set(model.state_dict())
    prefix = adapter.blocks_path + "."
    outside: dict[str, torch.Tensor] = {}
    per_block: dict[int, dict[str, torch.Tensor]] = {}
    n_blocks = len(adapter.blocks(model))
    block_size = [len(b.state_dict()) for b in adapter.blocks(model)]  # tensors that make a block complete
    for fname in files:
        with safe_open(str(where / fname), framework="pt") as f:
            for key in f.keys():
                name = key if key in names else f"{model.base_model_prefix}.{key}"
                if name not in names:
                    raise ModelLoadError(f"checkpoint tensor {key!r} in {fname} matches no parameter of "
                                         f"{type(model).__name__}")
                if name.startswith(prefix):
                    i, rest = name[len(prefix):].split(".", 1)
                    per_block.setdefault(int(i), {})[rest] = f.get_tensor(key).to(dtype)
                    if len(per_block[int(i)]) == block_size[int(i)]:
                        store.save_tensors(int(i), per_block.pop(int(i)))  # complete: flush to disk
                else:
                    outside[name] = f.get_tensor(key)
    if per_block:
        raise ModelLoadError(f"checkpoint {where}: blocks {sorted(per_block)} are incomplete")
    missing_blocks = [i for i in range(n_blocks) if not store.path(i).exists()]
    if missing_blocks:
        raise ModelLoadError(f"checkpoint {where}: no tensors for blocks {missing_blocks}")
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

"""Save and verify a model whose decoder blocks live in a block store (``runtime.offload=disk``), one
block in memory at a time.

:func:`save_offloaded` writes the same Hugging Face layout as ``save_pretrained`` with sharded weights:
``model-00001-of-N.safetensors`` holds the tensors outside the blocks (embeddings, final norm, LM head;
a tied LM head once, under the embedding's name, as ``save_pretrained`` does), shard ``k + 2`` holds
block ``k`` under its full name, and ``model.safetensors.index.json`` maps every tensor to its shard,
so ``AutoModelForCausalLM.from_pretrained`` (or a block-streaming load) reads it like any checkpoint.

:func:`verify_offloaded` reloads the directory into a fresh model whose blocks stream from the saved
shards themselves (:func:`pruning.offload.checkpoint_offloaded`, which refuses unknown, missing or
incomplete tensors and copies nothing: verifying needs no disk beyond the saved model), compares every
block's tensors bit for bit with the pruning store, checks the zero pattern and the N:M pattern, and the
loss of one window through both models. Peak memory: the weights outside the blocks twice, plus two
blocks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from pruning.artifact import (ArtifactError, Comparison, plain_config, publish, staged, verdict, window_loss,
                              write_sidecar)
from pruning.sparsity import Sparsity

INDEX = "model.safetensors.index.json"


def _shard(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def _outside_blocks(model, adapter) -> dict[str, torch.Tensor]:
    """The state outside the decoder blocks, each storage once (a tied LM head under the embedding's name)."""
    prefix = adapter.blocks_path + "."
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix):
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            out[name] = tensor.detach().contiguous()
    return out


def save_offloaded(model, adapter, store, tokenizer, out_dir: str | os.PathLike, sidecar: dict | None = None) -> dict:
    """Save an offloaded model to ``out_dir`` (module docstring) with its ``sparsity.json``; returns what
    was written. An existing ``out_dir`` is replaced only once the new copy is complete."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with staged(out_dir) as tmp:
        tmp.mkdir(parents=True)
        blocks = adapter.blocks(model)
        n = len(blocks) + 1
        weight_map, total, zeros = {}, 0, {}

        def write(k: int, tensors: dict[str, torch.Tensor]) -> None:
            nonlocal total
            save_file(tensors, str(tmp / _shard(k, n)), metadata={"format": "pt"})
            weight_map.update({name: _shard(k, n) for name in tensors})
            total += sum(t.numel() * t.element_size() for t in tensors.values())

        with plain_config(model):
            write(1, _outside_blocks(model, adapter))
            for i, block in enumerate(blocks):
                store.hold(i, block)
                try:
                    for name, linear in adapter.prunable(block).items():
                        zeros[f"{adapter.blocks_path}.{i}.{name}"] = (int((linear.weight == 0).sum()), linear.weight.numel())
                    write(i + 2, {f"{adapter.blocks_path}.{i}.{k}": v.detach().contiguous()
                                  for k, v in block.state_dict().items()})
                finally:
                    store.release(block)
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None and model.can_generate():
                model.generation_config.save_pretrained(tmp)
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_sidecar(tmp, sidecar, zeros)
        return publish(tmp, out_dir)


def verify_offloaded(model_dir: str | os.PathLike, model, adapter, store, ids: torch.Tensor,
                     target: Sparsity | None = None) -> dict:
    """Reload ``model_dir`` block by block and compare it with the offloaded ``model`` (module docstring).
    Returns the figures (as :func:`pruning.artifact.verify_saved`); raises :class:`ArtifactError`."""
    from transformers import AutoConfig

    from pruning.adapters import adapter_for
    from pruning.offload import checkpoint_offloaded

    model_dir = Path(model_dir)
    scratch = Path(tempfile.mkdtemp(prefix="verify-store-", dir=store.root.parent))
    try:
        try:
            config = AutoConfig.from_pretrained(model_dir)
            fresh, _, fresh_store = checkpoint_offloaded(model_dir, config, adapter_for, scratch,
                                                                     dtype=model.dtype)
        except Exception as e:
            raise ArtifactError(f"the saved model at {model_dir} does not reload: {type(e).__name__}: {e}") from e
        fresh.eval()
        fresh.config.use_cache = False
        fresh_store.attach(fresh)
        prefix = adapter.blocks_path + "."
        comparison = Comparison(target)
        fresh_params = dict(fresh.named_parameters())
        for name, t in model.named_parameters():
            if not name.startswith(prefix):
                comparison.add(name, t.detach(), fresh_params[name].detach(), False)
        for i, block in enumerate(adapter.blocks(model)):  # two blocks in memory at a time
            mine, theirs = store.tensors(i), fresh_store.tensors(i)
            if set(mine) != set(theirs):
                raise ArtifactError(f"the saved model at {model_dir}: block {i} holds other tensors than the pruned "
                                    f"one: {sorted(set(mine) ^ set(theirs))[:5]}")
            weights = {f"{name}.weight" for name in adapter.prunable(block)}
            for k in mine:
                comparison.add(f"{prefix}{i}.{k}", mine[k], theirs[k], k in weights)
            del mine, theirs
        loss, loss_reloaded = window_loss(model, ids), window_loss(fresh, ids)
        out = {"dir": str(model_dir.resolve()), "streamed": True, **comparison.figures(),
               "window_tokens": int(ids.shape[-1]), "loss": loss, "loss_reloaded": loss_reloaded}
        return verdict(model_dir, out, comparison.first_differing, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

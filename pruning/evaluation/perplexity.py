"""Perplexity under the SparseGPT / Wanda protocol (docs/evaluation.md, "Perplexity").

The dataset's rows are joined with its join rule and tokenized *once* (so at most one BOS, at
the very start); the token sequence is cut into non-overlapping windows of ``seqlen`` tokens and
the remainder is dropped; no context is carried between windows and no BOS is re-inserted. Each
window's loss is the mean cross-entropy of its ``seqlen - 1`` next-token predictions, and

    ppl = exp(mean over windows of the window loss)

which equals the reference ``exp(sum(loss_k * seqlen) / (nwin * seqlen))``. ``max_windows``
keeps only the first windows (the quick CPU protocol); C4 is capped at 256 windows as in
sparsegpt. This is *not* lm-eval's ``wikitext`` task (rolling, per-document word perplexity).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Mapping

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pruning.data import dataset_spec, perplexity_text
from pruning.distributed import LOCAL, Comm
from pruning.errors import ConfigError, DataError
from pruning.provenance import windows_sha256
from pruning.spec import DataSpec, PerplexitySpec, as_data, as_spec

log = logging.getLogger(__name__)


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Tokenize one long text with the tokenizer's default special tokens; returns 1-D int64."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    return ids.view(-1).to(torch.long)


@torch.inference_mode()
def window_losses(model, ids: torch.Tensor, seqlen: int, *, max_windows: int | None = None,
                  batch_size: int = 1, device=None, desc: str = "perplexity", comm: Comm = LOCAL) -> torch.Tensor:
    """Mean next-token cross-entropy of each non-overlapping ``seqlen`` window of ``ids`` (float64). ``comm``: each
    rank scores its contiguous shard of the windows (cut at batch boundaries, so each window's loss is the one
    process's), and every rank gets all the losses in window order."""
    if seqlen < 2:
        raise ConfigError(f"eval seqlen={seqlen}: need at least 2 tokens per window")
    if batch_size < 1:
        raise ConfigError(f"eval batch_size={batch_size}: need >= 1")
    ids = ids.view(-1)
    nwin = ids.numel() // seqlen
    if max_windows is not None:
        nwin = min(nwin, int(max_windows))
    if nwin < 1:
        raise DataError(f"{desc}: {ids.numel()} tokens do not fill one window of seqlen={seqlen}")
    device = device or next(model.parameters()).device
    windows = comm.shard(ids[: nwin * seqlen].view(nwin, seqlen), batch_size, allow_empty=True)
    losses = [torch.zeros(0, dtype=torch.float64)]
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, unit="batch", leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none")
        losses.append(loss.view(batch.shape[0], seqlen - 1).double().mean(dim=1).cpu())
    return torch.cat(comm.gather_objects(torch.cat(losses)))


def perplexity_from_ids(model, ids: torch.Tensor, seqlen: int, *, max_windows: int | None = None,
                        batch_size: int = 1, device=None, desc: str = "perplexity", comm: Comm = LOCAL) -> dict:
    t0 = time.perf_counter()
    losses = window_losses(model, ids, seqlen, max_windows=max_windows, batch_size=batch_size,
                           device=device, desc=desc, comm=comm)
    seconds = time.perf_counter() - t0
    nll = float(losses.mean())
    ntokens = losses.numel() * seqlen
    return {
        "windows_sha256": windows_sha256(ids.view(-1)[:ntokens].view(-1, seqlen)),  # the windows evaluated
        "ppl": math.exp(nll) if nll < 700 else float("inf"),  # written as null (pipeline: a warning)
        "nll": nll,
        "nwindows": losses.numel(),
        "total_windows": ids.numel() // seqlen,
        "ntokens": ntokens,
        "seqlen": seqlen,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(ntokens / seconds, 1) if seconds > 0 else None,
    }


def evaluate_perplexity(model, tokenizer, cfg: PerplexitySpec | Mapping, data: DataSpec | Mapping | None = None,
                        comm: Comm = LOCAL) -> dict:
    """Perplexity on every dataset of an ``eval.perplexity`` spec; returns {dataset: result}. ``comm``: the
    windows split between the ranks of a distributed job (:func:`window_losses`)."""
    cfg, data = as_spec(PerplexitySpec, cfg, "eval.perplexity"), as_data(data)
    out = {}
    for name in cfg.datasets:
        spec = dataset_spec(name)
        ds_split = cfg.split(name)
        text = perplexity_text(name, ds_split, root=data.root, source=data.source, verify=data.verify_checksums)
        ids = tokenize_text(tokenizer, text.rows[0])
        seqlen = cfg.seqlen
        caps = [c for c in (cfg.max_windows, spec.ppl_max_windows) if c is not None]
        result = perplexity_from_ids(model, ids, seqlen, max_windows=min(caps) if caps else None,
                                     batch_size=cfg.batch_size, desc=f"ppl {name}/{ds_split}", comm=comm)
        result.update(dataset=name, split=ds_split, data=text.info, protocol_cap=spec.ppl_max_windows,
                      max_windows=cfg.max_windows)
        log.info("%s/%s perplexity %.3f (%d windows x %d tokens, %.0f tok/s)", name, ds_split, result["ppl"],
                 result["nwindows"], seqlen, result["tokens_per_s"] or 0)
        out[name] = result
    return out

"""The SparseGPT / Wanda calibration sampler (docs/evaluation.md, "Calibration sampler").

Two forms, as the SparseGPT reference code draws them:

* **documents** (C4): repeat ``i = randint(0, len(docs) - 1)`` and tokenize document ``i`` whole
  until it has *more than* ``seqlen`` tokens (accept rule ``len > seqlen``), then draw
  ``start = randint(0, len - seqlen - 1)`` and take ``ids[start : start + seqlen]``. The document
  draws and the offset draw interleave in exactly this order.
* **stream** (WikiText-2, PTB): the split is joined with ``" "`` and tokenized once; each sample is
  ``ids[i : i + seqlen]`` with ``i = randint(0, len - seqlen - 1)``.

Only Python's ``random`` is used. A private ``random.Random(seed)`` produces the same numbers as the
reference's ``random.seed(seed)`` followed by module-level calls, without touching global state.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Mapping

import torch

from pruning.data import dataset_spec, load_rows
from pruning.errors import DataError
from pruning.spec import CalibrationSpec, DataSpec, as_data, as_spec

log = logging.getLogger(__name__)

ACCEPT_RULE = "len > seqlen"


@dataclass
class Calibration:
    windows: torch.Tensor  # [nsamples, seqlen] int64 token ids
    info: dict


def _encode(tokenizer, text: str) -> list[int]:
    # Default special tokens, no truncation: exactly `tokenizer(text)` of the reference.
    return tokenizer(text).input_ids


def sample_documents(docs: list[str], tokenizer, nsamples: int, seqlen: int, seed: int,
                     max_draws: int | None = None) -> torch.Tensor:
    """Document sampler (C4): per sample, draw documents until one has more than ``seqlen`` tokens."""
    if not docs:
        raise DataError("calibration: no documents to sample from")
    rng = random.Random(seed)
    max_draws = max_draws if max_draws is not None else max(10_000, 20 * len(docs))
    cache: dict[int, list[int]] = {}
    out = []
    draws = 0
    for _ in range(nsamples):
        while True:
            i = rng.randint(0, len(docs) - 1)
            draws += 1
            if i not in cache:
                cache[i] = _encode(tokenizer, docs[i])
            ids = cache[i]
            if len(ids) > seqlen:
                break
            if draws >= max_draws:
                longest = max(len(v) for v in cache.values())
                raise DataError(
                    f"calibration: {draws} document draws found none with more than seqlen={seqlen} tokens "
                    f"(longest seen: {longest}); lower calibration.seqlen or use a dataset with longer documents"
                )
        start = rng.randint(0, len(ids) - seqlen - 1)
        out.append(ids[start:start + seqlen])
    return torch.tensor(out, dtype=torch.long)


def sample_stream(ids: list[int], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Stream sampler (WikiText-2, PTB): random windows of one long token sequence."""
    if len(ids) <= seqlen:
        raise DataError(f"calibration: the text has {len(ids)} tokens, not more than seqlen={seqlen}")
    rng = random.Random(seed)
    out = []
    for _ in range(nsamples):
        i = rng.randint(0, len(ids) - seqlen - 1)
        out.append(ids[i:i + seqlen])
    return torch.tensor(out, dtype=torch.long)


def build_calibration(cfg: CalibrationSpec | Mapping, tokenizer, data: DataSpec | Mapping | None = None) -> Calibration:
    """Calibration windows from a ``calibration`` spec (dataset, split, nsamples, seqlen, seed)."""
    cfg, data = as_spec(CalibrationSpec, cfg, "calibration"), as_data(data)
    dataset, split, nsamples, seqlen, seed = cfg.dataset, cfg.split, cfg.nsamples, cfg.seqlen, cfg.seed
    spec = dataset_spec(dataset)
    data = load_rows(dataset, split, root=data.root, source=data.source, verify=data.verify_checksums)
    if spec.calib_kind == "documents":
        windows = sample_documents(data.rows, tokenizer, nsamples, seqlen, seed)
    else:
        windows = sample_stream(_encode(tokenizer, spec.calib_join.join(data.rows)), nsamples, seqlen, seed)
    info = {"dataset": dataset, "split": split, "nsamples": nsamples, "seqlen": seqlen, "seed": seed,
            "sampler": spec.calib_kind, "accept_rule": ACCEPT_RULE if spec.calib_kind == "documents" else None,
            "join": None if spec.calib_kind == "documents" else spec.calib_join, "data": data.info}
    log.info("calibration: %d x %d tokens from %s/%s (%s)", nsamples, seqlen, dataset, split, data.info["source"])
    return Calibration(windows, info)

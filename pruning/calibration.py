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

**Held-out windows** (``calibration.heldout_nsamples``, not in the references): a second set drawn by
the same sampler with seed ``seed + HELDOUT_SEED_OFFSET`` from what the calibration windows did not
touch: other documents (documents), or windows that share no token position with a calibration window
(stream). The engine measures every layer's error on them as well (data the solver never fitted).
"""

from __future__ import annotations

import bisect
import logging
import random
from dataclasses import dataclass
from typing import Mapping

import torch

from pruning.data import dataset_spec, load_rows
from pruning.errors import DataError
from pruning.provenance import windows_sha256
from pruning.spec import CalibrationSpec, DataSpec, as_data, as_spec

log = logging.getLogger(__name__)

ACCEPT_RULE = "len > seqlen"


@dataclass
class Calibration:
    windows: torch.Tensor  # [nsamples, seqlen] int64 token ids
    info: dict
    heldout: torch.Tensor | None = None  # [heldout_nsamples, seqlen], disjoint from ``windows``


def _encode(tokenizer, text: str) -> list[int]:
    # Default special tokens, no truncation: exactly `tokenizer(text)` of the reference.
    return tokenizer(text).input_ids


HELDOUT_SEED_OFFSET = 1


def sample_documents(docs: list[str], tokenizer, nsamples: int, seqlen: int, seed: int,
                     max_draws: int | None = None) -> torch.Tensor:
    """Document sampler (C4): per sample, draw documents until one has more than ``seqlen`` tokens."""
    return draw_documents(docs, tokenizer, nsamples, seqlen, seed, max_draws)[0]


def draw_documents(docs: list[str], tokenizer, nsamples: int, seqlen: int, seed: int,
                   max_draws: int | None = None, exclude: frozenset[int] = frozenset()) -> tuple[torch.Tensor, list[int]]:
    """:func:`sample_documents` that also returns the index of each window's document and never takes a
    document in ``exclude`` (drawn and passed over, so without exclusions the draws are the reference's)."""
    if not docs:
        raise DataError("calibration: no documents to sample from")
    if len(exclude) >= len(docs):
        raise DataError(f"calibration: all {len(docs)} documents are taken by the calibration windows; "
                        "none is left for held-out windows")
    rng = random.Random(seed)
    max_draws = max_draws if max_draws is not None else max(10_000, 20 * len(docs))  # per window, not in all
    cache: dict[int, list[int]] = {}
    out, used = [], []
    for _ in range(nsamples):
        draws = 0
        while True:
            i = rng.randint(0, len(docs) - 1)
            draws += 1
            if i not in exclude:
                if i not in cache:
                    cache[i] = _encode(tokenizer, docs[i])
                ids = cache[i]
                if len(ids) > seqlen:
                    break
            if draws >= max_draws:
                longest = max((len(v) for v in cache.values()), default=0)
                raise DataError(
                    f"calibration: window {len(out) + 1} of {nsamples}: {draws} document draws found none with "
                    f"more than seqlen={seqlen} tokens "
                    f"(longest seen: {longest}"
                    + (f"; {len(exclude)} documents excluded as calibration documents" if exclude else "")
                    + "); lower calibration.seqlen or use a dataset with longer documents"
                )
        start = rng.randint(0, len(ids) - seqlen - 1)
        out.append(ids[start:start + seqlen])
        used.append(i)
    return torch.tensor(out, dtype=torch.long), used


def document_windows(docs: list[str], tokenizer, nsamples: int, seqlen: int, seed: int,
                     heldout_nsamples: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
    """Calibration windows by the document rule and (``heldout_nsamples`` > 0) held-out windows from
    the other documents, drawn with seed ``seed + HELDOUT_SEED_OFFSET``; returns the held-out windows'
    provenance too (None without them)."""
    windows, used = draw_documents(docs, tokenizer, nsamples, seqlen, seed)
    if not heldout_nsamples:
        return windows, None, None
    held_seed = seed + HELDOUT_SEED_OFFSET
    heldout, _ = draw_documents(docs, tokenizer, heldout_nsamples, seqlen, held_seed, exclude=frozenset(used))
    return windows, heldout, _heldout_info(heldout_nsamples, seqlen, held_seed,
                                           f"none of the {len(set(used))} calibration documents")


def _heldout_info(nsamples: int, seqlen: int, seed: int, disjoint: str) -> dict:
    """The held-out windows' provenance, as recorded under ``protocol.calibration.heldout``."""
    return {"nsamples": nsamples, "seqlen": seqlen, "seed": seed, "disjoint": disjoint}


def sample_stream(ids: list[int], nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Stream sampler (WikiText-2, PTB): random windows of one long token sequence."""
    return draw_stream(ids, nsamples, seqlen, seed)[0]


def stream_windows(ids: list[int], nsamples: int, seqlen: int, seed: int,
                   heldout_nsamples: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
    """:func:`document_windows` for a token stream: calibration windows by the stream rule and
    (``heldout_nsamples`` > 0) held-out windows sharing no token position with them, drawn with seed
    ``seed + HELDOUT_SEED_OFFSET``, with their provenance (None without them)."""
    windows, starts = draw_stream(ids, nsamples, seqlen, seed)
    if not heldout_nsamples:
        return windows, None, None
    held_seed = seed + HELDOUT_SEED_OFFSET
    heldout, _ = draw_stream(ids, heldout_nsamples, seqlen, held_seed, avoid=starts)
    return windows, heldout, _heldout_info(heldout_nsamples, seqlen, held_seed,
                                           "no token position of a calibration window")


def draw_stream(ids: list[int], nsamples: int, seqlen: int, seed: int, avoid: list[int] = (),
                max_draws: int = 100_000) -> tuple[torch.Tensor, list[int]]:
    """:func:`sample_stream` that also returns the start of each window and redraws any window that
    shares a token position with a window of length ``seqlen`` starting at one of ``avoid``."""
    if len(ids) <= seqlen:
        raise DataError(f"calibration: the text has {len(ids)} tokens, not more than seqlen={seqlen}")
    rng = random.Random(seed)
    taken = sorted(avoid)
    out, starts = [], []
    for _ in range(nsamples):
        draws = 0  # the limit is per window: a large nsamples is no reason to give up
        while True:
            i = rng.randint(0, len(ids) - seqlen - 1)
            draws += 1
            k = bisect.bisect_right(taken, i)  # overlap: some start s with |s - i| < seqlen
            if not ((k and i - taken[k - 1] < seqlen) or (k < len(taken) and taken[k] - i < seqlen)):
                break
            if draws >= max_draws:
                raise DataError(
                    f"calibration: {draws} draws found no {seqlen}-token window of the {len(ids)}-token text "
                    f"clear of the {len(taken)} calibration windows; lower calibration.heldout_nsamples or "
                    "calibration.nsamples")
        out.append(ids[i:i + seqlen])
        starts.append(i)
    return torch.tensor(out, dtype=torch.long), starts


def build_calibration(cfg: CalibrationSpec | Mapping, tokenizer, data: DataSpec | Mapping | None = None) -> Calibration:
    """Calibration windows from a ``calibration`` spec (dataset, split, nsamples, seqlen, seed), and the
    held-out windows when ``heldout_nsamples`` > 0."""
    cfg, data = as_spec(CalibrationSpec, cfg, "calibration"), as_data(data)
    dataset, split, nsamples, seqlen, seed = cfg.dataset, cfg.split, cfg.nsamples, cfg.seqlen, cfg.seed
    spec = dataset_spec(dataset)
    data = load_rows(dataset, split, root=data.root, source=data.source, verify=data.verify_checksums)
    if spec.calib_kind == "documents":
        windows, heldout, held_info = document_windows(data.rows, tokenizer, nsamples, seqlen, seed,
                                                       cfg.heldout_nsamples)
    else:
        ids = _encode(tokenizer, spec.calib_join.join(data.rows))
        windows, heldout, held_info = stream_windows(ids, nsamples, seqlen, seed, cfg.heldout_nsamples)
    info = {"dataset": dataset, "split": split, "nsamples": nsamples, "seqlen": seqlen, "seed": seed,
            "sampler": spec.calib_kind, "accept_rule": ACCEPT_RULE if spec.calib_kind == "documents" else None,
            "join": None if spec.calib_kind == "documents" else spec.calib_join, "data": data.info,
            "windows_sha256": windows_sha256(windows)}  # records paired as "the same windows" can be checked
    if held_info is not None:
        info["heldout"] = {**held_info, "windows_sha256": windows_sha256(heldout)}
    log.info("calibration: %d x %d tokens from %s/%s (%s)%s", nsamples, seqlen, dataset, split, data.info["source"],
             f", {cfg.heldout_nsamples} held-out windows" if heldout is not None else "")
    return Calibration(windows, info, heldout)

"""Multiple-choice log-likelihoods with each context run once (``runtime.zero_shot_shared_context``).

lm-eval scores a multiple-choice document as one ``(context, continuation)`` request per choice, and
its causal path runs the whole ``context + continuation`` of every request: a HellaSwag document's
context passes through the model four times, an ARC question's four or five. Here requests are
grouped by their context tokens; the context (all but its last token) runs once and leaves its
key/value cache, which is gathered to one row per continuation of the group, and each continuation
runs as ``[last context token] + continuation[:-1]`` on top of it. The logits at those positions are the ones
lm-eval reads for the continuation, so the log-likelihood and the greedy flag are the same numbers up
to float rounding (different matrix shapes sum in a different order).

Pure functions over a model and token lists; :mod:`pruning.evaluation.budgeted_lm` decides which
requests take this path, batches the groups and checks the path against lm-eval's own on a spread of
each run's groups. It saves the repeated contexts' tokens but costs two forward passes per batch and
padding: it pays off where contexts are long against their continuations (few-shot), not for short
0-shot contexts (docs/evaluation.md, "Zero-shot evaluation in detail").
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

Request = tuple  # lm-eval's ((context str, continuation str) | None, context tokens, continuation tokens)


def group_by_context(requests: Sequence[Request], max_length: int) -> tuple[list[list[int]], list[int]]:
    """Indices of ``requests`` grouped by identical context tokens (groups in first-seen order), and the
    indices left to lm-eval's own path: a context of one token (nothing to share), a request longer than
    ``max_length + 1`` tokens (lm-eval truncates it from the left, which changes the context), and groups
    with too little to gain (:func:`worth_sharing`)."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    rest = []
    for i, (_, context, continuation) in enumerate(requests):
        if len(context) < 2 or len(context) + len(continuation) > max_length + 1:
            rest.append(i)
        else:
            groups[tuple(context)].append(i)
    shared = []
    for group in groups.values():
        if worth_sharing(len(requests[group[0]][1]), [len(requests[i][2]) for i in group]):
            shared.append(group)
        else:
            rest.extend(group)
    return shared, sorted(rest)


def worth_sharing(context: int, continuations: Sequence[int]) -> bool:
    """Whether a context of ``context`` tokens shared by continuations of these lengths saves more than the
    shared path costs: the repeated context tokens saved, ``(n - 1) * (context - 1)``, must reach the
    continuations' own tokens, which padding to the longest of a batch can double. Not worth it: a context
    of one request (WinoGrande puts its choices in the context), one-token continuations only (lm-eval
    already runs their context once: BoolQ, RTE), short contexts with long continuations (PIQA, most of
    0-shot HellaSwag); worth it: ARC, OpenBookQA and few-shot contexts."""
    if len(continuations) < 2 or max(continuations) < 2:
        return False
    return (len(continuations) - 1) * (context - 1) >= sum(continuations)


@lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    """The forward keyword of the key/value cache: ``cache`` (transformers >= 5.2x), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def score_batch(model, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *, trims: bool = True,
                softmax_dtype=None, pad_id: int = 0) -> list[list[tuple[float, bool]]]:
    """Per ``(context, continuations)`` item, ``(sum of log-probabilities, every token greedy)`` of each
    continuation after its context, for several contexts in one pair of forward passes.

    The contexts (all but their last token) run left-padded, with an attention mask and position ids
    counted from each one's first real token; their cache is gathered to one row per continuation, and
    the continuations run right-padded on top of it (a padded position comes after every real one).
    ``trims``: the model takes ``logits_to_keep`` (the context pass then computes one position of the
    LM head instead of all of them); ``softmax_dtype``: as lm-eval's (None: the logits' own dtype)."""
    device = next(model.parameters()).device
    prefixes = [list(context[:-1]) for context, _ in items]
    longest = max(len(p) for p in prefixes)
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prefixes], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prefixes], dtype=torch.long, device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **({"logits_to_keep": 1} if trims else {}))
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else out.past_key_values
    owner = [k for k, (_, conts) in enumerate(items) for _ in conts]
    if not hasattr(cache, "reorder_cache"):
        raise TypeError(f"{type(cache).__name__} cannot be gathered along the batch")
    cache.reorder_cache(torch.tensor(owner, dtype=torch.long, device=device))
    rows = [[context[-1], *cont[:-1]] for context, conts in items for cont in conts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    mask = torch.cat([mask[owner], torch.ones(len(rows), width, dtype=torch.long, device=device)], dim=1)
    start = torch.tensor([len(prefixes[k]) for k in owner], device=device)
    positions = start[:, None] + torch.arange(width, device=device)[None, :]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   **{_cache_keyword(type(model)): cache}).logits
    logprobs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
    conts = [cont for _, cs in items for cont in cs]
    flat = []
    for row, cont in zip(logprobs, conts):
        target = torch.tensor(list(cont), dtype=torch.long, device=device)
        picked = row[:len(cont)]
        flat.append((float(picked.gather(1, target[:, None]).sum()), bool((picked.argmax(dim=-1) == target).all())))
    scores, at = [], 0
    for _, cs in items:
        scores.append(flat[at:at + len(cs)])
        at += len(cs)
    return scores


"""The lm-eval model of :mod:`pruning.evaluation.budgeted_lm`: ``HFLM`` with batches sized to a memory
budget for their logits, logits only where lm-eval scores them, and (``share_context``) requests that share
their context scored with it run once. Importing lm-eval is slow, so this module is imported on first use
(:func:`pruning.evaluation.budgeted_lm.budgeted_hflm_class`)."""

from __future__ import annotations

import inspect
import logging

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from pruning.evaluation.budgeted_lm import _input_of, logits_batch_size, vocab_size
from pruning.evaluation.shared_context import group_by_context, score_batch

log = logging.getLogger(__name__)

CHECK_GROUPS = 8  # context groups per run scored both ways before the shared path is trusted
CHECK_ATOL, CHECK_RTOL = 1e-3, 1e-4  # |shared - lm-eval| allowed per log-likelihood (float rounding only)


class BudgetedHFLM(HFLM):
    """``HFLM`` with memory-sized batches and trimmed logits (module docstring; docs/evaluation.md)."""

    def __init__(self, *, logits_gb: float, share_context: bool = False, **kwargs):
        super().__init__(batch_size="auto", **kwargs)
        self.share_context = share_context
        self.shared = {"enabled": share_context, "used": False, "requests": 0, "groups": 0,
                       "checked_groups": 0, "max_abs_diff": None, "fallback": None}
        self.tokens = [0, 0]  # tokens run by the shared path, tokens lm-eval would have run for them
        self.logits_gb, self.most = logits_gb, kwargs["max_batch_size"]
        self.vocab = vocab_size(self.model)
        self.trims = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.used: list[int] = []  # batch sizes chosen
        self.batch_now, self.batch_end, self.batch_requests = self.most, 0, None
        self.positions = [0, 0]  # logit positions computed, positions given

    def _detect_batch_size(self, requests=None, pos: int = 0):
        length = len(_input_of(requests[pos], self.max_length)) if requests else self.max_length
        size = logits_batch_size(length, self.vocab, self.logits_gb, self.most)
        self.used.append(size)
        return size

    def _batch_scheduler(self, pos, requests):
        # lm-eval asks at every request how long the current batch is; a batch that starts at
        # `pos` is sized by that request and keeps its size (lm-eval's scheduler re-derives it at
        # a few fixed points only, from whichever request is there, and divides by zero for fewer
        # requests than its schedule)
        if pos == 0 or pos >= self.batch_end:
            self.batch_now = self._detect_batch_size(requests, pos)
            self.batch_end = pos + self.batch_now
            self.batch_requests = requests[pos:self.batch_end]
        return self.batch_now

    def _model_call(self, inps, attn_mask=None, labels=None):
        keep = self._positions_to_keep(inps) if attn_mask is None and labels is None else None
        self.positions[1] += inps.numel()
        if keep is None:
            self.positions[0] += inps.numel()
            return super()._model_call(inps, attn_mask, labels)
        self.positions[0] += inps.shape[0] * keep
        with torch.no_grad():
            return self.model(inps, logits_to_keep=keep).logits

    def _positions_to_keep(self, inps):
        """How many trailing positions hold every continuation of this batch, or None (all of them).

        lm-eval slices each request's continuation from the logits at ``inplen + (positions
        returned − padded length)``, so logits of the last ``K`` positions score the same when
        ``K ≥ padded length − inplen + contlen`` for every request. Only when this batch is the one
        the scheduler formed (same tokens) and the model takes ``logits_to_keep``."""
        batch = self.batch_requests
        if not self.trims or self.mixed_precision_dtype is not None or not batch or len(batch) != len(inps):
            return None
        padded = inps.shape[1]
        need = 0
        for row, request in zip(inps, batch):
            inp = _input_of(request, self.max_length)
            if len(inp) > padded or row[:len(inp)].tolist() != inp:
                return None
            need = max(need, padded - len(inp) + len(request[2]))
        return need if 0 < need < padded else None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        stock = super()._loglikelihood_tokens
        if (not self.share_context or self.shared["fallback"] or override_bs is not None
                or self.backend != "causal" or self.mixed_precision_dtype is not None):
            return stock(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        groups, rest = group_by_context(requests, self.max_length)
        checked = self._shared_path_agrees(requests, groups) if groups else None
        if checked is None:
            return stock(requests, disable_tqdm=disable_tqdm)
        # the checked groups keep lm-eval's answers (they were scored both ways); the rest of the groups
        # take the shared path, the requests it leaves out lm-eval's
        results: dict[int, tuple] = dict(checked)
        if rest:
            results.update(zip(rest, stock([requests[i] for i in rest], disable_tqdm=True)))
        todo = [g for g in groups if g[0] not in checked]
        with tqdm(total=sum(map(len, todo)), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests (shared contexts)") as bar:
            for batch in self._shared_batches(requests, todo):
                for group, answers in zip(batch, self._score_shared(requests, batch)):
                    results.update(zip(group, answers))
                    bar.update(len(group))
        for i in range(len(requests)):
            if requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        self.shared.update(used=True, requests=self.shared["requests"] + len(requests) - len(rest),
                           groups=self.shared["groups"] + len(groups))
        return [results[i] for i in range(len(requests))]

    def _shared_batches(self, requests, groups):
        """Groups ordered by context length, longest first (as lm-eval orders requests), packed into
        batches of at most ``most`` contexts and ``most`` continuations whose logits fit the budget."""
        order = sorted(groups, key=lambda g: -len(requests[g[0]][1]))
        batch, rows, width = [], 0, 0
        for group in order:
            w = max(width, max(len(requests[i][2]) for i in group))
            cap = logits_batch_size(w, self.vocab, self.logits_gb, self.most)
            if batch and (rows + len(group) > cap or len(batch) == self.most):
                yield batch
                batch, rows, w = [], 0, max(len(requests[i][2]) for i in group)
            batch.append(group)
            rows, width = rows + len(group), w
        if batch:
            yield batch

    @staticmethod
    def _items(requests, groups) -> list[tuple]:
        """``(context, continuations)`` of each group, as :func:`score_batch` takes them."""
        return [(requests[g[0]][1], [requests[i][2] for i in g]) for g in groups]

    def _score_shared(self, requests, batch):
        items = self._items(requests, batch)
        prefix = max(len(c) - 1 for c, _ in items)
        rows = sum(len(cs) for _, cs in items)
        width = max(len(c) for _, cs in items for c in cs)
        self.positions[0] += len(items) * (1 if self.trims else prefix) + rows * width
        self.positions[1] += len(items) * prefix + rows * width
        self.tokens[0] += len(items) * prefix + rows * width
        self.tokens[1] += sum(len(ctx) + len(c) - 1 for ctx, cs in items for c in cs)
        self.used.append(rows)
        return score_batch(self.model, items, trims=self.trims, softmax_dtype=self.softmax_dtype,
                           pad_id=self._pad_id())

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def _shared_path_agrees(self, requests, groups) -> dict[int, tuple] | None:
        """Score ``CHECK_GROUPS`` groups spread over the run both ways, the shared ones in one padded batch:
        lm-eval's answers of the checked requests by index, or None (and lm-eval's path from then on) if
        any log-likelihood differs beyond float rounding or the shared path fails."""
        picks = sorted({round(k * (len(groups) - 1) / max(1, CHECK_GROUPS - 1)) for k in range(CHECK_GROUPS)})
        checked = [groups[k] for k in picks]
        indices = [i for g in checked for i in g]
        reference = super()._loglikelihood_tokens([requests[i] for i in indices], disable_tqdm=True)
        try:  # one batch of contexts of different lengths: the padding is checked too
            shared = [a for answers in score_batch(self.model, self._items(requests, checked), trims=self.trims,
                                                   softmax_dtype=self.softmax_dtype, pad_id=self._pad_id())
                      for a in answers]
        except Exception as e:  # e.g. a cache that cannot be gathered along the batch
            return self._fall_back(f"{type(e).__name__}: {e}")
        worst = 0.0
        for (ours, _), (theirs, _) in zip(shared, reference, strict=True):
            diff = abs(ours - theirs)
            worst = max(worst, diff) if diff == diff else float("nan")
            if not diff <= CHECK_ATOL + CHECK_RTOL * abs(theirs):
                self.shared["max_abs_diff"] = worst
                return self._fall_back(f"log-likelihood {ours:.6f} against lm-eval's {theirs:.6f}")
        self.shared["checked_groups"] += len(checked)
        self.shared["max_abs_diff"] = max(worst, self.shared["max_abs_diff"] or 0.0)
        return dict(zip(indices, reference))

    def _fall_back(self, why: str) -> None:
        self.shared["fallback"] = why
        log.warning("zero-shot: scoring with lm-eval's own path, the shared-context one failed its check "
                    "on this model (%s)", why)
        return None

    def batching_info(self) -> dict:
        kept, total = self.positions
        info = {"logits_gb": self.logits_gb, "batch_sizes_used": sorted(set(self.used)),
                "logit_positions_share": round(kept / total, 4) if total else None,
                "shared_context": dict(self.shared)}
        if self.tokens[1]:
            info["shared_context"]["token_share"] = round(self.tokens[0] / self.tokens[1], 4)
        return info

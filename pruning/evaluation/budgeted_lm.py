"""lm-eval's ``HFLM`` with batches sized to a memory budget for their logits, and logits computed only
where lm-eval scores them (``runtime.zero_shot_logits_gb``; docs/evaluation.md "Zero-shot evaluation in
detail").

lm-eval keeps the full-vocabulary log-probabilities of every position of a batch. With a 262k-token
vocabulary (Gemma) a fixed batch of 32 needs tens of GB, and lm-eval's own ``batch_size=auto`` finds
the size by running out of memory, which on a CPU host is the kernel's OOM killer rather than an
exception. Here every batch is sized by its first request (lm-eval orders requests longest first),
and the model returns logits only for the trailing positions that hold the batch's continuations.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch

LOGIT_COPIES = 3  # float32 [batch, length, vocab] tensors alive at once: the logits, a softcap/upcast temporary,
                  # lm-eval's log_softmax (measured: Gemma-3-270M, batch 32, peak RSS 20.5 GB on short requests)


def logits_batch_size(length: int, vocab: int, budget_gb: float, most: int) -> int:
    """The largest batch (1 … ``most``) whose logits for ``length`` positions over ``vocab`` tokens fit
    ``budget_gb``."""
    per_sequence = max(1, length) * vocab * 4 * LOGIT_COPIES
    return max(1, min(most, int(budget_gb * 2**30 // per_sequence)))


def vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _input_of(request, max_length: int) -> list[int]:
    """The tokens lm-eval feeds for a ``(string, context, continuation)`` request (its causal path)."""
    _, context_enc, continuation_enc = request
    return (context_enc + continuation_enc)[-(max_length + 1):][:-1]


@lru_cache(maxsize=1)
def budgeted_hflm_class():
    """The ``HFLM`` subclass (built on first use: importing lm-eval is slow)."""
    from lm_eval.models.huggingface import HFLM

    class BudgetedHFLM(HFLM):
        def __init__(self, *, logits_gb: float, **kwargs):
            super().__init__(batch_size="auto", **kwargs)
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

        def batching_info(self) -> dict:
            kept, total = self.positions
            return {"logits_gb": self.logits_gb, "batch_sizes_used": sorted(set(self.used)),
                    "logit_positions_share": round(kept / total, 4) if total else None}

    return BudgetedHFLM

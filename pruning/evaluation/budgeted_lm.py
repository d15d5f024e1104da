"""lm-eval's ``HFLM`` with batches sized to a memory budget for their logits, and logits computed only
where lm-eval scores them (``runtime.zero_shot_logits_gb``; docs/evaluation.md "Zero-shot evaluation in
detail").

lm-eval keeps the full-vocabulary log-probabilities of every position of a batch. With a 262k-token
vocabulary (Gemma) a fixed batch of 32 needs tens of GB, and lm-eval's own ``batch_size=auto`` finds
the size by running out of memory, which on a CPU host is the kernel's OOM killer rather than an
exception. Here every batch is sized by its first request (lm-eval orders requests longest first),
and the model returns logits only for the trailing positions that hold the batch's continuations.

With ``share_context`` (``runtime.zero_shot_shared_context``, off by default) requests that share their
context tokens are scored with the context run once (:mod:`pruning.evaluation.shared_context`), after
a check against lm-eval's own path on a spread of the run's groups; a model that fails the check (or
whose cache cannot be gathered along the batch) is scored by lm-eval's path throughout, and the record says why.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

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

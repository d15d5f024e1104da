"""Evaluation: the SparseGPT perplexity protocol (and, later, lm-eval zero-shot tasks)."""

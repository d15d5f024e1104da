"""One-shot post-training pruning of large language models.

The library behind ``python -m experiments.run``: model loading and family adapters
(:mod:`pruning.models`, :mod:`pruning.adapters`), data (:mod:`pruning.data`), the calibration
sampler (:mod:`pruning.calibration`), evaluation (:mod:`pruning.evaluation`), the result record
(:mod:`pruning.results`) and experiment tracking (:mod:`pruning.tracking`). The Python API
(:mod:`pruning.api`: ``prune``, ``evaluate_perplexity``) and the saved model (:mod:`pruning.artifact`)
work without Hydra.
"""

from pruning.version import __version__  # noqa: F401

__all__ = ["prune", "evaluate_perplexity", "PruneReport", "save_pruned", "verify_saved"]


def __getattr__(name):  # lazy: `import pruning` stays light; `from pruning import prune` loads the API
    if name in ("prune", "evaluate_perplexity", "PruneReport"):
        from pruning import api
        return getattr(api, name)
    if name in ("save_pruned", "verify_saved"):
        from pruning import artifact
        return getattr(artifact, name)
    raise AttributeError(f"module 'pruning' has no attribute {name!r}")

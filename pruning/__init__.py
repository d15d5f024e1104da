"""One-shot post-training pruning of large language models.

The library behind ``python -m experiments.run``: model loading and family adapters
(:mod:`pruning.models`, :mod:`pruning.adapters`), data (:mod:`pruning.data`), the calibration
sampler (:mod:`pruning.calibration`), evaluation (:mod:`pruning.evaluation`), the result record
(:mod:`pruning.results`) and experiment tracking (:mod:`pruning.tracking`).
"""

__version__ = "0.1.0"

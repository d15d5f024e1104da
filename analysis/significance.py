"""Paired significance of zero-shot differences between two pruned models scored on the same documents.

Every zero-shot job keeps its per-document correctness in ``zero_shot_samples.json`` beside its record
(task -> ``doc_id``, ``doc_hash``, ``target``, ``pred``, ``acc``, ``acc_norm``). Two models are
compared on the documents both scored (matched by ``doc_id`` and checked by ``doc_hash``):

- per task, :func:`mcnemar_exact`: the exact two-sided McNemar test on the discordant pairs (documents
  one model gets right and the other wrong), ``p = min(1, 2·P(X ≤ min(b, c)))``, ``X ~ Bin(b + c, ½)``;
- for the mean over tasks, :func:`paired_bootstrap`: documents resampled within each task (the same
  draw for both models), the two-sided share of resampled mean differences on the other side of 0;
- :func:`bootstrap_ci`: a percentile interval for one model's mean accuracy over tasks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pruning.results import ZERO_SHOT_SAMPLES

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def samples_path(job_dir: str | Path, record: dict | None = None) -> Path:
    """Where a job directory keeps its per-document zero-shot results (the record may name the file)."""
    name = ((record or {}).get("metrics", {}).get("zero_shot") or {}).get("samples_file", ZERO_SHOT_SAMPLES)
    return Path(job_dir) / name


def load_samples(job_dir: str | Path, record: dict | None = None) -> dict | None:
    """The per-document results of a job directory, or None when it kept none (jobs before this file)."""
    path = samples_path(job_dir, record)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def jobs_with_samples(frame) -> dict:
    """``(model, sparsity, label) -> (frame row, per-document results)`` of the records in ``frame`` whose
    jobs kept their per-document results (the zero-shot and downstream tables pair these)."""
    out = {}
    for _, r in frame.iterrows():
        s = load_samples(r["path"])
        if s is not None:
            out[(r["model"], r["sparsity"], r["label"])] = (r, s)
    return out


def aligned(a: dict, b: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of both models on the documents both scored; a differing document is an error."""
    ia = {d: i for i, d in enumerate(a["doc_id"])}
    shared = [(ia[d], j) for j, d in enumerate(b["doc_id"]) if d in ia]
    for i, j in shared:
        ha, hb = a["doc_hash"][i], b["doc_hash"][j]
        n = min(len(ha or ""), len(hb or ""))  # files keep a prefix of the hash (pruning.results.DOC_HASH_CHARS)
        if n and ha[:n] != hb[:n]:
            raise ValueError(f"document {a['doc_id'][i]} differs between the two runs (other data or task version)")
    x = np.array([a[metric][i] for i, _ in shared], dtype=float)
    y = np.array([b[metric][j] for _, j in shared], dtype=float)
    return x, y


def paired_task_test(a: dict, b: dict, metric: str) -> dict:
    """McNemar on one task's per-document results of two models."""
    x, y = aligned(a, b, metric)
    b_only, c_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return {"n": len(x), "acc_a": float(x.mean()) if len(x) else math.nan,
            "acc_b": float(y.mean()) if len(y) else math.nan, "a_only": b_only, "b_only": c_only,
            "p": mcnemar_exact(b_only, c_only)}


def paired_bootstrap(a: dict, b: dict, metrics: dict[str, str], iters: int = 2000, seed: int = 0) -> dict:
    """Difference of the mean over tasks (a − b) with its two-sided bootstrap p-value; ``metrics``:
    task -> metric, tasks both runs scored."""
    rng = np.random.default_rng(seed)
    pairs = [aligned(a[t], b[t], m) for t, m in metrics.items()]
    diff = float(np.mean([x.mean() - y.mean() for x, y in pairs]))
    draws = np.zeros(iters)
    for x, y in pairs:
        idx = rng.integers(0, len(x), size=(iters, len(x)))
        draws += x[idx].mean(axis=1) - y[idx].mean(axis=1)
    draws /= len(pairs)
    p = 2 * min(float((draws <= 0).mean()), float((draws >= 0).mean()))
    return {"diff": diff, "p": min(1.0, p)}


def bootstrap_ci(samples: dict, metrics: dict[str, str], iters: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean accuracy over tasks, documents resampled within each task."""
    rng = np.random.default_rng(seed)
    draws = np.zeros(iters)
    for t, m in metrics.items():
        x = np.asarray(samples[t][m], dtype=float)
        draws += x[rng.integers(0, len(x), size=(iters, len(x)))].mean(axis=1)
    draws /= len(metrics)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)

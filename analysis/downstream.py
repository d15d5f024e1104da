"""Does a perplexity gain carry over downstream? Which zero-shot tasks can tell pruned models apart on a
given model, and a pooled paired test of one method against another on the documents both scored.

- :func:`task_flags`: per task of a (dense) model's per-document results, why it cannot tell models apart:
  ``not above chance`` (a one-sided exact binomial test at ``ALPHA`` does not put the accuracy above chance), ``one answer``
  (≥ 90% of the predictions are one choice), ``answers ignore the document`` (predictions independent of
  the right answer: a chi-square test of independence does not reject it). Tasks without choice-index
  targets (WinoGrande keeps its answer texts; LAMBADA has no choices) are checked for the first only.
- :func:`pooled_paired_test`: the mean over tasks of the per-task mean difference (a − b, points), with a
  paired permutation p-value (each document's pair of scores swapped at random, the same statistic),
  bootstrap intervals (documents resampled within each task), a two one-sided tests equivalence verdict
  for a margin (the 90% interval inside ±margin) and the smallest difference the documents could detect
  at 80% power (normal approximation from the per-document differences' variance).
- :func:`holm`: Holm's step-down adjustment of a family of p-values (the per-task tests of one table).
- ``python -m analysis.tables DIR --table downstream [--compare TARGET,BASELINE] [--tasks ...]``: per model
  and sparsity, TARGET − BASELINE pooled over the informative tasks (flags from the model's dense record),
  the Holm-adjusted per-task tests, and one word: better, worse, equivalent (within the margin) or undecided.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.names import METHOD_NAMES, TASK_NAMES, sparsity_name, sparsity_order
from analysis.significance import ALPHA, aligned, jobs_with_samples, paired_task_test
from pruning.results import RESULTS_FILE, read_record

ONE_ANSWER_SHARE = 0.90  # predictions this concentrated on one choice read a prior, not the document
MARGIN = 1.0  # points: a difference inside ±MARGIN (90% interval) is a tie
POWER = 0.80


def task_flags(samples: dict, chance: dict[str, float | None], metric: str = "acc") -> dict[str, str | None]:
    """task -> why it cannot tell models apart (module docstring), or None when it can."""
    out = {}
    for task, cols in samples.items():
        scores = [int(v) for v in cols[metric] if v is not None]
        level = chance.get(task) or 0.0
        if not scores:
            out[task] = "no documents"
            continue
        p_above = stats.binomtest(sum(scores), len(scores), level, alternative="greater").pvalue if level else 0.0
        out[task] = "not above chance" if p_above >= ALPHA else _prior_flag(cols)
    return out


def _prior_flag(cols: dict) -> str | None:
    pairs = [(t, p) for t, p in zip(cols.get("target") or [], cols.get("pred") or [])
             if isinstance(t, int) and isinstance(p, int)]
    if not pairs:
        return None
    preds = [p for _, p in pairs]
    if max(preds.count(c) for c in set(preds)) / len(preds) >= ONE_ANSWER_SHARE:
        return "one answer"
    labels = sorted({t for t, _ in pairs} | set(preds))
    table = np.zeros((len(labels), len(labels)))
    for t, p in pairs:
        table[labels.index(t), labels.index(p)] += 1
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if min(table.shape) < 2:
        return "one answer"
    return "answers ignore the document" if stats.chi2_contingency(table).pvalue >= ALPHA else None


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjusted p-values (same keys): the k-th smallest of m is multiplied by m − k + 1,
    and the adjusted values are made non-decreasing in that order (capped at 1)."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for k, key in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[key]))
        out[key] = running
    return out


def pooled_paired_test(a: dict, b: dict, metrics: dict[str, str], *, iters: int = 10000, seed: int = 0,
                       margin: float = MARGIN) -> dict:
    """``a − b`` in points, pooled as the mean over ``metrics``' tasks (task -> metric) of the per-task mean
    difference on the documents both scored (module docstring)."""
    diffs = [100 * (x - y) for x, y in (aligned(a[t], b[t], m) for t, m in metrics.items())]
    if not diffs or any(len(d) == 0 for d in diffs):
        raise ValueError("no shared documents for some task: the runs scored other documents")
    observed = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    flipped, boot = np.zeros(iters), np.zeros(iters)
    for d in diffs:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(iters, len(d)))
        flipped += (signs * d).mean(axis=1)
        boot += d[rng.integers(0, len(d), size=(iters, len(d)))].mean(axis=1)
    flipped, boot = flipped / len(diffs), boot / len(diffs)
    p = (1 + int((np.abs(flipped) >= abs(observed) - 1e-12).sum())) / (iters + 1)
    se = math.sqrt(sum(d.var(ddof=1) / len(d) for d in diffs if len(d) > 1)) / len(diffs)
    ci95 = tuple(float(q) for q in np.quantile(boot, [0.025, 0.975]))
    ci90 = tuple(float(q) for q in np.quantile(boot, [0.05, 0.95]))
    return {"diff": observed, "p": p, "ci95": ci95, "ci90": ci90, "se": se,
            "mde": (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)) * se,
            "equivalent": -margin < ci90[0] and ci90[1] < margin, "margin": margin,
            "documents": int(sum(len(d) for d in diffs))}


def verdict(test: dict) -> str:
    """better / worse (p < ALPHA), equivalent (the 90% interval inside ±margin), else undecided."""
    if test["p"] < ALPHA:
        return "better" if test["diff"] > 0 else "worse"
    return "equivalent" if test["equivalent"] else "undecided"


def _chance(row) -> dict:
    record = read_record(Path(row["path"]) / RESULTS_FILE) or {}
    info = ((record.get("metrics") or {}).get("zero_shot") or {}).get("task_info") or {}
    return {t: (i or {}).get("chance") for t, i in info.items()}


def downstream_long(frame: pd.DataFrame, compare: tuple[str, str] | None = None, tasks: list[str] | None = None,
                    margin: float = MARGIN) -> pd.DataFrame:
    """One row per model and sparsity where both methods kept per-document results: the pooled test over
    the informative tasks (or ``tasks``), the Holm-adjusted per-task p-values and the verdict."""
    target, baseline = compare or ("apt-refit-dense-seq", "sparsegpt")
    jobs, rows = jobs_with_samples(frame), []
    for (model, sparsity, label), (row, s) in sorted(jobs.items(), key=lambda kv: (kv[0][0], sparsity_order(kv[0][1]))):
        if label != target or (model, sparsity, baseline) not in jobs:
            continue
        base = jobs[(model, sparsity, baseline)][1]
        dense = jobs.get((model, "dense", "dense"))
        flags = task_flags(dense[1], _chance(dense[0])) if dense and not tasks else {}
        used = [t for t in (tasks or [t for t in s if t in base]) if not flags.get(t)]
        metrics = {t: "acc" for t in used}
        test = pooled_paired_test(s, base, metrics, margin=margin)
        per_task = holm({t: paired_task_test(s[t], base[t], "acc")["p"] for t in used})
        rows.append({"model": model, "sparsity": sparsity_name(sparsity), "tasks": ", ".join(TASK_NAMES.get(t, t) for t in used),
                     "left out": "; ".join(f"{TASK_NAMES.get(t, t)} ({f})" for t, f in flags.items() if f) or "–",
                     "diff": test["diff"], "ci95": test["ci95"], "p": test["p"], "mde": test["mde"],
                     "holm_min_p": min(per_task.values()) if per_task else math.nan,
                     "documents": test["documents"], "verdict": verdict(test)})
    if not rows:
        raise ValueError(f"no model and sparsity with per-document results of both {target} and {baseline}")
    return pd.DataFrame(rows)


def downstream_markdown(frame: pd.DataFrame, compare: tuple[str, str] | None = None, tasks: list[str] | None = None,
                        margin: float = MARGIN) -> str:
    long = downstream_long(frame, compare, tasks, margin)
    target, baseline = compare or ("apt-refit-dense-seq", "sparsegpt")
    lines = [f"| model | sparsity | {METHOD_NAMES.get(target, target)} − {METHOD_NAMES.get(baseline, baseline)} "
             "(points, 95% CI) | p (pooled) | smallest detectable (80% power) | per-task Holm min p | documents | "
             "verdict | tasks | left out |", "|" + "---|" * 10]
    for _, r in long.iterrows():
        lines.append(f"| {r['model']} | {r['sparsity']} | {r['diff']:+.2f} [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] | "
                     f"{r['p']:.3f} | {r['mde']:.2f} | {r['holm_min_p']:.3f} | {r['documents']} | **{r['verdict']}** | "
                     f"{r['tasks']} | {r['left out']} |")
    return ("\n".join(lines) + f"\n\nMean over tasks of the per-task accuracy difference on the same documents; p: paired "
            f"permutation over documents; equivalent: the 90% bootstrap interval inside ±{margin:g} points (two "
            f"one-sided tests at {ALPHA}); tasks left out where the dense model is not above chance, gives one answer or "
            "answers independently of the document.\n")

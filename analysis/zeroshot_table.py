"""The zero-shot table: accuracy per task and the mean, the metric of each task from a named preset,
paired significance marks against a baseline row (:mod:`analysis.significance`)."""

from __future__ import annotations

import pandas as pd

from analysis.names import METHOD_NAMES, METRIC_PRESETS, TASK_NAMES, TASKS, method_key, sparsity_order
from analysis.ppl_tables import _add_compare_rows, _label, _setting
from analysis.render import Table
from analysis.significance import ALPHA, bootstrap_ci, jobs_with_samples, paired_bootstrap, paired_task_test


def zeroshot_table(frame: pd.DataFrame, preset: str = "wanda", *, tasks: list[str] | None = None,
                   compare: tuple[str, str] | None = None, significance: str | None = "sparsegpt") -> Table:
    """Zero-shot accuracy (%) per task and their mean; the metric of each task comes from an
    explicit map (``preset``: ``wanda`` = acc everywhere, ``llm-pruner`` = acc_norm for HellaSwag,
    ARC, OpenBookQA, PIQA), printed in the caption. Where the jobs kept their per-document results,
    each pruned row is tested against ``significance`` (the baseline method of the same model and
    sparsity) on the same documents: cells whose difference is not significant are marked, and the
    mean carries its bootstrap interval (:mod:`analysis.significance`)."""
    if preset not in METRIC_PRESETS:
        raise ValueError(f"metric preset {preset!r}; allowed: {', '.join(METRIC_PRESETS)}")
    metric_map = METRIC_PRESETS[preset]
    available = [t for t in TASKS if any(c.startswith(f"zs_{t}_") for c in frame.columns)]
    tasks = list(tasks) if tasks else available
    unknown = [t for t in tasks if t not in metric_map]
    if unknown:
        raise ValueError(f"tasks {unknown} have no metric in preset {preset!r}; known: {', '.join(TASKS)}")
    absent = [t for t in tasks if t not in available]
    if absent and available:
        raise ValueError(f"tasks {absent} are in none of these records; they have: {', '.join(available)}")
    if not tasks:
        raise ValueError("no zero-shot results in these records (metrics.zero_shot is empty)")
    zs_cols = [c for c in frame.columns if c.startswith("zs_")]
    frame = frame[frame[zs_cols].notna().any(axis=1)]  # jobs evaluated without zero-shot are not rows
    models = frame["model"].unique()
    multi_model = len(models) > 1
    multi_sparsity = len({s for s in frame["sparsity"] if s != "dense"}) > 1

    def row_of(r):
        return (f"{r['model']} · " if multi_model else "") + _label(r, multi_sparsity)

    keys = sorted({(r["model"], r["label"], r["sparsity"]) for _, r in frame.iterrows()},
                  key=lambda k: (str(k[0]), k[2] != "dense", sparsity_order(k[2]), method_key(k[1])))
    rows = list(dict.fromkeys(row_of({"model": m, "label": lab, "sparsity": sp}) for m, lab, sp in keys))
    cols = [TASK_NAMES[t] for t in tasks] + ["Mean"]
    values = pd.DataFrame(float("nan"), index=rows, columns=cols, dtype=float)
    present = pd.DataFrame(False, index=rows, columns=cols)
    for _, r in frame.iterrows():
        ri, scores = row_of(r), []
        for t in tasks:
            v = r.get(f"zs_{t}_{metric_map[t]}")
            if v is not None and pd.notna(v):
                values.at[ri, TASK_NAMES[t]] = 100 * float(v)
                present.at[ri, TASK_NAMES[t]] = True
                scores.append(100 * float(v))
        if len(scores) == len(tasks):  # a mean over a subset of tasks would not be comparable
            values.at[ri, "Mean"] = sum(scores) / len(scores)
            present.at[ri, "Mean"] = True
    signed = _add_compare_rows(values, present, compare, multi_sparsity, frame) if compare else []
    marks, notes = (_significance_marks(frame, tasks, metric_map, significance, row_of, values.index, cols)
                    if significance else (None, []))
    used = ", ".join(f"{TASK_NAMES[t]} {metric_map[t]}" for t in tasks)
    setting = _setting(frame[frame["sparsity"] != "dense"])
    limits = sorted({str(v) for v in frame["zeroshot_limit"].dropna()}) if "zeroshot_limit" in frame else []
    subset = (f"; the first {'/'.join(limits)} documents of each task (the same for every row): not comparable "
              "with full-set numbers" if limits else "")
    caption = (f"Zero-shot accuracy (%), higher is better, best per column in bold; metrics ({preset} preset): "
               f"{used}" + (f"; {setting}" if setting else "") + subset)
    return Table(values, caption, better="higher", present=present, reference_rows=("Dense",),
                 signed_rows=tuple(signed), marks=marks, notes=notes)


NOT_SIGNIFICANT = "°"


def _significance_marks(frame, tasks, metric_map, baseline, row_of, index, cols):
    """Marks for :func:`zeroshot_table`: ° on cells not significantly different (p ≥ 0.05) from the
    baseline row of the same model and sparsity, and the mean's 95% bootstrap interval."""

    marks = pd.DataFrame(None, index=index, columns=cols, dtype=object)
    samples = {key: (row_of(r), s) for key, (r, s) in jobs_with_samples(frame).items() if all(t in s for t in tasks)}
    if not samples:
        return None, []
    chosen = {t: metric_map[t] for t in tasks}
    tested = False
    for (model, sparsity, label), (row, s) in samples.items():
        lo, hi = bootstrap_ci(s, chosen)
        marks.at[row, "Mean"] = f" [{100 * lo:.1f}, {100 * hi:.1f}]"
        base = samples.get((model, sparsity, baseline))
        if base is None or label == baseline or sparsity == "dense":
            continue
        tested = True
        for t in tasks:
            if paired_task_test(s[t], base[1][t], chosen[t])["p"] >= ALPHA:
                marks.at[row, TASK_NAMES[t]] = NOT_SIGNIFICANT
        if paired_bootstrap(s, base[1], chosen)["p"] >= ALPHA:
            marks.at[row, "Mean"] = NOT_SIGNIFICANT + marks.at[row, "Mean"]
    base_name = METHOD_NAMES.get(baseline, baseline)
    notes = ["Mean: [95% bootstrap interval over documents]"]
    if tested:
        notes.append(f"{NOT_SIGNIFICANT} not significantly different from {base_name} of the same model and "
                     f"sparsity on the same documents (p ≥ {ALPHA}; tasks: exact McNemar, mean: paired bootstrap)")
    return marks, notes

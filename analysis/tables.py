"""Paper-style tables from collected records (:mod:`analysis.collect`), as Markdown, LaTeX or CSV.

    python -m analysis.tables DIR… --table ppl|zeroshot|benchmark|calibration --format md|latex|csv
        [--dataset wikitext2|ptb|c4] [--columns sparsity|model] [--metrics wanda|llm-pruner]
        [--compare apt,sparsegpt] [--delta-vs-dense] [--explode 1e4] [--out FILE]

``ppl``: perplexity in the layout of SparseGPT's Table 1 (rows methods incl. dense; columns the
sparsities of one model, or the models). ``zeroshot``: accuracy per task and the mean, with the
metric of each task from a named preset printed in the caption. Best values are bold; exploded
perplexities (NaN or above ``--explode``) are marked, never printed as ordinary numbers.
``benchmark`` is the APT solver benchmark (the ``apt_benchmark`` preset): WikiText-2 perplexity per method and
sparsity (with APT's difference to SparseGPT), then per (sparsity, method) the mean relative layer
error, solver-only seconds and end-to-end seconds. Perplexities above ``explode`` (default 1e4) or
NaN are marked, never printed as ordinary numbers. ``calibration`` is the calibration study: per
method, calibration set and windows × length, the perplexity on every evaluated dataset and the
mean layer error. ``projections``: the layer error per projection type (q_proj, o_proj, …) of each
method and its ratio to SparseGPT's (:mod:`analysis.projections`). ``--label-params`` tells ablation
rows of one method apart (``--baseline`` then names the frontier or projections table's reference
row, e.g. ``'sparsegpt (percdamp=0.01)'``); ``--where COLUMN=V1[,V2…]`` (repeatable) keeps only the
records whose column has one of the values, e.g. ``--where allocation=uniform --where model=smollm2-135m``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis.collect import collect, layers_of, ppl_datasets
from analysis.render import EXPLODED, Table
from pruning.evaluation.zero_shot_data import TASKS as OFFLINE_TASKS
from pruning.results import write_text_atomic
from pruning.sparsity import parse_sparsity

METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt", "apt", "apt-exact", "apt-refit", "apt-refit-dense", "apt-refit-dense-seq", "apt-swap",
                "alps")
METHOD_NAMES = {"dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "apt": "APT",
                "apt-exact": "APT-exact", "alps": "ALPS", "apt-refit": "APT-refit", "apt-swap": "APT-swap",
                "apt-refit-dense": "APT-refit-dense", "apt-refit-dense-seq": "APT-refit-dense-seq"}
DATASET_NAMES = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}
# lm-eval task names, in the column order of the Wanda / LLM-Pruner tables, and their headers.
# One list for pruning/ and analysis/: the offline tasks, defined in that order in zero_shot_data.TASKS.
TASKS = tuple(OFFLINE_TASKS)
TASK_NAMES = {"boolq": "BoolQ", "rte": "RTE", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
              "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA", "piqa": "PIQA",
              "lambada_openai": "LAMBADA"}
# Which metric each paper's table reports per task (docs/evaluation.md, "Zero-shot evaluation in detail"). Wanda's repository does not
# say; acc everywhere is assumed. LLM-Pruner's dense numbers are on the acc_norm scale for
# HellaSwag, ARC, OpenBookQA and PIQA.
METRIC_PRESETS = {
    "wanda": {t: "acc" for t in TASKS},
    "llm-pruner": {**{t: "acc" for t in TASKS},
                   **{t: "acc_norm" for t in ("hellaswag", "arc_easy", "arc_challenge", "openbookqa", "piqa")}},
}


def sparsity_order(spec: str) -> tuple:
    """Unstructured levels ascending, then N:M by ratio and M (``0.5 < 0.6 < … < 2:4 < 4:8``)."""
    if spec == "dense":
        return (0, 0.0, 0)
    sp = parse_sparsity(spec)
    return (1, sp.ratio, 0) if sp.kind == "unstructured" else (2, sp.ratio, sp.m)


def method_key(label: str):
    return (METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER), label)


def fmt_ppl(v, explode: float = 1e4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"NaN{EXPLODED}"
    return f"{v:.3g}{EXPLODED}" if v > explode else f"{v:.2f}"


def benchmark_long(frame: pd.DataFrame, dataset: str = "wikitext2", baseline: str = "sparsegpt") -> pd.DataFrame:
    """Every metric per (sparsity, method) of one model's sweep, and each solver's time relative to
    ``baseline``'s at the same sparsity (``solver_x_<baseline>``)."""
    col = f"ppl_{dataset}"
    if frame.empty or col not in frame:
        raise ValueError(f"no complete records with {dataset} perplexity")
    models = frame["model"].unique()
    if len(models) > 1:
        raise ValueError(f"records of several models ({', '.join(map(str, models))}): pass one model's sweep")
    f = frame[frame.sparsity != "dense"]
    long = f[["sparsity", "label", col, "mean_rel_error", "solver_s", "prune_total_s", "total_s"]].copy()
    base = long[long.label == baseline].set_index("sparsity")["solver_s"]
    long[f"solver_x_{baseline}"] = long["solver_s"] / long["sparsity"].map(base)
    long["_s"] = long["sparsity"].map(sparsity_order)
    long["_m"] = long["label"].map(method_key)
    return long.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)


def calibration_long(frame: pd.DataFrame) -> pd.DataFrame:
    """The calibration study: one row per (method, sparsity, calibration set, windows × length), with
    the calibration tokens, the perplexity on every evaluated dataset and the mean layer error."""
    f = frame[frame.sparsity != "dense"]
    if f.empty or "calib_nsamples" not in f or f["calib_nsamples"].isna().all():
        raise ValueError("no pruned records with calibration data")
    models = f["model"].unique()
    if len(models) > 1:
        raise ValueError(f"records of several models ({', '.join(map(str, models))}): pass one model's sweep")
    ppl = [f"ppl_{d}" for d in ppl_datasets(f, evaluated_only=True)]
    long = f[["label", "sparsity", "calib_dataset", "calib_nsamples", "calib_seqlen", *ppl, "mean_rel_error"]].copy()
    long["calib_tokens"] = long["calib_nsamples"] * long["calib_seqlen"]
    long["_m"] = long["label"].map(method_key)
    long["_s"] = long["sparsity"].map(sparsity_order)
    long = long.sort_values(["_m", "_s", "calib_dataset", "calib_tokens", "calib_nsamples"])
    cols = ["label", "sparsity", "calib_dataset", "calib_nsamples", "calib_seqlen", "calib_tokens", *ppl, "mean_rel_error"]
    return long[cols].reset_index(drop=True)


def calibration_markdown(frame: pd.DataFrame, explode: float = 1e4) -> str:
    long = calibration_long(frame)
    ppl = [c for c in long.columns if c.startswith("ppl_")]
    shown = pd.DataFrame({
        "method": long["label"].map(lambda m: METHOD_NAMES.get(m, m)),
        "sparsity": long["sparsity"].map(sparsity_name),
        "calibration": long["calib_dataset"],
        "windows": [f"{int(n)} × {int(s)}" for n, s in zip(long["calib_nsamples"], long["calib_seqlen"])],
        "tokens": long["calib_tokens"].map(lambda v: f"{int(v):,}"),
        **{f"{DATASET_NAMES.get(c[4:], c[4:])} ppl": long[c] for c in ppl},
        "layer error": long["mean_rel_error"],
    })
    fmts = {f"{DATASET_NAMES.get(c[4:], c[4:])} ppl": (lambda v: fmt_ppl(_nan(v), explode)) for c in ppl}
    fmts["layer error"] = lambda v: "–" if _nan(v) is None else f"{v:.4f}"
    return to_markdown(shown, fmts)


def to_markdown(df: pd.DataFrame, formats: dict | None = None) -> str:
    """A plain Markdown table of ``df``'s columns (no index); ``formats`` maps a column to a formatter."""
    formats = formats or {}
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            cells.append("–" if missing and c not in formats else formats[c](v) if c in formats else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def benchmark_markdown(frame: pd.DataFrame, dataset: str = "wikitext2", explode: float = 1e4) -> str:
    """The APT benchmark: the perplexity table (with APT − SparseGPT), then per (sparsity, method) the
    mean relative layer error, solver-only, pruning and end-to-end seconds."""
    wide = ppl_table(frame, dataset, compare=("apt", "sparsegpt"), explode=explode).to_markdown()
    long = benchmark_long(frame, dataset).rename(columns={"label": "method", f"ppl_{dataset}": "ppl"})

    def num(fmt):
        return lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
    return (wide + "\nMean relative layer error ‖(W−W')X‖²/‖WX‖² over all pruned linears; solver-only, "
            "pruning (calibration forward passes + solver) and end-to-end seconds; solver time relative to "
            "SparseGPT's at the same sparsity.\n\n"
            + to_markdown(long, {"ppl": lambda v: fmt_ppl(_nan(v), explode), "mean_rel_error": num("{:.4f}"),
                                 "solver_s": num("{:.1f}"), "prune_total_s": num("{:.1f}"), "total_s": num("{:.1f}"),
                                 "solver_x_sparsegpt": num("{:.2f}×")}))


def _nan(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _label(row, with_sparsity: bool) -> str:
    name = METHOD_NAMES.get(row["label"], row["label"])
    if row["sparsity"] == "dense" or not with_sparsity:
        return name
    return f"{name} {sparsity_name(row['sparsity'])}"


def sparsity_name(spec: str) -> str:
    """``0.5`` → ``50%``; N:M stays."""
    if spec == "dense":
        return "dense"
    sp = parse_sparsity(spec)
    return f"{sp.ratio * 100:g}%" if sp.kind == "unstructured" else spec


def _setting(frame: pd.DataFrame) -> str:
    """The protocol and calibration a caption must state, from the records themselves."""
    parts = []
    for key, fmt in (("protocol", "protocol {}"), ("calib_dataset", "calibration {}")):
        vals = sorted({str(v) for v in frame[key].dropna()}) if key in frame else []
        if vals:
            parts.append(fmt.format("/".join(vals)))
    sizes = frame.dropna(subset=["calib_nsamples"]) if "calib_nsamples" in frame else frame.iloc[:0]
    sizes = sorted({f"{int(n)} × {int(s)}" for n, s in zip(sizes["calib_nsamples"], sizes["calib_seqlen"])})
    if sizes:
        if parts and parts[-1].startswith("calibration"):
            parts[-1] += " " + "/".join(sizes)
        else:
            parts.append("calibration " + "/".join(sizes))
    return ", ".join(parts)


def _add_compare_rows(values, present, compare, by_sparsity: bool, frame) -> list:
    """Rows ``target − baseline`` (per sparsity when rows carry it); returns their labels."""
    target, baseline = compare
    added = []
    specs = sorted({s for s in frame["sparsity"] if s != "dense"}, key=sparsity_order) if by_sparsity else [None]
    for spec in specs:
        t = METHOD_NAMES.get(target, target) + (f" {sparsity_name(spec)}" if spec else "")
        b = METHOD_NAMES.get(baseline, baseline) + (f" {sparsity_name(spec)}" if spec else "")
        if t in values.index and b in values.index:
            name = f"{METHOD_NAMES.get(target, target)} − {METHOD_NAMES.get(baseline, baseline)}" + (
                f" ({sparsity_name(spec)})" if spec else "")
            values.loc[name] = values.loc[t] - values.loc[b]
            present.loc[name] = present.loc[t] & present.loc[b]
            added.append(name)
    return added


def _pivot(frame: pd.DataFrame, col: str, rows: list, columns: list, row_of, col_of):
    """One value per cell; two records of different configs for one cell are an error (a table that
    silently kept one of them would misreport an ablation or a calibration study)."""
    values = pd.DataFrame(float("nan"), index=rows, columns=columns, dtype=float)
    present = pd.DataFrame(False, index=rows, columns=columns)
    source = {}
    for _, r in frame.iterrows():
        ri, ci = row_of(r), col_of(r)
        for c in (columns if ci is None else [ci]):  # dense: the same value in every column
            if ri in values.index and c in values.columns:
                if (ri, c) in source and ci is not None:
                    raise ValueError(
                        f"two records for the cell ({ri}, {c}) with different configs: {source[ri, c]} and "
                        f"{r.get('path')}; a calibration study: --table calibration; method parameters: "
                        f"--label-params KEY[,KEY]; or pass fewer directories")
                source[ri, c] = r.get("path")
                values.at[ri, c] = r[col] if pd.notna(r[col]) else float("nan")
                present.at[ri, c] = True
    return values, present


def ppl_table(frame: pd.DataFrame, dataset: str = "wikitext2", *, columns: str = "sparsity",
              compare: tuple[str, str] | None = None, delta_vs_dense: bool = False,
              explode: float = 1e4) -> Table:
    """Perplexity in the layout of SparseGPT's Table 1.

    ``columns="sparsity"``: one model; rows are methods (Dense first), columns the sparsities.
    ``columns="model"``: rows are method × sparsity (``SparseGPT 50%``, ``SparseGPT 2:4``), columns
    the models. ``compare=("apt", "sparsegpt")`` adds difference rows; ``delta_vs_dense`` prints each
    cell's difference to the dense model of its column.
    """
    col = f"ppl_{dataset}"
    if frame.empty or col not in frame:
        have = sorted(ppl_datasets(frame))
        raise ValueError(f"no records with {dataset} perplexity; datasets present: {', '.join(have) or 'none'}")
    f = frame[frame[f"{col}_windows"].notna()]  # evaluated on this dataset (a NaN perplexity is still a result)
    if columns == "sparsity":
        models = f["model"].unique()
        if len(models) > 1:
            raise ValueError(f"records of several models ({', '.join(map(str, models))}): use columns=model")
        labels = sorted(f["label"].unique(), key=method_key)
        rows = [METHOD_NAMES.get(m, m) for m in labels]
        specs = sorted((s for s in f["sparsity"].unique() if s != "dense"), key=sparsity_order)
        cols = [sparsity_name(s) for s in specs]
        values, present = _pivot(f, col, rows, cols, lambda r: _label(r, False),
                                 lambda r: None if r["sparsity"] == "dense" else sparsity_name(r["sparsity"]))
        title = f"{DATASET_NAMES.get(dataset, dataset)} perplexity of {models[0]}"
    elif columns == "model":
        keys = sorted({(r["label"], r["sparsity"]) for _, r in f.iterrows()},
                      key=lambda k: (k[1] != "dense", sparsity_order(k[1]), method_key(k[0])))
        rows = list(dict.fromkeys(_label({"label": lab, "sparsity": sp}, True) for lab, sp in keys))
        cols = list(dict.fromkeys(f["model"]))
        values, present = _pivot(f, col, rows, cols, lambda r: _label(r, True), lambda r: r["model"])
        title = f"{DATASET_NAMES.get(dataset, dataset)} perplexity"
    else:
        raise ValueError(f"columns={columns!r}; allowed: sparsity, model")
    signed = _add_compare_rows(values, present, compare, columns == "model", f) if compare else []
    deltas = None
    if delta_vs_dense and "Dense" in values.index:
        deltas = values - values.loc["Dense"]
    setting = _setting(f[f["sparsity"] != "dense"])
    caption = f"{title} (lower is better; best per column in bold)" + (f"; {setting}" if setting else "")
    return Table(values, caption, better="lower", explode=explode, present=present, deltas=deltas,
                 reference_rows=("Dense",), signed_rows=tuple(signed))


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
    from analysis.significance import ALPHA, bootstrap_ci, load_samples, paired_bootstrap, paired_task_test

    marks = pd.DataFrame(None, index=index, columns=cols, dtype=object)
    samples = {}
    for _, r in frame.iterrows():
        s = load_samples(r["path"])
        if s is not None and all(t in s for t in tasks):
            samples[(r["model"], r["sparsity"], r["label"])] = (row_of(r), s)
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


def write_benchmark(sweep_dir: str | Path, dataset: str = "wikitext2") -> list[Path]:
    """Write ``benchmark.md`` and ``benchmark.csv`` (the long table) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    col = collect(sweep_dir)
    text = benchmark_markdown(col.frame, dataset)
    if col.skipped:
        text += "\nLeft out (not complete): " + ", ".join(f"{s['path']} ({s['status']})" for s in col.skipped) + "\n"
    return [write_text_atomic(sweep_dir / "benchmark.md", text),
            write_text_atomic(sweep_dir / "benchmark.csv", benchmark_long(col.frame, dataset).to_csv(index=False))]


@dataclass(frozen=True)
class TableKind:
    """A table `analysis.tables --table NAME` can render: its formats and how (frame, fmt, options) -> text."""

    formats: tuple[str, ...]
    render: Callable[..., str]
    help: str = ""
    layers: bool = False  # renders the per-layer rows (options["layers"]), not only the records
    baseline: bool = False  # takes --baseline


def _frontier(frame, fmt, o):
    from analysis.frontier import frontier_latex, frontier_long, frontier_markdown
    base = o["baseline"] or "sparsegpt"
    return {"md": lambda: frontier_markdown(frame, base, explode=o["explode"]),
            "latex": lambda: frontier_latex(frame, base, explode=o["explode"]),
            "csv": lambda: frontier_long(frame, base).to_csv(index=False)}[fmt]()


def _projections(frame, fmt, o):
    from analysis.projections import projections_latex, projections_long, projections_markdown
    layers, base = o["layers"], o["baseline"] or "sparsegpt"
    return {"md": lambda: projections_markdown(layers, base), "latex": lambda: projections_latex(layers, base),
            "csv": lambda: projections_long(layers, base).to_csv(index=False)}[fmt]()


def _allocation(frame, fmt, o):
    from analysis.allocation import allocation_latex, allocation_long, allocation_markdown
    return {"md": lambda: allocation_markdown(frame, explode=o["explode"]),
            "latex": lambda: allocation_latex(frame, explode=o["explode"]),
            "csv": lambda: allocation_long(frame).to_csv(index=False)}[fmt]()


# The registry of tables: add one here (docs/development.md, "Adding a table").
TABLES: dict[str, TableKind] = {
    "ppl": TableKind(("md", "latex", "csv"), lambda f, fmt, o: ppl_table(
        f, o["dataset"], columns=o["columns"], compare=o["compare"], delta_vs_dense=o["delta_vs_dense"],
        explode=o["explode"]).render(fmt), "perplexity by method x sparsity (or x model)"),
    "zeroshot": TableKind(("md", "latex", "csv"), lambda f, fmt, o: zeroshot_table(
        f, o["metrics"], tasks=o["tasks"], compare=o["compare"]).render(fmt), "zero-shot accuracy per task"),
    "benchmark": TableKind(("md", "csv"), lambda f, fmt, o: benchmark_markdown(f, o["dataset"], o["explode"])
                           if fmt == "md" else benchmark_long(f, o["dataset"]).to_csv(index=False), "the APT benchmark"),
    "calibration": TableKind(("md", "csv"), lambda f, fmt, o: calibration_markdown(f, o["explode"])
                             if fmt == "md" else calibration_long(f).to_csv(index=False), "the calibration study"),
    "frontier": TableKind(("md", "latex", "csv"), _frontier, "mean +- std over calibration seeds, ratios to SparseGPT",
                          baseline=True),
    "projections": TableKind(("md", "latex", "csv"), _projections, "layer error per projection, ratios to SparseGPT",
                             layers=True, baseline=True),
    "allocation": TableKind(("md", "latex", "csv"), _allocation, "uniform vs OWL / profile per method, ratios to uniform"),
}


def build(frame: pd.DataFrame, table: str, fmt: str, *, dataset: str = "wikitext2", columns: str = "sparsity",
          metrics: str = "wanda", compare: tuple[str, str] | None = None, delta_vs_dense: bool = False,
          explode: float = 1e4, baseline: str | None = None, layers: pd.DataFrame | None = None,
          tasks: list[str] | None = None) -> str:
    """One table of :data:`TABLES` as text in ``fmt`` (md | latex | csv); ``baseline``: the method label
    the frontier and projections tables' ratios refer to (default SparseGPT); ``layers``: the per-layer
    rows of ``frame``'s records (:func:`analysis.collect.layers_of`), for the tables that need them;
    ``tasks``: the zero-shot table's tasks (default: every task the records have)."""
    if table not in TABLES:
        raise ValueError(f"table={table!r}; allowed: {', '.join(TABLES)}")
    kind = TABLES[table]
    if fmt not in kind.formats:
        raise ValueError(f"the {table} table is written as {' or '.join(kind.formats)}")
    options = {"dataset": dataset, "columns": columns, "metrics": metrics, "compare": compare,
               "delta_vs_dense": delta_vs_dense, "explode": explode, "baseline": baseline, "layers": layers,
               "tasks": tasks}
    return kind.render(frame, fmt, options)


def label_by_params(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Ablations: append ``(key=value, …)`` to a method's label for each of ``keys`` (method
    parameters) whose value varies among that method's rows, so e.g. two APT settings get two rows
    and SparseGPT, whose parameters do not vary, keeps its label (the baseline of the ratios)."""
    frame = frame.copy()
    unknown = [k for k in keys if f"param_{k}" not in frame.columns]
    if unknown:
        known = sorted(c[len("param_"):] for c in frame.columns if c.startswith("param_"))
        raise ValueError(f"--label-params {','.join(unknown)}: no such method parameter in these records; "
                         f"known: {', '.join(known)}")
    for label, rows in frame.groupby("label"):
        # as text, an absent parameter included: pandas 3's astype(str) keeps NaN missing, and a knob set in
        # some records and absent in older ones (where the method's default applied) is a variation too
        varying = [k for k in keys if rows[f"param_{k}"].map(_param_text).nunique() > 1]
        if varying:
            suffixes = [", ".join(f"{k}={_param_text(r['param_' + k])}" for k in varying) for _, r in rows.iterrows()]
            frame.loc[rows.index, "label"] = [f"{label} ({s})" for s in suffixes]
    return frame


def select_rows(frame: pd.DataFrame, conditions: list[str]) -> pd.DataFrame:
    """The records matching every ``COLUMN=V1[,V2…]`` condition (values compared as the config wrote
    them: ``calib_seed=0`` matches ``0.0``; the dense record's sparsity is ``dense``)."""
    for cond in conditions:
        column, sep, values = cond.partition("=")
        column = column.strip()
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        if not sep or not column or not wanted:
            raise ValueError(f"--where {cond!r}: give COLUMN=VALUE[,VALUE...], e.g. allocation=uniform")
        if column not in frame.columns:
            known = ", ".join(c for c in frame.columns if not c.startswith(("ppl_", "zs_", "v_")))
            raise ValueError(f"--where {cond!r}: no column {column!r} in these records; known: {known}")
        frame = frame[frame[column].map(_param_text).isin(wanted)]
        if frame.empty:
            raise ValueError(f"--where {cond!r}: no record left (values of {column!r} are compared as text)")
    return frame


def _param_text(value) -> str:
    """A parameter as the config wrote it: pandas turns an integer column with gaps (methods that lack
    the parameter) into floats, so ``3.0`` is shown as ``3``; an absent one (the record's config lacks
    the knob) is ``–``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pair(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"--compare {text!r}: give TARGET,BASELINE, e.g. apt,sparsegpt")
    return parts[0], parts[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="output directories (searched recursively for results.json)")
    p.add_argument("--table", choices=list(TABLES), default="ppl",
                   help="; ".join(f"{k}: {v.help}" for k, v in TABLES.items()))
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--dataset", default="wikitext2", help="perplexity dataset: wikitext2 | ptb | c4")
    p.add_argument("--columns", choices=["sparsity", "model"], default="sparsity",
                   help="ppl table: one model with sparsities as columns, or models as columns")
    p.add_argument("--metrics", choices=sorted(METRIC_PRESETS), default="wanda",
                   help="zero-shot metric per task: wanda (acc) or llm-pruner (acc_norm where it applies)")
    p.add_argument("--compare", type=_pair, help="add TARGET − BASELINE rows, e.g. apt,sparsegpt")
    p.add_argument("--delta-vs-dense", action="store_true", help="print each cell's difference to dense")
    p.add_argument("--explode", type=float, default=1e4, help="perplexities above this are marked, not printed")
    p.add_argument("--label-params", help="comma-separated method parameters that tell rows of one method "
                   "apart (ablations), e.g. nm_update,blocksize")
    p.add_argument("--baseline", help="frontier and projections tables: the method label ratios refer to "
                   "(default sparsegpt; with --label-params e.g. 'sparsegpt (percdamp=0.01)')")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=V1[,V2]",
                   help="keep only records whose column has one of the values (repeatable), "
                   "e.g. allocation=uniform or model=gemma3-270m")
    p.add_argument("--tasks", help="zeroshot table: these tasks only, comma-separated (the mean and its tests "
                   "are over them), e.g. to leave out a task the model answers by bias alone")
    p.add_argument("--out", help="write here (atomically) instead of printing")
    args = p.parse_args(argv)
    kind = TABLES[args.table]
    if args.baseline and not kind.baseline:
        p.error(f"--baseline applies to --table {' or '.join(k for k, v in TABLES.items() if v.baseline)} only "
                f"(got --table {args.table})")
    if args.tasks and args.table != "zeroshot":
        p.error(f"--tasks applies to --table zeroshot only (got --table {args.table})")
    col = collect(*args.dirs, layers=kind.layers)
    frame = col.frame
    try:
        frame = select_rows(frame, args.where)
        if args.label_params:
            frame = label_by_params(frame, [k.strip() for k in args.label_params.split(",") if k.strip()])
        text = build(frame, args.table, args.format, dataset=args.dataset, columns=args.columns,
                     metrics=args.metrics, compare=args.compare, delta_vs_dense=args.delta_vs_dense,
                     explode=args.explode, baseline=args.baseline,
                     layers=layers_of(frame, col.layers) if kind.layers else None,
                     tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None)
    except ValueError as e:
        p.error(str(e))
    if args.out:
        write_text_atomic(args.out, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

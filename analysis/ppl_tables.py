"""Perplexity tables: ``ppl`` (SparseGPT's Table 1 layout), ``benchmark`` (the APT solver benchmark) and
``calibration`` (the calibration study); ``write_benchmark`` writes the benchmark table into a sweep."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.collect import collect, ppl_datasets
from analysis.names import DATASET_NAMES, METHOD_NAMES, fmt_ppl, method_key, sparsity_name, sparsity_order, to_markdown
from analysis.render import Table
from pruning.results import write_text_atomic


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


def write_benchmark(sweep_dir: str | Path, dataset: str = "wikitext2") -> list[Path]:
    """Write ``benchmark.md`` and ``benchmark.csv`` (the long table) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    col = collect(sweep_dir)
    text = benchmark_markdown(col.frame, dataset)
    if col.skipped:
        text += "\nLeft out (not complete): " + ", ".join(f"{s['path']} ({s['status']})" for s in col.skipped) + "\n"
    return [write_text_atomic(sweep_dir / "benchmark.md", text),
            write_text_atomic(sweep_dir / "benchmark.csv", benchmark_long(col.frame, dataset).to_csv(index=False))]

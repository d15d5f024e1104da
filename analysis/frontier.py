"""The accuracy-frontier benchmark: methods × sparsities × calibration seeds, per model.

    python -m analysis.tables DIR… --table frontier [--format md|latex|csv]
    python -m analysis.plots DIR… --figures frontier

Every pruned record is paired with the baseline's record (SparseGPT by default) of the same model,
sparsity and calibration seed, so ratios and differences compare methods on the *same* calibration
windows. Per (model, sparsity, method) the table gives the number of seeds, perplexity mean ± sample
standard deviation over seeds on each evaluated dataset, the mean of the per-seed ratios to the
baseline (and each seed's), its 95% interval, the paired t-test and the exact sign-flip test over seeds
with a verdict (better / worse / tie: :mod:`analysis.seeds`), the mean layer error, and the solver and
whole-prune seconds with their ratios to the baseline's. Records whose window fingerprints differ from their baseline's are
not paired (:func:`window_mismatches`).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from analysis.collect import ppl_datasets
from analysis.render import EXPLODED, exploded_note
from analysis.seeds import paired_over_seeds
from analysis.names import (DATASET_NAMES, MARKERS, METHOD_NAMES, fixed, fmt_ppl, method_key, sparsity_name,
                            sparsity_order, to_markdown)

KEYS = ["model", "sparsity", "calib_seed"]
PAIRED_RATIOS = [("solver_s", "solver_x"), ("prune_total_s", "prune_x"), ("mean_rel_error", "error_x"),
                 ("mean_heldout_rel_error", "heldout_error_x")]  # (record column, its ratio to the baseline)
OPTIONAL_COLUMNS = {"mean_heldout_rel_error"}  # shown only when some record has them
RATIO_TOP = 1.3  # the ratio panel's upper limit when a method is far worse; those points are labelled


def evaluated_datasets(frame: pd.DataFrame) -> list[str]:
    order = list(DATASET_NAMES)
    found = ppl_datasets(frame, evaluated_only=True)
    return sorted(found, key=lambda d: (order.index(d) if d in order else len(order), d))


def matched(frame: pd.DataFrame, ref: pd.DataFrame, keys: list[str], col: str) -> pd.Series:
    """For each row of ``frame``, ``ref``'s value of ``col`` at the same ``keys`` (``ref`` is indexed by
    them; NaN where it has no such row): the paired reference of ratios and differences."""
    values = frame.set_index(keys).index.map(ref[col].to_dict().get)
    return pd.to_numeric(pd.Series(values, index=frame.index))


def window_mismatches(f: pd.DataFrame, base: pd.DataFrame, datasets: list[str]) -> list[str]:
    """Records paired with the baseline's although their calibration or evaluation windows differ (both
    fingerprinted, schema 2; records without fingerprints cannot be checked and pass)."""
    out = []
    for col, what in [("calib_windows", "calibration")] + [(f"ppl_{d}_windows_sha", f"{d} evaluation") for d in datasets]:
        if col not in f:
            continue
        ref = f.set_index(KEYS).index.map(base[col].to_dict().get)
        for (_, row), other in zip(f.iterrows(), ref):
            if isinstance(row[col], str) and isinstance(other, str) and row[col] != other:
                out.append(f"{row['model']} {row['sparsity']} seed {row['calib_seed']} {row['label']}: {what} windows "
                           f"{row[col]} != the baseline's {other}")
    return out


def paired_records(frame: pd.DataFrame, baseline: str = "sparsegpt",
                   allow_window_mismatch: bool = False) -> tuple[pd.DataFrame, list[str], list[tuple[str, str]]]:
    """The pruned records, each with its perplexities' ratio and difference to the baseline's record of the same
    model, sparsity and calibration seed (``ratio_<set>``, ``diff_<set>``) and its paired cost ratios; returns
    them, the evaluated datasets and the paired ``(column, ratio column)`` pairs. A record whose window
    fingerprints differ from its baseline's is an error (:func:`window_mismatches`) unless
    ``allow_window_mismatch``."""
    if frame.empty:
        raise ValueError("no complete records")
    f = frame[frame.sparsity != "dense"].copy()
    if f.empty:
        raise ValueError("no pruned records")
    datasets = evaluated_datasets(f)
    if not (f.label == baseline).any():
        raise ValueError(f"no records of the baseline {baseline!r}; methods here: {', '.join(sorted(f.label.unique()))} "
                         "(with --label-params, name the baseline's labelled row with --baseline)")
    base = f[f.label == baseline].set_index(KEYS)
    if base.index.has_duplicates:
        raise ValueError(f"several {baseline} records for one (model, sparsity, calibration seed): "
                         "pass one configuration per cell")
    mismatched = window_mismatches(f, base, datasets)
    if mismatched and not allow_window_mismatch:
        raise ValueError(f"{len(mismatched)} records would be paired with {baseline} on other windows: "
                         + "; ".join(mismatched[:5]) + " (--allow-window-mismatch pairs them anyway)")
    for ds in datasets:
        ref = matched(f, base, KEYS, f"ppl_{ds}")
        f[f"base_{ds}"] = ref
        f[f"ratio_{ds}"] = f[f"ppl_{ds}"].to_numpy() / ref
        f[f"diff_{ds}"] = f[f"ppl_{ds}"].to_numpy() - ref
    # per-record ratios to the baseline's record on the same windows: (column, its ratio column); an
    # optional column (held-out error: only with calibration.heldout_nsamples > 0) only when recorded
    paired = [(col, x) for col, x in PAIRED_RATIOS
              if col not in OPTIONAL_COLUMNS or (col in f and pd.to_numeric(f[col], errors="coerce").notna().any())]
    for col, x in paired:
        f[x] = pd.to_numeric(f[col], errors="coerce").to_numpy() / matched(f, base, KEYS, col)
    return f, datasets, paired


def frontier_seeds_markdown(frame: pd.DataFrame, baseline: str = "sparsegpt", allow_window_mismatch: bool = False) -> str:
    """One row per record (model, sparsity, method, calibration seed): its perplexities and their ratios to the
    baseline's record on the same windows, its layer errors and its solver and prune seconds with their ratios:
    the per-seed figures behind :func:`frontier_markdown`'s means."""
    f, datasets, _ = paired_records(frame, baseline, allow_window_mismatch)
    f["_k"] = [(str(m), sparsity_order(sp), method_key(lab), s) for m, sp, lab, s in
               zip(f["model"], f["sparsity"], f["label"], f["calib_seed"])]
    f = f.sort_values("_k")
    num = lambda col, digits: pd.to_numeric(f[col], errors="coerce").map(fixed(digits))  # noqa: E731
    times = lambda col: num(col, 2).map(lambda v: v if v == "–" else v + "×")  # noqa: E731
    out = {"model": f["model"], "sparsity": f["sparsity"].map(sparsity_name),
           "method": f["label"].map(lambda m: METHOD_NAMES.get(m, m)), "seed": num("calib_seed", 0)}
    base = METHOD_NAMES.get(baseline, baseline)
    for ds in datasets:
        name = DATASET_NAMES.get(ds, ds)
        out[f"{name} ppl"] = num(f"ppl_{ds}", 2)
        out[f"{name} ÷ {base}"] = num(f"ratio_{ds}", 3)
    if "mean_dense_rel_error" not in f:
        f["mean_dense_rel_error"] = math.nan
    out["layer error"], out["dense-output error"] = num("mean_rel_error", 4), num("mean_dense_rel_error", 4)
    out["solver s"], out[f"solver ÷ {base}"] = num("solver_s", 1), times("solver_x")
    out["prune s"], out[f"prune ÷ {base}"] = num("prune_total_s", 1), times("prune_x")
    return to_markdown(pd.DataFrame(out))


def frontier_long(frame: pd.DataFrame, baseline: str = "sparsegpt", allow_window_mismatch: bool = False) -> pd.DataFrame:
    """One row per (model, sparsity, method): the statistics of the module docstring, over
    :func:`paired_records`."""
    f, datasets, paired = paired_records(frame, baseline, allow_window_mismatch)
    rows = []
    for (model, sparsity, label), g in f.groupby(["model", "sparsity", "label"], sort=False):
        if g["calib_seed"].duplicated().any():
            raise ValueError(f"{model} {sparsity} {label}: several records for one calibration seed "
                             "(different settings of one method?); use --label-params to tell them apart")
        row = {"model": model, "sparsity": sparsity, "label": label, "n_seeds": len(g),
               "seeds": ",".join(str(int(s)) for s in sorted(g["calib_seed"].dropna()))}
        for ds in datasets:
            row.update(_dataset_statistics(g, ds, paired_test=label != baseline))
        for col, x in paired:
            row.update({col: pd.to_numeric(g[col], errors="coerce").mean(), x: g[x].mean()})
        # output_target=dense: the solver's error is against W*, the dense-output error is the comparable one
        row["dense_target"] = bool((g.get("param_output_target", pd.Series(dtype=object)) == "dense").any())
        row["mean_dense_rel_error"] = pd.to_numeric(g.get("mean_dense_rel_error", pd.Series(dtype=float)),
                                                    errors="coerce").mean()
        rows.append(row)
    long = pd.DataFrame(rows)
    long["_k"] = [(str(m), sparsity_order(s), method_key(lab)) for m, s, lab in
                  zip(long["model"], long["sparsity"], long["label"])]
    return long.sort_values("_k").drop(columns="_k").reset_index(drop=True)


def _dataset_statistics(g: pd.DataFrame, ds: str, paired_test: bool) -> dict:
    """One method's seeds on one dataset: perplexity, ratio and difference to the baseline (mean and std), and
    (``paired_test``) the paired test over seeds of :mod:`analysis.seeds`."""
    v, r, d = g[f"ppl_{ds}"], g[f"ratio_{ds}"], g[f"diff_{ds}"]
    out = {f"ppl_{ds}": v.mean(), f"ppl_{ds}_std": v.std(ddof=1) if len(v) > 1 else math.nan,
           f"ratio_{ds}": r.mean(), f"ratio_{ds}_std": r.std(ddof=1) if r.notna().sum() > 1 else math.nan,
           f"diff_{ds}": d.mean(), f"diff_{ds}_std": d.std(ddof=1) if d.notna().sum() > 1 else math.nan}
    if paired_test:
        test = paired_over_seeds(v.to_numpy(), g[f"base_{ds}"].to_numpy())
        out.update({f"ratio_{ds}_low": test.ratio_low, f"ratio_{ds}_high": test.ratio_high, f"p_t_{ds}": test.p_t,
                    f"p_exact_{ds}": test.p_exact, f"verdict_{ds}": test.verdict,
                    f"seed_ratios_{ds}": "/".join(f"{x:.3f}" for x in test.ratios)})
    return out


def plus_minus(mean, std, fmt=lambda v: f"{v:.2f}") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return fmt(mean) if std is None or math.isnan(std) else f"{fmt(mean)} ± {std:.2f}"


def _interval(long: pd.DataFrame, i, ds: str) -> str:
    low, high = long.get(f"ratio_{ds}_low", {}).get(i, math.nan), long.get(f"ratio_{ds}_high", {}).get(i, math.nan)
    return "–" if not isinstance(low, float) or math.isnan(low) else f"{low:.3f}–{high:.3f}"


def _p_values(long: pd.DataFrame, i, ds: str) -> str:
    p_t, p_x = long.get(f"p_t_{ds}", {}).get(i, math.nan), long.get(f"p_exact_{ds}", {}).get(i, math.nan)
    return "–" if not isinstance(p_t, float) or math.isnan(p_t) else f"{p_t:.3f} / {p_x:.2f}"


def frontier_display(frame: pd.DataFrame, baseline: str = "sparsegpt", explode: float = 1e4,
                     allow_window_mismatch: bool = False) -> pd.DataFrame:
    """The table as strings (one model per block of rows), shared by the Markdown and LaTeX renderings."""
    long = frontier_long(frame, baseline, allow_window_mismatch)
    datasets = [c[4:] for c in long.columns if c.startswith("ppl_") and not c.endswith("_std")]
    out = {"model": long["model"], "sparsity": long["sparsity"].map(sparsity_name),
           "method": long["label"].map(lambda m: METHOD_NAMES.get(m, m)), "seeds": long["seeds"]}
    base = METHOD_NAMES.get(baseline, baseline)
    for ds in datasets:
        name = DATASET_NAMES.get(ds, ds)
        out[f"{name} ppl"] = [plus_minus(m, s, lambda v: fmt_ppl(v, explode)) for m, s in zip(long[f"ppl_{ds}"], long[f"ppl_{ds}_std"])]
        out[f"{name} ÷ {base}"] = long[f"ratio_{ds}"].map(lambda v: "–" if math.isnan(v) else f"{v:.3f}")
        out[f"{name} ÷ {base} per seed"] = long.get(f"seed_ratios_{ds}", pd.Series("", index=long.index)).map(
            lambda v: v if isinstance(v, str) and "/" in v else "–")
        out[f"{name} 95% CI"] = [_interval(long, i, ds) for i in long.index]
        out[f"{name} p (t / exact)"] = [_p_values(long, i, ds) for i in long.index]
        out[f"{name} vs {base}"] = long.get(f"verdict_{ds}", pd.Series(None, index=long.index)).map(
            lambda v: v if isinstance(v, str) else "–")
    out["layer error"] = [("–" if v is None or math.isnan(v) else f"{v:.4f}" + ("‡" if dense else ""))
                          for v, dense in zip(long["mean_rel_error"], long["dense_target"])]
    if long["dense_target"].any() or long["mean_dense_rel_error"].notna().any():  # output_target=dense, engine.dense_error
        out["dense-output error"] = long["mean_dense_rel_error"].map(lambda v: "–" if math.isnan(v) else f"{v:.4f}")
    if "mean_heldout_rel_error" in long:  # records with calibration.heldout_nsamples > 0
        out["held-out layer error"] = long["mean_heldout_rel_error"].map(lambda v: "–" if math.isnan(v) else f"{v:.4f}")
        out[f"layer error ÷ {base}"] = long["error_x"].map(lambda v: "–" if math.isnan(v) else f"{v:.3f}")
        out[f"held-out ÷ {base}"] = long["heldout_error_x"].map(lambda v: "–" if math.isnan(v) else f"{v:.3f}")
    out["solver s"] = long["solver_s"].map(lambda v: "–" if v is None or math.isnan(v) else f"{v:.1f}")
    out[f"solver ÷ {base}"] = long["solver_x"].map(lambda v: "–" if v is None or math.isnan(v) else f"{v:.2f}×")
    out["prune s"] = long["prune_total_s"].map(lambda v: "–" if v is None or math.isnan(v) else f"{v:.1f}")
    out[f"prune ÷ {base}"] = long["prune_x"].map(lambda v: "–" if v is None or math.isnan(v) else f"{v:.2f}×")
    return pd.DataFrame(out)


CAPTION = ("Perplexity mean ± std over calibration seeds (seeds listed); ratios are paired with {base} on the same "
           "model, sparsity and calibration windows (mean of the per-seed ratios, listed per seed); 95% CI: Student's "
           "t interval of that mean; p: the paired t-test on the per-seed differences / the exact sign-flip "
           "permutation test (never below 2/2^n for n seeds: 0.25 with three, 0.0625 with five); better / worse: t-test p < 0.05, else tie "
           "(needs ≥ 2 seeds); layer error ‖(W−W')X‖²/‖WX‖² averaged over all pruned linears; solver seconds "
           "exclude forward passes, prune seconds are the whole prune (calibration passes, solver, reports); time "
           "ratios pair records of one cell, which may come from different runs on one machine.")
HELDOUT_CAPTION = (" Held-out layer error: the same ratio on calibration-distribution windows disjoint from the "
                   "calibration windows (calibration.heldout_nsamples), which the solver never fitted.")


DENSE_CAPTION = (" ‡ Fitted to the dense model's layer outputs (method.output_target=dense): the layer error is the "
                 "solver's objective, against the shifted target W*, not comparable with the other rows; the "
                 "dense-output error ‖W X_dense − W' X‖²/‖W X_dense‖² is, and includes what earlier layers left.")


def exploded_caption(shown: pd.DataFrame, explode: float) -> str:
    """The caption's note for perplexity cells marked exploded, or "" when the table has none."""
    exploded = any(EXPLODED in str(v) for c in shown.columns if c.endswith(" ppl") for v in shown[c])
    return f" {exploded_note(explode)} (ratios are computed from the value)." if exploded else ""


def _caption(shown: pd.DataFrame, baseline: str, explode: float) -> str:
    return (CAPTION.format(base=METHOD_NAMES.get(baseline, baseline))
            + (HELDOUT_CAPTION if "held-out layer error" in shown.columns else "")
            + (DENSE_CAPTION if "dense-output error" in shown.columns else "")
            + exploded_caption(shown, explode))


def frontier_markdown(frame: pd.DataFrame, baseline: str = "sparsegpt", explode: float = 1e4,
                      allow_window_mismatch: bool = False) -> str:
    shown = frontier_display(frame, baseline, explode, allow_window_mismatch)
    return _caption(shown, baseline, explode) + "\n\n" + to_markdown(shown)


def latex_table(shown: pd.DataFrame, caption: str) -> str:
    """A display table (strings with ±, ÷, Δ, %, ×) as a LaTeX table with its caption."""
    shown = shown.map(lambda v: str(v).replace("±", r"$\pm$").replace("÷", r"/").replace("Δ", r"$\Delta$")
                      .replace("%", r"\%").replace("×", r"$\times$").replace("‡", r"$^\ddagger$")
                      .replace(EXPLODED, r"$^\dagger$"))
    shown.columns = [c.replace("÷", "/").replace("Δ", r"$\Delta$").replace("%", r"\%") for c in shown.columns]
    body = shown.to_latex(index=False, escape=False)
    caption = (caption.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("‡", r"$^\ddagger$")
               .replace(EXPLODED, r"$^\dagger$"))
    return "\\begin{table}\n\\centering\\small\n" + body + f"\\caption{{{caption}}}\n\\end{{table}}\n"


def frontier_latex(frame: pd.DataFrame, baseline: str = "sparsegpt", explode: float = 1e4,
                   allow_window_mismatch: bool = False) -> str:
    shown = frontier_display(frame, baseline, explode, allow_window_mismatch)
    return latex_table(shown, _caption(shown, baseline, explode))


def _x_position(sparsity: str) -> float:
    """Where a cell sits on the sparsity axis (%): N:M patterns beside their ratio, 2:4 left and 4:8 right."""
    return 100 * sparsity_order(sparsity)[1] + (0.0 if ":" not in sparsity else 1.5 if sparsity == "4:8" else -1.5)


def frontier_figure(frame: pd.DataFrame, dataset: str = "wikitext2", baseline: str = "sparsegpt"):
    """Per model (one column of panels): perplexity against unstructured sparsity (top, log y) and its
    ratio to the baseline on the same calibration windows (bottom), each with mean ± std error bars
    over calibration seeds; N:M patterns are points beside 50%."""
    long = frontier_long(frame, baseline)
    col = f"ppl_{dataset}"
    if col not in long:
        raise ValueError(f"no records with {dataset} perplexity")
    models = list(dict.fromkeys(long["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(6.5 * len(models), 7.4), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 2]})
    dense = frame[frame.sparsity == "dense"]
    name = DATASET_NAMES.get(dataset, dataset)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {lab: cycle[i % len(cycle)] for i, lab in enumerate(sorted(long["label"].unique(), key=method_key))}
    for j, model in enumerate(models):
        top, bottom = axes[0, j], axes[1, j]
        sub = long[long.model == model]
        for label in sorted(sub["label"].unique(), key=method_key):
            rows = sub[sub.label == label].copy()
            rows["x"] = rows["sparsity"].map(_x_position)
            nm = rows["sparsity"].str.contains(":")
            style = {"marker": MARKERS.get(label, "o"), "capsize": 3, "color": colors[label]}  # one colour per method in every panel
            for ax, y in ((top, col), (bottom, f"ratio_{dataset}")):
                lines = rows[~nm].sort_values("x")
                ax.errorbar(lines["x"], lines[y], yerr=lines[f"{y}_std"].fillna(0), label=METHOD_NAMES.get(label, label),
                            **style)
                ax.errorbar(rows[nm]["x"], rows[nm][y], yerr=rows[nm][f"{y}_std"].fillna(0), linestyle="none", alpha=0.6,
                            **style)
        d = dense[(dense.model == model) & dense[col].notna()][col] if col in dense else []
        if len(d):
            top.axhline(float(d.iloc[-1]), color="grey", linestyle="--", linewidth=1, label="Dense")
        top.set_yscale("log")
        top.set_title(f"{model}: {name} (N:M beside 50%: 2:4 left, 4:8 right)", fontsize=9)
        top.set_ylabel("perplexity (mean ± std over seeds)")
        top.legend(fontsize=8)
        bottom.axhline(1.0, color="grey", linewidth=1)
        ratios = sub[f"ratio_{dataset}"].dropna()
        if len(ratios) and ratios.max() > RATIO_TOP:  # e.g. Wanda's 20x must not flatten the band where solvers differ
            bottom.set_ylim(min(0.95 * ratios.min(), 0.95), RATIO_TOP)
            placed: list[float] = []  # labels of nearby cells (e.g. 2:4 and 50%) are stacked, not overprinted
            for _, r in sub[sub[f"ratio_{dataset}"] > RATIO_TOP].iterrows():
                x = _x_position(r["sparsity"])
                below = sum(abs(x - other) < 4 for other in placed)
                placed.append(x)
                bottom.annotate(f"{METHOD_NAMES.get(r['label'], r['label'])} {r[f'ratio_{dataset}']:.1f}×", (x, RATIO_TOP),
                                xytext=(0, -10 - 9 * below), textcoords="offset points", fontsize=7,
                                ha="right" if x >= max(100 * sparsity_order(v)[1] for v in sub["sparsity"]) else "center")
        bottom.set_ylabel(f"÷ {METHOD_NAMES.get(baseline, baseline)} (same windows)")
        bottom.set_xlabel("sparsity (%)")
        xs = sub["sparsity"].map(_x_position)  # a panel with 50% and N:M only must not zoom into ±1.5 points
        bottom.set_xlim(min(45.0, xs.min() - 3), max(55.0, xs.max() + 3))
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig

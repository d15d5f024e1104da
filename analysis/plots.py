"""Plots from collected records (:mod:`analysis.collect`), saved as PNG and/or PDF.

    python -m analysis.plots DIR… [--out-dir analysis/figures] [--dataset wikitext2]
        [--layer-sparsity 0.5] [--formats png,pdf]

* ``ppl_vs_sparsity``: perplexity against unstructured sparsity per method (log y; dense as a
  dashed line), with N:M patterns in a second panel;
* ``layer_error_by_depth``: the mean relative reconstruction error ‖(W−W')X‖²/‖WX‖² of each
  block's linears against depth, one line per method, at one sparsity;
* ``calibration_effect`` (``--figures calibration``): perplexity against the number of
  calibration tokens, one line per method × calibration set, one panel per evaluation set (the
  calibration study of the quick protocol);
* ``block_sparsity`` (``--figures blocks``): per-block sparsity, target and actual, per method and
  allocation (OWL, profiles) at one global sparsity;
* ``frontier_figure`` (``--figures frontier``, :mod:`analysis.frontier`): perplexity against sparsity
  with mean ± std error bars over calibration seeds, one panel per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.collect import collect, layers_of
from analysis.frontier import frontier_figure
from analysis.names import MARKERS, METHOD_NAMES, method_key, sparsity_name, sparsity_order
from analysis.rows import label_by_params, select_rows



def _one_model(frame: pd.DataFrame) -> str:
    models = frame["model"].unique()
    if len(models) != 1:
        raise ValueError(f"plots are per model; these records hold {', '.join(map(str, models)) or 'none'}: "
                         "pick one with --model")
    return str(models[0])


def ppl_vs_sparsity(frame: pd.DataFrame, dataset: str = "wikitext2"):
    col = f"ppl_{dataset}"
    if frame.empty or col not in frame:
        raise ValueError(f"no records with {dataset} perplexity")
    model = _one_model(frame)
    f = frame[frame[col].notna()]
    pruned = f[f.sparsity != "dense"]
    nm = pruned[pruned.sparsity_kind == "nm"]
    fig, axes = plt.subplots(1, 2 if not nm.empty else 1, figsize=(9 if not nm.empty else 6, 4), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]} if not nm.empty else None, sharey=True)
    ax = axes[0, 0]
    labels = sorted(pruned["label"].unique(), key=method_key)
    for label in labels:
        rows = pruned[(pruned.label == label) & (pruned.sparsity_kind == "unstructured")].sort_values("sparsity_ratio")
        if not rows.empty:
            ax.plot(100 * rows.sparsity_ratio, rows[col], marker=MARKERS.get(label, "o"),
                    label=METHOD_NAMES.get(label, label))
    dense = f[f.sparsity == "dense"][col]
    for a in axes[0]:
        if not dense.empty:
            a.axhline(float(dense.iloc[-1]), color="grey", linestyle="--", linewidth=1, label="Dense")
        a.set_yscale("log")
        a.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("unstructured sparsity (%)")
    ax.set_ylabel(f"{dataset} perplexity (log)")
    ax.set_title(f"{model}: perplexity vs sparsity")
    ax.legend(fontsize=8)
    if not nm.empty:
        ax2 = axes[0, 1]
        patterns = sorted(nm["sparsity"].unique(), key=sparsity_order)
        for label in labels:
            rows = nm[nm.label == label]
            xs = [patterns.index(s) for s in rows.sparsity]
            ax2.scatter(xs, rows[col], marker=MARKERS.get(label, "o"), label=METHOD_NAMES.get(label, label))
        ax2.set_xticks(range(len(patterns)), patterns)
        ax2.set_xlim(-0.5, len(patterns) - 0.5)
        ax2.set_xlabel("N:M")
        ax2.set_title("semi-structured")
    fig.tight_layout()
    return fig


def layer_error_by_depth(layers: pd.DataFrame, sparsity: str = "0.5"):
    if layers is None or layers.empty:
        raise ValueError("no per-layer reports in these records")
    model = _one_model(layers)
    rows = layers[(layers.sparsity == str(sparsity)) & layers.rel_error.notna()]
    if rows.empty:
        have = ", ".join(sorted(layers.sparsity.unique(), key=sparsity_order))
        raise ValueError(f"no per-layer errors at sparsity {sparsity}; present: {have}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in sorted(rows["label"].unique(), key=method_key):
        per_block = rows[rows.label == label].groupby("block")["rel_error"].mean()
        ax.plot(per_block.index, per_block.values, marker=MARKERS.get(label, "o"), markersize=3,
                label=METHOD_NAMES.get(label, label))
    ax.set_yscale("log")
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("mean relative layer error (log)")
    ax.set_title(f"{model}: reconstruction error across depth at {sparsity_name(str(sparsity))}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def block_sparsity(layers: pd.DataFrame, sparsity: str = "0.7"):
    """Per-block sparsity, target (dashed) and actual (solid), parameter-weighted over the block's
    linears, one colour per method (+ allocation) at one global sparsity."""
    if layers is None or layers.empty:
        raise ValueError("no per-layer reports in these records")
    model = _one_model(layers)
    rows = layers[(layers.sparsity == str(sparsity)) & layers.numel.notna()].copy()
    if rows.empty:
        have = ", ".join(sorted(layers.sparsity.unique(), key=sparsity_order))
        raise ValueError(f"no per-layer reports at sparsity {sparsity}; present: {have}")
    rows["target"] = rows["target"].fillna(float(sparsity) if ":" not in str(sparsity) else 0.5)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in sorted(rows["label"].unique(), key=lambda lab: method_key(lab.split("+")[0]) + (lab,)):
        g = rows[rows.label == label]
        w = g.groupby("block")["numel"].sum()
        actual = (g.layer_sparsity * g.numel).groupby(g.block).sum() / w
        target = (g.target * g.numel).groupby(g.block).sum() / w
        name = METHOD_NAMES.get(label.split("+")[0], label) + ("+" + label.split("+", 1)[1] if "+" in label else "")
        line, = ax.plot(actual.index, 100 * actual.values, marker=MARKERS.get(label.split("+")[0], "o"), markersize=3,
                        label=f"{name} actual")
        ax.plot(target.index, 100 * target.values, linestyle="--", color=line.get_color(), label=f"{name} target")
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("sparsity of the block's linears (%)")
    ax.set_title(f"{model}: per-block sparsity at {sparsity_name(str(sparsity))} overall")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


CALIB_STYLE = {"c4": "-", "wikitext2": "--", "ptb": ":"}


def calibration_effect(frame: pd.DataFrame, datasets=("wikitext2", "c4")):
    """Perplexity against calibration tokens (nsamples × seqlen, log2 axis) per method and calibration
    set; 2048-token windows are drawn hollow so they stand apart from 512-token ones."""
    f = frame[frame["calib_nsamples"].notna()] if "calib_nsamples" in frame else frame.iloc[0:0]
    datasets = [d for d in datasets if f"ppl_{d}" in f and f[f"ppl_{d}"].notna().any()]
    if f.empty or not datasets:
        raise ValueError("no calibrated records with perplexity to plot")
    model = _one_model(f)
    f = f.assign(tokens=f["calib_nsamples"] * f["calib_seqlen"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for (label, calib), g in sorted(f.groupby(["label", "calib_dataset"]), key=lambda kv: (method_key(kv[0][0]), kv[0][1])):
            g = g.sort_values("tokens")
            name = f"{METHOD_NAMES.get(label, label)}, calib {calib}"
            line, = ax.plot(g["tokens"], g[f"ppl_{ds}"], CALIB_STYLE.get(calib, "-"), marker=MARKERS.get(label, "o"),
                            label=name)
            long = g[g["calib_seqlen"] >= 2048]
            ax.plot(long["tokens"], long[f"ppl_{ds}"], marker=MARKERS.get(label, "o"), markersize=10,
                    linestyle="none", markerfacecolor="none", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calibration tokens (nsamples × seqlen; hollow: 2048-token windows)")
        ax.set_ylabel(f"{ds} perplexity")
        ax.set_title(f"{model}: evaluated on {ds}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, out_dir: str | Path, name: str, formats=("png",)) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        tmp = out_dir / f".{name}.tmp.{fmt}"
        fig.savefig(tmp, dpi=150)
        tmp.replace(path)  # atomic: a reader never sees half a figure
        paths.append(path)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="output directories (searched recursively for results.json)")
    p.add_argument("--out-dir", default="analysis/figures")
    p.add_argument("--dataset", default="wikitext2")
    p.add_argument("--layer-sparsity", default="0.5", help="sparsity of the per-layer error plot (e.g. 0.5, 2:4)")
    p.add_argument("--formats", default="png", help="comma-separated: png, pdf, svg")
    p.add_argument("--model", default=None, help="plot this model's records only (plots are per model); the file "
                   "names then end in _<model>")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=V1[,V2]",
                   help="keep only records whose column has one of the values (repeatable), as in analysis.tables")
    p.add_argument("--label-params", help="comma-separated method parameters that tell lines of one method apart "
                   "(ablations), as in analysis.tables")
    p.add_argument("--figures", default="ppl,layers", help="comma-separated: ppl, layers, calibration, frontier, "
                   "blocks (per-block sparsity, target vs actual, at --layer-sparsity)")
    args = p.parse_args(argv)
    figures = {f.strip() for f in args.figures.split(",") if f.strip()}
    unknown = figures - {"ppl", "layers", "calibration", "frontier", "blocks"}
    if unknown:
        p.error(f"--figures: unknown {sorted(unknown)}; allowed: ppl, layers, calibration, frontier, blocks")
    plt.switch_backend("Agg")  # files only: no display needed
    col = collect(*args.dirs, layers=True)
    suffix = ""
    if args.model is not None:
        held = sorted(map(str, col.frame["model"].unique())) if not col.frame.empty else []
        if args.model not in held:
            p.error(f"--model {args.model!r}: no complete records of it; these records hold {', '.join(held) or 'none'}")
        col.frame = col.frame[col.frame["model"] == args.model].reset_index(drop=True)
        col.layers = col.layers[col.layers["model"] == args.model].reset_index(drop=True)
        suffix = f"_{args.model}"
    try:
        col.frame = select_rows(col.frame, args.where).reset_index(drop=True)
        if args.label_params:
            col.frame = label_by_params(col.frame, [k.strip() for k in args.label_params.split(",") if k.strip()])
    except ValueError as e:
        p.error(str(e))
    col.layers = layers_of(col.frame, col.layers)  # the per-layer rows follow their records: filtered, relabelled
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    written = []
    try:
        if "ppl" in figures:
            written += save(ppl_vs_sparsity(col.frame, args.dataset), args.out_dir,
                            f"ppl_vs_sparsity_{args.dataset}{suffix}", formats)
        if "layers" in figures:
            tag = sparsity_name(args.layer_sparsity).replace("%", "pct").replace(":", "of")
            written += save(layer_error_by_depth(col.layers, args.layer_sparsity), args.out_dir,
                            f"layer_error_by_depth_{tag}{suffix}", formats)
        if "calibration" in figures:
            written += save(calibration_effect(col.frame), args.out_dir, f"calibration_study{suffix}", formats)
        if "blocks" in figures:
            tag = sparsity_name(args.layer_sparsity).replace("%", "pct").replace(":", "of")
            written += save(block_sparsity(col.layers, args.layer_sparsity), args.out_dir, f"block_sparsity_{tag}{suffix}", formats)
        if "frontier" in figures:
            written += save(frontier_figure(col.frame, args.dataset), args.out_dir, f"frontier_{args.dataset}{suffix}", formats)
    except ValueError as e:
        p.error(str(e))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

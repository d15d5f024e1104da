"""Tables from collected records (:mod:`analysis.collect`).

    python -m analysis.tables outputs/sweeps/apt-benchmark --table benchmark [--format md|csv] [--out FILE]

``benchmark`` is the solver benchmark of the APT issue: WikiText-2 perplexity per method and
sparsity (with APT's difference to SparseGPT), then per (sparsity, method) the mean relative layer
error, solver-only seconds and end-to-end seconds. Perplexities above ``explode`` (default 1e4) or
NaN are marked, never printed as ordinary numbers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from analysis.collect import collect
from pruning.results import write_text_atomic
from pruning.sparsity import parse_sparsity

METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt", "apt", "apt-exact")
EXPLODED = "†"


def sparsity_order(spec: str) -> tuple:
    """Unstructured levels ascending, then N:M by ratio and M (``0.5 < 0.6 < … < 2:4 < 4:8``)."""
    if spec == "dense":
        return (0, 0.0, 0)
    sp = parse_sparsity(spec)
    return (1, sp.ratio, 0) if sp.kind == "unstructured" else (2, sp.ratio, sp.m)


def _order(values, key):
    return sorted(values, key=key)


def _method_key(label: str):
    return (METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER), label)


def fmt_ppl(v, explode: float = 1e4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"NaN{EXPLODED}"
    return f"{v:.3g}{EXPLODED}" if v > explode else f"{v:.2f}"


def benchmark_tables(frame: pd.DataFrame, *, dataset: str = "wikitext2", baseline: str = "sparsegpt",
                     target: str = "apt") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(ppl, long)``: perplexity wide (methods × sparsities, plus the target − baseline row) and
    the long table of every metric per (sparsity, method)."""
    col = f"ppl_{dataset}"
    if frame.empty or col not in frame:
        raise ValueError(f"no complete records with {dataset} perplexity")
    models = frame["model"].unique()
    if len(models) > 1:
        raise ValueError(f"records of several models ({', '.join(map(str, models))}): pass one model's sweep")
    f = frame[frame.sparsity != "dense"]
    sparsities = _order(f["sparsity"].unique(), sparsity_order)
    labels = _order(f["label"].unique(), _method_key)
    ppl = f.pivot_table(index="label", columns="sparsity", values=col, aggfunc="last").reindex(index=labels,
                                                                                                columns=sparsities)
    if baseline in ppl.index and target in ppl.index:
        ppl.loc[f"{target} − {baseline}"] = ppl.loc[target] - ppl.loc[baseline]
    long = f[["sparsity", "label", col, "mean_rel_error", "solver_s", "prune_total_s", "total_s"]].copy()
    long["_s"] = long["sparsity"].map(sparsity_order)
    long["_m"] = long["label"].map(_method_key)
    long = long.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)
    return ppl, long


def to_markdown(df: pd.DataFrame, formats: dict | None = None, index: bool = True) -> str:
    formats = formats or {}
    cols = list(df.columns)
    head = ([df.index.name or ""] if index else []) + [str(c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        cells = [str(idx)] if index else []
        for c in cols:
            v = row[c]
            fn = formats.get(c, formats.get("*"))
            cells.append("" if v is None or (isinstance(v, float) and math.isnan(v) and fn is None)
                         else fn(v) if fn else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def benchmark_markdown(frame: pd.DataFrame, dataset: str = "wikitext2", explode: float = 1e4) -> str:
    ppl, long = benchmark_tables(frame, dataset=dataset)
    delta_rows = [i for i in ppl.index if "−" in str(i)]
    wide = ppl.copy().astype(object)
    for i in ppl.index:
        for c in ppl.columns:
            v = ppl.loc[i, c]
            wide.loc[i, c] = ("" if pd.isna(v) else f"{v:+.2f}") if i in delta_rows else fmt_ppl(_nan(v), explode)
    wide.index.name = "method"
    model = frame["model"].iloc[0]
    protocol = frame["protocol"].iloc[0]
    out = [f"{dataset} perplexity, {model}, protocol `{protocol}` ({EXPLODED}: above {explode:g} or NaN)\n",
           to_markdown(wide), "\nPer layer and timing (mean relative layer error ‖(W−W')X‖²/‖WX‖² over all "
           "pruned linears; solver-only and end-to-end seconds)\n"]
    col = f"ppl_{dataset}"
    out.append(to_markdown(long.rename(columns={"label": "method", col: "ppl"}), index=False, formats={
        "ppl": lambda v: fmt_ppl(_nan(v), explode), "mean_rel_error": lambda v: f"{v:.4f}",
        "solver_s": lambda v: f"{v:.1f}", "prune_total_s": lambda v: f"{v:.1f}", "total_s": lambda v: f"{v:.1f}"}))
    return "".join(out)


def _nan(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def write_benchmark(sweep_dir: str | Path, dataset: str = "wikitext2") -> list[Path]:
    """Write ``benchmark.md`` and ``benchmark.csv`` (the long table) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    col = collect(sweep_dir)
    text = benchmark_markdown(col.frame, dataset)
    if col.skipped:
        text += "\nLeft out (not complete): " + ", ".join(f"{s['path']} ({s['status']})" for s in col.skipped) + "\n"
    _, long = benchmark_tables(col.frame, dataset=dataset)
    return [write_text_atomic(sweep_dir / "benchmark.md", text),
            write_text_atomic(sweep_dir / "benchmark.csv", long.to_csv(index=False))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="output directories (searched recursively for results.json)")
    p.add_argument("--table", choices=["benchmark"], default="benchmark")
    p.add_argument("--format", choices=["md", "csv"], default="md")
    p.add_argument("--dataset", default="wikitext2")
    p.add_argument("--out", help="write here (atomically) instead of printing")
    args = p.parse_args(argv)
    frame = collect(*args.dirs).frame
    if args.format == "md":
        text = benchmark_markdown(frame, args.dataset)
    else:
        text = benchmark_tables(frame, dataset=args.dataset)[1].to_csv(index=False)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import sys
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from analysis.allocation import allocation_latex, allocation_long, allocation_markdown
from analysis.collect import collect, layers_of
from analysis.downstream import downstream_long, downstream_markdown
from analysis.frontier import frontier_latex, frontier_long, frontier_markdown, frontier_seeds_markdown, paired_records
from analysis.memory_table import memory_long, memory_markdown
from analysis.names import METRIC_PRESETS
from analysis.ppl_tables import benchmark_long, benchmark_markdown, calibration_long, calibration_markdown, ppl_table
from analysis.ranks_table import ranks_long, ranks_markdown
from analysis.projections import projections_latex, projections_long, projections_markdown
from analysis.render import emit
from analysis.rows import label_by_params, select_rows
from analysis.zeroshot_table import zeroshot_table


@dataclass(frozen=True)
class TableKind:
    """A table `analysis.tables --table NAME` can render: its formats and how (frame, fmt, options) -> text."""

    formats: tuple[str, ...]
    render: Callable[..., str]
    help: str = ""
    layers: bool = False  # renders the per-layer rows (options["layers"]), not only the records
    baseline: bool = False  # takes --baseline
    duplicates: bool = False  # keeps every record of one config (the same job run on other ranks or threads)


def _frontier(frame, fmt, o):
    base = o["baseline"] or "sparsegpt"
    allow = o["allow_window_mismatch"]
    return {"md": lambda: frontier_markdown(frame, base, explode=o["explode"], allow_window_mismatch=allow),
            "latex": lambda: frontier_latex(frame, base, explode=o["explode"], allow_window_mismatch=allow),
            "csv": lambda: frontier_long(frame, base, allow).to_csv(index=False)}[fmt]()


def _seeds(frame, fmt, o):
    base = o["baseline"] or "sparsegpt"
    allow = o["allow_window_mismatch"]
    return {"md": lambda: frontier_seeds_markdown(frame, base, allow),
            "csv": lambda: paired_records(frame, base, allow)[0].to_csv(index=False)}[fmt]()


def _projections(frame, fmt, o):
    layers, base = o["layers"], o["baseline"] or "sparsegpt"
    return {"md": lambda: projections_markdown(layers, base), "latex": lambda: projections_latex(layers, base),
            "csv": lambda: projections_long(layers, base).to_csv(index=False)}[fmt]()


def _allocation(frame, fmt, o):
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
    "seeds": TableKind(("md", "csv"), _seeds, "the frontier's records one by one: per-seed perplexities, errors, "
                       "seconds and their ratios to SparseGPT's record on the same windows", baseline=True),
    "projections": TableKind(("md", "latex", "csv"), _projections, "layer error per projection, ratios to SparseGPT",
                             layers=True, baseline=True),
    "allocation": TableKind(("md", "latex", "csv"), _allocation, "uniform vs OWL / profile per method, ratios to uniform"),
    "memory": TableKind(("md", "csv"), lambda f, fmt, o: memory_markdown(f) if fmt == "md"
                        else memory_long(f).to_csv(index=False), "what a job cost: weights, peak RSS, minutes, saved"),
    "ranks": TableKind(("md", "csv"), lambda f, fmt, o: ranks_markdown(f) if fmt == "md"
                       else ranks_long(f).to_csv(index=False), "one process against runtime.distributed ranks: time, "
                       "collectives, bytes sent, perplexity", duplicates=True),
    "downstream": TableKind(("md", "csv"), lambda f, fmt, o: downstream_markdown(f, o["compare"], o["tasks"]) if fmt == "md"
                            else downstream_long(f, o["compare"], o["tasks"]).to_csv(index=False),
                            "--compare TARGET,BASELINE pooled over the informative zero-shot tasks: better, worse, "
                            "equivalent or undecided"),
}


def build(frame: pd.DataFrame, table: str, fmt: str, *, dataset: str = "wikitext2", columns: str = "sparsity",
          metrics: str = "wanda", compare: tuple[str, str] | None = None, delta_vs_dense: bool = False,
          explode: float = 1e4, baseline: str | None = None, layers: pd.DataFrame | None = None,
          tasks: list[str] | None = None, allow_window_mismatch: bool = False) -> str:
    """One table of :data:`TABLES` as text in ``fmt`` (md | latex | csv); ``baseline``: the method label
    the frontier and projections tables' ratios refer to (default SparseGPT); ``layers``: the per-layer
    rows of ``frame``'s records (:func:`analysis.collect.layers_of`), for the tables that need them;
    ``tasks``: the zero-shot table's tasks (default: every task the records have);
    ``allow_window_mismatch``: the frontier table pairs records whose window fingerprints differ."""
    if table not in TABLES:
        raise ValueError(f"table={table!r}; allowed: {', '.join(TABLES)}")
    kind = TABLES[table]
    if fmt not in kind.formats:
        raise ValueError(f"the {table} table is written as {' or '.join(kind.formats)}")
    options = {"dataset": dataset, "columns": columns, "metrics": metrics, "compare": compare,
               "delta_vs_dense": delta_vs_dense, "explode": explode, "baseline": baseline, "layers": layers,
               "tasks": tasks, "allow_window_mismatch": allow_window_mismatch}
    return kind.render(frame, fmt, options)


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
    p.add_argument("--allow-window-mismatch", action="store_true",
                   help="frontier table: pair records with the baseline's even where their calibration or "
                   "evaluation window fingerprints differ (refused by default)")
    p.add_argument("--out", help="write here (atomically) instead of printing")
    args = p.parse_args(argv)
    kind = TABLES[args.table]
    if args.baseline and not kind.baseline:
        names = [k for k, v in TABLES.items() if v.baseline]
        p.error(f"--baseline applies to --table {', '.join(names[:-1])} or {names[-1]} only (got --table {args.table})")
    if args.tasks and args.table not in ("zeroshot", "downstream"):
        p.error(f"--tasks applies to --table zeroshot or downstream only (got --table {args.table})")
    col = collect(*args.dirs, layers=kind.layers, keep_duplicates=kind.duplicates)
    frame = col.frame
    try:
        frame = select_rows(frame, args.where)
        if args.label_params:
            frame = label_by_params(frame, [k.strip() for k in args.label_params.split(",") if k.strip()])
        text = build(frame, args.table, args.format, dataset=args.dataset, columns=args.columns,
                     metrics=args.metrics, compare=args.compare, delta_vs_dense=args.delta_vs_dense,
                     explode=args.explode, baseline=args.baseline,
                     layers=layers_of(frame, col.layers) if kind.layers else None,
                     tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                     allow_window_mismatch=args.allow_window_mismatch)
    except ValueError as e:
        p.error(str(e))
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

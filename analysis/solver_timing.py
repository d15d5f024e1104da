"""Tables of the solver-timing benchmark (``experiments.solver_timing``).

    python -m analysis.solver_timing outputs/sweeps/solver-timing [--pivot] [--out-dir DIR]

``timing_frame`` reads every complete timing record below the directories (one row per layer
shape); ``model_totals`` sums seconds × linears per model for each method, shape set and sparsity
and adds the ratio to SparseGPT's total on the same shapes, sparsity and device; ``--pivot`` prints one
row per shape set, sparsity and device with a column per method (one parameter setting per method).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from analysis.names import METHOD_NAMES, method_key, sparsity_name, sparsity_order
from pruning.results import RESULTS_FILE, write_text_atomic

COLUMNS = ["shapes", "method", "params", "sparsity", "device", "layer", "rows", "cols", "count", "seconds",
           "rel_error", "path"]


def timing_frame(*dirs: str | Path) -> pd.DataFrame:
    rows = []
    for d in dirs:
        for path in sorted(Path(d).rglob(RESULTS_FILE)):
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if rec.get("kind") != "solver_timing" or rec.get("status") != "complete":
                continue
            params = ",".join(f"{k}={v}" for k, v in sorted(rec["method"]["params"].items()))
            for layer in rec["layers"]:
                rows.append({"shapes": rec["config"]["shapes"]["name"], "method": rec["method"].get("label") or rec["method"]["name"],
                             "params": params, "sparsity": rec["sparsity"]["spec"], "device": rec.get("device"),
                             **{k: layer[k] for k in ("layer", "rows", "cols", "count", "seconds", "rel_error")},
                             "path": str(path)})
    return pd.DataFrame(rows, columns=COLUMNS)


def model_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Solver seconds per model (Σ seconds × count) and the ratio to SparseGPT on the same setting."""
    if frame.empty:
        raise ValueError("no complete solver-timing records found")
    frame = frame.assign(model_seconds=frame["seconds"] * frame["count"])
    keys = ["shapes", "sparsity", "device"]
    totals = frame.groupby(keys + ["method", "params"], as_index=False)["model_seconds"].sum()
    base = totals[totals["method"] == "sparsegpt"].groupby(keys)["model_seconds"].min().rename("sparsegpt_s")
    totals = totals.join(base, on=keys)
    totals["x_sparsegpt"] = totals["model_seconds"] / totals["sparsegpt_s"]
    return totals.drop(columns="sparsegpt_s").sort_values(keys + ["method", "params"]).reset_index(drop=True)


def to_markdown(totals: pd.DataFrame) -> str:
    lines = ["| shapes | sparsity | device | method | params | solver s / model | × SparseGPT |",
             "|---|---|---|---|---|---:|---:|"]
    for _, r in totals.iterrows():
        ratio = "–" if pd.isna(r["x_sparsegpt"]) else f"{r['x_sparsegpt']:.2f}×"
        lines.append(f"| {r['shapes']} | {r['sparsity']} | {r['device']} | {r['method']} | {r['params'] or '–'} | "
                     f"{r['model_seconds']:.{3 if r['model_seconds'] < 1 else 1}f} | {ratio} |")
    return "\n".join(lines) + "\n"


def to_pivot_markdown(totals: pd.DataFrame) -> str:
    """Seconds per model with a column per method (SparseGPT first; the others with their ratio to it);
    the shape set and device become columns only where they vary."""
    if totals.duplicated(["shapes", "sparsity", "device", "method"]).any():
        raise ValueError("--pivot needs one parameter setting per method; these have several: "
                         f"{sorted(set(totals[totals.duplicated(['shapes', 'sparsity', 'device', 'method'])]['method']))}")
    methods = sorted(totals["method"].unique(), key=lambda m: (m != "sparsegpt", method_key(m)))
    keys = [k for k in ("shapes", "device") if totals[k].nunique() > 1] + ["sparsity"]
    cells = totals.set_index(["shapes", "device", "sparsity", "method"])
    lines = ["| " + " | ".join(keys + [METHOD_NAMES.get(m, m) for m in methods]) + " |",
             "|" + "---|" * len(keys) + "---:|" * len(methods)]
    groups = totals.drop_duplicates(["shapes", "device", "sparsity"])
    for _, g in groups.sort_values(["shapes", "device", "sparsity"], key=lambda c: c.map(
            sparsity_order) if c.name == "sparsity" else c).iterrows():
        row = [g[k] if k != "sparsity" else sparsity_name(g[k]) for k in keys]
        for m in methods:
            key = (g["shapes"], g["device"], g["sparsity"], m)
            if key not in cells.index:
                row.append("–")
                continue
            r = cells.loc[key]
            ratio = "" if m == "sparsegpt" or pd.isna(r["x_sparsegpt"]) else f" ({r['x_sparsegpt']:.2f}×)"
            row.append(f"{r['model_seconds']:.1f}{ratio}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_tables(sweep_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    frame = timing_frame(sweep_dir)
    totals = model_totals(frame)
    out = Path(out_dir or sweep_dir)
    paths = [out / "solver_timing.csv", out / "solver_timing.md"]
    write_text_atomic(paths[0], frame.drop(columns="path").to_csv(index=False))
    write_text_atomic(paths[1], to_markdown(totals))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.solver_timing", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out-dir", help="also write solver_timing.csv / .md here")
    p.add_argument("--pivot", action="store_true", help="a column per method instead of a row per method")
    args = p.parse_args(argv)
    try:
        totals = model_totals(timing_frame(*args.dirs))
        print((to_pivot_markdown if args.pivot else to_markdown)(totals), end="")
    except ValueError as e:
        p.error(str(e))
    if args.out_dir:
        for path in write_tables(args.dirs[0], args.out_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

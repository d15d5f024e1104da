"""Upload a sweep's aggregated tables to one W&B summary run (offline unless WANDB_MODE says otherwise).

    python -m analysis.wandb_report DIR… [--project llm-pruning] [--group SWEEP] [--name NAME]

The run (``job_type: report``) carries the tidy frame of every complete job as the table
``records``, the perplexity table of each evaluated dataset (``ppl/<dataset>``), the zero-shot
table (``zeroshot``) when records have zero-shot results, and summary counts. Offline runs are
uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from analysis.collect import collect, ppl_datasets
from analysis.ppl_tables import ppl_table
from analysis.zeroshot_table import zeroshot_table
from pruning.tracking import make_tracker


def _rows(df: pd.DataFrame, index_name: str | None = None) -> list[dict]:
    if index_name is not None:
        df = df.reset_index().rename(columns={"index": index_name})
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    return out


def report(*dirs, project: str = "llm-pruning", group: str | None = None, name: str | None = None,
           out_dir: str | None = None) -> dict:
    """Log the tables; returns what was logged: ``{"tables": [...], "summary": {...}, "run_dir": ...}``."""
    col = collect(*dirs)
    frame = col.frame
    if frame.empty:
        raise ValueError(f"no complete records under {', '.join(map(str, dirs))}")
    if group is None:
        sweeps = {p.split("/sweeps/", 1)[1].split("/", 1)[0] for p in frame.path if "/sweeps/" in p}
        group = sweeps.pop() if len(sweeps) == 1 else None
    tracker = make_tracker({"backend": "wandb", "project": project, "group": group, "job_type": "report"},
                           {"dirs": [str(d) for d in dirs], "n_records": len(frame)}, out_dir or str(dirs[0]),
                           name or f"report:{group or 'results'}")
    if not tracker.enabled:
        raise RuntimeError("W&B could not start (see the warning above); nothing was uploaded")
    logged = {"records": _rows(frame)}
    for dataset in sorted(ppl_datasets(frame)):
        for columns in ("sparsity", "model"):
            try:
                logged[f"ppl/{dataset}"] = _rows(ppl_table(frame, dataset, columns=columns).values, "method")
                break
            except ValueError:
                continue
    bars = []
    if any(c.startswith("zs_") for c in frame.columns):
        logged["zeroshot"] = _rows(zeroshot_table(frame).values, "method")
        bars = [r for r in logged["zeroshot"] if r.get("Mean") == r.get("Mean")]  # not NaN
    for key, rows in logged.items():
        tracker.log_table(key, rows)
    if bars:
        tracker.log_bar("zeroshot/mean_bar", bars, "method", "Mean", "zero-shot mean accuracy (%) per method")
        logged["zeroshot/mean_bar"] = bars
    summary = {"report/n_records": len(frame), "report/n_left_out": len(col.skipped),
               "report/n_duplicates": len(col.duplicates)}
    tracker.log_summary(summary)
    run_dir = tracker.run_dir
    tracker.finish()
    return {"tables": list(logged), "summary": summary, "run_dir": run_dir}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.wandb_report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--project", default="llm-pruning")
    p.add_argument("--group", help="W&B group (default: the sweep name when all records share one)")
    p.add_argument("--name", help="run name (default: report:<group>)")
    args = p.parse_args(argv)
    out = report(*args.dirs, project=args.project, group=args.group, name=args.name)
    print(f"logged {', '.join(out['tables'])} to {out['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

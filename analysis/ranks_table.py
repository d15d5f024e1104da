"""One job on one process against the same job across several (``runtime.distributed``):
``analysis.tables DIR --table ranks``.

One row per record: the processes and threads each, the prune's wall time and its parts (the slowest rank's
calibration passes and solver seconds, its seconds in collectives), the bytes all ranks put into collectives
per block (statistics gathered, weights broadcast), the first perplexity and the prune time over the one-process
record's of the same model and method in the same directory.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.names import METHOD_NAMES, fixed, sparsity_name, to_markdown
from pruning.results import RESULTS_FILE, read_record


def _rank_max(ranks: list[dict], key: str) -> float:
    return max((r.get("timings") or {}).get(key, 0.0) for r in ranks)


def ranks_long(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for path, label, sparsity in zip(frame["path"], frame["label"], frame["sparsity"]):
        rec = read_record(Path(path) / RESULTS_FILE)
        t, dist = rec["timings"], rec["job"].get("distributed")
        ranks = dist["ranks"] if dist else [{"timings": t, "comm_s": 0.0, "sent_bytes": 0,
                                             "torch_threads": rec["job"].get("torch_threads")}]
        blocks = 1 + max((r["block"] for r in rec.get("layers") or []), default=0)
        ppl = next(iter((rec["metrics"].get("perplexity") or {}).items()), (None, {}))
        rows.append({
            "model": rec["model"]["name"], "method": METHOD_NAMES.get(label, label), "sparsity": sparsity_name(sparsity),
            "processes": len(ranks), "threads": ranks[0].get("torch_threads"),
            "shards": len(ranks) if dist else ((rec.get("config") or {}).get("engine") or {}).get("shards", 1),
            "prune_s": t.get("prune_total_s"), "forward_s": _rank_max(ranks, "calib_forward_s"),
            "solver_s": _rank_max(ranks, "solver_s"), "collectives_s": max(r.get("comm_s", 0.0) for r in ranks),
            "sent_mb_per_block": sum(r.get("sent_bytes", 0) for r in ranks) / blocks / 1e6,
            "dataset": ppl[0], "ppl": ppl[1].get("ppl"), "windows": ppl[1].get("windows_sha256", "")[:12]})
    out = pd.DataFrame(rows).sort_values(["model", "method", "sparsity", "processes", "threads", "shards"],
                                         ascending=[True, True, True, True, False, True])
    # the baseline: one process, one shard, the most threads (the first such row after sorting)
    one = out[(out["processes"] == 1) & (out["shards"] == 1)].groupby(["model", "method", "sparsity"])["prune_s"].first()
    out["x_one_process"] = [p / one.get((m, me, s), float("nan")) for p, m, me, s in
                            zip(out["prune_s"], out["model"], out["method"], out["sparsity"])]
    return out.reset_index(drop=True)


def ranks_markdown(frame: pd.DataFrame) -> str:
    long = ranks_long(frame)
    formats = {c: fixed(1) for c in ("prune_s", "forward_s", "solver_s", "collectives_s", "sent_mb_per_block")}
    formats.update(ppl=fixed(2), x_one_process=lambda v: "–" if v != v else f"{v:.2f}×")
    return (to_markdown(long, formats) + "\nProcesses × threads each; shards: the calibration shards whose statistics are "
            "combined (a rank each, or `engine.shards` in one process); prune = rank 0's wall time of the prune; "
            "forward (calibration passes) and solver: the slowest rank's seconds; collectives: the slowest rank's "
            "seconds inside the statistics gathers and weight broadcasts (waiting for the others included); sent: "
            "the bytes all ranks put into them, per block; windows: the first characters of the evaluation "
            "windows' fingerprint (equal: the same windows); x_one_process: prune time over the record's of "
            "one process with one shard and the most threads, same model, method and sparsity.\n")

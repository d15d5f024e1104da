"""What ``runtime.distributed`` would make of a prune on N ranks, from the scale benchmark's measured blocks:
``python -m analysis.rank_projection DIR [--ranks 1,2,4,8] [--link-gbs 25]``.

The cost model, per block (docs/running.md, "One job across several processes"):

* **calibration passes** (forward, statistics, the dense stream's passes): the windows are split, so ÷ N; at
  the paper protocol's 128 × 2048 tokens they scale linearly in tokens (as ``experiments/scale.py`` projects);
* **solver**: each sublayer group's linears are shared out by :func:`pruning.distributed.balance` on their
  measured solver seconds (the record's per-linear rows; the rest of the block's solver time, the dense-output
  targets and error reports, is spread over the linears in proportion), so a group takes its makespan: it
  stops dividing once N reaches the group's number of linears (one group of 7 for one-pass methods; four
  groups of 3, 1, 2, 1 for the default's group-by-group calibration on LLaMA);
* **communication**: every rank receives the other N − 1 ranks' statistics (each distinct input's ``H``, and
  ``C`` with the dense-output target, float32) and the weights solved elsewhere (the block's weights ×
  (N − 1) / N), at an assumed link bandwidth (``--link-gbs``, not measured: state yours), not overlapped;
* not modelled: the capture of block 0's inputs, loading, evaluation, stragglers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis.names import METHOD_NAMES, fixed, to_markdown
from analysis.scale import scale_records, whole_model_seconds
from pruning.adapters import adapter_for_type
from pruning.distributed import balance

def _groups(rec: dict) -> tuple[tuple[str, ...], ...]:
    """The sublayer groups of the record's family (pruning/adapters.py); in each, the linears read one input."""
    return adapter_for_type(rec["config"]["arch"]["config"]["model_type"], rec["arch"]).sequential_groups


def _linear_costs(rec: dict) -> dict[str, float]:
    """Each linear's solver seconds per block (mean over the record's blocks), scaled so they add up to the
    block's solver time."""
    rows, blocks = rec["layers"], 1 + max(r["block"] for r in rec["layers"])
    costs: dict[str, float] = {}
    for r in rows:
        costs[r["layer"]] = costs.get(r["layer"], 0.0) + r["solver_s"] / blocks
    scale = rec["per_block"]["solver_s"] / sum(costs.values())
    return {n: c * scale for n, c in costs.items()}


def _stats_bytes(rec: dict, groups) -> int:
    """The statistics one rank contributes per block: each distinct input's H (and C with the dense target),
    float32; the linears of a group read one input (LLaMA, Gemma)."""
    dense = rec["method"]["params"].get("output_target") == "dense"
    cols = {r["layer"]: r["shape"][1] for r in rec["layers"] if r["block"] == 0}
    return sum(cols[g[0]] ** 2 * 4 * (2 if dense else 1) for g in groups)


def project(rec: dict, ranks: list[int], link_gbs: float) -> list[dict]:
    costs, family = _linear_costs(rec), _groups(rec)
    groups = family if rec["method"]["params"].get("true_sequential") else (tuple(costs),)
    per_block, layers = rec["per_block"], rec["projection"]["layers"]
    stats, weights = _stats_bytes(rec, family), rec["memory"]["block_bytes"]
    out = []
    for n in ranks:
        forward = per_block["calib_forward_s"] / n
        solver = 0.0
        for g in groups:
            owner = balance({k: costs[k] for k in g}, n)
            solver += max(sum(costs[k] for k in g if owner[k] == r) for r in range(n))
        received = (n - 1) * stats + weights * (n - 1) / n
        comm = received / (link_gbs * 1e9)
        block = forward + solver + comm
        model_s, paper_s = whole_model_seconds({"calib_forward_s": forward, "prune_total_s": block}, layers,
                                               rec["projection"]["tokens"], rec["projection"]["paper_tokens"])
        out.append({"arch": rec["arch"], "method": METHOD_NAMES.get(rec["method"]["label"], rec["method"]["label"]),
                    "tokens": f"{rec['config']['nsamples']}×{rec['config']['seqlen']}", "ranks": n,
                    "forward_s": forward, "solver_s": solver, "received_gb": received / 1e9, "comm_s": comm,
                    "block_s": block, "model_h": model_s / 3600, "paper_model_h": paper_s / 3600,
                    "measured_block_s": per_block["prune_total_s"]})
    one = next((r for r in out if r["ranks"] == 1), None)
    for r in out:
        r["speedup"] = one["block_s"] / r["block_s"] if one else float("nan")
        r["paper_speedup"] = one["paper_model_h"] / r["paper_model_h"] if one else float("nan")
    return out


def projection_frame(directory: Path, ranks: list[int], link_gbs: float) -> pd.DataFrame:
    rows = []
    for _, rec in scale_records(directory):
        if rec.get("layers"):
            rows += project(rec, ranks, link_gbs)
    if not rows:
        raise SystemExit(f"no scale records with per-linear rows under {directory} (experiments.scale writes them)")
    return pd.DataFrame(rows)


def projection_markdown(frame: pd.DataFrame, link_gbs: float) -> str:
    formats = {c: fixed(1) for c in ("forward_s", "solver_s", "comm_s", "block_s", "measured_block_s")}
    formats.update(received_gb=fixed(2), model_h=fixed(2), paper_model_h=fixed(1),
                   **{c: (lambda v: f"{v:.2f}×") for c in ("speedup", "paper_speedup")})
    return (to_markdown(frame, formats) + f"\nPer block, from one measured block (measured_block_s) of the scale "
            f"benchmark on its machine: calibration passes ÷ ranks, each sublayer group's solves shared out by "
            f"their measured seconds (a group's slowest rank), the statistics and weights each rank receives at an "
            f"assumed {link_gbs:g} GB/s, not overlapped; model_h = block × the real depth; paper_model_h: the same with "
            f"the calibration passes scaled to 128 × 2048 tokens (linear in tokens); analysis/rank_projection.py "
            f"says what is left out.\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--ranks", default="1,2,4,8", help="comma-separated rank counts")
    p.add_argument("--link-gbs", type=float, default=25.0, help="assumed bandwidth per rank, GB/s")
    args = p.parse_args(argv)
    ranks = [int(x) for x in args.ranks.split(",")]
    if any(r < 1 for r in ranks):
        p.error(f"--ranks {args.ranks}: every count must be >= 1")
    if args.link_gbs <= 0:
        p.error(f"--link-gbs {args.link_gbs}: need > 0")
    print(projection_markdown(projection_frame(args.directory, ranks, args.link_gbs), args.link_gbs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

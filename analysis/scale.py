"""The scale benchmark's table (:mod:`experiments.scale`): per architecture, method, dtype, device and token count,
one block's time split and working memory, the ratio of its whole prune to SparseGPT's in the same sweep, and the
projections to the whole model and the paper protocol.

    python -m analysis.scale outputs/sweeps/scale [--out scale.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.names import METHOD_NAMES, method_key, to_markdown
from analysis.render import emit
from pruning.results import RESULTS_FILE, read_record, write_text_atomic

GiB = 2 ** 30


def whole_model_seconds(per_block: dict, layers: int, tokens: int, paper_tokens: int) -> tuple[float, float]:
    """A model's prune seconds from one block's figures: at the measured tokens, and at ``paper_tokens`` (the
    calibration passes scale with the tokens, the rest of a block's time, solver and error report, does not).
    The one formula of the projection: experiments.scale records it, the table recomputes it (records written
    before it counted the solver alone)."""
    forward = per_block["calib_forward_s"]
    rest = per_block["prune_total_s"] - forward
    return layers * (forward + rest), layers * (forward * paper_tokens / tokens + rest)


def _hours(per_block: dict, proj: dict) -> dict:
    model_s, paper_s = whole_model_seconds(per_block, proj["layers"], proj["tokens"], proj["paper_tokens"])
    return {"model_h": model_s / 3600, "paper_h": paper_s / 3600}


def _label(rec: dict) -> str:
    """The method's label, with the engine settings that change a block's cost and not its weights."""
    engine = rec["config"].get("engine") or {}
    return (rec["method"]["label"] + ("+recompute" if engine.get("dense_inputs") == "recompute" else "")
            + ("+dense_error" if engine.get("dense_error") else ""))


def scale_records(root: str | Path):
    """``(path, record)`` of every complete scale record below ``root``, in path order."""
    for path in sorted(Path(root).rglob(RESULTS_FILE)):
        rec = read_record(path)
        if rec and rec.get("kind") == "scale" and rec.get("status") == "complete":
            yield path, rec


def scale_long(root: str | Path) -> pd.DataFrame:
    """One row per scale record below ``root``."""
    rows = []
    for path, rec in scale_records(root):
        cfg, b, proj = rec["config"], rec["per_block"], rec["projection"]
        rows.append({"arch": rec["arch"], "method": _label(rec), "sparsity": rec["sparsity"]["spec"],
                     "dtype": rec["dtype"], "device": rec["device"], "tokens": f"{cfg['nsamples']}×{cfg['seqlen']}",
                     "forward_s": b["calib_forward_s"], "stats_s": b.get("calib_stats_s"),
                     "dense_s": b.get("calib_dense_forward_s"), "solver_s": b["solver_s"],
                     "report_s": b.get("error_report_s"),
                     "block_s": b["prune_total_s"], "working_gib": (rec["memory"]["peak_rss_bytes"]
                                                                   - rec["memory"]["rss_before_prune_bytes"]) / GiB
                     if rec["device"] == "cpu" else rec["memory"].get("peak_cuda_bytes", 0) / GiB,
                     **_hours(b, proj),
                     "peak_gib": proj["peak_bytes"] / GiB, "peak_offload_gib": proj["peak_bytes_offload"] / GiB,
                     "forward_over_bound": proj["forward_over_bound"],
                     "ref_block_s": (rec.get("anchor") or {}).get("per_block", {}).get("prune_total_s"),
                     "path": str(path.parent)})
    if not rows:
        raise FileNotFoundError(f"{root}: no complete scale record below it")
    frame = pd.DataFrame(rows)
    keys = ["arch", "sparsity", "dtype", "device", "tokens"]
    for ratio, of in (("x_sparsegpt", "block_s"), ("mem_x_sparsegpt", "working_gib")):  # SparseGPT's row alike
        base = frame[frame["method"] == "sparsegpt"].set_index(keys)[of]
        frame[ratio] = frame[of] / [base.get(tuple(r[k] for k in keys), float("nan")) for _, r in frame.iterrows()]
    frame["x_ref"] = frame["block_s"] / frame["ref_block_s"].astype(float)
    frame = frame[[c for c in frame.columns if c not in ("ref_block_s", "x_ref")] + ["ref_block_s", "x_ref"]]
    order = sorted(range(len(frame)), key=lambda i: (frame.at[i, "arch"], frame.at[i, "tokens"],
                                                     method_key(frame.at[i, "method"])))
    return frame.iloc[order].reset_index(drop=True)


def scale_markdown(root: str | Path) -> str:
    long = scale_long(root)
    shown = long.drop(columns=["path"]).assign(method=lambda f: f["method"].map(lambda m: METHOD_NAMES.get(m, m)))
    num = {c: (lambda v, d=d: "–" if v is None or v != v else f"{v:.{d}f}") for c, d in (
        ("forward_s", 1), ("stats_s", 1), ("dense_s", 1), ("solver_s", 1), ("report_s", 1), ("block_s", 1), ("working_gib", 2),
        ("model_h", 2), ("paper_h", 2), ("peak_gib", 1), ("peak_offload_gib", 1), ("forward_over_bound", 1))}
    num["x_sparsegpt"] = num["mem_x_sparsegpt"] = num["x_ref"] = lambda v: "–" if v is None or v != v else f"{v:.2f}×"
    num["ref_block_s"] = lambda v: "–" if v is None or v != v else f"{v:.1f}"
    return (to_markdown(shown, num) + "\nPer block: calibration forward passes (of which statistics accumulation and the dense "
            "stream's passes), solver, the layers' dense-output error report (report_s), the whole prune and its ratio to SparseGPT's on the same shapes, tokens, dtype "
            "and device; working memory (GiB) = peak RSS (CUDA: peak allocated) while pruning, less the RSS before, and its "
            "ratio to SparseGPT's (mem_x_sparsegpt). "
            "Projected to the real depth (model_h) and to 128 × 2048 calibration tokens (paper_h); peak memory with "
            "every block resident (peak_gib) or one (offload); forward_over_bound = calibration forward time over "
            "the matrix FLOPs of the passes the method makes at this machine's measured matmul throughput "
            "(experiments/scale.py says how); ref_block_s = the reference SparseGPT (IST-DASLab/sparsegpt's fasterprune, "
            "`anchor=`) on the same block and windows in the same run, x_ref = block_s over it.\n")


def write_tables(root: str | Path) -> list[Path]:
    root = Path(root)
    return [write_text_atomic(root / "scale.md", scale_markdown(root)),
            write_text_atomic(root / "scale.csv", scale_long(root).to_csv(index=False))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="a sweep directory (or analysis/records/scale*) holding scale records")
    p.add_argument("--out", help="write the markdown here instead of printing it")
    args = p.parse_args(argv)
    try:
        text = scale_markdown(args.root)
    except FileNotFoundError as e:
        p.error(str(e))
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

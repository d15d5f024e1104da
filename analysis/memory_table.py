"""What a job cost in memory, disk and time: ``analysis.tables DIR --table memory``.

One row per record: the model (parameters, dtype, the bytes its weights take), whether its blocks were on
disk (``runtime.offload=disk``), the calibration tokens, the peak RSS while pruning and over the whole job
against the machine's memory, the prune, evaluation and save times, and the saved checkpoint with its
verification. It is the table of the larger-than-memory run (docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.names import METHOD_NAMES, fixed, sparsity_name, to_markdown
from pruning.results import RESULTS_FILE, read_record

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def memory_long(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for path, label, sparsity in zip(frame["path"], frame["label"], frame["sparsity"]):
        rec = read_record(Path(path) / RESULTS_FILE)
        model, mem, t = rec["model"], rec["memory"], rec["timings"]
        save, calib = rec.get("save") or {}, (rec.get("protocol") or {}).get("calibration") or {}
        offload = model.get("offload") or {}
        rows.append({
            "model": model["name"], "method": METHOD_NAMES.get(label, label), "sparsity": sparsity_name(sparsity),
            "params_b": model["n_params"] / 1e9, "dtype": model["dtype"],
            "weights_gib": model["n_params"] * DTYPE_BYTES.get(model["dtype"], 4) / GIB,
            "blocks": "disk" if offload.get("mode") == "disk" else "memory",
            "tokens": f"{calib.get('nsamples')}×{calib.get('seqlen')}" if calib.get("used") else "–",
            "peak_rss_prune_gib": (mem.get("peak_rss_after_prune_bytes") or 0) / GIB,
            "peak_rss_gib": mem.get("peak_rss_bytes", 0) / GIB,
            "machine_gib": ((rec.get("versions") or {}).get("machine") or {}).get("memory_gib"),
            "prune_min": t.get("prune_total_s", 0) / 60, "eval_min": t.get("eval_ppl_s", 0) / 60,
            "save_min": (t.get("save_s") or 0) / 60,
            "saved_gib": (save.get("bytes") or 0) / GIB if save else None,
            "verified": (save.get("verification") or {}).get("passed") if save else None})
    return pd.DataFrame(rows)


def memory_markdown(frame: pd.DataFrame) -> str:
    long = memory_long(frame)
    formats = {c: fixed(2) for c in ("params_b", "weights_gib", "peak_rss_prune_gib", "peak_rss_gib", "saved_gib")}
    formats.update({c: fixed(1) for c in ("machine_gib", "prune_min", "eval_min", "save_min")})
    formats["verified"] = lambda v: "–" if v is None else ("yes" if v else "NO")
    return (to_markdown(long, formats) + "\nWeights at the run's dtype (GiB = 2³⁰ bytes); blocks on disk: "
            "`runtime.offload=disk`; peak RSS of the job's process while pruning and over the whole job (load, "
            "prune, evaluation, save and its verification), against the machine's memory; minutes of the prune, "
            "the perplexity evaluation and the save with its streamed verification.\n")

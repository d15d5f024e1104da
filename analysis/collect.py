"""Collect ``results.json`` records into one tidy pandas frame: one row per complete job.

Columns: model, method / label (``apt-exact`` for a non-default variant) and ``param_*``, sparsity
(spec, kind, ratio, N, M, actual), protocol and calibration, ``ppl_<dataset>``, zero-shot
``zs_<task>_<metric>`` (acc, acc_norm and their stderr), timings, peak RSS, versions, git commit,
config hash and the job directory.

    python -m analysis.collect outputs/sweeps/apt-benchmark [more dirs…] [--csv out.csv]

Every ``results.json`` below the given directories is read. Jobs that are not complete (failed,
running, unreadable) are *listed*, not silently dropped: :func:`collect` returns them beside the
frame. Two complete records of the same config hash (the same job run twice, e.g. in two sweep
directories) are resolved to the newest, with a warning.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from pruning.record import check_record, stale_reason
from pruning.results import RESULTS_FILE, inspect_record

log = logging.getLogger(__name__)

TIMING_KEYS = ("load_s", "calib_forward_s", "solver_s", "prune_total_s", "eval_ppl_s", "total_s")


@dataclass
class Collection:
    frame: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)  # {"path", "status", "error"} of jobs left out
    duplicates: list[dict] = field(default_factory=list)  # {"config_hash", "kept", "dropped"}
    layers: pd.DataFrame | None = None  # with layers=True: one row per pruned linear of every kept job


def method_label(method: dict) -> str:
    """``apt``, ``apt-exact``, ``apt-refit``, ``sparsegpt`` …: the method config's ``label`` where the record
    has one, else (older records) the method name plus a non-default variant."""
    if method.get("label"):
        return method["label"]
    variant = (method.get("params") or {}).get("variant")
    return method["name"] if variant in (None, "block") else f"{method['name']}-{variant}"


def allocation_of(record: dict) -> str:
    """``uniform`` (also for records from before the allocation group), ``owl`` or ``profile``."""
    return (record.get("allocation") or {}).get("name", "uniform")


def ppl_datasets(frame, evaluated_only: bool = False) -> list[str]:
    """The perplexity datasets of a frame (``ppl_<dataset>`` columns, not their ``_windows``/``_seqlen``/``_windows_sha``
    companions), in column order; ``evaluated_only``: those with at least one value."""
    return [c[4:] for c in frame.columns if c.startswith("ppl_") and not c.endswith(("_windows", "_seqlen", "_sha"))
            and (not evaluated_only or frame[c].notna().any())]


def _cfg(record: dict) -> dict:
    return record.get("config") or {}


def _calib(record: dict) -> dict:
    """The calibration block when the job calibrated, else empty (its columns are then None)."""
    calib = (record.get("protocol") or {}).get("calibration") or {}
    return calib if calib.get("used") else {}


def _seq(record: dict) -> tuple[bool, bool]:
    """(engine.true_sequential, the method's own true_sequential)."""
    return (bool((_cfg(record).get("engine") or {}).get("true_sequential")),
            bool((record["method"].get("params") or {}).get("true_sequential")))


def _label_of(record: dict) -> str:
    """A non-uniform allocation is part of the label (``sparsegpt+owl``), so tables give it its own row;
    so is ``engine.true_sequential=true`` on a method that does not set it itself (``sparsegpt+seq``)."""
    allocation, (engine_seq, method_seq) = allocation_of(record), _seq(record)
    return (method_label(record["method"]) + ("" if allocation == "uniform" else f"+{allocation}")
            + ("+seq" if engine_seq and not method_seq else ""))


def _allocation_params(record: dict) -> str:
    if allocation_of(record) == "uniform":
        return ""
    return ",".join(f"{k}={v}" for k, v in sorted((_cfg(record).get("allocation") or {}).items()) if k != "name")


def _target(record: dict) -> dict:
    return record["sparsity"]["target"]


# The frame's fixed columns, in order: (column, how to read it from a record). Per-dataset perplexity,
# per-task zero-shot and per-knob method columns follow them (:func:`flatten`).
COLUMNS: list[tuple[str, Callable[[dict], object]]] = [
    ("model", lambda r: (r.get("model") or {}).get("name") or _cfg(r).get("model", {}).get("name")),
    ("method", lambda r: r["method"]["name"]),
    ("label", _label_of),
    ("true_sequential", lambda r: any(_seq(r))),
    ("allocation", allocation_of),
    ("allocation_params", _allocation_params),
    ("sparsity", lambda r: _target(r).get("spec") if _target(r)["kind"] != "dense" else "dense"),
    ("sparsity_kind", lambda r: _target(r)["kind"]),
    ("sparsity_ratio", lambda r: _target(r)["ratio"]),
    ("sparsity_n", lambda r: _target(r).get("n")),
    ("sparsity_m", lambda r: _target(r).get("m")),
    ("sparsity_actual", lambda r: r["sparsity"].get("actual")),
    ("protocol", lambda r: (r.get("protocol") or {}).get("name")),
    ("calib_dataset", lambda r: _calib(r).get("dataset")),
    ("calib_nsamples", lambda r: _calib(r).get("nsamples")),
    ("calib_seqlen", lambda r: _calib(r).get("seqlen")),
    ("seed", lambda r: _cfg(r).get("seed")),
    ("calib_seed", lambda r: _calib(r).get("seed")),
    ("calib_heldout", lambda r: (_calib(r).get("heldout") or {}).get("nsamples", 0) if _calib(r) else None),
    ("calib_windows", lambda r: _calib(r).get("windows_sha256")),  # schema 2: the calibration windows' fingerprint
    ("mean_rel_error", lambda r: r["metrics"].get("mean_rel_error")),
    ("mean_heldout_rel_error", lambda r: r["metrics"].get("mean_heldout_rel_error")),  # calibration.heldout_nsamples > 0
    ("mean_dense_rel_error", lambda r: r["metrics"].get("mean_dense_rel_error")),  # method.output_target=dense
]
TAIL_COLUMNS: list[tuple[str, Callable[[dict], object]]] = [
    *[(k, lambda r, k=k: (r.get("timings") or {}).get(k)) for k in TIMING_KEYS],
    ("peak_rss_gb", lambda r: (r.get("memory") or {}).get("peak_rss_bytes", 0) / 2 ** 30),
    *[(f"v_{k}", lambda r, k=k: (r.get("versions") or {}).get(k)) for k in ("torch", "transformers", "lm_eval", "package")],
    ("git_commit", lambda r: ((r.get("versions") or {}).get("git") or {}).get("commit")),
    ("machine_id", lambda r: ((r.get("versions") or {}).get("machine") or {}).get("id")),  # schema 2
    ("config_hash", lambda r: r.get("config_hash")),
    ("finished", lambda r: (r.get("job") or {}).get("finished")),
]


def _metric_columns(record: dict) -> dict:
    """``ppl_<dataset>`` (with ``_windows`` and ``_seqlen``) and ``zs_<task>_<metric>`` columns."""
    row = {}
    for name, r in record["metrics"].get("perplexity", {}).items():
        ppl = _number(r.get("ppl"))
        if ppl is None and _number(r.get("nll")) is not None:
            ppl = float("inf")  # the loss overflowed exp(): exploded (written as null, with its finite nll)
        row[f"ppl_{name}"] = ppl
        row[f"ppl_{name}_windows"] = r.get("nwindows")
        row[f"ppl_{name}_seqlen"] = r.get("seqlen")  # rows evaluated with other windows must not be mixed
        row[f"ppl_{name}_windows_sha"] = r.get("windows_sha256")  # schema 2: the evaluated windows' fingerprint
    zero_shot = record["metrics"].get("zero_shot") or {}
    if zero_shot:
        row["zeroshot_limit"] = (zero_shot.get("config") or {}).get("limit")  # None: the full task sets
    for task, metrics in (zero_shot.get("tasks") or {}).items():  # acc, acc_stderr, acc_norm, acc_norm_stderr
        row.update({f"zs_{task}_{k}": _number(v) for k, v in metrics.items()})
    return row


def flatten(record: dict, path: Path) -> dict:
    """One row of the frame from one complete record: :data:`COLUMNS`, the method's knobs (``param_*``), the
    metrics' columns, :data:`TAIL_COLUMNS` and the job directory."""
    row = {name: get(record) for name, get in COLUMNS}
    row.update({f"param_{k}": v for k, v in (record["method"].get("params") or {}).items()})
    row.update(_metric_columns(record))
    row.update({name: get(record) for name, get in TAIL_COLUMNS})
    row["path"] = str(path.parent)
    return row


def _numel(shape) -> int | None:
    return int(shape[0]) * int(shape[1]) if shape and len(shape) == 2 else None


def _number(value):
    try:
        return float(value)  # "nan" / "inf" were written as strings (JSON has neither)
    except (TypeError, ValueError):
        return None


# The per-layer frame: the record's keys, the layer's own fields as written, and three derived columns.
LAYER_KEYS = ("model", "label", "sparsity", "config_hash", "path")
LAYER_FIELDS = ("name", "block", "layer", "rel_error", "heldout_rel_error", "dense_rel_error", "solver_s")
LAYER_COLUMNS = [*LAYER_KEYS, *LAYER_FIELDS, "target", "layer_sparsity", "numel"]


def _layer_rows(row: dict, record: dict) -> list[dict]:
    keys = {k: row[k] for k in LAYER_KEYS}
    return [{**keys, **{k: r.get(k) for k in LAYER_FIELDS},
             "target": _number(r.get("target")), "layer_sparsity": r.get("sparsity"), "numel": _numel(r.get("shape"))}
            for r in record.get("layers") or []]


def collect(*dirs: str | Path, layers: bool = False, keep_duplicates: bool = False) -> Collection:
    """Every complete record below ``dirs`` (of one config hash the newest, unless ``keep_duplicates``: the same job
    run on other threads or ranks); ``layers=True`` also gathers the per-layer reports."""
    if not dirs:
        raise ValueError("collect() needs at least one output directory")
    rows, skipped, layer_rows = [], [], []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"{d}: no such output directory")
        for path in sorted(d.rglob(RESULTS_FILE)):
            record, problem = inspect_record(path)
            if record is None:  # a directory, not UTF-8, not JSON, or JSON but not an object
                skipped.append({"path": str(path), "status": "unreadable", "error": problem or "vanished"})
                continue
            if record.get("kind") in ("solver_timing", "scale"):  # benchmarks: analysis.solver_timing, analysis.scale
                continue
            if record.get("status") != "complete":
                skipped.append({"path": str(path), "status": record.get("status"), "error": record.get("error")})
                continue
            reason = stale_reason(record)
            if reason:  # computed by an engine with a since-fixed bug for this model family: never in a table
                skipped.append({"path": str(path), "status": "stale", "error": reason})
                continue
            problems = check_record(record)
            if problems:  # older or hand-made records: read what is there, say what is not
                log.warning("%s does not follow the record schema: %s", path, "; ".join(problems[:5]))
            try:
                row = flatten(record, path)
                layer_rows += _layer_rows(row, record) if layers else []
            except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:  # a field missing or mistyped
                skipped.append({"path": str(path), "status": "malformed",
                                "error": f"{type(e).__name__}: {e} (schema: {'; '.join(problems[:3]) or 'ok'})"})
                continue
            rows.append(row)
    frame = pd.DataFrame(rows)
    duplicates = []
    if not frame.empty and not keep_duplicates:
        frame = frame.sort_values("finished", kind="stable")
        dup = frame.duplicated("config_hash", keep="last")
        for _, row in frame[dup].iterrows():
            kept = frame[(frame.config_hash == row.config_hash) & ~dup].iloc[0]
            duplicates.append({"config_hash": row.config_hash, "kept": kept.path, "dropped": row.path})
            log.warning("duplicate job %s: keeping the newest %s, dropping %s", row.config_hash, kept.path, row.path)
        frame = frame[~dup].reset_index(drop=True)
    stale: dict[str, list[str]] = {}
    for s in skipped:
        if s["status"] == "stale":  # one line per reason: a withdrawn model family can hold dozens of records
            stale.setdefault(s["error"], []).append(s["path"])
        else:
            log.warning("left out %s (%s): %s", s["path"], s["status"], s["error"])
    for reason, paths in stale.items():
        log.warning("left out %d stale record(s), e.g. %s: %s", len(paths), paths[0], reason)
    layer_frame = None
    if layers:
        layer_frame = pd.DataFrame(layer_rows, columns=LAYER_COLUMNS)
        kept = set(frame.path) if not frame.empty else set()  # duplicates dropped above lose their layers too
        layer_frame = layer_frame[layer_frame.path.isin(kept)].reset_index(drop=True)
    return Collection(frame, skipped, duplicates, layer_frame)


def layers_of(frame: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """The per-layer rows of the records left in ``frame`` (after ``--where``), with their labels as
    ``frame`` has them (after ``--label-params``), and the record's calibration seed."""
    if frame.empty:
        return layers.iloc[0:0].assign(calib_seed=None)
    layers = layers[layers["path"].isin(set(frame["path"]))].reset_index(drop=True)
    layers["label"] = layers["path"].map(dict(zip(frame["path"], frame["label"])))
    layers["calib_seed"] = layers["path"].map(dict(zip(frame["path"], frame["calib_seed"])))
    return layers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.collect", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="output directories (searched recursively for results.json)")
    p.add_argument("--csv", help="write the frame to this CSV file instead of printing a summary")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    col = collect(*args.dirs)
    if args.csv:
        col.frame.to_csv(args.csv, index=False)
    else:
        cols = [c for c in ("model", "label", "sparsity", "ppl_wikitext2", "mean_rel_error", "solver_s", "total_s")
                if c in col.frame]
        print(col.frame[cols].to_string(index=False) if not col.frame.empty else "no complete records")
    print(f"{len(col.frame)} complete, {len(col.skipped)} left out, {len(col.duplicates)} duplicates dropped",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

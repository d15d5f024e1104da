"""The result record's schema: the one definition the pipeline writes and ``analysis`` reads.

``results.json`` is a JSON object with the top-level fields of :data:`FIELDS` (documented field by
field in docs/results.md; a test keeps the two in step). ``schema_version`` changes when a field
changes meaning or type; readers check it. :class:`Record` is the same schema for type checkers.
"""

from __future__ import annotations

from typing import Any, TypedDict

SCHEMA_VERSION = 1

# The engine's revision, recorded as ``versions.engine_revision`` (records without it: revision 1).
# Bumped when a fix changes the weights the engine produces for some model family; STALE_BEFORE
# then names the family, the first valid revision and why, so those older records are re-run by
# their sweeps instead of skipped and are left out of tables (never silently mixed with new ones).
ENGINE_REVISION = 2
STALE_BEFORE: dict[str, tuple[int, str]] = {
    "gemma3": (2, "the engine fed every block block 0's keyword arguments, so Gemma-3's full-attention "
                  "blocks (5, 11, 17 of Gemma-3-270M) and every block after them were calibrated with the "
                  "sliding-window blocks' rotary embeddings: on activations the model never produces"),
}


def stale_reason(record: dict) -> str | None:
    """Why a record's numbers are no longer valid (:data:`STALE_BEFORE`), or None. Only records whose
    job ran a calibration forward through the blocks can be stale: dense and weight-only jobs are not."""
    family = (record.get("model") or {}).get("family")
    if family not in STALE_BEFORE:
        return None
    first_valid, why = STALE_BEFORE[family]
    revision = (record.get("versions") or {}).get("engine_revision", 1)
    if revision >= first_valid or not ((record.get("protocol") or {}).get("calibration") or {}).get("used"):
        return None
    return f"engine revision {revision} < {first_valid} for {family} models: {why}"


class SparsityTarget(TypedDict):
    kind: str  # "unstructured" | "nm" | "dense" | "none"
    ratio: float | None
    n: int | None
    m: int | None
    spec: str  # "0.5", "2:4", "dense", "none"


class Record(TypedDict, total=False):
    schema_version: int
    status: str  # "running" (never on disk for long) | "complete" | "failed"
    stage: str  # failed records of a job that never ran: "validation"
    error: str
    traceback: str
    reason: str  # "terminated" (SIGTERM / SIGINT)
    config: dict[str, Any]
    config_hash: str
    inputs: dict[str, Any]  # key -> {path, sha256, bytes, files}: the job's input files (pruning/inputs.py)
    job: dict[str, Any]  # output_dir, host, started, finished, torch_threads
    versions: dict[str, Any]  # python, torch, transformers, ..., package, git {commit, dirty}, engine_revision, cpu, gpu
    model: dict[str, Any]
    method: dict[str, Any]  # name, label, params
    sparsity: dict[str, Any]  # target: SparsityTarget, actual, zeros, total, n_linears
    protocol: dict[str, Any]  # name, calibration {used, dataset, ..., data}, eval
    allocation: dict[str, Any]
    metrics: dict[str, Any]  # perplexity.<dataset>, mean_rel_error, zero_shot
    timings: dict[str, float]
    memory: dict[str, Any]
    layers: list[dict[str, Any]]
    warnings: list[str]
    tracking: dict[str, Any]
    save: dict[str, Any]


# field -> (JSON type(s), required in a complete record)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), True),
    "status": ((str,), True),
    "stage": ((str,), False),
    "error": ((str,), False),
    "traceback": ((str,), False),
    "reason": ((str,), False),
    "config": ((dict,), True),
    "config_hash": ((str,), True),
    "inputs": ((dict,), False),  # since 0.x: checksums of the profile / checkpoint files; absent in older records
    "job": ((dict,), True),
    "versions": ((dict,), True),
    "model": ((dict,), True),
    "method": ((dict,), True),
    "sparsity": ((dict,), True),
    "protocol": ((dict,), True),
    "allocation": ((dict,), False),  # absent for method=dense / none
    "metrics": ((dict,), True),
    "timings": ((dict,), True),
    "memory": ((dict,), True),
    "layers": ((list,), True),
    "warnings": ((list,), False),  # written by every job since 0.1; absent in older records: none
    "tracking": ((dict,), True),
    "save": ((dict,), False),  # with save.enabled=true
}


def check_record(record: dict) -> list[str]:
    """What is wrong with a record (an empty list when nothing): unknown or missing fields, wrong types,
    another schema version. Complete records must hold every required field."""
    problems = []
    if record.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version {record.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
    for key, value in record.items():
        if key not in FIELDS:
            problems.append(f"unknown field {key!r}")
        elif value is not None and not isinstance(value, FIELDS[key][0]):
            problems.append(f"{key}: {type(value).__name__}, expected {'/'.join(t.__name__ for t in FIELDS[key][0])}")
    if record.get("status") == "complete":
        problems += [f"missing field {k!r}" for k, (_, required) in FIELDS.items() if required and k not in record]
        target = (record.get("sparsity") or {}).get("target") or {}
        missing = [k for k in SparsityTarget.__annotations__ if k not in target]
        if missing:
            problems.append(f"sparsity.target lacks {missing}")
    return problems

"""The result record's schema: the one definition the pipeline writes and ``analysis`` reads.

``results.json`` is a JSON object with the top-level fields of :data:`FIELDS` (documented field by
field in docs/results.md; a test keeps the two in step). ``schema_version`` changes when a field
changes meaning or type; readers check it. :class:`Record` is the same schema for type checkers.
"""


import types
import typing
from typing import Any, Required, TypedDict

# 2: versions.machine (pruning.provenance.machine), windows_sha256 of the calibration windows
#    (protocol.calibration, its heldout) and of each perplexity set's windows. 1 is still read.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

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


class PerplexityResult(TypedDict, total=False):
    """``metrics.perplexity.<dataset>``: one dataset under the SparseGPT protocol."""
    ppl: Required[float | None]  # null when the loss overflowed exp() (nll stays finite)
    nll: Required[float]
    nwindows: Required[int]
    seqlen: Required[int]
    dataset: str
    split: str
    total_windows: int
    max_windows: int | None
    protocol_cap: int | None
    ntokens: int
    seconds: float
    tokens_per_s: float
    data: dict
    windows_sha256: str  # since schema 2: pruning.provenance.windows_sha256 of the windows evaluated


class ZeroShotBlock(TypedDict, total=False):
    """``metrics.zero_shot``: lm-eval's scores (docs/results.md)."""
    tasks: Required[dict]  # task -> {acc, acc_stderr, acc_norm, acc_norm_stderr, n_docs, ...}
    task_info: dict
    mean_acc: float | None
    lm_eval_version: str
    config: dict
    samples_file: str
    seconds: float


class Metrics(TypedDict, total=False):
    perplexity: Required[dict[str, PerplexityResult]]
    zero_shot: ZeroShotBlock
    mean_rel_error: float | None
    mean_heldout_rel_error: float | None
    mean_dense_rel_error: float | None


class Timings(TypedDict, total=False):
    """Seconds (``timings``): what each stage of the job took."""
    load_s: float
    calib_data_s: float
    allocation_s: float
    calib_forward_s: float  # the calibration passes through the blocks (with the two parts below)
    calib_stats_s: float  # ... of which accumulating the layers' statistics in the hooks
    calib_dense_forward_s: float  # ... of which the dense stream's passes (output_target=dense, engine.dense_error)
    error_report_s: float  # the layers' dense-output / held-out errors (not the solver's own error)
    heldout_forward_s: float
    solver_s: float
    prune_total_s: float
    prune_s: float
    eval_ppl_s: float
    eval_zeroshot_s: float
    save_s: float
    total_s: Required[float]


class Memory(TypedDict, total=False):
    peak_scope: str  # "job" (reset per job) | "process"
    peak_rss_bytes: Required[int]
    peak_rss_after_prune_bytes: int
    peak_cuda_bytes: int


class Job(TypedDict, total=False):
    output_dir: Required[str]
    host: str
    started: str
    finished: str
    slurm_job_id: str | None
    torch_threads: int
    distributed: dict  # runtime.distributed: world_size, backend, ranks [{rank, host, timings, peak_rss_bytes, sent_bytes}]


class Protocol(TypedDict, total=False):
    name: Required[str | None]
    calibration: Required[dict | None]  # {used, dataset, split, nsamples, seqlen, seed, data, ...}
    eval: Required[dict]
    engine: dict  # pruned jobs: block_kwargs, replay_max_rel_diff


class LayerRow(TypedDict, total=False):
    """One pruned linear (``layers[*]``). A solver may add diagnostics of its own (``damp``,
    ``dead_columns``, ``hinv_fallback``, ``admm_iters`` …): keys not listed here are allowed."""
    name: Required[str]
    block: Required[int]
    layer: Required[str]
    shape: Required[list]
    target: Required[str]
    sparsity: Required[float]
    rel_error: Required[float | None]
    solver_s: Required[float]
    heldout_rel_error: float
    dense_rel_error: float
    target_shift: float


# The typed sections of a complete record, checked key by key (types and required keys); ``layers`` row by row.
SECTIONS = {"metrics": Metrics, "timings": Timings, "memory": Memory, "job": Job, "protocol": Protocol}
OPEN_SECTIONS = {"layers": LayerRow}  # other keys allowed (solver diagnostics)


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
    job: Job
    versions: dict[str, Any]  # python, torch, ..., package, git {commit, dirty}, engine_revision, cpu, gpu, machine
    model: dict[str, Any]
    method: dict[str, Any]  # name, label, params
    sparsity: dict[str, Any]  # target: SparsityTarget, actual, zeros, total, n_linears
    protocol: Protocol
    allocation: dict[str, Any]
    metrics: Metrics
    timings: Timings
    memory: Memory
    layers: list[LayerRow]
    warnings: list[str]
    tracking: dict[str, Any]
    save: dict[str, Any]


def _fits(value, tp) -> bool:
    """Whether a JSON value has the annotated type (ints count as floats; a TypedDict is a dict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.is_typeddict(tp):
        return isinstance(value, dict)
    return isinstance(value, origin or tp)


def section_problems(path: str, value, td, *, open_keys: bool = False) -> list[str]:
    """What is wrong with one section against its TypedDict: unknown keys (unless ``open_keys``), missing
    required ones, values of other types; nested ``dict[str, TypedDict]`` values are checked too."""
    if not isinstance(value, dict):
        return [f"{path}: {type(value).__name__}, expected an object"]
    hints = typing.get_type_hints(td)
    problems = [f"{path}: unknown key {k!r}" for k in value if k not in hints and not open_keys]
    problems += [f"{path}: missing key {k!r}" for k in td.__required_keys__ if k not in value]
    for key, tp in hints.items():
        if key not in value:
            continue
        if not _fits(value[key], tp):
            problems.append(f"{path}.{key}: {type(value[key]).__name__} {value[key]!r:.40}, expected {tp}")
        elif typing.get_origin(tp) is dict and typing.is_typeddict(typing.get_args(tp)[1]):
            for k, v in value[key].items():
                problems += section_problems(f"{path}.{key}.{k}", v, typing.get_args(tp)[1])
    return problems


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
    if record.get("schema_version") not in READABLE_SCHEMAS:
        problems.append(f"schema_version {record.get('schema_version')!r}, this code reads "
                        f"{', '.join(map(str, READABLE_SCHEMAS))}")
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
        for key, td in SECTIONS.items():
            if isinstance(record.get(key), dict):
                problems += section_problems(key, record[key], td)
        for i, row in enumerate(record.get("layers") or []):
            problems += section_problems(f"layers[{i}]", row, LayerRow, open_keys=True)
    return problems

"""The job spec: the composed Hydra config, checked and parsed once into frozen dataclasses.

:func:`parse_job` turns the ``DictConfig`` of ``python -m experiments.run`` into a :class:`JobSpec`
before any model is loaded; the pipeline and the library modules read its fields, not raw config nodes
with ``.get(key, default)``. The exceptions read the resolved config on purpose, before a spec exists or
where the section is free-form: the skip decision (:func:`pruning.results.config_hash`,
:mod:`pruning.inputs`, ``pipeline._save_missing``: a finished job is skipped before it is validated), the
launcher's GPU pool (``experiments/run.py``), the tracker's ``logger`` section and ``model.tokenizer``. Every section's defaults are the dataclass defaults, equal to
``conf/config.yaml`` (a test keeps the two in step). A key the section does not have, a value of the
wrong type or out of range is a :class:`~pruning.errors.ConfigError` naming the key, the value and
what is allowed.

``allocation`` and ``logger`` stay read-only mappings here: their keys depend on the allocation and the
tracking backend, and their own modules check them (:func:`pruning.allocation.check_config`,
:func:`pruning.tracking.make_tracker`).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from pruning.data import SOURCES as DATA_SOURCES
from pruning.errors import ConfigError
from pruning.solvers import ENGINE_KNOBS, SOLVERS
from pruning.sparsity import Sparsity, parse_sparsity


def _least(low):
    return {"min": low}


def _above(low):
    return {"above": low}


# How the dense stream reaches a block's later sublayer groups (output_target=dense or engine.dense_error with
# true_sequential): "stored", one dense pass per block keeping every linear's dense input until its group is
# solved; "recompute", one dense pass per group (no stored inputs, more forward time). Same statistics bit for bit.
DENSE_INPUTS = ("stored", "recompute")
# Which submodule outputs a pass of a block calibrated group by group keeps for the next one (pruning/reuse.py):
# the same results whichever, so not in the config hash.
REUSE_OUTPUTS = ("sublayers", "all", "none")
MODEL_SOURCES = ("hub", "local", "gguf", "packaged_gguf", "assembled_gguf", "random")


@dataclass(frozen=True)
class ModelSpec:
    """``model``: what to load and how (conf/model/*.yaml). ``source`` decides which location keys count:
    ``hub_id``/``revision`` (hub), ``path`` (local directory or GGUF file), ``package``/``gguf_file``
    (a GGUF inside a pip package), ``arch``/``seed`` (a random test model)."""
    name: str
    source: str = field(metadata={"choices": MODEL_SOURCES})
    hub_id: str | None = None
    revision: str | None = None
    path: str | None = None
    package: str | None = None
    gguf_file: str | None = None
    cache: bool = True  # convert a GGUF once to a safetensors cache
    cache_dir: str | None = None  # None: paths.cache, else $PRUNING_CACHE_DIR, else ~/.cache/llm-pruning
    dtype: str | None = "auto"  # auto: float32 on CPU, the checkpoint's dtype on CUDA
    device: str | None = "auto"  # auto: cuda when available
    tokenizer: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    trust_remote_code: bool = False
    seed: int = field(default=0, metadata=_least(0))
    arch: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DataSpec:
    """Where datasets are read from (``data``)."""
    root: str | None = None  # None: $PRUNING_DATA_ROOT, else ../shared/data when present, else the hub
    source: str = field(default="auto", metadata={"choices": DATA_SOURCES})
    verify_checksums: bool = True


@dataclass(frozen=True)
class CalibrationSpec:
    """The calibration windows (``calibration``): ``nsamples`` windows of ``seqlen`` tokens, and
    ``heldout_nsamples`` held-out windows (disjoint from them) on which the engine measures layer errors."""
    dataset: str
    split: str
    nsamples: int = field(metadata=_least(1))
    seqlen: int = field(metadata=_least(2))
    seed: int = field(default=0, metadata=_least(0))
    heldout_nsamples: int = field(default=0, metadata=_least(0))  # > 0: measure layer errors on held-out windows


@dataclass(frozen=True)
class PerplexitySpec:
    """``eval.perplexity``: non-overlapping windows of ``seqlen`` tokens, at most ``max_windows``."""
    enabled: bool = True
    datasets: tuple[str, ...] = ("wikitext2",)
    splits: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(
        {"wikitext2": "test", "ptb": "test", "c4": "validation"}))
    seqlen: int = field(default=2048, metadata=_least(2))
    max_windows: int | None = field(default=None, metadata=_least(1))
    batch_size: int = field(default=1, metadata=_least(1))

    def split(self, dataset: str) -> str:
        if dataset not in self.splits:
            raise ConfigError(f"eval.perplexity.splits has no entry for {dataset!r}; set e.g. "
                              f"eval.perplexity.splits.{dataset}=test")
        return self.splits[dataset]


@dataclass(frozen=True)
class ZeroShotSpec:
    """``eval.zero_shot``: lm-evaluation-harness tasks on the in-memory model."""
    tasks: tuple[str, ...]
    enabled: bool = True
    num_fewshot: int = field(default=0, metadata=_least(0))
    limit: int | float | None = None  # None: every document; N >= 1: the first N per task; 0 < f < 1: a fraction
    batch_size: int | str = 32  # an integer >= 1 or "auto"
    max_length: int = field(default=2048, metadata=_least(1))
    add_bos_token: bool | None = None  # None: the tokenizer's default
    seed: int | None = None  # None: lm-eval's default seeds
    bootstrap_iters: int = field(default=100000, metadata=_least(0))

    def __post_init__(self):
        tasks = self.tasks
        if not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"eval.zero_shot.tasks={list(tasks)!r}: give a list of lm-eval task names")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"eval.zero_shot.tasks={list(tasks)!r} names a task twice")
        limit = self.limit
        if limit is not None and (limit <= 0 or (isinstance(limit, float) and limit >= 1)):
            raise ConfigError(f"eval.zero_shot.limit={limit!r}; allowed: null (all documents), an integer >= 1 "
                              "(first N documents per task) or a fraction 0 < limit < 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1) and self.batch_size != "auto":
            raise ConfigError(f"eval.zero_shot.batch_size={self.batch_size!r}; allowed: an integer >= 1 or 'auto'")


@dataclass(frozen=True)
class EvalSpec:
    perplexity: PerplexitySpec = field(default_factory=PerplexitySpec)
    zero_shot: ZeroShotSpec | None = None  # None or enabled=false: no zero-shot evaluation

    @property
    def zero_shot_on(self) -> bool:
        return self.zero_shot is not None and self.zero_shot.enabled


@dataclass(frozen=True)
class EngineSpec:
    """The sequential layer-wise driver (``engine``)."""
    true_sequential: bool = False
    report_error: bool = True
    dense_error: bool = False
    dense_inputs: str = field(default="stored", metadata={"choices": DENSE_INPUTS})
    batch_size: int = field(default=1, metadata=_least(1))
    device: str | None = None
    shards: int = field(default=1, metadata=_least(1))  # statistics accumulated per shard of windows (pruning/distributed.py)
    reuse_outputs: str = field(default="sublayers", metadata={"choices": REUSE_OUTPUTS})  # pruning/reuse.py


@dataclass(frozen=True)
class RuntimeSpec:
    """How the job runs, not what it computes (``runtime``)."""
    threads: int | None = field(default=None, metadata=_least(1))
    gpus: tuple[int, ...] | None = None
    gpu_lock_dir: str = "outputs/.gpu-locks"
    offload: str | None = field(default=None, metadata={"choices": (None, "disk")})
    offload_dir: str | None = None
    memory_check: bool = True  # refuse a job whose memory lower bound exceeds what is available (memory_check.py)
    max_fallback_share: float = 0.1
    zero_shot_logits_gb: float | None = field(default=4.0, metadata=_above(0))
    zero_shot_shared_context: bool = False  # needs zero_shot_logits_gb (the budgeted lm-eval model)
    distributed: bool = False  # one job across the processes torchrun or a SLURM job starts (pruning/distributed.py)
    distributed_backend: str = field(default="auto", metadata={"choices": ("auto", "gloo", "nccl")})

    def __post_init__(self):
        if self.zero_shot_shared_context and self.zero_shot_logits_gb is None:
            raise ConfigError("runtime.zero_shot_shared_context=true needs runtime.zero_shot_logits_gb (a number of "
                              "GB; null is lm-eval's own path throughout)")


@dataclass(frozen=True)
class SaveSpec:
    """The pruned model as a checkpoint (``save``)."""
    enabled: bool = False
    dir: str | None = None  # None: <job dir>/model
    verify: bool = True


@dataclass(frozen=True)
class PathsSpec:
    """Where the project reads and writes (``paths``; conf/paths/default.yaml). ``data.root`` and
    ``runtime.gpu_lock_dir`` point here by default; ``cache`` is the model cache when ``model.cache_dir``
    is null."""
    data_root: str | None = None
    cache: str | None = None
    outputs: str = "outputs"
    gpu_locks: str = "outputs/.gpu-locks"


@dataclass(frozen=True)
class FitSpec:
    """What a method asks of the engine beside its solver: its engine knobs (``output_target``,
    ``target_alpha``, ``true_sequential``; checked as :data:`pruning.solvers.ENGINE_KNOBS`) and the damping
    the dense-output target is solved with (the method's ``percdamp``, else its solver's default)."""
    output_target: str = "pruned"  # "dense": fit each layer to the dense model's layer output (solvers/dense_target.py)
    target_alpha: float = 1.0  # how far towards the dense target (1: all the way)
    true_sequential: bool = False  # the method calibrates each block group by group (either this or engine's)
    percdamp: float = 0.01

    @property
    def dense_target(self) -> bool:
        return self.output_target == "dense"


@dataclass(frozen=True)
class MethodSpec:
    """``method``: the solver's name, the row label, and its knobs as configured (``params``: what a record
    states), split once into the solver's own (``solver_params``) and what the engine reads (``fit``)."""
    name: str
    label: str
    params: Mapping[str, Any]
    solver_params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    fit: FitSpec = field(default_factory=FitSpec)


def split_params(name: str, params: Mapping[str, Any]) -> tuple[Mapping[str, Any], FitSpec]:
    """A method's knobs as the solver's own and the engine's (:class:`FitSpec`)."""
    knobs = dict(params)
    fit = {k: knobs.pop(k) for k in ENGINE_KNOBS if k in knobs}
    solver = SOLVERS.get(name)
    default = inspect.signature(solver.fn).parameters.get("percdamp") if solver is not None else None
    percdamp = knobs.get("percdamp", default.default if default is not None else FitSpec.percdamp)
    return MappingProxyType(knobs), FitSpec(**fit, percdamp=percdamp)


@dataclass(frozen=True)
class JobSpec:
    model: ModelSpec
    method: MethodSpec
    sparsity: Sparsity
    calibration: CalibrationSpec
    allocation: Mapping[str, Any]
    eval: EvalSpec
    data: DataSpec
    engine: EngineSpec
    runtime: RuntimeSpec
    save: SaveSpec
    paths: PathsSpec
    logger: Mapping[str, Any]
    protocol: Mapping[str, Any]
    profile: Mapping[str, Any] | None = None  # allocation=profile: the parsed per-layer ratios (set by validate)
    seed: int = 0
    force: bool = False
    sweep_name: str = "default"


TOP_LEVEL = {f.name for f in fields(JobSpec)} - {"profile"}

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _describe(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"a list of {_PLURALS.get(args[0], _describe(args[0]))}"
    if typing.get_origin(tp) in (collections.abc.Mapping, dict):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key: str):
    """``value`` as type ``tp`` (ints count as floats, lists as tuples); a ConfigError otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    elif origin in (collections.abc.Mapping, dict):
        if isinstance(value, collections.abc.Mapping):
            return MappingProxyType(dict(value))
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{key}={value!r}: need {_describe(tp)}")


def build(cls, node, path: str):
    """A ``cls`` dataclass from a config node (mapping): unknown keys, types, ranges and choices checked."""
    node = dict(node or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) of {path} {unknown} (a typo?); allowed: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in node:
            continue
        key = f"{path}.{f.name}"
        value = _coerce(node[f.name], hints[f.name], key)
        low = f.metadata.get("min")
        if low is not None and value is not None and value < low:
            raise ConfigError(f"{key}={value!r}: need an integer >= {low}" + (
                " or null" if type(None) in typing.get_args(hints[f.name]) else ""))
        above = f.metadata.get("above")
        if above is not None and value is not None and not value > above:
            raise ConfigError(f"{key}={value!r}: need a number > {above}" + (
                " or null" if type(None) in typing.get_args(hints[f.name]) else ""))
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}={value!r}; allowed: {', '.join('null' if c is None else c for c in choices)}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key missing
        missing = [f.name for f in fields(cls) if f.name not in kwargs and f.default is MISSING
                   and f.default_factory is MISSING]
        raise ConfigError(f"{path} lacks {missing or str(e)}") from None


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def parse_method(node, sparsity, *, eval_only: tuple[str, ...] = ("dense", "none")) -> tuple[MethodSpec, Sparsity]:
    """The ``method`` node and the ``sparsity`` value as a :class:`MethodSpec` and a target (a dense target
    for the methods that prune nothing; the value is checked all the same). The solver's knobs are checked
    by :func:`pruning.solvers.check_method`."""
    method = _plain(node)
    name = method.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"method.name={name!r}: need the name of a method")
    label = method.pop("label", None) or name
    target = parse_sparsity(sparsity)  # checked even where it is ignored (eval-only methods)
    if name in eval_only:
        return MethodSpec(name, label, MappingProxyType(method)), Sparsity("dense", 0.0)
    solver_params, fit = split_params(name, method)  # the knobs' values are checked by check_method
    return MethodSpec(name, label, MappingProxyType(method), solver_params, fit), target


def parse_job(cfg: DictConfig | Mapping, *, eval_only: tuple[str, ...] = ("dense", "none")) -> JobSpec:
    """The job spec of a composed config (module docstring). Checks the structure, types and ranges of
    every section; the method's knobs, the data and the model are checked by their owners
    (:func:`pruning.pipeline.validate`)."""
    config = _plain(cfg)
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown} (a typo?); allowed: {', '.join(sorted(TOP_LEVEL))}")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}: need an integer >= 0")
    for key, tp in (("force", bool), ("sweep_name", str)):
        if key in config:
            _coerce(config[key], tp, key)
    method, target = parse_method(config["method"], config.get("sparsity"), eval_only=eval_only)
    paths = build(PathsSpec, config.get("paths"), "paths")
    model = dict(config["model"])
    if model.get("cache_dir") is None and paths.cache is not None:
        model["cache_dir"] = paths.cache
    ev = dict(config.get("eval") or {})
    unknown = sorted(set(ev) - {"perplexity", "zero_shot"})
    if unknown:
        raise ConfigError(f"unknown key(s) of eval {unknown} (a typo?); allowed: perplexity, zero_shot")
    zero_shot = ev.get("zero_shot")
    return JobSpec(
        model=build(ModelSpec, model, "model"), method=method,
        sparsity=target, calibration=build(CalibrationSpec, config["calibration"], "calibration"),
        allocation=MappingProxyType(config.get("allocation") or {"name": "uniform"}),
        eval=EvalSpec(build(PerplexitySpec, ev.get("perplexity"), "eval.perplexity"),
                      None if zero_shot is None else build(ZeroShotSpec, zero_shot, "eval.zero_shot")),
        data=build(DataSpec, config.get("data"), "data"), engine=build(EngineSpec, config.get("engine"), "engine"),
        runtime=build(RuntimeSpec, config.get("runtime"), "runtime"), save=build(SaveSpec, config.get("save"), "save"),
        paths=paths,
        logger=MappingProxyType(config.get("logger") or {}), protocol=MappingProxyType(config.get("protocol") or {}),
        seed=int(config.get("seed", 0)), force=bool(config.get("force", False)),
        sweep_name=str(config.get("sweep_name", "default")))


def as_data(data: DataSpec | Mapping | None) -> DataSpec:
    """A :class:`DataSpec` from a spec, a ``data`` mapping or None (the defaults)."""
    return as_spec(DataSpec, data, "data")


def as_spec(cls, node, path: str):
    """A ``cls`` spec from itself or a config mapping (for callers outside the Hydra job)."""
    return node if isinstance(node, cls) else build(cls, _plain(node), path)

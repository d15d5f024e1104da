"""The Python API: prune and evaluate a ``transformers`` model you already hold, without Hydra or W&B.

    from pruning import prune, evaluate_perplexity
    report = prune(model, tokenizer, method="apt-refit", sparsity="2:4", calibration="c4",
                   nsamples=32, seqlen=512, seed=0)
    print(report.summary())
    evaluate_perplexity(model, tokenizer, "wikitext2", seqlen=512)

:func:`prune` works in place on any model family :mod:`pruning.adapters` supports (Llama-style, OPT,
Mamba), on whatever device the model is. Calibration is a dataset name (read from the data root or
the hub, like a Hydra job), a list of texts (sampled with the same document rule as C4), or a
``[n, seqlen]`` tensor of token ids. ``python -m experiments.run`` prunes through the same function
(:func:`prune_loaded`), so a job and an API call with the same settings give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pruning.adapters import adapter_for, prunable_linears
from pruning.allocation import allocate, check_config as check_allocation
from pruning.calibration import build_calibration, document_windows
from pruning.distributed import LOCAL
from pruning.engine import EngineReport, prune_model
from pruning.errors import ConfigError
from pruning.solvers import SOLVERS
from pruning.sparsity import Sparsity, measure_sparsity
from pruning.spec import CalibrationSpec, DataSpec, EngineSpec, MethodSpec, PerplexitySpec, build, parse_method

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Splits the perplexity protocol evaluates (conf/eval/ppl.yaml).
PPL_SPLITS = {"wikitext2": "test", "ptb": "test", "c4": "validation"}


def conf_node(group: str, name: str) -> dict:
    """A config of ``conf/<group>/<name>.yaml`` with its ``defaults`` (same group) merged, as Hydra would;
    without a ``conf/`` directory (a non-editable install), only the built-in names work. Not Hydra's
    ``compose``: that needs the global Hydra state, which a user's own Hydra application already holds."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []
        raise ConfigError(f"{group}={name!r} is not a config in {CONF_DIR / group}"
                          + (f"; available: {', '.join(available)}" if available else ""))
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    merged: dict = {}
    own_placed = False
    for item in node.pop("defaults", None) or ["_self_"]:
        if item == "_self_":
            merged.update(node)
            own_placed = True
        else:
            merged.update(conf_node(group, item))
    if not own_placed:
        merged.update(node)
    return merged


def method_config(method: str, overrides: dict | None = None) -> tuple[str, str, dict]:
    """``(solver name, label, params)`` of a method: a method config (``apt-refit``, ``sparsegpt`` ...,
    with its YAML knobs) or, without ``conf/``, a solver name with its signature defaults."""
    if (CONF_DIR / "method" / f"{method}.yaml").is_file():
        node = conf_node("method", method)
        name, label = node.pop("name"), node.pop("label", None) or method
    elif method in SOLVERS:
        name, label, node = method, method, {}
    else:
        raise ConfigError(f"method={method!r}; allowed: {', '.join(sorted(SOLVERS))}"
                          + (" or a method config of conf/method/" if CONF_DIR.is_dir() else ""))
    if name not in SOLVERS:
        raise ConfigError(f"method={method!r} prunes nothing (method name {name!r}); allowed: {', '.join(SOLVERS)}")
    params = {**node, **(overrides or {})}
    SOLVERS[name].check_params(method, params)
    return name, label, params


@dataclass
class PruneReport:
    """What :func:`prune` did: per-layer rows (name, target, sparsity, rel_error, seconds ...), timings,
    the allocation and calibration it used and the measured sparsity of the prunable linears."""

    method: str
    label: str
    sparsity: str
    params: dict
    layers: list[dict]
    timings: dict
    allocation: dict
    calibration: dict
    actual: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)  # how blocks got their arguments, the replay check

    @property
    def mean_rel_error(self) -> float | None:
        return mean_layer_value(self.layers, "rel_error")

    @property
    def mean_heldout_rel_error(self) -> float | None:
        """The mean layer error on the held-out windows (``heldout_nsamples`` > 0), else None."""
        return mean_layer_value(self.layers, "heldout_rel_error")

    @property
    def mean_dense_rel_error(self) -> float | None:
        """The mean layer error against the dense model's own layer outputs (``dense_error=True`` or a
        method fitted to them), else None."""
        return mean_layer_value(self.layers, "dense_rel_error")

    def summary(self) -> str:
        err, held = self.mean_rel_error, self.mean_heldout_rel_error
        return (f"{self.label} at {self.sparsity}: {len(self.layers)} layers, actual sparsity "
                f"{self.actual.get('actual', float('nan')):.4f}, mean layer error "
                f"{'n/a' if err is None else f'{err:.4g}'}"
                + ("" if held is None else f" (held out {held:.4g})")
                + f", {self.timings.get('prune_total_s', 0):.1f} s")

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.layers)


def mean_layer_value(layers: list[dict], key: str) -> float | None:
    """The mean of ``key`` over the layer rows that have it (None when none has)."""
    values = [r[key] for r in layers if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def needs_calibration(method: str, *, report_error: bool, dense_error: bool, allocation: str,
                      heldout_nsamples: int) -> bool:
    """Whether pruning with solver ``method`` runs calibration forward passes: a solver that needs
    statistics, the error report, the dense-output error, OWL's outlier scores or held-out layer errors."""
    return (SOLVERS[method].needs_data(report_error or dense_error) or allocation == "owl"
            or heldout_nsamples > 0)


def prune_loaded(model, adapter, windows, method: MethodSpec, target: Sparsity, allocation: dict,
                 profile: dict | None, engine: EngineSpec, *, store=None, heldout=None, progress=None, comm=None):
    """Allocation, then the engine: the pruning step shared by the Hydra job and :func:`prune`. ``method``
    and ``engine`` travel whole to :func:`pruning.engine.prune_model`; ``heldout``: windows on which every
    layer's error is measured too; ``progress``: block-level checkpoints (:mod:`pruning.resume`); ``comm``: this
    process's rank in a distributed prune (:mod:`pruning.distributed`; the allocation runs whole on every rank). Returns
    ``(EngineReport, Allocation)``."""
    alloc = allocate(allocation, profile, target, model, adapter, windows, engine, store)
    report: EngineReport = prune_model(model, adapter, windows, SOLVERS[method.name], target, dict(method.solver_params),
                                       engine, method.fit, store=store,
                                       targets=None if alloc.name == "uniform" else alloc.target, heldout=heldout,
                                       progress=progress, comm=comm or LOCAL)
    return report, alloc


def calibration_windows(tokenizer, calibration, *, nsamples: int, seqlen: int, seed: int, data_root=None,
                        source: str = "auto", verify: bool = True,
                        heldout_nsamples: int = 0) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """Calibration windows ``[nsamples, seqlen]``, their provenance and (``heldout_nsamples`` > 0) the
    held-out windows, from a dataset name, texts or ids."""
    if heldout_nsamples < 0:
        raise ConfigError(f"heldout_nsamples={heldout_nsamples}: need >= 0")
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2 or calibration.dtype not in (torch.int32, torch.int64):
            raise ConfigError(f"calibration tensor of shape {tuple(calibration.shape)} and dtype {calibration.dtype}: "
                              "need [nsamples, seqlen] integer token ids")
        if heldout_nsamples:
            raise ConfigError(f"heldout_nsamples={heldout_nsamples} with a calibration tensor: held-out windows are "
                              "drawn from a dataset name or a list of texts; pass one of those")
        return calibration.long(), {"source": "tensor", "nsamples": calibration.shape[0],
                                    "seqlen": calibration.shape[1]}, None
    if tokenizer is None:
        raise ConfigError("calibration from text needs the tokenizer: prune(model, tokenizer, ...)")
    if isinstance(calibration, str):  # the split the calibration config uses (offline: WikiText-2/PTB validation)
        known = (CONF_DIR / "calibration" / f"{calibration}.yaml").is_file()
        split = conf_node("calibration", calibration).get("split", "train") if known else "train"
        calib = build_calibration(build(CalibrationSpec, {"dataset": calibration, "split": split, "nsamples": nsamples,
                                                          "seqlen": seqlen, "seed": seed,
                                                          "heldout_nsamples": heldout_nsamples}, "calibration"),
                                  tokenizer, build(DataSpec, {"root": data_root, "source": source,
                                                              "verify_checksums": verify}, "data"))
        return calib.windows, calib.info, calib.heldout
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(t, str) for t in calibration):
        windows, heldout, held_info = document_windows(list(calibration), tokenizer, nsamples, seqlen, seed,
                                                       heldout_nsamples)
        info = {"source": "texts", "documents": len(calibration), "nsamples": nsamples, "seqlen": seqlen,
                "seed": seed, "sampler": "documents", **({"heldout": held_info} if held_info else {})}
        return windows, info, heldout
    raise ConfigError(f"calibration={type(calibration).__name__}: need a dataset name (c4, wikitext2, ptb), a "
                      "non-empty list of texts, or a [nsamples, seqlen] tensor of token ids")


def prune(model, tokenizer=None, *, method: str = "apt-refit-dense-seq", sparsity: float | str = 0.5,
          calibration="c4", nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
          allocation: str | dict = "uniform", data_root=None, data_source: str = "auto",
          verify_checksums: bool = True, device=None, batch_size: int = 1, true_sequential: bool = False,
          report_error: bool = True, heldout_nsamples: int = 0, dense_error: bool = False, **params) -> PruneReport:
    """Prune ``model`` in place and return the per-layer :class:`PruneReport`.

    ``method``: a method config (``apt-refit-dense-seq`` default, ``apt-refit-dense``, ``apt-refit``, ``apt``, ``apt-swap``, ``alps``,
    ``sparsegpt``, ``wanda``, ``magnitude`` ...); ``**params`` override its knobs (e.g. ``blocksize=64``).
    ``sparsity``: a ratio (``0.5``, ``"50%"``) or an N:M pattern (``"2:4"``). ``allocation``: ``uniform``,
    ``owl`` or a dict such as ``{"name": "owl", "M": 5, "lambda": 0.08}``. ``device``: where each block
    is pruned (default: where the model is). ``heldout_nsamples``: that many more windows, disjoint from
    the calibration windows, on which every layer's error is measured as well (``heldout_rel_error``).
    ``dense_error``: every layer's error against the dense model's own layer output as well
    (``dense_rel_error``; one more dense block forward per calibration window; the weights are unchanged).
    """
    name, label, knobs = method_config(method, params)
    spec, target = parse_method({"name": name, "label": label, **knobs}, sparsity, eval_only=())
    if target.kind == "dense":
        raise ConfigError(f"sparsity={sparsity!r} prunes nothing")
    engine = build(EngineSpec, {"true_sequential": true_sequential, "report_error": report_error,
                                "dense_error": dense_error, "batch_size": batch_size,
                                "device": None if device is None else str(device)}, "prune")
    alloc_cfg = conf_node("allocation", allocation) if isinstance(allocation, str) and CONF_DIR.is_dir() else (
        {"name": allocation} if isinstance(allocation, str) else dict(allocation))
    profile = check_allocation(alloc_cfg, target)
    adapter = adapter_for(model)
    windows, heldout, calib_info = None, None, {"used": False}
    if needs_calibration(name, report_error=report_error, dense_error=dense_error, allocation=alloc_cfg.get("name"),
                         heldout_nsamples=heldout_nsamples):
        windows, calib_info, heldout = calibration_windows(
            tokenizer, calibration, nsamples=nsamples, seqlen=seqlen, seed=seed, data_root=data_root,
            source=data_source, verify=verify_checksums, heldout_nsamples=heldout_nsamples)
        windows = windows.to(next(model.parameters()).device)
        heldout = heldout.to(windows.device) if heldout is not None else None
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = False
    try:
        with torch.no_grad():
            report, alloc = prune_loaded(model, adapter, windows, spec, target, alloc_cfg, profile, engine,
                                         heldout=heldout)
    finally:
        model.train(was_training)
        if use_cache is not None:
            model.config.use_cache = use_cache
    return PruneReport(method=name, label=label, sparsity=str(target), params=knobs, layers=report.layers,
                       timings=report.timings, allocation=alloc.info, calibration=calib_info,
                       actual=measure_sparsity(prunable_linears(model, adapter)), engine=report.engine_info())


def evaluate_perplexity(model, tokenizer, dataset: str = "wikitext2", *, split: str | None = None,
                        seqlen: int = 2048, max_windows: int | None = None, batch_size: int = 1, data_root=None,
                        data_source: str = "auto", verify_checksums: bool = True) -> dict:
    """Perplexity of ``model`` on one dataset under the SparseGPT protocol (non-overlapping ``seqlen``
    windows, exp of the mean window loss); the dict holds ``ppl``, ``nll``, ``nwindows`` and the data's
    provenance."""
    from pruning.evaluation.perplexity import evaluate_perplexity as evaluate

    split = split or PPL_SPLITS.get(dataset)
    if split is None:
        raise ConfigError(f"dataset={dataset!r}; allowed: {', '.join(PPL_SPLITS)}")
    cfg = build(PerplexitySpec, {"datasets": [dataset], "splits": {dataset: split}, "seqlen": seqlen,
                                 "max_windows": max_windows, "batch_size": batch_size}, "evaluate_perplexity")
    data = build(DataSpec, {"root": data_root, "source": data_source, "verify_checksums": verify_checksums},
                 "evaluate_perplexity")
    was_training = model.training
    model.eval()
    try:
        return evaluate(model, tokenizer, cfg, data)[dataset]
    finally:
        model.train(was_training)

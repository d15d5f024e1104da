"""Zero-shot accuracy through lm-evaluation-harness on the in-memory (pruned) model.

The model and tokenizer are wrapped in lm-eval's ``HFLM`` (no reload from disk) and scored with
``simple_evaluate``; no metric is computed here. Task definitions:

* **local** (a data root exists and holds the task's files): the YAMLs in ``lm_eval_tasks/``,
  offline twins of lm-eval's stock tasks of the same name (same prompts, targets and metrics) over
  the checksummed files of the data root; the differences our copies force are recorded per task
  (``task_info.<task>.deviations``).
* **hub** (``data.source=hub``, no data root, or a task without an offline copy under
  ``data.source=auto``): lm-eval's stock task, which downloads its dataset.

The record gets, per task, ``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr`` (where the
task defines them; LAMBADA also ``perplexity``), the number of documents scored, the task version,
its source and its chance level (mean of 1/#choices over all its documents), plus the mean
``acc`` over the tasks and the lm-eval version.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Mapping

from pruning.data import resolve_data_root, verify_file
from pruning.errors import ConfigError, DataError
from pruning.evaluation.zero_shot_data import TASKS as OFFLINE_TASKS, task_files, task_info
from pruning.spec import DataSpec, ZeroShotSpec, as_data, as_spec

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
METRICS = ("acc", "acc_norm", "perplexity")


def validate_zero_shot(zs: ZeroShotSpec | Mapping) -> ZeroShotSpec:
    """``eval.zero_shot`` checked before any heavy work (:class:`pruning.spec.ZeroShotSpec`)."""
    return as_spec(ZeroShotSpec, zs, "eval.zero_shot")


def task_sources(tasks: list[str], data: DataSpec | Mapping | None) -> dict[str, str]:
    """``local`` or ``hub`` per task, following ``data.root`` / ``data.source`` like the text datasets."""
    data = as_data(data)
    source = data.source
    root = resolve_data_root(data.root) if source != "hub" else None
    out = {}
    for task in tasks:
        if root is not None and task in OFFLINE_TASKS:
            try:
                task_files(task, root)
                out[task] = "local"
                continue
            except DataError as e:
                if source == "local":
                    raise
                log.warning("%s; falling back to lm-eval's stock task (hub)", e)
        elif source == "local":
            raise DataError(f"task {task!r} cannot be read offline ("
                            + ("no data root" if root is None else f"offline tasks: {', '.join(OFFLINE_TASKS)}")
                            + "); allow the hub with data.source=auto|hub")
        out[task] = "hub"
    return out


def check_task_data(tasks: list[str], data: DataSpec | Mapping | None) -> dict[str, str]:
    """Before any model is loaded: where each task is read from (:func:`task_sources`), and the published
    sha256 of every local task file (``data.verify_checksums``)."""
    data = as_data(data)
    sources = task_sources(tasks, data)
    hub = [t for t in tasks if sources[t] == "hub"]
    if hub:
        from lm_eval.tasks import TaskManager

        known = set(TaskManager().all_tasks)
        unknown = [t for t in hub if t not in known]
        if unknown:
            raise ConfigError(f"eval.zero_shot.tasks: unknown task(s) {unknown}: neither an offline task "
                              f"({', '.join(OFFLINE_TASKS)}) nor one lm-eval knows")
    if data.verify_checksums:
        for task in (t for t in tasks if sources[t] == "local"):
            for path, (_, sha) in zip(task_files(task, data.root), OFFLINE_TASKS[task].files):
                verify_file(path, sha)
    return sources


def _task_manager(source: str, data: DataSpec | Mapping | None):
    from lm_eval.tasks import TaskManager

    if source == "hub":
        return TaskManager()
    data = as_data(data)
    meta = {"data_root": str(resolve_data_root(data.root)), "verify_checksums": data.verify_checksums}
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=meta)


def _number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else str(value)  # JSON has no NaN / inf
    return None  # lm-eval writes "N/A" for a missing stderr


def _chance(task) -> float | None:
    """Mean of 1/#choices over all the task's documents (None for non-multiple-choice tasks)."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return None
    docs = list(task.eval_docs)
    return sum(1.0 / len(task.doc_to_choice(d)) for d in docs) / len(docs) if docs else None


def per_document(samples: list[dict]) -> dict[str, list]:
    """lm-eval's logged samples of one task as columns, in document order: ``doc_id``, ``doc_hash`` (so
    two runs can be checked to have scored the same documents), ``target``, ``pred`` (the choice with the
    highest log-likelihood) and the per-document metrics (``acc``, ``acc_norm``: 0 or 1)."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    out = {"doc_id": [s["doc_id"] for s in samples], "doc_hash": [s.get("doc_hash") for s in samples],
           "target": [s.get("target") if isinstance(s.get("target"), (int, str)) else None for s in samples]}
    preds = []
    for s in samples:
        lls = [r[0] if isinstance(r, (list, tuple)) else r for r in (s.get("filtered_resps") or [])]
        preds.append(max(range(len(lls)), key=lambda i: lls[i]) if lls and all(isinstance(v, (int, float))
                                                                                 for v in lls) else None)
    out["pred"] = preds
    for metric in METRICS:
        if any(metric in s for s in samples):
            out[metric] = [_number(s.get(metric)) for s in samples]
    return out


def _lm(model, tokenizer, zs: ZeroShotSpec, logits_gb: float | None = None, share_context: bool = False):
    """lm-eval's ``HFLM`` around the in-memory model: batches of ``zs.batch_size``, or with ``logits_gb``
    sized to that memory for their logits and, with ``share_context``, each shared context run once
    (``pruning/evaluation/budgeted_lm.py``)."""
    if logits_gb is not None and not logits_gb > 0:
        raise ConfigError(f"runtime.zero_shot_logits_gb={logits_gb!r}: need a number > 0, or null for a fixed batch size")
    if share_context and logits_gb is None:
        raise ConfigError("runtime.zero_shot_shared_context=true needs runtime.zero_shot_logits_gb (a number of GB)")
    device = next(model.parameters()).device
    max_length = zs.max_length
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_length > int(context):
        log.warning("eval.zero_shot.max_length=%d exceeds the model's context %d; using %d", max_length, context, context)
        max_length = int(context)
    common = dict(pretrained=model, tokenizer=tokenizer, max_length=max_length, device=str(device),
                  add_bos_token=zs.add_bos_token)
    if logits_gb is None:
        from lm_eval.models.huggingface import HFLM

        return HFLM(batch_size=zs.batch_size, **common), max_length
    from pruning.evaluation.budgeted_hflm import BudgetedHFLM  # here: importing lm-eval is slow

    return BudgetedHFLM(logits_gb=logits_gb, share_context=share_context, max_batch_size=zs.batch_size,
                                 **common), max_length


@contextlib.contextmanager
def _no_forked_bootstrap():
    """Run lm-eval's bootstrap stderr (LAMBADA perplexity) in this process, not a forked ``mp.Pool``.

    lm-eval forks a pool for bootstrapped metrics unless ``DISABLE_MULTIPROC`` is set. Forking a
    process whose torch/OpenMP thread pool is running can leave a child blocked on a lock it inherited
    held; pytest then waited forever at exit. The serial path computes the same estimate.
    """
    before = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = before


def _task_scores(result: dict, name: str, task, source: str, data: DataSpec) -> tuple[dict, dict]:
    """One task's row of ``metrics.zero_shot.tasks`` (metrics with their stderr, documents scored) and its
    ``task_info`` (data provenance, version, shots, chance level) from lm-eval's result."""
    scores = result["results"][name]
    row = {}
    for metric in METRICS:
        if f"{metric},none" in scores:
            row[metric] = _number(scores[f"{metric},none"])
            row[f"{metric}_stderr"] = _number(scores.get(f"{metric}_stderr,none"))
    n = (result.get("n-samples") or {}).get(name, {})
    row["n_docs"] = n.get("effective")
    info = task_info(name, data.root, verify=data.verify_checksums) if source == "local" else {"source": "hub"}
    info.update(version=(result.get("versions") or {}).get(name), n_shot=(result.get("n-shot") or {}).get(name),
                n_docs_total=n.get("original"), chance=_chance(task))
    return row, info


def evaluate_zero_shot(model, tokenizer, zs: ZeroShotSpec | Mapping, data: DataSpec | Mapping | None = None,
                       logits_gb: float | None = None, share_context: bool = False) -> dict:
    """Score ``zs.tasks`` with lm-eval; returns the ``metrics.zero_shot`` block of the record.

    ``logits_gb``: memory for one batch's logits (``runtime.zero_shot_logits_gb``); the batch then
    shrinks for long requests and large vocabularies, ``zs.batch_size`` being the most (``_lm``).
    ``share_context`` (``runtime.zero_shot_shared_context``, with ``logits_gb`` only): requests with
    the same context run it once (``pruning/evaluation/shared_context.py``)."""
    import lm_eval
    from lm_eval.tasks import get_task_dict

    zs, data = validate_zero_shot(zs), as_data(data)
    sources = task_sources(list(zs.tasks), data)
    t0 = time.perf_counter()
    lm, max_length = _lm(model, tokenizer, zs, logits_gb, share_context)
    seed = zs.seed
    seeds = {} if seed is None else {k: int(seed) for k in
                                      ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")}
    out = {"tasks": {}, "task_info": {}, "samples": {}, "lm_eval_version": metadata.version("lm_eval"),
           "config": {"tasks": list(zs.tasks), **{k: getattr(zs, k) for k in (
               "num_fewshot", "limit", "batch_size", "add_bos_token", "seed", "bootstrap_iters")}, "max_length": max_length}}
    was_training = model.training
    model.eval()
    try:
        for source in ("local", "hub"):
            names = [t for t in zs.tasks if sources[t] == source]
            if not names:
                continue
            manager = _task_manager(source, data)
            log.info("zero-shot (%s tasks): %s, %s-shot, limit=%s", source, ", ".join(names),
                     zs.num_fewshot, zs.limit)
            with _no_forked_bootstrap():
                result = lm_eval.simple_evaluate(
                    model=lm, tasks=names, num_fewshot=zs.num_fewshot, limit=zs.limit,
                    task_manager=manager, log_samples=True, bootstrap_iters=zs.bootstrap_iters,
                    **seeds)
            tasks = get_task_dict(names, manager)
            for name in names:
                out["tasks"][name], out["task_info"][name] = _task_scores(result, name, tasks[name], source, data)
                out["samples"][name] = per_document(result["samples"][name])
    finally:
        model.train(was_training)
    accs = [r["acc"] for r in out["tasks"].values() if isinstance(r.get("acc"), float)]
    out["mean_acc"] = sum(accs) / len(accs) if len(accs) == len(out["tasks"]) else None
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if logits_gb is not None:
        out["config"].update(lm.batching_info())
    for name, row in out["tasks"].items():
        log.info("zero-shot %s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in row.items()
                                                      if isinstance(v, float) and not k.endswith("stderr")))
    return out

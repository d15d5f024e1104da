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
import inspect
import logging
import math
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Mapping

import torch

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


LOGIT_COPIES = 3  # float32 [batch, length, vocab] tensors alive at once: the logits, a softcap/upcast temporary,
                  # lm-eval's log_softmax (measured: Gemma-3-270M, batch 32, peak RSS 20.5 GB on short requests)


def logits_batch_size(length: int, vocab: int, budget_gb: float, most: int) -> int:
    """The largest batch (1 … ``most``) whose logits for ``length`` positions over ``vocab`` tokens fit
    ``budget_gb``: lm-eval materialises every position's full-vocabulary log-probabilities, so a
    262k-token vocabulary (Gemma) at batch 32 and a few hundred tokens needs tens of GB."""
    per_sequence = max(1, length) * vocab * 4 * LOGIT_COPIES
    return max(1, min(most, int(budget_gb * 2**30 // per_sequence)))


def _vocab(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _lm(model, tokenizer, zs: ZeroShotSpec, logits_gb: float | None = None):
    """lm-eval's ``HFLM`` around the in-memory model. With ``logits_gb`` every batch is sized by its
    longest request (``logits_batch_size``, at most ``zs.batch_size``) instead of being fixed: lm-eval's
    own ``batch_size=auto`` probes by running out of memory, which on a CPU host means the kernel's OOM
    killer, not an exception. Batches formed that way also get logits only for the trailing positions
    that hold their continuations (``_positions_to_keep``): the LM head and lm-eval's log-softmax over a
    large vocabulary dominate a small model's scoring time."""
    from lm_eval.models.huggingface import HFLM

    device = next(model.parameters()).device
    max_length = zs.max_length
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_length > int(context):
        log.warning("eval.zero_shot.max_length=%d exceeds the model's context %d; using %d", max_length, context, context)
        max_length = int(context)
    if logits_gb is None:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=zs.batch_size, max_length=max_length,
                    device=str(device), add_bos_token=zs.add_bos_token), max_length
    vocab = _vocab(model)
    trims = "logits_to_keep" in inspect.signature(model.forward).parameters

    class BudgetedHFLM(HFLM):
        """Batches sized by their first (longest: lm-eval orders requests longest first) request."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.used: list[int] = []  # batch sizes chosen
            self.batch_now, self.batch_end, self.batch_requests = zs.batch_size, 0, None
            self.positions = [0, 0]  # logit positions computed, positions given

        def _detect_batch_size(self, requests=None, pos: int = 0):
            length = self.max_length
            if requests:
                _, context_enc, continuation_enc = requests[pos]
                length = len((context_enc + continuation_enc)[-(self.max_length + 1):][:-1])
            size = logits_batch_size(length, vocab, logits_gb, zs.batch_size)
            self.used.append(size)
            return size

        def _batch_scheduler(self, pos, requests):
            # lm-eval asks at every request how long the current batch is; a batch that starts at
            # `pos` is sized by that request and keeps its size (lm-eval's scheduler re-derives it at
            # a few fixed points only, from whichever request is there, and divides by zero for fewer
            # requests than its schedule)
            if pos == 0 or pos >= self.batch_end:
                self.batch_now = self._detect_batch_size(requests, pos)
                self.batch_end = pos + self.batch_now
                self.batch_requests = requests[pos:self.batch_end]
            return self.batch_now

        def _model_call(self, inps, attn_mask=None, labels=None):
            keep = self._positions_to_keep(inps) if attn_mask is None and labels is None else None
            self.positions[1] += inps.numel()
            if keep is None:
                self.positions[0] += inps.numel()
                return super()._model_call(inps, attn_mask, labels)
            self.positions[0] += inps.shape[0] * keep
            with torch.no_grad():
                return self.model(inps, logits_to_keep=keep).logits

        def _positions_to_keep(self, inps):
            """How many trailing positions hold every continuation of this batch, or None (all of them).

            lm-eval slices each request's continuation from the logits at ``inplen + (positions
            returned − padded length)``, so logits of the last ``K`` positions score the same when
            ``K ≥ padded length − inplen + contlen`` for every request. Only when this batch is the one
            the scheduler formed (same tokens) and the model takes ``logits_to_keep``."""
            batch = self.batch_requests
            if not trims or self.mixed_precision_dtype is not None or not batch or len(batch) != inps.shape[0]:
                return None
            padded = inps.shape[1]
            need = 0
            for row, (_, context_enc, continuation_enc) in zip(inps, batch):
                inp = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
                if len(inp) > padded or row[:len(inp)].tolist() != inp:
                    return None
                need = max(need, padded - len(inp) + len(continuation_enc))
            return need if 0 < need < padded else None

    lm = BudgetedHFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto", max_batch_size=zs.batch_size,
                      max_length=max_length, device=str(device), add_bos_token=zs.add_bos_token)
    return lm, max_length


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


def evaluate_zero_shot(model, tokenizer, zs: ZeroShotSpec | Mapping, data: DataSpec | Mapping | None = None,
                       logits_gb: float | None = None) -> dict:
    """Score ``zs.tasks`` with lm-eval; returns the ``metrics.zero_shot`` block of the record.

    ``logits_gb``: memory for one batch's logits (``runtime.zero_shot_logits_gb``); the batch then
    shrinks for long requests and large vocabularies, ``zs.batch_size`` being the most (``_lm``)."""
    import lm_eval
    from lm_eval.tasks import get_task_dict

    zs, data = validate_zero_shot(zs), as_data(data)
    sources = task_sources(list(zs.tasks), data)
    t0 = time.perf_counter()
    if logits_gb is not None and not logits_gb > 0:
        raise ConfigError(f"runtime.zero_shot_logits_gb={logits_gb!r}: need a number > 0, or null for a fixed batch size")
    lm, max_length = _lm(model, tokenizer, zs, logits_gb)
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
                scores = result["results"][name]
                row = {}
                for metric in METRICS:
                    if f"{metric},none" in scores:
                        row[metric] = _number(scores[f"{metric},none"])
                        row[f"{metric}_stderr"] = _number(scores.get(f"{metric}_stderr,none"))
                n = (result.get("n-samples") or {}).get(name, {})
                row["n_docs"] = n.get("effective")
                info = (task_info(name, data.root, verify=data.verify_checksums)
                        if source == "local" else {"source": "hub"})
                info.update(version=(result.get("versions") or {}).get(name),
                            n_shot=(result.get("n-shot") or {}).get(name), n_docs_total=n.get("original"),
                            chance=_chance(tasks[name]))
                out["tasks"][name], out["task_info"][name] = row, info
                out["samples"][name] = per_document(result["samples"][name])
    finally:
        model.train(was_training)
    accs = [r["acc"] for r in out["tasks"].values() if isinstance(r.get("acc"), float)]
    out["mean_acc"] = sum(accs) / len(accs) if len(accs) == len(out["tasks"]) else None
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if logits_gb is not None:
        out["config"]["logits_gb"] = logits_gb
        out["config"]["batch_sizes_used"] = sorted(set(getattr(lm, "used", [])))
        kept, total = getattr(lm, "positions", (0, 0))
        out["config"]["logit_positions_share"] = round(kept / total, 4) if total else None
    for name, row in out["tasks"].items():
        log.info("zero-shot %s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in row.items()
                                                      if isinstance(v, float) and not k.endswith("stderr")))
    return out

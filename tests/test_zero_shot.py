"""Zero-shot evaluation: offline task data, lm-eval task definitions, the whole path on a tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from pruning.errors import ConfigError, DataError
from pruning.evaluation.zero_shot import TASKS_DIR, task_sources, validate_zero_shot
from pruning.evaluation.zero_shot_data import TASKS, load_docs
from tests.conftest import SHARED_DATA, compose_cfg, tiny_overrides

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")

VALID = {"tasks": ["piqa"], "num_fewshot": 0, "limit": None, "batch_size": 4, "add_bos_token": None}


def _task_manager(root: Path, verify: bool = True):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                       metadata={"data_root": str(root), "verify_checksums": verify})


def _requests(task, limit=None) -> list[tuple]:
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [inst.args for inst in task.instances]


# --- the offline copies: counts and hand-checked records ------------------------------------------------

@needs_shared
def test_every_offline_task_has_its_published_document_count():
    for task, spec in TASKS.items():
        assert len(load_docs(task, SHARED_DATA)) == spec.n_docs, task


@needs_shared
def test_hand_checked_records_and_label_balance():
    piqa = load_docs("piqa", SHARED_DATA)
    assert piqa[0]["goal"] == "How do I ready a guinea pig cage for it's new occupants?"
    assert [d["label"] for d in piqa[:3]] == [0, 1, 1]  # valid-labels.lst starts 0, 1, 1
    assert piqa[1]["sol1"] == "replace drawer with bobby pin "  # trailing space kept (exact data)

    boolq = load_docs("boolq", SHARED_DATA)
    assert boolq[0]["question"] == "does ethanol take more energy make that produces" and boolq[0]["label"] == 0
    assert boolq[0]["passage"].startswith("All biomass goes through at least some of these steps")
    assert Counter(d["label"] for d in boolq) == {1: 2033, 0: 1237}
    snake = [d for d in boolq if "\nQuestion: " in d["passage"]]  # split on the *last* "\nQuestion: "
    assert len(snake) == 1 and "sea snake" in snake[0]["passage"].lower() + snake[0]["question"]

    rte = load_docs("rte", SHARED_DATA)
    assert rte[0]["sentence2"] == "Christopher Reeve had an accident." and rte[0]["label"] == 1  # not_entailment
    assert rte[1]["label"] == 0  # entailment = 0, as in GLUE
    assert Counter(d["label"] for d in rte) == {0: 146, 1: 131}

    hella = load_docs("hellaswag", SHARED_DATA)
    assert hella[0]["ctx"] == "Roof shingle removal: A man is sitting on a roof. he"
    assert hella[0]["label"] == 3 and hella[0]["endings"][3] == "starts pulling up roofing on a roof."
    assert hella[1]["label"] == 3 and hella[1]["endings"][3] == "stands and lifts the weight over her head."

    wino = load_docs("winogrande", SHARED_DATA)
    assert wino[0]["context_options"][1].endswith("so Maria") and wino[0]["gold"] == 1
    assert Counter(d["gold"] for d in wino) == {0: 628, 1: 639}

    arc = load_docs("arc_easy", SHARED_DATA)
    assert arc[0]["answerKey"] == "A" and arc[0]["choices"]["text"][0].startswith("Sunlight is the source")
    assert arc[1]["answerKey"] == "B" and arc[1]["choices"]["text"][1] == "breathing mask"
    # options repeated by the copy's padding are dropped again: 7 (Easy) and 4 (Challenge) 3-option items
    assert Counter(len(d["choices"]["text"]) for d in arc)[3] == 7
    assert Counter(len(d["choices"]["text"]) for d in load_docs("arc_challenge", SHARED_DATA))[3] == 4

    obqa = load_docs("openbookqa", SHARED_DATA)
    assert obqa[0]["answerKey"] == "B" and obqa[0]["choices"]["text"][1] == "quit eating lunch out"
    assert obqa[2]["question_stem"] == "Predators eat" and obqa[2]["answerKey"] == "C"

    assert load_docs("lambada_openai", SHARED_DATA)[0]["text"].endswith("I don't care about signs")


@needs_shared
def test_local_tasks_build_with_their_document_counts_and_gold_labels():
    from lm_eval.tasks import get_task_dict

    tasks = get_task_dict(list(TASKS), _task_manager(SHARED_DATA))
    for name, spec in TASKS.items():
        task = tasks[name]
        assert len(task.eval_docs) == spec.n_docs, name
    assert tasks["piqa"].doc_to_target(tasks["piqa"].eval_docs[1]) == 1
    assert tasks["rte"].doc_to_target(tasks["rte"].eval_docs[0]) == 1
    assert tasks["arc_easy"].doc_to_target(tasks["arc_easy"].eval_docs[0]) == 0
    hella = tasks["hellaswag"].eval_docs[0]
    assert tasks["hellaswag"].doc_to_target(hella) == 3 and hella["query"].startswith("Roof shingle removal:")
    wino = _requests(tasks["winogrande"], limit=1)  # partial evaluation: two contexts, one shared target
    assert wino[0][0].endswith("so Sarah") and wino[1][0].endswith("so Maria") and wino[0][1] == wino[1][1]
    lam = _requests(tasks["lambada_openai"], limit=1)
    assert lam[0][1] == " signs" and lam[0][0].endswith("I don't care about")


# --- our YAMLs against lm-eval's stock YAMLs on the same documents -------------------------------------

def _stock_task(name: str, docs: list[dict], split: str):
    """lm-eval's own task config for ``name``, fed ``docs`` instead of its hub dataset."""
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    stock_dir = Path(lm_eval.tasks.__file__).parent
    path = {"piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
            "openbookqa": "openbookqa/openbookqa.yaml", "boolq": "super_glue/boolq/default.yaml",
            "rte": "glue/rte/default.yaml", "lambada_openai": "lambada/lambada_openai.yaml",
            "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml"}[name]
    config = load_yaml(stock_dir / path)
    assert config["task"] == name
    config.pop("tag", None)
    for key in ("training_split", "validation_split", "test_split"):  # only the scored split is supplied
        if config.get(key) != split:
            config[key] = None
    config["custom_dataset"] = lambda **_: datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
    return ConfigurableTask(config=config)


def _as_hub_docs(name: str, docs: list[dict]) -> list[dict]:
    """HellaSwag and WinoGrande documents in the hub's schema (the offline copies use other fields)."""
    import os

    if name == "hellaswag":  # the copy's context is `activity_label: ctx` with no ctx_a/ctx_b split
        out = []
        for d in docs:
            label, _, ctx = d["ctx"].partition(": ")
            out.append({"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": d["endings"],
                        "label": str(d["label"])})
        return out
    if name == "winogrande":  # the copy's contexts are the sentence up to the blank with each option
        out = []
        for d in docs:
            prefix = os.path.commonprefix(d["context_options"])
            opts = [c[len(prefix):] for c in d["context_options"]]
            out.append({"sentence": prefix + "_" + d["continuation"], "option1": opts[0], "option2": opts[1],
                        "answer": str(d["gold"] + 1)})
        return out
    return docs


@needs_shared
@pytest.mark.parametrize("name", ["piqa", "arc_easy", "arc_challenge", "openbookqa", "boolq", "rte", "lambada_openai",
                                  "hellaswag", "winogrande"])
def test_request_strings_equal_the_stock_tasks(name):
    """Same (context, continuation) strings as lm-eval's stock task on the same records. For PIQA the
    records are the exact hub data, so this is the stock task's request list itself (all 1838)."""
    from lm_eval.tasks import get_task_dict

    n = None if name == "piqa" else 600  # PIQA: every record; the others: the first 600 (time)
    ours = get_task_dict([name], _task_manager(SHARED_DATA))[name]
    assert len(ours.eval_docs) == TASKS[name].n_docs
    docs = load_docs(name, SHARED_DATA)[:n]
    stock = _stock_task(name, _as_hub_docs(name, docs), TASKS[name].split)
    mine, theirs = _requests(ours, limit=n), _requests(stock)
    assert len(mine) == len(theirs) > 0 and mine == theirs
    eval_docs = list(ours.eval_docs)  # a property: process_docs runs again on every access
    gold = [ours.doc_to_target(eval_docs[i]) for i in range(len(docs))]
    assert [stock.doc_to_target(d) for d in stock.eval_docs] == gold


# --- configuration and sources ------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    ({"tasks": "piqa"}, "tasks='piqa': need a list of strings"),
    ({"tasks": []}, "list of lm-eval task names"),
    ({"tasks": ["piqa", "piqa"]}, "names a task twice"),
    ({"limit": 0}, "limit=0"),
    ({"limit": 1.5}, "limit=1.5"),
    ({"limit": True}, "limit=True"),
    ({"num_fewshot": -1}, "num_fewshot=-1"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"add_bos_token": "yes"}, "add_bos_token='yes'"),
])
def test_bad_zero_shot_settings_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        validate_zero_shot({**VALID, **bad})


def test_task_sources_follow_the_data_settings(tiny_data_root, tmp_path):
    assert task_sources(["piqa", "hellaswag"], {"root": str(tiny_data_root)}) == {"piqa": "local", "hellaswag": "local"}
    assert task_sources(["piqa"], {"root": str(tiny_data_root), "source": "hub"}) == {"piqa": "hub"}
    # a task without an offline copy: the stock task under auto, an error naming it under local
    assert task_sources(["mmlu"], {"root": str(tiny_data_root)}) == {"mmlu": "hub"}
    with pytest.raises(DataError, match="'mmlu' cannot be read offline"):
        task_sources(["mmlu"], {"root": str(tiny_data_root), "source": "local"})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert task_sources(["piqa"], {"root": str(empty)}) == {"piqa": "hub"}
    with pytest.raises(DataError, match="piqa"):
        task_sources(["piqa"], {"root": str(empty), "source": "local"})


def test_checksums_are_verified_for_the_offline_copies(tiny_data_root):
    with pytest.raises(DataError, match="checksum mismatch"):  # the synthetic PIQA is not the published file
        load_docs("piqa", tiny_data_root)
    assert len(load_docs("piqa", tiny_data_root, verify=False)) == 6


def test_eval_presets_compose():
    full = compose_cfg(["eval=zeroshot"]).eval
    assert full.perplexity.enabled and full.zero_shot.enabled
    assert list(full.zero_shot.tasks) == ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                          "openbookqa", "piqa"]
    wanda = compose_cfg(["eval=zeroshot_wanda"]).eval.zero_shot
    assert "piqa" not in wanda.tasks and len(wanda.tasks) == 7 and wanda.add_bos_token is False
    assert "zero_shot" not in compose_cfg([]).eval  # eval=ppl: no zero-shot, unchanged config hash


# --- the whole path on a tiny random model -------------------------------------------------------------

def test_tiny_model_runs_the_whole_zero_shot_path(tiny_data_root, tmp_path, monkeypatch):
    import multiprocessing

    from analysis.collect import collect
    from analysis.zeroshot_table import zeroshot_table
    from pruning.pipeline import run_job

    def no_fork(*args, **kwargs):  # LAMBADA's bootstrapped stderr must not fork (a forked child hung pytest)
        raise AssertionError("lm-eval forked a multiprocessing pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_fork)
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)

    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "eval=zeroshot", "eval.zero_shot.limit=4",
                                     "eval.zero_shot.batch_size=3",
                                     "eval.zero_shot.tasks=[boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,"
                                     "openbookqa,piqa,lambada_openai]"))
    record = run_job(cfg, tmp_path / "job")
    zs = record["metrics"]["zero_shot"]
    assert set(zs["tasks"]) == set(TASKS)
    for name, row in zs["tasks"].items():
        assert 0.0 <= row["acc"] <= 1.0 and row["n_docs"] == 4, name
        info = zs["task_info"][name]
        assert info["source"] == "local" and info["checksum_verified"] is False and info["version"] is not None
    for name in ("hellaswag", "arc_easy", "piqa", "openbookqa"):
        assert 0.0 <= zs["tasks"][name]["acc_norm"] <= 1.0
    assert "acc_norm" not in zs["tasks"]["boolq"] and zs["tasks"]["lambada_openai"]["perplexity"] > 1
    # chance level from the documents: ARC's first item has 3 options after de-padding
    assert zs["task_info"]["arc_easy"]["chance"] == pytest.approx((1 / 3 + 5 / 4) / 6)
    assert zs["task_info"]["piqa"]["chance"] == 0.5 and zs["task_info"]["lambada_openai"]["chance"] is None
    assert zs["mean_acc"] == pytest.approx(sum(r["acc"] for r in zs["tasks"].values()) / len(TASKS))
    assert zs["lm_eval_version"] == record["versions"]["lm_eval"] and record["timings"]["eval_zeroshot_s"] > 0
    on_disk = json.loads((tmp_path / "job" / "results.json").read_text())
    assert on_disk["metrics"]["zero_shot"]["tasks"]["piqa"] == zs["tasks"]["piqa"]
    samples = json.loads((tmp_path / "job" / zs["samples_file"]).read_text())  # per document, beside the record
    for name in ("piqa", "boolq", "hellaswag"):
        docs = samples[name]
        assert docs["doc_id"] == list(range(4)) and len(set(docs["doc_hash"])) == 4
        assert sum(docs["acc"]) / 4 == zs["tasks"][name]["acc"]
        assert all(p is not None for p in docs["pred"])
        assert [int(p == t) for p, t in zip(docs["pred"], docs["target"])] == docs["acc"]

    frame = collect(tmp_path).frame
    assert frame.loc[0, "zs_piqa_acc"] == zs["tasks"]["piqa"]["acc"]
    table = zeroshot_table(frame, tasks=["boolq", "piqa"])
    assert table.values.shape == (1, 3)


def test_a_bad_zero_shot_setting_fails_before_pruning(tiny_data_root, tmp_path):
    from pruning.pipeline import run_job

    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude", "eval=zeroshot",
                                     "eval.zero_shot.limit=0"))
    with pytest.raises(ConfigError, match="limit=0"):
        run_job(cfg, tmp_path / "job")
    rec = json.loads((tmp_path / "job" / "results.json").read_text())  # nothing computed, the reason recorded
    assert rec["status"] == "failed" and rec["stage"] == "validation" and "limit=0" in rec["error"]


def test_an_unknown_task_name_fails_before_the_model_is_loaded(tiny_data_root, tmp_path, monkeypatch):
    import pruning.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude", "eval=zeroshot",
                                     "eval.zero_shot.tasks=[piqa,piqa_typo]"))
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['piqa_typo'\]"):
        pipeline.run_job(cfg, tmp_path / "job")
    assert json.loads((tmp_path / "job" / "results.json").read_text())["stage"] == "validation"


def test_acc_and_acc_norm_are_scored_exactly_on_a_model_with_known_likelihoods(tiny_data_root):
    """A model whose next-token distribution is uniform: every continuation's log-likelihood is
    -len(tokens)·log V, so lm-eval's acc picks the option with the fewest tokens (the first on ties) and
    acc_norm (log-likelihood per character; one byte token per character here) always picks option 0."""
    import numpy as np

    from pruning.evaluation.zero_shot import evaluate_zero_shot
    from pruning.models import load_model

    lm = load_model(compose_cfg(["model=tiny-llama"]).model)
    lm.model.model.norm.weight.data.zero_()  # hidden state 0 -> logits 0 -> uniform
    tasks = ["arc_easy", "piqa", "hellaswag"]
    zs = evaluate_zero_shot(lm.model, lm.tokenizer, {"tasks": tasks, "num_fewshot": 0, "limit": None,
                                                     "batch_size": 4}, {"root": str(tiny_data_root),
                                                                        "verify_checksums": False})
    from lm_eval.tasks import get_task_dict
    from pruning.evaluation.zero_shot import _task_manager
    manager = _task_manager("local", {"root": str(tiny_data_root), "verify_checksums": False})
    for name in tasks:
        task = get_task_dict([name], manager)[name]
        docs = list(task.eval_docs)
        acc = acc_norm = 0
        for doc in docs:
            choices = task.doc_to_choice(doc)
            gold = task.doc_to_target(doc)
            gold = choices.index(gold) if isinstance(gold, str) else gold
            lengths = [len(lm.tokenizer(" " + c).input_ids) for c in choices]
            acc += int(np.argmax([-n for n in lengths]) == gold)
            acc_norm += int(gold == 0)
        assert zs["tasks"][name]["acc"] == acc / len(docs), name
        assert zs["tasks"][name]["acc_norm"] == acc_norm / len(docs), name


def test_logits_batch_size_fits_the_budget():
    from pruning.evaluation.budgeted_lm import LOGIT_COPIES, logits_batch_size

    gemma = 262_144
    assert logits_batch_size(600, gemma, 4, 32) == 2  # 600 x 262k x 4 B x 3 copies = 1.76 GiB per sequence
    assert logits_batch_size(100, gemma, 4, 32) == 13
    assert logits_batch_size(100, 49_152, 4, 32) == 32  # SmolLM2's vocabulary: the configured batch
    assert logits_batch_size(2048, gemma, 1, 32) == 1  # never below one
    size = logits_batch_size(300, 1000, 0.01, 64)
    assert size * 300 * 1000 * 4 * LOGIT_COPIES <= 0.01 * 2**30 < (size + 1) * 300 * 1000 * 4 * LOGIT_COPIES


def test_a_logits_budget_sizes_each_batch_by_its_longest_request_and_scores_the_same(tiny_data_root):
    from pruning.evaluation.budgeted_lm import LOGIT_COPIES
    from pruning.evaluation.zero_shot import evaluate_zero_shot
    from pruning.models import load_model

    lm = load_model(compose_cfg(["model=tiny-llama"]).model)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    zs = {"tasks": ["hellaswag", "piqa"], "num_fewshot": 0, "limit": 6, "batch_size": 8}
    data = {"root": str(tiny_data_root), "verify_checksums": False}
    fixed = evaluate_zero_shot(lm.model, lm.tokenizer, zs, data)
    budget = 3 * 200 * vocab * 4 * LOGIT_COPIES / 2**30  # three sequences of 200 tokens
    shapes = []
    hook = lm.model.register_forward_pre_hook(lambda mod, args, kwargs: shapes.append(
        tuple((args[0] if args else kwargs["input_ids"]).shape)), with_kwargs=True)
    try:
        sized = evaluate_zero_shot(lm.model, lm.tokenizer, zs, data, logits_gb=budget)
    finally:
        hook.remove()
    used = sized["config"]["batch_sizes_used"]
    assert sized["config"]["logits_gb"] == budget and len(used) > 1 and min(used) >= 1 and max(used) <= 8
    assert len({b for b, _ in shapes}) > 1  # batches of several sizes, each within the budget (or a single sequence)
    assert 0 < sized["config"]["logit_positions_share"] < 1  # logits only where continuations are
    assert all(b == 1 or b * t * vocab * 4 * LOGIT_COPIES <= budget * 2**30 for b, t in shapes), shapes
    for name in zs["tasks"]:
        for key in ("acc", "acc_norm", "pred"):
            assert sized["samples"][name][key] == fixed["samples"][name][key], (name, key)
        assert sized["tasks"][name]["acc"] == fixed["tasks"][name]["acc"], name
    with pytest.raises(ConfigError, match="zero_shot_logits_gb=0"):
        evaluate_zero_shot(lm.model, lm.tokenizer, zs, data, logits_gb=0)

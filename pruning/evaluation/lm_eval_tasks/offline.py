"""Helpers the task YAMLs of this folder name with ``!function offline.<name>``.

lm-eval imports this file by path (not as part of the ``pruning`` package); it only forwards to
:mod:`pruning.evaluation.zero_shot_data`, where the parsing lives and is tested.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import datasets

from pruning.evaluation.zero_shot_data import TASKS, load_docs


def load(task: str, data_root: str | None = None, verify_checksums: bool = True, **_) -> datasets.DatasetDict:
    """``custom_dataset``: lm-eval calls it with the TaskManager metadata and ``dataset_kwargs``."""
    docs = load_docs(task, data_root, verify=verify_checksums)
    return datasets.DatasetDict({TASKS[task].split: datasets.Dataset.from_list(docs)})


@lru_cache(maxsize=1)
def _stock_hellaswag_preprocess():
    """lm-eval's own HellaSwag ``preprocess`` (bracket tags, double spaces), from the installed harness."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / "hellaswag" / "utils.py"
    spec = importlib.util.spec_from_file_location("_lm_eval_hellaswag_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.preprocess


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    preprocess = _stock_hellaswag_preprocess()

    def one(doc):
        return {"query": preprocess(doc["ctx"]), "choices": [preprocess(e) for e in doc["endings"]],
                "gold": int(doc["label"])}

    return dataset.map(one)


# WinoGrande in lm-eval's partial-evaluation form: the contexts differ (sentence up to the blank with
# each option), the target (the rest of the sentence) is shared; doc_to_text gives the gold index.
def winogrande_text(doc) -> int:
    return int(doc["gold"])


def winogrande_target(doc) -> str:
    return doc["continuation"]


def winogrande_choice(doc) -> list[str]:
    return list(doc["context_options"])

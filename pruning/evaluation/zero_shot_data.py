"""Offline documents for the zero-shot tasks, read from the data root (``../shared/data``).

Each loader turns our copy of a task's data into documents with the *same fields as the Hugging
Face dataset lm-eval's stock task reads* wherever our copy allows it, so the task YAMLs in
``lm_eval_tasks/`` can keep the stock prompts, targets and metrics unchanged. Where the copy
forces a difference it is listed in :data:`TASKS` (``deviations``) and recorded in every result.

Provenance, checksums and caveats of the files: ``docs/evaluation.md`` (zero-shot evaluation in detail). The functions here are pure file parsing (no lm-eval, no torch), so
tests can check documents and gold labels directly.
"""

from __future__ import annotations

import bz2
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pruning.data import file_sha256, resolve_data_root, verify_file
from pruning.errors import DataError


@dataclass(frozen=True)
class TaskData:
    """Where one task's offline copy lives and how it differs from lm-eval's stock task."""

    files: tuple[tuple[str, str], ...]  # (path relative to the data root, published sha256)
    split: str  # the split lm-eval's stock task scores
    n_docs: int  # documents in the published copy (its checksum implies the count)
    exact: bool  # same documents and fields as the stock task's dataset
    deviations: tuple[str, ...] = ()


TASKS: dict[str, TaskData] = {
    "boolq": TaskData(
        (("boolq/boolq_validation_mosaicml.jsonl", "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8"),),
        "validation", 3270, False,
        ("passages lack the '<Wikipedia title> -- ' prefix of super_glue/boolq (MosaicML copy); "
         "prompt and choices otherwise as the stock task",)),
    "rte": TaskData(
        (("rte/superglue_rte_val.jsonl", "ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1"),),
        "validation", 277, True),
    "hellaswag": TaskData(
        (("hellaswag/hellaswag_val_full.txt.bz2", "50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b"),),
        "validation", 10042, False,
        ("context is activity_label + ': ' + ctx without lm-eval's ctx_b.capitalize() (the preprocessed copy "
         "has no ctx_a/ctx_b split)",
         "the copy removed only [header], [step], [substeps], [title]; lm-eval's preprocess() is applied again "
         "on top, so scores are close to but not identical with the stock task")),
    "winogrande": TaskData(
        (("winogrande/winogrande_xl_validation_mosaicml.jsonl",
          "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7"),),
        "validation", 1267, True),
    "arc_easy": TaskData(
        (("arc_easy/arc_easy_test_mosaicml.jsonl", "d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5"),),
        "test", 2376, True,
        ("3-option questions were padded to 4 in the MosaicML copy; the repeated option is dropped again",)),
    "arc_challenge": TaskData(
        (("arc_challenge/arc_challenge_test_mosaicml.jsonl",
          "1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636"),),
        "test", 1172, True,
        ("3-option questions were padded to 4 in the MosaicML copy; the repeated option is dropped again",)),
    "openbookqa": TaskData(
        (("openbookqa/openbookqa_test_mosaicml.jsonl",
          "adb2e5c7f8db810ddad4d6b2bf53dcc86dcc545499f7aafcaf42a8e179476c09"),),
        "test", 500, True),
    "piqa": TaskData(
        (("piqa/valid.jsonl", "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d"),
         ("piqa/valid-labels.lst", "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb")),
        "validation", 1838, True),
    "lambada_openai": TaskData(
        (("lambada_openai/lambada_test.jsonl", "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"),),
        "test", 5153, True),
}

LETTERS = "ABCDEFGHIJ"


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _multiple_choice(question_key: str, question: str, choices: list[str], gold: int) -> dict:
    """HF ``ai2_arc`` / ``openbookqa`` fields; options repeated by padding are dropped (first kept)."""
    unique = list(dict.fromkeys(choices))
    answer = unique.index(choices[gold])
    return {question_key: question, "choices": {"text": unique, "label": list(LETTERS[: len(unique)])},
            "answerKey": LETTERS[answer]}


def _boolq(files: list[Path]) -> list[dict]:
    docs = []
    for r in _jsonl(files[0]):
        query = r["query"]
        if not query.startswith("Passage: ") or not query.endswith("?"):
            raise DataError(f"unexpected BoolQ record in {files[0]}: {query[:80]!r}")
        # One passage contains a spurious "\nQuestion: ": split on the last one.
        passage, question = query[len("Passage: "):-1].rsplit("\nQuestion: ", 1)
        docs.append({"passage": passage, "question": question, "label": int(r["gold"])})
    return docs


def _rte(files: list[Path]) -> list[dict]:
    labels = {"entailment": 0, "not_entailment": 1}  # GLUE rte: 0 = entailment
    return [{"sentence1": r["premise"], "sentence2": r["hypothesis"], "label": labels[r["label"]], "idx": r["idx"]}
            for r in _jsonl(files[0])]


def _hellaswag(files: list[Path]) -> list[dict]:
    with bz2.open(files[0], "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{files[0]}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    return [{"ctx": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]


def _winogrande(files: list[Path]) -> list[dict]:
    return [{"context_options": r["context_options"], "continuation": r["continuation"], "gold": int(r["gold"])}
            for r in _jsonl(files[0])]


def _arc(files: list[Path]) -> list[dict]:
    docs = []
    for r in _jsonl(files[0]):
        question = re.sub(r"^Question: ", "", r["query"])
        docs.append(_multiple_choice("question", question, r["choices"], int(r["gold"])))
    return docs


def _openbookqa(files: list[Path]) -> list[dict]:
    return [_multiple_choice("question_stem", r["query"], r["choices"], int(r["gold"])) for r in _jsonl(files[0])]


def _piqa(files: list[Path]) -> list[dict]:
    docs = _jsonl(files[0])
    labels = [int(x) for x in files[1].read_text().split()]
    if len(labels) != len(docs):
        raise DataError(f"{files[1]} has {len(labels)} labels for {len(docs)} PIQA records")
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": y} for d, y in zip(docs, labels)]


def _lambada(files: list[Path]) -> list[dict]:
    return [{"text": r["text"]} for r in _jsonl(files[0])]


_PARSERS = {"boolq": _boolq, "rte": _rte, "hellaswag": _hellaswag, "winogrande": _winogrande, "arc_easy": _arc,
            "arc_challenge": _arc, "openbookqa": _openbookqa, "piqa": _piqa, "lambada_openai": _lambada}


def task_files(task: str, root: str | Path | None = None) -> list[Path]:
    """The task's files in the data root; :class:`DataError` naming what is missing."""
    if task not in TASKS:
        raise DataError(f"no offline copy of task {task!r}; offline tasks: {', '.join(TASKS)}")
    data_root = resolve_data_root(root)
    if data_root is None:
        raise DataError(f"no data root for the offline {task!r} task (set PRUNING_DATA_ROOT or data.root)")
    paths = [data_root / rel for rel, _ in TASKS[task].files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"task {task!r}: missing {', '.join(missing)} in the data root {data_root}")
    return paths


def load_docs(task: str, root: str | Path | None = None, *, verify: bool = True) -> list[dict]:
    """The task's documents, in file order, after checking every file's published sha256
    (``verify=False``: any copy in the same format, e.g. a synthetic one in tests)."""
    paths = task_files(task, root)
    if verify:
        for path, (_, sha) in zip(paths, TASKS[task].files):
            verify_file(path, sha)
    return _PARSERS[task](paths)


def task_info(task: str, root: str | Path | None = None, *, verify: bool = True) -> dict:
    """Provenance of an offline task for the result record."""
    spec, paths = TASKS[task], task_files(task, root)
    return {"source": "local", "split": spec.split, "exact": spec.exact, "deviations": list(spec.deviations),
            "files": [str(p) for p in paths], "sha256": [file_sha256(p) for p in paths],
            "checksum_verified": verify}

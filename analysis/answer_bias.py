"""How often each model gives each answer of a multiple-choice task, and its accuracy per right answer.

    python -m analysis.answer_bias analysis/records/zeroshot-table --task boolq

One row per job directory below the given tree that kept its per-document zero-shot results
(``zero_shot_samples.json``): the share of documents on which the model picked each choice index, the
share of documents whose right answer is that index, and the accuracy on those documents. A model whose
accuracy per right answer tracks its answer shares answers by its prior, not by the document (BoolQ on
SmolLM2-135M and Gemma-3-270M, docs/benchmarks.md, "Zero-shot accuracy of pruned models").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.significance import load_samples
from pruning.results import RESULTS_FILE, read_record


def answer_bias(columns: dict) -> dict:
    """Per choice index c: ``answered_c`` (% of documents answered c), ``right_c`` (% whose answer is c) and
    ``acc_on_c`` (% answered right among those); documents without an integer target are left out."""
    pairs = [(t, p) for t, p in zip(columns["target"], columns["pred"]) if isinstance(t, int)]
    if not pairs:
        raise ValueError("no document with a choice-index target: this task's answers cannot be counted")
    out = {"documents": len(pairs)}
    for c in sorted({t for t, _ in pairs} | {p for _, p in pairs}):
        on_c = [p for t, p in pairs if t == c]
        out[f"answered_{c}"] = 100 * sum(p == c for _, p in pairs) / len(pairs)
        out[f"right_{c}"] = 100 * len(on_c) / len(pairs)
        out[f"acc_on_{c}"] = 100 * sum(p == c for p in on_c) / len(on_c) if on_c else float("nan")
    return out


def answer_bias_table(root: str | Path, task: str) -> pd.DataFrame:
    """:func:`answer_bias` of ``task`` for every job below ``root`` that kept samples, indexed by job path."""
    rows = {}
    for path in sorted(Path(root).rglob(RESULTS_FILE)):
        samples = load_samples(path.parent, read_record(path))
        if samples is None:
            continue
        if task not in samples:
            raise ValueError(f"{path.parent}: no {task!r} in its zero-shot samples (tasks: {', '.join(samples)})")
        rows[path.parent.relative_to(root).as_posix()] = answer_bias(samples[task])
    if not rows:
        raise FileNotFoundError(f"{root}: no job directory with zero-shot samples below it")
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table.astype({"documents": int})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a tree of job directories (a sweep or analysis/records/<sweep>)")
    parser.add_argument("--task", required=True, help="an lm-eval task the jobs scored, e.g. boolq")
    args = parser.parse_args(argv)
    try:
        table = answer_bias_table(args.root, args.task)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.to_markdown(floatfmt=".1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The names every table and plot shares: method and dataset names in the papers' spelling and order,
the zero-shot tasks and metric presets, sparsity labels, number formats and plot markers. It imports
nothing from :mod:`analysis`, so every table module can import it (no circle through the registry)."""

from __future__ import annotations

import math

import pandas as pd

from analysis.render import EXPLODED
from pruning.evaluation.zero_shot_data import TASKS as OFFLINE_TASKS
from pruning.sparsity import parse_sparsity

METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt", "apt", "apt-exact", "apt-refit", "apt-refit-dense", "apt-refit-dense-seq", "apt-swap",
                "alps", "alps-dense-seq")
METHOD_NAMES = {"dense": "Dense", "magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "apt": "APT",
                "apt-exact": "APT-exact", "alps": "ALPS", "apt-refit": "APT-refit", "apt-swap": "APT-swap",
                "apt-refit-dense": "APT-refit-dense", "apt-refit-dense-seq": "APT-refit-dense-seq",
                "alps-dense-seq": "ALPS-dense-seq"}
DATASET_NAMES = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}
# lm-eval task names, in the column order of the Wanda / LLM-Pruner tables, and their headers.
# One list for pruning/ and analysis/: the offline tasks, defined in that order in zero_shot_data.TASKS.
TASKS = tuple(OFFLINE_TASKS)
TASK_NAMES = {"boolq": "BoolQ", "rte": "RTE", "hellaswag": "HellaSwag", "winogrande": "WinoGrande",
              "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA", "piqa": "PIQA",
              "lambada_openai": "LAMBADA"}
# Which metric each paper's table reports per task (docs/evaluation.md, "Zero-shot evaluation in detail"). Wanda's repository does not
# say; acc everywhere is assumed. LLM-Pruner's dense numbers are on the acc_norm scale for
# HellaSwag, ARC, OpenBookQA and PIQA.
METRIC_PRESETS = {
    "wanda": {t: "acc" for t in TASKS},
    "llm-pruner": {**{t: "acc" for t in TASKS},
                   **{t: "acc_norm" for t in ("hellaswag", "arc_easy", "arc_challenge", "openbookqa", "piqa")}},
}


MARKERS = {"magnitude": "v", "wanda": "s", "sparsegpt": "^", "apt": "o", "apt-exact": "D", "alps": "P", "apt-refit": "*", "apt-swap": "X",
           "apt-refit-dense": "p", "apt-refit-dense-seq": "h", "alps-dense-seq": "8"}


def sparsity_order(spec: str) -> tuple:
    """Unstructured levels ascending, then N:M by ratio and M (``0.5 < 0.6 < … < 2:4 < 4:8``)."""
    if spec == "dense":
        return (0, 0.0, 0)
    sp = parse_sparsity(spec)
    return (1, sp.ratio, 0) if sp.kind == "unstructured" else (2, sp.ratio, sp.m)


def method_key(label: str):
    return (METHOD_ORDER.index(label) if label in METHOD_ORDER else len(METHOD_ORDER), label)


def fmt_ppl(v, explode: float = 1e4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"NaN{EXPLODED}"
    return f"{v:.3g}{EXPLODED}" if v > explode else f"{v:.2f}"


def sparsity_name(spec: str) -> str:
    """``0.5`` → ``50%``; N:M stays."""
    if spec == "dense":
        return "dense"
    sp = parse_sparsity(spec)
    return f"{sp.ratio * 100:g}%" if sp.kind == "unstructured" else spec


def fixed(digits: int):
    """A table cell formatter: ``digits`` decimals, "–" for a missing value (None or NaN)."""
    return lambda v: "–" if v is None or v != v else f"{v:.{digits}f}"


def to_markdown(df: pd.DataFrame, formats: dict | None = None) -> str:
    """A plain Markdown table of ``df``'s columns (no index); ``formats`` maps a column to a formatter."""
    formats = formats or {}
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            cells.append("–" if missing and c not in formats else formats[c](v) if c in formats else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

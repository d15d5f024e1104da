"""Shared fixtures: a self-made data root, Hydra composition, tiny models."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import experiments.run  # noqa: F401  (registers the config resolvers)

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"
# One tiny random model per supported family (conf/model/tiny-*.yaml): the family-parametrised tests use
# this list, and tests/test_models.py checks it against conf/ and pruning/adapters.py.
TINY_FAMILIES = ("tiny-llama", "tiny-opt", "tiny-mamba", "tiny-gemma3")

_WORDS = ("the model prunes weights of every layer while the loss stays low and the "
          "solver updates the remaining weights to compensate for the removed ones").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root in the offline layout, with synthetic text (checksums must be off for it)."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(1234)
    (root / "wikitext2").mkdir()
    for split in ("test", "valid"):
        lines = [" \n", " = Title = \n", " \n"] + [f" {_sentence(rng, 40)} . \n" for _ in range(60)]
        (root / "wikitext2" / f"wiki.{split}.raw").write_text("".join(lines), encoding="utf-8")
    (root / "ptb").mkdir()
    for split in ("test", "valid"):
        (root / "ptb" / f"ptb.{split}.txt").write_text(
            "".join(f" {_sentence(rng, 20)} \n" for _ in range(80)), encoding="utf-8")
    (root / "c4").mkdir()
    for name, n in (("c4_train_shard00000_first1000.jsonl", 50), ("c4_validation_subset_2k.jsonl", 30)):
        with open(root / "c4" / name, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({"text": _sentence(rng, rng.randint(5, 120)), "timestamp": "", "url": str(i)}) + "\n")
    write_tiny_tasks(root, rng)
    return root


def write_tiny_tasks(root: Path, rng: random.Random, n: int = 6) -> None:
    """Synthetic zero-shot task files in the offline formats of ``../shared/data`` (docs/evaluation.md)."""
    import bz2

    def jsonl(rel: str, rows: list[dict]) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    s = lambda k: _sentence(rng, k)  # noqa: E731
    jsonl("boolq/boolq_validation_mosaicml.jsonl",
          [{"query": f"Passage: {s(30)}\nQuestion: {s(6)}?", "choices": ["no", "yes"], "gold": i % 2} for i in range(n)])
    jsonl("rte/superglue_rte_val.jsonl", [{"premise": s(20), "hypothesis": s(8), "idx": i,
                                            "label": ("entailment", "not_entailment")[i % 2]} for i in range(n)])
    (root / "hellaswag").mkdir(exist_ok=True)
    with bz2.open(root / "hellaswag" / "hellaswag_val_full.txt.bz2", "wt", encoding="utf-8") as f:
        for i in range(n):
            f.write("\n".join([f"Label {i}: {s(15)}", str(i % 4)] + [s(8) for _ in range(4)]) + "\n")
    jsonl("winogrande/winogrande_xl_validation_mosaicml.jsonl",
          [{"context_options": [f"{s(8)} Anna", f"{s(8)} Bob"], "continuation": s(6), "gold": i % 2} for i in range(n)])
    for task in ("arc_easy", "arc_challenge"):
        rows = [{"query": f"Question: {s(10)}?", "choices": [s(3) for _ in range(4)], "gold": i % 4} for i in range(n)]
        rows[0]["choices"][3] = rows[0]["choices"][1]  # a 3-option question padded to 4, as in the real copy
        rows[0]["gold"] = 2
        jsonl(f"{task}/{task}_test_mosaicml.jsonl", rows)
    jsonl("openbookqa/openbookqa_test_mosaicml.jsonl",
          [{"query": s(10), "choices": [s(3) for _ in range(4)], "gold": i % 4} for i in range(n)])
    jsonl("piqa/valid.jsonl", [{"goal": s(8), "sol1": s(10), "sol2": s(10)} for _ in range(n)])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{i % 2}\n" for i in range(n)))
    jsonl("lambada_openai/lambada_test.jsonl", [{"text": s(40)} for _ in range(n)])


def compose_cfg(overrides=(), return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def tiny_overrides(model: str, data_root: Path, *extra: str) -> list[str]:
    """Overrides for a fast job on a tiny model and the synthetic data root (``method=dense`` unless
    ``extra`` names a method: the project default, APT, would calibrate on 32 x 512 tokens)."""
    method = [] if any(e.startswith("method=") for e in extra) else ["method=dense"]
    return [f"model={model}", *method, "logger=none", f"data.root={data_root}", "data.verify_checksums=false",
            "eval.perplexity.seqlen=64", "eval.perplexity.max_windows=4", *extra]


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    """No test may reach a hub; W&B stays offline; caches go to a temp dir."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    if "PRUNING_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("PRUNING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNING_DATA_ROOT", raising=False)

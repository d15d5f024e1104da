"""The downstream instrument (analysis/downstream.py): flags of uninformative tasks, Holm's adjustment, the
pooled paired permutation test, equivalence and the smallest detectable difference, against values
computed by hand or by scipy's exact tests."""


import numpy as np
import pytest
from scipy import stats

from analysis.downstream import holm, pooled_paired_test, task_flags, verdict
from analysis.tables import main as tables_main


def _task(acc, target=None, pred=None):
    n = len(acc)
    return {"doc_id": list(range(n)), "doc_hash": [f"{i:016x}" for i in range(n)], "acc": list(acc),
            "target": list(target) if target is not None else [None] * n,
            "pred": list(pred) if pred is not None else [None] * n}


def test_holm_matches_the_step_down_rule_by_hand():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})  # 4·.01, 3·.03, max(.09, 2·.04)
    assert holm({"x": 0.3}) == {"x": 0.3} and holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


def test_the_pooled_permutation_p_value_is_the_exact_sign_test_on_one_task():
    a = _task([1] * 12 + [0] * 2 + [1] * 40 + [0] * 46)  # 12 documents only a gets right, 2 only b
    b = _task([0] * 12 + [1] * 2 + [1] * 40 + [0] * 46)
    test = pooled_paired_test({"t": a}, {"t": b}, {"t": "acc"}, iters=40000, seed=1)
    exact = stats.binomtest(12, 14, 0.5).pvalue  # 0.0129
    assert test["diff"] == pytest.approx(10.0) and test["p"] == pytest.approx(exact, abs=0.003)
    d = 100 * (np.array(a["acc"]) - np.array(b["acc"]))
    assert test["mde"] == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * d.std(ddof=1) / 10)
    assert verdict(test) == "better" and test["documents"] == 100


def test_identical_answers_are_equivalent_and_a_wide_interval_is_undecided():
    same = {"t": _task([1, 0] * 50), "u": _task([1, 1, 0] * 40)}
    test = pooled_paired_test(same, same, {"t": "acc", "u": "acc"})
    assert test["diff"] == 0 and test["p"] == 1.0 and test["equivalent"] and verdict(test) == "equivalent"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    noisy = pooled_paired_test({"t": _task(x)}, {"t": _task(y)}, {"t": "acc"})
    assert noisy["p"] > 0.05 and not noisy["equivalent"] and verdict(noisy) == "undecided"
    assert noisy["ci90"][0] < -1 or noisy["ci90"][1] > 1


def test_uninformative_tasks_are_flagged():
    rng = np.random.default_rng(3)
    n = 400
    target = rng.integers(0, 4, n)
    skewed = rng.choice(4, n, p=[.1, .1, .1, .7])  # right answers mostly 3
    cases = {
        "informative": (target, np.where(rng.random(n) < 0.7, target, rng.integers(0, 4, n))),
        "random": (target, rng.integers(0, 4, n)),  # at chance
        "constant": (skewed, np.full(n, 3)),  # above chance (70%), but always the same answer
        "ignores": (skewed, rng.choice(4, n, p=[.1, .1, .1, .7])),  # above chance, independent of the document
    }
    samples = {k: _task([int(p == t) for t, p in zip(tg, pr)], [int(t) for t in tg], [int(p) for p in pr])
               for k, (tg, pr) in cases.items()}
    flags = task_flags(samples, {k: 0.25 for k in samples})
    assert flags == {"informative": None, "random": "not above chance", "constant": "one answer",
                     "ignores": "answers ignore the document"}
    lambada = {"lambada_openai": _task([1] * 30 + [0] * 70)}  # no choices: above chance 0 is informative
    assert task_flags(lambada, {"lambada_openai": None}) == {"lambada_openai": None}


def _job(root, method, spec, accs, chance):
    import json

    from tests.test_analysis import record, write
    rec = record(method, 0.0 if spec == "dense" else spec, 40.0, chash=f"{method}-{spec}")
    if method == "dense":
        rec["sparsity"]["target"] = {"kind": "dense", "ratio": 0.0, "n": None, "m": None, "spec": "dense"}
    rec["metrics"]["zero_shot"] = {"tasks": {t: {"acc": sum(a) / len(a)} for t, a in accs.items()},
                                   "task_info": {t: {"chance": chance[t]} for t in accs},
                                   "samples_file": "zero_shot_samples.json", "config": {"limit": None}}
    path = write(root, f"{method}_{spec}", rec)
    (path.parent / "zero_shot_samples.json").write_text(json.dumps({t: _task(a) for t, a in accs.items()}))


def test_the_downstream_table_renders_from_records(tmp_path, capsys):
    n, chance = 300, {"piqa": 0.5, "boolq": 0.5}
    _job(tmp_path, "dense", "dense", {"piqa": [1] * 210 + [0] * 90, "boolq": [1] * 150 + [0] * 150}, chance)
    _job(tmp_path, "sparsegpt", 0.5, {"piqa": [1] * 180 + [0] * 120, "boolq": [0] * n}, chance)
    _job(tmp_path, "apt-refit-dense-seq", 0.5, {"piqa": [1] * 200 + [0] * 100, "boolq": [1] * n}, chance)
    assert tables_main([str(tmp_path), "--table", "downstream"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| smollm2-135m | 50% |"))
    assert "+6.67 [" in row and "**better**" in row and "| PIQA | BoolQ (not above chance) |" in row  # BoolQ left out
    assert tables_main([str(tmp_path), "--table", "downstream", "--tasks", "piqa,boolq"]) == 0
    assert "+53.33 [" in capsys.readouterr().out  # asked for: BoolQ's +100 points count


def test_the_downstream_preset_scores_the_informative_tasks_on_full_sets():
    from tests.conftest import compose_cfg
    cfg = compose_cfg(["+experiment=downstream"], return_hydra_config=True)
    assert list(cfg.eval.zero_shot.tasks) == ["hellaswag", "arc_easy", "piqa", "lambada_openai"]
    assert cfg.eval.zero_shot.limit is None and cfg.eval.zero_shot.enabled and cfg.sweep_name == "downstream"
    assert dict(cfg.hydra.sweeper.params) == {"method": "dense,wanda,sparsegpt,apt-refit-dense-seq",
                                              "sparsity": "0.5,2:4"}

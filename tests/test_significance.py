"""Paired significance of zero-shot differences (analysis/significance.py) and its marks in the table."""

import hashlib
import json

import pytest

from analysis.collect import collect
from analysis.significance import (bootstrap_ci, mcnemar_exact, paired_bootstrap, paired_task_test)
from analysis.tables import main as tables_main
from analysis.zeroshot_table import NOT_SIGNIFICANT, zeroshot_table
from tests.test_analysis import record, write


@pytest.mark.parametrize("b, c, p", [(0, 0, 1.0), (10, 0, 2 / 1024), (3, 7, 0.34375), (5, 5, 1.0),
                                     (1, 19, 2 * 21 / 2 ** 20)])
def test_mcnemar_exact_gives_the_binomial_p_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)
    assert mcnemar_exact(c, b) == pytest.approx(p)


def _task(acc, ids=None, hashes=None):
    ids = ids if ids is not None else list(range(len(acc)))
    return {"doc_id": ids, "doc_hash": hashes or [f"h{i}" for i in ids], "acc": acc, "acc_norm": acc}


def test_the_task_test_aligns_documents_by_id_and_refuses_different_documents():
    a = _task([1, 1, 0, 1, 0, 1])
    b = _task([1, 0, 1, 0, 0, 0][::-1], ids=list(range(6))[::-1])  # same documents, other order
    out = paired_task_test(a, b, "acc")
    assert out["n"] == 6 and out["a_only"] + out["b_only"] > 0
    assert out["acc_a"] == pytest.approx(4 / 6) and out["acc_b"] == pytest.approx(2 / 6)
    assert out["p"] == pytest.approx(mcnemar_exact(out["a_only"], out["b_only"]))
    other = _task([1] * 6, hashes=[f"x{i}" for i in range(6)])
    with pytest.raises(ValueError, match="differs between the two runs"):
        paired_task_test(a, other, "acc")


def test_documents_match_on_the_hash_prefix_a_compact_samples_file_keeps(tmp_path):
    """Jobs write the first DOC_HASH_CHARS hex digits of lm-eval's document hash; older files the whole digest."""
    from pruning.results import DOC_HASH_CHARS, write_samples_atomic

    full = [hashlib.sha256(f"doc {i}".encode()).hexdigest() for i in range(6)]
    old = _task([1, 1, 0, 1, 0, 1], hashes=full)
    path = write_samples_atomic(tmp_path / "zero_shot_samples.json", {"piqa": _task([1, 0, 1, 0, 0, 0], hashes=full)})
    new = json.loads(path.read_text())["piqa"]
    assert all(len(h) == DOC_HASH_CHARS for h in new["doc_hash"]) and path.read_text().count("\n") == 3
    assert paired_task_test(old, new, "acc")["n"] == 6
    text = write_samples_atomic(tmp_path / "w.json", {"winogrande": {"target": ["the answer text", 1], "acc": [1.0, 0.0]}})
    assert json.loads(text.read_text()) == {"winogrande": {"target": [None, 1], "acc": [1, 0]}}  # no task text kept
    assert "answer" not in text.read_text() and "1.0" not in text.read_text()
    other = _task([1] * 6, hashes=[hashlib.sha256(f"other {i}".encode()).hexdigest()[:DOC_HASH_CHARS] for i in range(6)])
    with pytest.raises(ValueError, match="differs between the two runs"):
        paired_task_test(old, other, "acc")


def test_bootstrap_p_values_and_intervals():
    same = {"piqa": _task([1, 0] * 50), "boolq": _task([0, 1, 1, 0] * 25)}
    assert paired_bootstrap(same, same, {"piqa": "acc", "boolq": "acc"}) == {"diff": 0.0, "p": 1.0}
    better = {"piqa": _task([1] * 100), "boolq": _task([1] * 100)}
    out = paired_bootstrap(better, same, {"piqa": "acc", "boolq": "acc"})
    assert out["diff"] == pytest.approx(0.5) and out["p"] == 0.0
    lo, hi = bootstrap_ci(same, {"piqa": "acc", "boolq": "acc"})
    assert lo < 0.5 < hi and hi - lo < 0.2
    assert bootstrap_ci(same, {"piqa": "acc"}, seed=3) == bootstrap_ci(same, {"piqa": "acc"}, seed=3)


def _zs_record(method, accs):
    rec = record(method, 0.5, 40.0, chash=f"zs-{method}")
    rec["metrics"]["zero_shot"] = {"tasks": {t: {"acc": sum(a) / len(a)} for t, a in accs.items()},
                                   "samples_file": "zero_shot_samples.json", "config": {"limit": 200}}
    return rec


def test_the_zero_shot_table_marks_differences_that_are_not_significant(tmp_path):
    n = 200
    base = {"piqa": [1] * 120 + [0] * 80, "boolq": [1] * 100 + [0] * 100}
    runs = {"sparsegpt": base,
            "apt": {"piqa": [1] * 160 + [0] * 40, "boolq": [1] * 102 + [0] * 98},  # piqa: +40 docs; boolq: +2
            "wanda": {"piqa": [1] * 121 + [0] * 79, "boolq": [1] * 99 + [0] * 101}}
    for method, accs in runs.items():
        path = write(tmp_path, method, _zs_record(method, accs))
        (path.parent / "zero_shot_samples.json").write_text(json.dumps({t: _task(a) for t, a in accs.items()}))
        assert len(accs["piqa"]) == n
    table = zeroshot_table(collect(tmp_path).frame, tasks=["piqa", "boolq"])
    text = table.to_markdown()
    assert table.marks.at["APT", "PIQA"] is None or NOT_SIGNIFICANT not in str(table.marks.at["APT", "PIQA"])
    assert table.marks.at["APT", "BoolQ"] == NOT_SIGNIFICANT
    assert table.marks.at["Wanda", "PIQA"] == NOT_SIGNIFICANT and table.marks.at["Wanda", "Mean"].startswith(
        NOT_SIGNIFICANT)
    assert "[" in table.marks.at["SparseGPT", "Mean"]  # every row with samples: the mean's interval
    assert "not significantly different from SparseGPT" in text and "80.00" in text
    assert "the first 200 documents of each task" in text and "not comparable with full-set numbers" in text


def test_the_zero_shot_table_can_leave_a_task_out_of_the_mean_and_its_tests(tmp_path, capsys):
    """--tasks: a task the model answers by bias alone (BoolQ here) out of the columns, the mean and the tests."""
    runs = {"sparsegpt": {"piqa": [1] * 120 + [0] * 80, "boolq": [0] * 200},
            "apt": {"piqa": [1] * 121 + [0] * 79, "boolq": [1] * 200}}  # boolq: +100 docs, all from bias
    for method, accs in runs.items():
        path = write(tmp_path, method, _zs_record(method, accs))
        (path.parent / "zero_shot_samples.json").write_text(json.dumps({t: _task(a) for t, a in accs.items()}))
    both = zeroshot_table(collect(tmp_path).frame, tasks=["piqa", "boolq"])
    assert not str(both.marks.at["APT", "Mean"]).startswith(NOT_SIGNIFICANT)  # the mean moved by BoolQ alone
    assert tables_main([str(tmp_path), "--table", "zeroshot", "--tasks", "piqa"]) == 0
    text = capsys.readouterr().out
    assert "BoolQ" not in text and "| **60.50°** | **60.50° [" in text  # Mean = PIQA alone: not significant
    with pytest.raises(SystemExit):
        tables_main([str(tmp_path), "--table", "zeroshot", "--tasks", "piqa,rte"])
    assert "tasks ['rte'] are in none of these records; they have: boolq, piqa" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables_main([str(tmp_path), "--table", "ppl", "--tasks", "piqa"])
    assert "--tasks applies to --table zeroshot or downstream only" in capsys.readouterr().err

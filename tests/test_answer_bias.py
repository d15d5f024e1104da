"""Answer shares and accuracy per right answer from a job's per-document results (analysis/answer_bias.py)."""

import pytest

from analysis.answer_bias import answer_bias, answer_bias_table, main
from pruning.results import write_json_atomic, write_samples_atomic


def test_a_model_that_always_says_yes_is_right_on_every_yes_document_and_no_other():
    out = answer_bias({"target": [1, 1, 1, 0], "pred": [1, 1, 1, 1]})
    assert out == {"documents": 4, "answered_0": 0.0, "right_0": 25.0, "acc_on_0": 0.0,
                   "answered_1": 100.0, "right_1": 75.0, "acc_on_1": 100.0}
    mixed = answer_bias({"target": [0, 1, 0, 1, None], "pred": [0, 0, 1, 1, 1]})  # text targets left out
    assert mixed["documents"] == 4 and mixed["answered_0"] == 50.0 and mixed["acc_on_0"] == 50.0
    with pytest.raises(ValueError, match="choice-index target"):
        answer_bias({"target": [None], "pred": [0]})


def test_the_table_reads_every_job_that_kept_samples(tmp_path, capsys):
    for name, pred in [("dense", [0, 0]), ("wanda_0.5", [1, 0])]:
        write_json_atomic(tmp_path / name / "results.json", {"status": "complete"})
        write_samples_atomic(tmp_path / name / "zero_shot_samples.json", {"boolq": {"target": [1, 0], "pred": pred}})
    write_json_atomic(tmp_path / "old" / "results.json", {"status": "complete"})  # kept no samples: left out
    table = answer_bias_table(tmp_path, "boolq")
    assert list(table.index) == ["dense", "wanda_0.5"] and table.loc["dense", "answered_0"] == 100.0
    assert table.loc["wanda_0.5", "acc_on_1"] == 100.0 and table["documents"].tolist() == [2, 2]
    assert main([str(tmp_path), "--task", "piqa"]) == 2
    assert "no 'piqa'" in capsys.readouterr().err

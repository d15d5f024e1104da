"""analysis/: collecting records (incomplete and duplicate ones included) and the benchmark table."""

import json
import logging

import pytest

from analysis.collect import collect, method_label
from analysis.ppl_tables import benchmark_long, benchmark_markdown, ppl_table, write_benchmark
from analysis.tables import main as tables_main
from pruning.sparsity import parse_sparsity


def record(method="apt", spec=0.5, ppl=40.0, err=0.02, chash=None, finished="2026-11-26T10:00:00+00:00",
           status="complete", variant="block", model="smollm2-135m"):
    sp = parse_sparsity(spec)
    params = {"variant": variant} if method == "apt" else {}
    return {
        "status": status, "config_hash": chash or f"{model}-{method}{variant}{spec}", "config": {"seed": 0},
        "job": {"finished": finished}, "versions": {"torch": "2.13.0", "git": {"commit": "abc"}},
        "model": {"name": model}, "method": {"name": method, "params": params},
        "sparsity": {"target": sp.as_dict(), "actual": sp.ratio},
        "protocol": {"name": "quick", "calibration": {"used": True, "dataset": "c4", "nsamples": 32, "seqlen": 512}},
        "metrics": {"perplexity": {"wikitext2": {"ppl": ppl, "nwindows": 16}}, "mean_rel_error": err},
        "timings": {"solver_s": 10.0, "prune_total_s": 90.0, "total_s": 170.0}, "memory": {"peak_rss_bytes": 2 ** 31},
        "layers": [],
    }


def write(root, name, rec):
    path = root / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec))
    return path


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    write(root, "a", record("apt", 0.5, 40.0, 0.015))
    write(root, "b", record("sparsegpt", 0.5, 44.0, 0.0175))
    write(root, "c", record("apt", "2:4", 80.0, 0.03))
    write(root, "d", record("sparsegpt", "2:4", 90.9, 0.0307))
    write(root, "e", record("magnitude", 0.5, 2.5e5, 0.06))
    write(root, "f", record("apt", 0.5, 39.0, 0.014, variant="exact"))
    write(root, "g", {**record("wanda", 0.5), "status": "failed", "error": "RuntimeError: boom"})
    (root / "h").mkdir()
    (root / "h" / "results.json").write_text('{"status": "comp')  # torn write
    return root


def test_collect_lists_incomplete_and_resolves_duplicates(sweep, tmp_path, caplog):
    other = tmp_path / "rerun"
    write(other, "a", record("apt", 0.5, 41.0, 0.015, finished="2026-11-27T10:00:00+00:00"))
    with caplog.at_level(logging.WARNING):
        col = collect(sweep, other)
    assert len(col.frame) == 6
    assert sorted(s["status"] for s in col.skipped) == ["failed", "unreadable"]
    assert len(col.duplicates) == 1 and col.duplicates[0]["kept"].endswith("rerun/a")
    apt = col.frame[(col.frame.label == "apt") & (col.frame.sparsity == "0.5")]
    assert apt["ppl_wikitext2"].tolist() == [41.0]  # the newest of the two
    assert set(col.frame.label) == {"apt", "apt-exact", "sparsegpt", "magnitude"}
    assert {"sparsity_ratio", "calib_nsamples", "solver_s", "v_torch", "git_commit", "param_variant"} <= set(col.frame)
    assert "duplicate job" in caplog.text and "boom" in caplog.text


def test_collect_errors_on_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        collect(tmp_path / "nope")


def test_method_label():
    assert method_label({"name": "apt", "params": {"variant": "exact"}}) == "apt-exact"
    assert method_label({"name": "apt", "params": {"variant": "block"}}) == "apt"
    assert method_label({"name": "wanda", "params": {}}) == "wanda"


def test_benchmark_table_orders_marks_and_computes_the_delta(sweep):
    frame = collect(sweep).frame
    ppl = ppl_table(frame, compare=("apt", "sparsegpt")).values
    assert list(ppl.columns) == ["50%", "2:4"]
    assert list(ppl.index) == ["Magnitude", "SparseGPT", "APT", "APT-exact", "APT − SparseGPT"]
    assert ppl.loc["APT − SparseGPT", "50%"] == pytest.approx(-4.0)
    assert ppl.loc["APT − SparseGPT", "2:4"] == pytest.approx(-10.9)
    long = benchmark_long(frame)
    assert long["label"].tolist()[:4] == ["magnitude", "sparsegpt", "apt", "apt-exact"]
    assert long.set_index(["sparsity", "label"]).loc[("0.5", "apt"), "solver_x_sparsegpt"] == pytest.approx(1.0)
    md = benchmark_markdown(frame)
    assert "| Magnitude | 2.5e+05† |" in md  # exploded: marked, not printed as an ordinary number
    assert "| APT − SparseGPT | -4.00 | -10.90 |" in md
    assert "| APT-exact | **39.00** |" in md  # best of its column in bold
    assert "| 0.5 | apt | 40.00 | 0.0150 | 10.0 | 90.0 | 170.0 | 1.00× |" in md


def test_benchmark_files_and_cli(sweep, capsys):
    paths = write_benchmark(sweep)
    assert [p.name for p in paths] == ["benchmark.md", "benchmark.csv"]
    text = paths[0].read_text()
    assert "Left out (not complete)" in text and "(failed)" in text
    assert tables_main([str(sweep), "--format", "csv"]) == 0  # default: the perplexity table
    assert capsys.readouterr().out.startswith("Method,50%,2:4\nMagnitude,250000,\nSparseGPT,44,90.9\n")
    assert tables_main([str(sweep), "--table", "benchmark", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("sparsity,label,ppl_wikitext2,mean_rel_error")


def test_benchmark_refuses_mixed_models(sweep):
    write(sweep, "z", record("apt", 0.7, model="gemma3-270m"))
    with pytest.raises(ValueError, match="several models"):
        benchmark_long(collect(sweep).frame)

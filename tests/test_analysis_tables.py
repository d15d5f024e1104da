"""Paper tables (golden files), the metric-map presets, plots, the notebook and the W&B report."""

import json
import os
from pathlib import Path

import pytest

from analysis.collect import collect
from analysis.ppl_tables import ppl_table
from analysis.tables import build, main as tables_main
from analysis.zeroshot_table import zeroshot_table
from tests.test_analysis import record, write

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parent.parent
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate after an intended change, then review the diff


def zs(acc, acc_norm=None):
    out = {"acc": acc, "acc_stderr": 0.01}
    if acc_norm is not None:
        out.update(acc_norm=acc_norm, acc_norm_stderr=0.01)
    return out


def with_extras(rec, c4=None, zero_shot=None, layers=None):
    if c4 is not None:
        rec["metrics"]["perplexity"]["c4"] = {"ppl": c4, "nwindows": 16}
    if zero_shot is not None:
        rec["metrics"]["zero_shot"] = {"tasks": zero_shot}
    if layers is not None:
        rec["layers"] = [{"name": f"model.layers.{b}.mlp", "block": b, "layer": "mlp", "rel_error": e, "solver_s": 0.1}
                         for b, e in enumerate(layers)]
    return rec


def dense_record(model="smollm2-135m", ppl=20.71, c4=30.5, zero_shot=None):
    rec = record("dense", 0.5, ppl, None, model=model, chash=f"dense-{model}")
    rec["sparsity"]["target"] = {"kind": "dense", "ratio": 0.0, "n": None, "m": None, "spec": "0"}
    rec["protocol"]["calibration"] = {"used": False}
    return with_extras(rec, c4, zero_shot)


@pytest.fixture
def results(tmp_path):
    """A small sweep on one model (+ one record of a second model in its own directory)."""
    root = tmp_path / "sweep"
    zs_dense = {"boolq": zs(0.60), "piqa": zs(0.66, 0.65), "hellaswag": zs(0.35, 0.41), "arc_easy": zs(0.55, 0.50)}
    write(root, "dense", dense_record(zero_shot=zs_dense))
    rows = [("magnitude", 0.5, 465.62, 0.06), ("wanda", 0.5, 46.13, 0.03), ("sparsegpt", 0.5, 44.03, 0.0175),
            ("apt", 0.5, 43.07, 0.0166), ("magnitude", "2:4", 1937.7, 0.11), ("wanda", "2:4", 160.96, 0.058),
            ("sparsegpt", "2:4", 90.87, 0.031), ("apt", "2:4", 80.5, 0.028), ("magnitude", 0.8, 2.5e5, 0.4),
            ("sparsegpt", 0.8, float("nan"), 0.3), ("apt", 0.8, 900.0, 0.25)]
    for i, (m, s, p, e) in enumerate(rows):
        extra = {}
        if s == 0.5:
            extra["zero_shot"] = {"boolq": zs(0.58 - 0.01 * i), "piqa": zs(0.62, 0.61 + 0.001 * i),
                                  "hellaswag": zs(0.31, 0.36), "arc_easy": zs(0.50, 0.45)}
            extra["layers"] = [e * (1 + b) for b in range(4)]
        write(root, f"{m}_{s}", with_extras(record(m, s, p, e), c4=1.5 * p, **extra))
    other = tmp_path / "other"
    write(other, "dense", dense_record("opt-125m", 27.66, 26.56))
    write(other, "sgpt", record("sparsegpt", 0.5, 36.85, 0.02, model="opt-125m"))
    write(other, "apt", record("apt", 0.5, 35.10, 0.018, model="opt-125m"))
    return root, other


def check_golden(name: str, text: str):
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"golden file {path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt", ["md", "latex", "csv"])
def test_ppl_table_by_sparsity_matches_golden(results, fmt):
    frame = collect(results[0]).frame
    check_golden(f"ppl_by_sparsity.{ {'md': 'md', 'latex': 'tex', 'csv': 'csv'}[fmt]}",
                 build(frame, "ppl", fmt, compare=("apt", "sparsegpt")))


def test_ppl_table_by_model_matches_golden(results):
    frame = collect(*results).frame
    frame = frame[frame.sparsity.isin(["dense", "0.5"])]
    check_golden("ppl_by_model.md", build(frame, "ppl", "md", columns="model", compare=("apt", "sparsegpt"),
                                          delta_vs_dense=True))


@pytest.mark.parametrize("fmt", ["latex", "csv"])
def test_zeroshot_table_formats_match_golden(results, fmt):
    frame = collect(results[0]).frame
    frame = frame[frame.sparsity.isin(["dense", "0.5"])]
    check_golden(f"zeroshot_llm-pruner.{ {'latex': 'tex', 'csv': 'csv'}[fmt]}",
                 build(frame, "zeroshot", fmt, metrics="llm-pruner"))


@pytest.mark.parametrize("preset", ["wanda", "llm-pruner"])
def test_zeroshot_table_matches_golden_and_preset_changes_metric(results, preset):
    frame = collect(results[0]).frame
    frame = frame[frame.sparsity.isin(["dense", "0.5"])]
    text = build(frame, "zeroshot", "md", metrics=preset)
    check_golden(f"zeroshot_{preset}.md", text)
    table = zeroshot_table(frame, preset)
    hellaswag = table.values.at["Dense", "HellaSwag"]
    assert hellaswag == pytest.approx(35.0 if preset == "wanda" else 41.0)
    assert ("HellaSwag acc_norm" in table.caption) == (preset == "llm-pruner")
    assert f"({preset} preset)" in table.caption


def test_table_rules(results):
    frame = collect(results[0]).frame
    t = ppl_table(frame, compare=("apt", "sparsegpt"))
    best = t.best()
    assert best.at["APT", "50%"] and not best.at["Dense", "50%"]  # dense never competes
    assert t.text("SparseGPT", "80%") == "NaN†" and t.text("Magnitude", "80%") == "2.5e+05†"
    assert t.text("Wanda", "80%") == "–"  # no record
    assert t.text("APT − SparseGPT", "50%") == "-0.96"
    assert t.text("APT − SparseGPT", "80%") == "–" or "nan" not in t.text("APT − SparseGPT", "80%").lower()
    with pytest.raises(ValueError, match="several models"):
        ppl_table(collect(*results).frame)
    with pytest.raises(ValueError, match="datasets present: c4, wikitext2"):
        ppl_table(frame, "ptb")
    with pytest.raises(ValueError, match="metric preset 'paper'"):
        zeroshot_table(frame, "paper")


def test_tables_cli(results, tmp_path, capsys):
    out = tmp_path / "t.tex"
    args = [str(results[0]), "--table", "ppl", "--format", "latex", "--dataset", "c4", "--out", str(out)]
    assert tables_main(args) == 0
    assert out.read_text().startswith("\\begin{table}") and "C4 perplexity" in out.read_text()
    with pytest.raises(SystemExit):
        tables_main([str(results[0]), "--compare", "apt"])
    assert "TARGET,BASELINE" in capsys.readouterr().err


def test_plots_are_written(results, tmp_path):
    from analysis.plots import main as plots_main
    assert plots_main([str(results[0]), "--out-dir", str(tmp_path / "fig"), "--formats", "png,pdf"]) == 0
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert names == ["layer_error_by_depth_50pct.pdf", "layer_error_by_depth_50pct.png",
                     "ppl_vs_sparsity_wikitext2.pdf", "ppl_vs_sparsity_wikitext2.png"]
    assert all((tmp_path / "fig" / n).stat().st_size > 5000 for n in names)


def test_plots_of_a_two_model_sweep_need_a_model(results, tmp_path):
    from analysis.plots import main as plots_main
    both = [str(results[0]), str(results[1])]
    with pytest.raises(SystemExit):
        plots_main([*both, "--figures", "ppl", "--out-dir", str(tmp_path / "fig")])  # "pick one with --model"
    with pytest.raises(SystemExit):
        plots_main([*both, "--figures", "ppl", "--model", "nope", "--out-dir", str(tmp_path / "fig")])
    assert plots_main([*both, "--figures", "ppl", "--model", "smollm2-135m", "--out-dir", str(tmp_path / "fig")]) == 0
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["ppl_vs_sparsity_wikitext2_smollm2-135m.png"]


def test_notebook_executes(results, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    nb = nbformat.read(REPO / "analysis" / "notebooks" / "paper_tables.ipynb", as_version=4)
    monkeypatch.setenv("RESULTS_DIR", str(results[0]))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's analysis package
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "analysis" / "notebooks")}}).execute()
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
    assert "12 complete jobs" in outputs and "APT − SparseGPT" in outputs and "image/png" in outputs


def test_wandb_report_offline(results, tmp_path, monkeypatch):
    from pruning.tracking import WandbTracker
    from analysis.wandb_report import report
    seen = {"tables": []}
    log_table, original = WandbTracker.log_table, WandbTracker.finish

    def logged(self, key, rows):
        seen["tables"].append((key, len(rows)))
        log_table(self, key, rows)
    monkeypatch.setattr(WandbTracker, "log_table", logged)

    def finish(self, exit_code=0):
        seen["summary"], seen["group"], seen["job_type"] = dict(self.run.summary), self.run.group, self.run.job_type
        original(self, exit_code)
    monkeypatch.setattr(WandbTracker, "finish", finish)
    out = report(results[0], out_dir=str(tmp_path), group="unit")
    assert dict(seen["tables"]) == {"records": 12, "ppl/c4": 5, "ppl/wikitext2": 5, "zeroshot": 5}
    assert seen["summary"]["report/n_records"] == 12 and (seen["group"], seen["job_type"]) == ("unit", "report")
    assert {"records", "ppl/wikitext2", "zeroshot"} <= set(seen["summary"])  # W&B keeps a reference to each table
    assert list((tmp_path / "wandb").glob("offline-run-*")) and out["tables"][0] == "records"


@pytest.fixture
def study(tmp_path):
    """A calibration study: Wanda and SparseGPT × C4 / WikiText-2 × four window counts and lengths."""
    root = tmp_path / "study"
    for method in ("wanda", "sparsegpt"):
        for calib in ("c4", "wikitext2"):
            for n, seqlen in ((16, 512), (32, 512), (128, 512), (128, 2048)):
                ppl = 40.0 - n * seqlen / 1e5 + (method == "wanda")
                rec = with_extras(record(method, 0.5, ppl, 0.02, chash=f"{method}{calib}{n}{seqlen}"), c4=60.0)
                rec["protocol"]["calibration"].update(dataset=calib, nsamples=n, seqlen=seqlen)
                write(root, f"{method}_{calib}_{n}_{seqlen}", rec)
    return root


def test_calibration_study_figure(study, tmp_path):
    """ppl against calibration tokens per method × calibration set, one panel per evaluation set."""
    from analysis.plots import calibration_effect, main as plots_main
    root = study
    fig = calibration_effect(collect(root).frame)
    assert len(fig.axes) == 2 and len(fig.axes[0].get_legend().get_texts()) == 4
    xs = sorted(set(fig.axes[0].lines[0].get_xdata()))
    assert xs == [16 * 512, 32 * 512, 128 * 512, 128 * 2048]
    assert plots_main([str(root), "--figures", "calibration", "--out-dir", str(tmp_path / "fig")]) == 0
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["calibration_study.png"]
    with pytest.raises(SystemExit):
        plots_main([str(root), "--figures", "calibrations"])


def test_label_params_separate_ablation_rows(tmp_path, capsys):
    """Two APT settings at 2:4 become two rows of the benchmark table; SparseGPT, whose parameters do
    not vary, keeps its label and stays the baseline of the time ratios."""
    root = tmp_path / "ablation"
    for name, update, ppl, solver_s in (("group", "group", 90.0, 12.0), ("block", "block", 85.0, 30.0)):
        rec = record("apt", "2:4", ppl, 0.03, chash=f"apt-{name}")
        rec["method"]["params"].update(nm_update=update, blocksize=128)
        rec["timings"]["solver_s"] = solver_s
        write(root, name, rec)
    sgpt = record("sparsegpt", "2:4", 93.4, 0.031)
    sgpt["method"]["params"] = {"blocksize": 128}
    write(root, "sgpt", sgpt)
    assert tables_main([str(root), "--table", "benchmark", "--label-params", "nm_update,blocksize"]) == 0
    out = capsys.readouterr().out
    assert "| 2:4 | apt (nm_update=group) | 90.00 |" in out and "| 2:4 | apt (nm_update=block) | 85.00 |" in out
    assert "1.20×" in out and "3.00×" in out and "| 2:4 | sparsegpt | 93.40 |" in out
    with pytest.raises(SystemExit):
        tables_main([str(root), "--label-params", "blocksize,bogus"])
    assert "no such method parameter in these records; known: blocksize, nm_update, variant" in capsys.readouterr().err


def test_label_params_show_integers_as_written(tmp_path, capsys):
    """An integer parameter that other methods lack (a column with gaps, which pandas stores as
    floats) is labelled as the config wrote it: ``refine_iters=3``, not ``refine_iters=3.0``."""
    root = tmp_path / "ablation"
    for iters, ppl in ((3, 77.5), (6, 82.3)):
        rec = record("apt", "2:4", ppl, 0.025, chash=f"apt-{iters}")
        rec["method"]["params"].update(refine_iters=iters)
        write(root, f"apt{iters}", rec)
    sgpt = record("sparsegpt", "2:4", 92.8, 0.030)
    sgpt["method"]["params"] = {"blocksize": 128}
    write(root, "sgpt", sgpt)
    assert tables_main([str(root), "--table", "benchmark", "--label-params", "refine_iters"]) == 0
    out = capsys.readouterr().out
    assert "apt (refine_iters=3) |" in out and "apt (refine_iters=6) |" in out and ".0)" not in out


def test_label_params_tell_an_absent_knob_from_a_set_one(tmp_path, capsys):
    """A knob added later: records without it (their method's default applied) and records with it get
    two rows, the absent one labelled ``–`` (pandas 3 keeps NaN missing under ``astype(str)``)."""
    root = tmp_path / "ablation"
    for name, extra, ppl in (("old", {}, 683.5), ("new", {"target_alpha": 0.25}, 41.5)):
        rec = record("apt", 0.5, ppl, 0.014, chash=f"apt-{name}")
        rec["method"]["params"].update(extra)
        write(root, name, rec)
    write(root, "sgpt", record("sparsegpt", 0.5, 44.0, 0.0175))
    assert tables_main([str(root), "--table", "benchmark", "--label-params", "target_alpha"]) == 0
    out = capsys.readouterr().out
    assert "apt (target_alpha=–) | 683.50 |" in out and "apt (target_alpha=0.25) | 41.50 |" in out


def test_calibration_table_and_no_silent_cell_collisions(study, capsys):
    """The study as a table (one row per method × set × windows, sorted by tokens); the ppl table
    refuses to put two configs in one cell instead of keeping one of them."""
    assert tables_main([str(study), "--table", "calibration"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| method | sparsity | calibration | windows | tokens | WikiText-2 ppl | C4 ppl | layer error |"
    assert len(lines) == 1 + 16 and lines[1].startswith("| Wanda | 50% | c4 | 16 × 512 | 8,192 | 40.92 | 60.00 |")
    assert lines[4].startswith("| Wanda | 50% | c4 | 128 × 2048 | 262,144 | 38.38 |")
    assert lines[9].startswith("| SparseGPT | 50% | c4 | 16 × 512 |")
    csv = build(collect(study).frame, "calibration", "csv")
    assert csv.splitlines()[0] == ("label,sparsity,calib_dataset,calib_nsamples,calib_seqlen,calib_tokens,"
                                   "ppl_wikitext2,ppl_c4,mean_rel_error")
    with pytest.raises(ValueError, match=r"two records for the cell \((Wanda|SparseGPT), 50%\).*--table calibration"):
        build(collect(study).frame, "ppl", "md")


def test_a_registered_table_is_offered_by_the_cli(results, monkeypatch, capsys):
    """docs/development.md, "Adding a table": one entry in TABLES is all a new table needs."""
    import analysis.tables as tables

    monkeypatch.setitem(tables.TABLES, "count", tables.TableKind(("md",), lambda f, fmt, o: f"{len(f)} records\n",
                                                                  "records per directory"))
    root = results[0] if isinstance(results, tuple) else results
    assert tables.main([str(root), "--table", "count"]) == 0
    assert capsys.readouterr().out.strip().endswith("records")
    with pytest.raises(ValueError, match="the count table is written as md"):
        tables.build(tables.collect(root).frame, "count", "latex")

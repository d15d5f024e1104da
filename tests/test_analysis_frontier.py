"""The frontier table and figure: statistics over calibration seeds, paired with SparseGPT."""

import math
import statistics

import pytest

from analysis.collect import collect
from analysis.frontier import frontier_figure, frontier_latex, frontier_long, frontier_markdown
from analysis.tables import main as tables_main
from tests.test_analysis import record, write

# (label, sparsity, calibration seed) -> (WikiText-2 ppl, C4 ppl, solver seconds)
CELLS = {
    ("sparsegpt", 0.5, 0): (44.0, 70.0, 10.0), ("sparsegpt", 0.5, 1): (45.0, 71.0, 12.0),
    ("sparsegpt", 0.5, 2): (46.0, 69.0, 11.0),
    ("apt-refit", 0.5, 0): (40.0, 66.0, 15.0), ("apt-refit", 0.5, 1): (41.5, 66.0, 18.0),
    ("apt-refit", 0.5, 2): (42.0, 65.0, 16.5),
    ("alps", 0.5, 0): (43.9, 70.5, 100.0), ("alps", 0.5, 1): (45.2, 70.0, 100.0), ("alps", 0.5, 2): (45.8, 69.5, 100.0),
    ("sparsegpt", "2:4", 0): (90.0, 120.0, 9.0), ("apt-refit", "2:4", 0): (80.0, 110.0, 13.5),
}


def frontier_record(label, spec, seed, ppl, c4, solver, model="smollm2-135m"):
    method = "alps" if label == "alps" else "apt" if label.startswith("apt") else label
    rec = record(method, spec, ppl, 0.02, chash=f"{model}-{label}-{spec}-{seed}", model=model)
    rec["method"]["label"] = label
    rec["metrics"]["perplexity"]["c4"] = {"ppl": c4, "nwindows": 16}
    rec["protocol"]["calibration"]["seed"] = seed
    rec["timings"]["solver_s"] = solver
    rec["timings"]["prune_total_s"] = solver + 20.0  # calibration passes and the rest
    return rec


@pytest.fixture
def frontier(tmp_path):
    root = tmp_path / "frontier"
    for (label, spec, seed), (ppl, c4, solver) in CELLS.items():
        write(root, f"{label}_{spec}_{seed}", frontier_record(label, spec, seed, ppl, c4, solver))
    write(root, "gemma_sgpt", frontier_record("sparsegpt", 0.5, 0, 30.0, 40.0, 20.0, model="gemma3-270m"))
    write(root, "gemma_refit", frontier_record("apt-refit", 0.5, 0, 27.0, 38.0, 30.0, model="gemma3-270m"))
    return root


def test_statistics_are_paired_per_seed(frontier):
    long = frontier_long(collect(frontier).frame)
    row = long[(long.model == "smollm2-135m") & (long.label == "apt-refit") & (long.sparsity == "0.5")].iloc[0]
    assert row.n_seeds == 3 and row.seeds == "0,1,2"
    assert row.ppl_wikitext2 == pytest.approx((40 + 41.5 + 42) / 3)
    assert row.ppl_wikitext2_std == pytest.approx(math.sqrt(((40 - 41.1667) ** 2 + (41.5 - 41.1667) ** 2
                                                             + (42 - 41.1667) ** 2) / 2), rel=1e-4)
    assert row.ratio_wikitext2 == pytest.approx((40 / 44 + 41.5 / 45 + 42 / 46) / 3)
    assert row.diff_wikitext2 == pytest.approx((-4 - 3.5 - 4) / 3)
    # the paired t-test on the differences (-4, -3.5, -4): t = -23.0 on 2 df; the exact sign-flip test of
    # three seeds cannot go below 2/8
    assert row.p_t_wikitext2 == pytest.approx(0.00188, abs=2e-5) and row.p_exact_wikitext2 == pytest.approx(0.25)
    assert row.verdict_wikitext2 == "better" and row.seed_ratios_wikitext2 == "0.909/0.922/0.913"
    ratios = [40 / 44, 41.5 / 45, 42 / 46]
    half = 4.302653 * statistics.stdev(ratios) / math.sqrt(3)  # t(0.975, 2) * sem
    assert (row.ratio_wikitext2_low, row.ratio_wikitext2_high) == pytest.approx(
        (statistics.mean(ratios) - half, statistics.mean(ratios) + half), rel=1e-5)
    assert row.solver_x == pytest.approx((15 / 10 + 18 / 12 + 16.5 / 11) / 3)
    assert row.prune_x == pytest.approx((35 / 30 + 38 / 32 + 36.5 / 31) / 3)  # the whole prune, paired too
    alps = long[(long.label == "alps") & (long.sparsity == "0.5")].iloc[0]
    assert alps.verdict_wikitext2 == "tie" and alps.p_t_wikitext2 > 0.5  # differences -0.1, +0.2, -0.2
    single = long[(long.label == "apt-refit") & (long.sparsity == "2:4")].iloc[0]
    assert single.n_seeds == 1 and math.isnan(single.ppl_wikitext2_std) and single.verdict_wikitext2 == "–"
    gemma = long[(long.model == "gemma3-270m") & (long.label == "apt-refit")].iloc[0]
    assert gemma.ratio_wikitext2 == pytest.approx(0.9) and gemma.ratio_c4 == pytest.approx(38 / 40)


def test_markdown_and_latex(frontier):
    frame = collect(frontier).frame
    md = frontier_markdown(frame)
    assert ("| smollm2-135m | 50% | APT-refit | 0,1,2 | 41.17 ± 1.04 | 0.915 | 0.909/0.922/0.913 | 0.898–0.932 | "
            "0.002 / 0.25 | better |") in md
    assert "| smollm2-135m | 50% | ALPS | 0,1,2 |" in md and "| tie |" in md
    assert "| SparseGPT | 0 | 90.00 | 1.000 | – | – | – | – |" in md
    tex = frontier_latex(frame)
    assert "\\begin{tabular}" in tex and "41.17 $\\pm$ 1.04" in tex and "\\caption{" in tex
    assert "held-out" not in md.lower() and "held-out" not in tex.lower()  # no record measured it


def test_heldout_layer_error_column_when_recorded(tmp_path):
    root = tmp_path / "held"
    for label, fit, held in (("sparsegpt", 0.020, 0.024), ("apt-refit", 0.015, 0.021)):
        rec = frontier_record(label, 0.5, 0, 40.0, 60.0, 10.0)
        rec["metrics"]["mean_rel_error"], rec["metrics"]["mean_heldout_rel_error"] = fit, held
        rec["protocol"]["calibration"]["heldout"] = {"nsamples": 8, "seqlen": 512, "seed": 1}
        write(root, label, rec)
    frame = collect(root).frame
    assert sorted(frame["calib_heldout"]) == [8, 8]
    md = frontier_markdown(frame)
    assert "held-out layer error |" in md and "which the solver never fitted" in md
    assert "| 0.0150 | 0.0210 | 0.750 | 0.875 |" in md  # fitted and held-out errors, each ÷ SparseGPT's


def test_dense_target_rows_mark_their_layer_error_and_show_the_dense_output_error(frontier):
    assert "dense-output error" not in frontier_markdown(collect(frontier).frame)  # no such record
    rec = frontier_record("apt-refit-dense", 0.5, 0, 39.0, 60.0, 14.0)
    rec["method"]["params"] = {"output_target": "dense", "target_alpha": 0.25}
    rec["metrics"]["mean_dense_rel_error"] = 0.0937
    write(frontier, "dense", rec)
    md = frontier_markdown(collect(frontier).frame)
    assert "| 0.0200‡ | 0.0937 |" in md and "| 0.0200 | – |" in md  # the solver's error is against W*
    assert "not comparable with the other rows" in md
    assert "0.0200$^\\ddagger$" in frontier_latex(collect(frontier).frame)
    measured = frontier_record("sparsegpt", 0.7, 0, 300.0, 400.0, 10.0)  # engine.dense_error on the usual target
    measured["metrics"]["mean_dense_rel_error"] = 0.2
    write(frontier, "measured", measured)
    assert "| 0.0200 | 0.2000 |" in frontier_markdown(collect(frontier).frame)


def test_engine_true_sequential_gets_its_own_row_and_a_seq_method_does_not(frontier):
    """A record with engine.true_sequential on a method that does not set it is another configuration than the
    method's own records (``sparsegpt+seq``); apt-refit-dense-seq sets it itself and keeps its label."""
    seq = frontier_record("sparsegpt", 0.5, 0, 43.0, 69.0, 10.0) | {"config_hash": "sparsegpt-seq"}
    seq["config"]["engine"] = {"true_sequential": True}
    own = frontier_record("apt-refit-dense-seq", 0.5, 0, 38.0, 55.0, 18.0)
    own["method"]["params"] = {"output_target": "dense", "true_sequential": True}
    write(frontier, "sgpt_seq", seq)
    write(frontier, "own_seq", own)
    frame = collect(frontier).frame
    labels = {p.rsplit("/", 1)[-1]: lab for p, lab in zip(frame["path"], frame["label"])}
    assert labels["sgpt_seq"] == "sparsegpt+seq" and labels["own_seq"] == "apt-refit-dense-seq"
    assert labels["sparsegpt_0.5_0"] == "sparsegpt" and frame["true_sequential"].sum() == 2
    long = frontier_long(frame)
    row = long[(long.label == "apt-refit-dense-seq")].iloc[0]
    assert row.ratio_wikitext2 == pytest.approx(38 / 44)  # paired with plain SparseGPT, not sparsegpt+seq


def test_duplicate_seed_of_one_label_is_an_error(frontier):
    write(frontier, "again", frontier_record("apt-refit", 0.5, 0, 39.0, 66.0, 15.0) | {"config_hash": "other"})
    with pytest.raises(ValueError, match="several records for one calibration seed"):
        frontier_long(collect(frontier).frame)


def test_cli_and_figure(frontier, tmp_path, capsys):
    assert tables_main([str(frontier), "--table", "frontier", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model,sparsity,label,n_seeds,seeds,ppl_wikitext2") and "apt-refit" in out
    fig = frontier_figure(collect(frontier).frame)
    assert len(fig.axes) == 4  # per model: perplexity and the ratio to SparseGPT
    colours = [{lab: h[0].get_color() for h, lab in zip(*ax.get_legend_handles_labels())} for ax in fig.axes[:2]]
    assert colours[0]["APT-refit"] == colours[1]["APT-refit"] != colours[0]["SparseGPT"]  # one colour per method


def test_the_allocation_table_pairs_each_solver_with_its_uniform_record(tmp_path):
    from analysis.allocation import allocation_long, allocation_markdown

    root = tmp_path / "owl"
    cells = {("sparsegpt", "uniform", 0): (300.0, 400.0), ("sparsegpt", "owl", 0): (330.0, 380.0),
             ("sparsegpt", "uniform", 1): (310.0, 410.0), ("sparsegpt", "owl", 1): (310.0, 369.0),
             ("wanda", "uniform", 0): (1200.0, 1800.0), ("wanda", "owl", 0): (900.0, 1170.0)}
    for (label, alloc, seed), (ppl, c4) in cells.items():
        rec = frontier_record(label, 0.7, seed, ppl, c4, 10.0)
        rec["config_hash"] += f"-{alloc}"
        if alloc != "uniform":
            rec["allocation"] = {"name": alloc, "M": 5, "lambda": 0.08}
        write(root, f"{label}_{alloc}_{seed}", rec)
    write(root, "sgpt_50", frontier_record("sparsegpt", 0.5, 0, 44.0, 70.0, 10.0))  # no OWL at 50%: left out
    for i, iters in enumerate((3, 6)):  # a method never run with OWL (here in two settings): left out, no clash
        swap = frontier_record("apt-swap", 0.7, 0, 280.0 + i, 300.0, 20.0)
        swap["config_hash"] += f"-{iters}"
        swap["method"]["params"]["refine_iters"] = iters
        write(root, f"swap_{iters}", swap)
    grid = frontier_record("wanda", 0.7, 0, 1000.0, 1500.0, 10.0)  # a grid point: other knobs, its own row
    grid["config_hash"] += "-grid"
    grid["allocation"] = grid["config"]["allocation"] = {"name": "owl", "M": 7, "lambda": 0.04}
    write(root, "wanda_grid", grid)
    long = allocation_long(collect(root).frame)
    assert set(long.sparsity) == {"0.7"} and len(long) == 5 and "apt-swap" not in set(long.method)
    assert long[long.knobs == "M=7,lambda=0.04"].iloc[0].ratio_wikitext2 == pytest.approx(1000 / 1200)
    owl = long[(long.method == "sparsegpt") & (long.allocation == "owl")].iloc[0]
    assert owl.seeds == "0,1" and owl.ratio_wikitext2 == pytest.approx((330 / 300 + 310 / 310) / 2)
    assert owl.ratio_c4 == pytest.approx((380 / 400 + 369 / 410) / 2)
    wanda = long[(long.method == "wanda") & (long.allocation == "owl")].iloc[0]
    assert wanda.ratio_wikitext2 == pytest.approx(0.75)
    text = allocation_markdown(collect(root).frame)
    assert "| smollm2-135m | 70% | SparseGPT | owl | 0,1 |" in text and "÷ uniform" in text
    assert "exploded" not in text  # no perplexity above 10000 here; one below is
    assert "† exploded: NaN or above 1000 (" in allocation_markdown(collect(root).frame, explode=1000)
    assert tables_main([str(root), "--table", "allocation", "--format", "latex"]) in (None, 0)


def test_where_keeps_the_uniform_rows_of_one_model(frontier, capsys):
    """``--where`` filters records before any table is built: OWL rows leave the frontier table, a
    model can be picked, and a bad condition is a clear error naming it."""
    owl = frontier_record("sparsegpt", 0.5, 0, 43.0, 69.0, 10.0)
    owl["config_hash"] += "-owl"
    owl["allocation"] = {"name": "owl", "M": 5, "lambda": 0.08}
    write(frontier, "sgpt_owl", owl)
    assert tables_main([str(frontier), "--table", "frontier", "--where", "allocation=uniform",
                        "--where", "model=smollm2-135m"]) == 0
    out = capsys.readouterr().out
    assert "+owl" not in out and "gemma3-270m" not in out and "| smollm2-135m | 50% | APT-refit | 0,1,2 |" in out
    assert tables_main([str(frontier), "--table", "frontier", "--where", "calib_seed=0"]) == 0
    assert "| smollm2-135m | 50% | APT-refit | 0 |" in capsys.readouterr().out
    for bad, message in (("alloc=uniform", "no column 'alloc'"), ("allocation", "give COLUMN=VALUE"),
                         ("model=llama", "no record left")):
        with pytest.raises(SystemExit):
            tables_main([str(frontier), "--table", "frontier", "--where", bad])
        assert message in capsys.readouterr().err


def test_plots_where_leaves_the_owl_lines_out(frontier, tmp_path, capsys, monkeypatch):
    """The frontier figure through the CLI with ``--where``: only the model asked for, no ``+owl``
    line; a bad filter is a clear error."""
    import analysis.frontier
    from analysis import plots

    owl = frontier_record("sparsegpt", 0.5, 0, 43.0, 69.0, 10.0)
    owl["config_hash"] += "-owl"
    owl["allocation"] = {"name": "owl", "M": 5, "lambda": 0.08}
    write(frontier, "sgpt_owl", owl)
    seen = []
    real = analysis.frontier.frontier_figure
    monkeypatch.setattr(plots, "frontier_figure", lambda frame, *a: seen.append(frame) or real(frame, *a))
    assert plots.main([str(frontier), "--figures", "frontier", "--out-dir", str(tmp_path / "fig"),
                       "--where", "allocation=uniform", "--where", "model=smollm2-135m"]) == 0
    assert set(seen[0]["label"]) == {"sparsegpt", "apt-refit", "alps"} and set(seen[0]["model"]) == {"smollm2-135m"}
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["frontier_wikitext2.png"]
    with pytest.raises(SystemExit):
        plots.main([str(frontier), "--figures", "frontier", "--where", "allocation=owl,profile", "--where", "model=x"])
    assert "no record left" in capsys.readouterr().err


def test_baseline_option_with_labelled_ablations(tmp_path, capsys):
    """Two damping settings of both methods: --label-params splits every method, so the ratios need the
    labelled baseline row (--baseline); without it the table says which labels exist."""
    root = tmp_path / "damp"
    for label, damp, ppl in (("sparsegpt", 0.01, 44.0), ("sparsegpt", 0.1, 43.0), ("apt-refit", 0.01, 40.0),
                             ("apt-refit", 0.1, 39.6)):
        rec = frontier_record(label, 0.5, 0, ppl, 60.0, 10.0)
        rec["method"]["params"] = {"percdamp": damp}
        rec["config_hash"] = f"{label}-{damp}"
        write(root, f"{label}_{damp}", rec)
    with pytest.raises(SystemExit):
        tables_main([str(root), "--table", "frontier", "--label-params", "percdamp"])
    assert "no records of the baseline 'sparsegpt'" in capsys.readouterr().err
    assert tables_main([str(root), "--table", "frontier", "--label-params", "percdamp",
                        "--baseline", "sparsegpt (percdamp=0.01)"]) == 0
    md = capsys.readouterr().out
    assert "| apt-refit (percdamp=0.1) | 0 | 39.60 | 0.900 |" in md  # 39.6 / 44: paired with the chosen row
    assert "| sparsegpt (percdamp=0.1) | 0 | 43.00 | 0.977 |" in md


def test_exploded_perplexities_are_marked_and_explained(frontier):
    md = frontier_markdown(collect(frontier).frame)
    assert "†" not in md and "exploded" not in md  # nothing above the threshold yet
    write(frontier, "exploded", frontier_record("wanda", 0.5, 0, 6.3e4, 7.1e4, 1.0))
    frame = collect(frontier).frame
    md = frontier_markdown(frame)
    assert "| 6.3e+04† |" in md and "† exploded: NaN or above 10000 (ratios" in md
    tex = frontier_latex(frame)
    assert "†" not in tex and "6.3e+04$^\\dagger$" in tex and "$^\\dagger$ exploded" in tex

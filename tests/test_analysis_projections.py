"""The projections table: per-projection layer error, paired with SparseGPT per calibration seed."""

import pytest

from analysis.collect import collect, layers_of
from analysis.projections import projections_latex, projections_long, projections_markdown
from analysis.tables import main as tables_main
from tests.test_analysis_frontier import frontier_record
from tests.test_analysis import write

# (label, seed) -> {projection: (error of block 0, error of block 1)}
ERRORS = {
    ("sparsegpt", 0): {"self_attn.o_proj": (0.02, 0.04), "mlp.down_proj": (0.01, 0.03)},
    ("sparsegpt", 1): {"self_attn.o_proj": (0.02, 0.02), "mlp.down_proj": (0.02, 0.02)},
    ("apt-refit", 0): {"self_attn.o_proj": (0.01, 0.02), "mlp.down_proj": (0.01, 0.03)},
    ("apt-refit", 1): {"self_attn.o_proj": (0.01, 0.01), "mlp.down_proj": (0.01, 0.01)},
}


def layer_record(label, seed, errors, heldout=False, dense=False):
    rec = frontier_record(label, 0.5, seed, 40.0, 60.0, 10.0)
    rec["layers"] = [{"name": f"model.layers.{b}.{proj}", "block": b, "layer": proj, "shape": [8, 8],
                      "target": "0.5", "sparsity": 0.5, "rel_error": e,
                      **({"heldout_rel_error": 1.5 * e} if heldout else {}),
                      **({"dense_rel_error": 4 * e} if dense else {})}
                     for proj, errs in errors.items() for b, e in enumerate(errs)]
    return rec


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "proj"
    for (label, seed), errors in ERRORS.items():
        write(root, f"{label}_{seed}", layer_record(label, seed, errors))
    return root


def test_ratios_are_paired_per_seed_and_projection(sweep):
    col = collect(sweep, layers=True)
    long = projections_long(layers_of(col.frame, col.layers))
    o = long[(long.label == "apt-refit") & (long.projection == "self_attn.o_proj")].iloc[0]
    assert o.seeds == "0,1"
    assert o.rel_error == pytest.approx((0.015 + 0.01) / 2)  # mean over blocks, then over seeds
    assert o.rel_error_x == pytest.approx((0.015 / 0.03 + 0.01 / 0.02) / 2)  # per-seed ratios, averaged
    down = long[(long.label == "apt-refit") & (long.projection == "mlp.down_proj")].iloc[0]
    assert down.rel_error_x == pytest.approx((1.0 + 0.5) / 2)
    assert "heldout_rel_error" not in long  # no record measured it
    md = projections_markdown(layers_of(col.frame, col.layers))
    assert "| smollm2-135m | 50% | self_attn.o_proj | APT-refit | 0,1 | 0.0125 | 0.500 |" in md
    assert "held-out" not in md
    assert "\\begin{tabular}" in projections_latex(layers_of(col.frame, col.layers))


def test_heldout_columns_and_cli(tmp_path, capsys):
    root = tmp_path / "held"
    for (label, seed), errors in ERRORS.items():
        if seed == 0:
            write(root, label, layer_record(label, seed, errors, heldout=True))
    assert tables_main([str(root), "--table", "projections", "--where", "label=apt-refit,sparsegpt"]) == 0
    md = capsys.readouterr().out
    assert "held-out layer error ÷ SparseGPT" in md
    assert "| self_attn.o_proj | APT-refit | 0 | 0.0150 | 0.500 | 0.0225 | 0.500 |" in md
    with pytest.raises(SystemExit):
        tables_main([str(root), "--table", "projections", "--baseline", "alps"])
    assert "no records of the baseline 'alps'; methods here: apt-refit, sparsegpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables_main([str(root), "--table", "ppl", "--baseline", "alps"])
    assert "--baseline applies to --table frontier, seeds or projections only" in capsys.readouterr().err


def test_dense_output_error_column(tmp_path):
    """Records with each layer's dense-output error (engine.dense_error, a dense-target method) get its
    column and its paired ratio; records without it leave the column out (above)."""
    root = tmp_path / "dense"
    for (label, seed), errors in ERRORS.items():
        write(root, f"{label}_{seed}", layer_record(label, seed, errors, dense=True))
    col = collect(root, layers=True)
    long = projections_long(layers_of(col.frame, col.layers))
    o = long[(long.label == "apt-refit") & (long.projection == "self_attn.o_proj")].iloc[0]
    assert o.dense_rel_error == pytest.approx(4 * (0.015 + 0.01) / 2)
    assert o.dense_rel_error_x == pytest.approx(o.rel_error_x)
    md = projections_markdown(layers_of(col.frame, col.layers))
    assert "| smollm2-135m | 50% | self_attn.o_proj | APT-refit | 0,1 | 0.0125 | 0.500 | 0.0500 | 0.500 |" in md

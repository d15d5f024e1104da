"""Every table in the README and docs/ says where it comes from, and the marked ones re-render from the
archived records row for row (the markers: analysis/doc_tables.py)."""

from __future__ import annotations

import pytest

from analysis.doc_tables import MARKER, command_of, documents, refresh, render, tables
from tests.conftest import REPO


def rendered_tables():
    return [(path.relative_to(REPO).as_posix(), marker, rows) for path in documents() for marker, rows, _ in tables(path)
            if marker and command_of(marker)]


def test_every_table_says_where_it_comes_from():
    unmarked, misplaced = [], []
    for path in documents():
        name = path.relative_to(REPO).as_posix()
        for marker, rows, _ in tables(path):
            if marker is None:
                unmarked.append(f"{name}: {rows[0][:70]}")
            elif ("quoted:" in marker and name != "README.md") or ("history:" in marker and name != "docs/history.md"):
                misplaced.append(f"{name}: {marker}")
    assert not unmarked, unmarked
    assert not misplaced, misplaced
    assert len(rendered_tables()) >= 10  # the parser finds the marked tables


RENDERED = rendered_tables()


@pytest.mark.parametrize("where,marker,rows", RENDERED, ids=[f"{n}:{i}" for i, (n, _, _) in enumerate(RENDERED)])
def test_a_marked_table_is_what_its_command_renders(where, marker, rows):
    command = command_of(marker)
    lines = (REPO / where).read_text().replace("\\\n", " ").splitlines()
    visible = " ".join(" ".join(line for line in lines if not MARKER.match(line)).split())
    assert command in visible, f"{where}: the command is not written out beside its table: {command}"
    assert render(command) == rows, f"{where}: {command} (python -m analysis.doc_tables --write re-renders it)"


def test_the_parser_finds_tables_markers_and_skips_fences_and_refresh_rewrites_a_stale_table(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- not a measurement -->\n| a |\n|---|\n| 1 |\n\n```\n| in a fence |\n```\n\n  | b |\n"
                   "<!-- table: python -m analysis.solver_timing analysis/records/solver-timing-h200 --pivot -->\n"
                   "  | stale |\n")
    found = [(m, r) for m, r, _ in tables(doc)]
    command = "python -m analysis.solver_timing analysis/records/solver-timing-h200 --pivot"
    assert found == [("<!-- not a measurement -->", ["| a |", "|---|", "| 1 |"]), (None, ["| b |"]),
                     (f"<!-- table: {command} -->", ["| stale |"])]
    assert refresh(doc, write=False) == [command] and "| stale |" in doc.read_text()
    assert refresh(doc, write=True) == [command] and refresh(doc, write=False) == []
    assert "  | sparsity | SparseGPT | APT | APT-refit-dense-seq | ALPS |" in doc.read_text()  # indentation kept
    with pytest.raises(ValueError, match="not a table command"):
        render("python -m os.path x")


def test_the_solver_timing_pivot_puts_sparsegpt_first_and_refuses_two_settings_of_a_method():
    import pandas as pd

    from analysis.solver_timing import to_pivot_markdown

    totals = pd.DataFrame({"shapes": ["s"] * 3, "sparsity": ["2:4", "0.5", "0.5"], "device": ["cpu"] * 3,
                           "method": ["apt", "apt", "sparsegpt"], "params": ["", "", ""],
                           "model_seconds": [3.0, 4.0, 2.0], "x_sparsegpt": [float("nan"), 2.0, 1.0]})
    assert to_pivot_markdown(totals).splitlines() == ["| sparsity | SparseGPT | APT |", "|---|---:|---:|",
                                                      "| 50% | 2.0 | 4.0 (2.00×) |", "| 2:4 | – | 3.0 |"]
    with pytest.raises(ValueError, match=r"one parameter setting per method; these have several: \['apt'\]"):
        to_pivot_markdown(pd.concat([totals, totals.iloc[[1]]]))

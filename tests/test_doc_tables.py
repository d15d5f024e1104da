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


def test_every_prose_number_of_the_docs_is_a_rendered_or_recorded_one():
    """docs/ (history.md aside): every decimal of the prose is a number of its section's rendered tables or ``numbers
    from`` commands (as printed, or rounded one place), or a declared constant (python -m analysis.doc_tables lists
    them)."""
    from analysis.doc_tables import PROSE_CHECKED, prose_problems

    assert "docs/benchmarks.md" in PROSE_CHECKED and "docs/methods.md" in PROSE_CHECKED
    assert "docs/history.md" not in PROSE_CHECKED
    problems = [p for name in PROSE_CHECKED for p in prose_problems(REPO / name)]
    assert not problems, "\n".join(problems)


def test_the_prose_check_catches_a_drifted_number_and_an_unused_constant(tmp_path):
    from analysis.doc_tables import _quotes, prose_problems

    command = "python -m analysis.solver_timing analysis/records/solver-timing-h200 --pivot"
    doc = tmp_path / "x.md"
    doc.write_text(f"## A\n\n<!-- table: {command} -->\n{chr(10).join(render(command))}\n\n"
                   "SparseGPT takes 134.9 s, APT 1.05× that, ALPS 1875.4 s, `percdamp=0.01` aside.\n\n"
                   "## B\n\n<!-- prose constants: 0.05 2.5 -->\nA test at level 0.05; 134.9 s is not in this section.\n")
    problems = prose_problems(doc)
    assert len(problems) == 2 and '"B": 134.9' in problems[0] and "declared constant 2.5" in problems[1], problems
    doc.write_text(doc.read_text().replace("1875.4 s", "1875.5 s"))
    assert any('"A": 1875.5' in p for p in prose_problems(doc))
    assert _quotes("1.66", {"1.656"}) and not _quotes("1.7", {"1.656"}) and not _quotes("40.24", {"40.23"})
    assert _quotes("11.304231", {"11.304230690002441"}) and not _quotes("0.74", {"0.7412"})


def test_record_facts_prints_every_number_with_its_units(tmp_path):
    from analysis.record_facts import facts

    rec = {"config": {"x": 1.5}, "layers": [{"rel_error": 0.1}], "timings": {"prune_total_s": 4878.753},
           "memory": {"peak_rss_bytes": 5294448640}, "job": {"ok": True}, "rows": [2, 3]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(__import__("json").dumps(rec))
    assert facts(tmp_path) == ["a: timings.prune_total_s = 4878.753 = 81.31 min = 1.36 h",
                               "a: memory.peak_rss_bytes = 5294448640 = 5.29 GB = 4.93 GiB = 5294.4 MB",
                               "a: rows.0 = 2", "a: rows.1 = 3"]
    assert facts(tmp_path, "memory") == [facts(tmp_path)[1]]
    assert "a: layers.0.rel_error = 0.1" in facts(tmp_path, layers=True)

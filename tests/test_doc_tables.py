"""Every table in the README and docs/ says where it comes from, and the measured ones re-render.

A table is preceded by one of these markers (an HTML comment: invisible on the page):

- ``<!-- table: python -m analysis.<module> ARGS -->``: rendered from archived records by that command
  (the command a reader runs, written beside it); the test runs it and the document's table must be
  exactly the rendered one, row for row;
- ``<!-- not a measurement -->``: configuration, options, a file layout;
- ``<!-- quoted: docs/benchmarks.md -->`` (README only): every number appears in a rendered table there
  (tests/test_readme.py);
- ``<!-- history: no records -->`` (docs/history.md only): a past measurement whose records were never
  archived; that page claims nothing current.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex

import pytest

from tests.conftest import REPO

MARKER = re.compile(r"^\s*<!-- (table: (?P<command>.+?)|not a measurement|quoted: docs/benchmarks\.md"
                    r"|history: no records) -->\s*$")
RENDERERS = ("analysis.tables", "analysis.scale", "analysis.solver_timing")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def tables(path):
    """``(marker, rows)`` for every table of a markdown file; ``marker`` is the last marker line since
    the previous table (None without one); rows are stripped (tables inside list items are indented)."""
    out, marker, rows, fenced = [], None, [], False
    for line in path.read_text().splitlines() + [""]:
        if line.strip().startswith("```"):
            fenced = not fenced
        stripped = line.strip()
        if not fenced and stripped.startswith("|"):
            rows.append(stripped)
            continue
        if rows:
            out.append((marker, rows))
            marker, rows = None, []
        found = MARKER.match(line)
        if found and not fenced:
            marker = found.group(0).strip()
    return out


def render(command: str) -> list[str]:
    """The first table the command prints, run in-process (its module's ``main``)."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"] and argv[2] in RENDERERS, command
    main = importlib.import_module(argv[2]).main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(REPO / a) if a.startswith("analysis/records") else a for a in argv[3:]]) in (0, None)
    rows, started = [], False
    for line in buf.getvalue().splitlines():
        if line.strip().startswith("|"):
            rows.append(line.strip())
            started = True
        elif started:
            break
    return rows


def rendered_tables():
    return [(path.relative_to(REPO).as_posix(), marker, rows) for path in DOCS for marker, rows in tables(path)
            if marker and marker.startswith("<!-- table:")]


def test_every_table_says_where_it_comes_from():
    unmarked, misplaced = [], []
    for path in DOCS:
        name = path.relative_to(REPO).as_posix()
        for marker, rows in tables(path):
            if marker is None:
                unmarked.append(f"{name}: {rows[0][:70]}")
            elif ("quoted:" in marker and name != "README.md") or ("history:" in marker and name != "docs/history.md"):
                misplaced.append(f"{name}: {marker}")
    assert not unmarked, unmarked
    assert not misplaced, misplaced
    assert len(rendered_tables()) >= 10  # the parser finds the marked tables


@pytest.mark.parametrize("where,marker,rows", rendered_tables(),
                         ids=[f"{n}:{i}" for i, (n, _, _) in enumerate(rendered_tables())])
def test_a_marked_table_is_what_its_command_renders(where, marker, rows):
    command = MARKER.match(marker).group("command")
    lines = (REPO / where).read_text().replace("\\\n", " ").splitlines()
    visible = " ".join(" ".join(line for line in lines if not MARKER.match(line)).split())
    assert command in visible, f"{where}: the command is not written out beside its table: {command}"
    assert render(command) == rows, f"{where}: {command}"


def test_the_parser_finds_tables_markers_and_skips_fences(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- not a measurement -->\n| a |\n|---|\n| 1 |\n\n```\n| in a fence |\n```\n\n  | b |\n"
                   "<!-- table: python -m analysis.scale analysis/records/scale -->\n| c |\n")
    found = tables(doc)
    assert [(m, r) for m, r in found] == [("<!-- not a measurement -->", ["| a |", "|---|", "| 1 |"]),
                                          (None, ["| b |"]),
                                          ("<!-- table: python -m analysis.scale analysis/records/scale -->", ["| c |"])]


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

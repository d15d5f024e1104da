"""Every table in the README and docs/ says where it comes from; the measured ones re-render from records.

    python -m analysis.doc_tables            # check: each marked table is what its command renders
    python -m analysis.doc_tables --write    # re-render the marked tables in place

A table is preceded by one of these markers (an HTML comment: invisible on the page):

- ``<!-- table: python -m analysis.<module> ARGS -->``: rendered from archived records by that command
  (the command a reader runs, also written out beside it); the document's table must be exactly the
  rendered one, row for row;
- ``<!-- not a measurement -->``: configuration, options, a file layout;
- ``<!-- quoted: docs/benchmarks.md -->`` (README only): every number appears in a rendered table there;
- ``<!-- history: no records -->`` (docs/history.md only): a past measurement whose records were never
  archived; that page claims nothing current.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*<!-- (table: (?P<command>.+?)|not a measurement|quoted: docs/benchmarks\.md"
                    r"|history: no records) -->\s*$")
RENDERERS = ("analysis.tables", "analysis.scale", "analysis.solver_timing", "analysis.rank_projection")


def documents(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def tables(path: Path) -> list[tuple[str | None, list[str], int]]:
    """``(marker, rows, first line index)`` for every table of a markdown file; ``marker`` is the last marker
    line since the previous table (None without one); rows are stripped (tables in list items are indented)."""
    out, marker, rows, start, fenced = [], None, [], 0, False
    for i, line in enumerate(path.read_text().splitlines() + [""]):
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
        if not fenced and stripped.startswith("|"):
            start = i if not rows else start
            rows.append(stripped)
            continue
        if rows:
            out.append((marker, rows, start))
            marker, rows = None, []
        found = MARKER.match(line)
        if found and not fenced:
            marker = found.group(0).strip()
    return out


def command_of(marker: str) -> str | None:
    found = MARKER.match(marker)
    return found.group("command") if found else None


def render(command: str, repo: Path = REPO) -> list[str]:
    """The first table the command prints, run in-process (its module's ``main``)."""
    argv = shlex.split(command)
    if argv[:2] != ["python", "-m"] or argv[2] not in RENDERERS:
        raise ValueError(f"not a table command: {command!r}; allowed: python -m {' | '.join(RENDERERS)} ...")
    main = importlib.import_module(argv[2]).main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([str(repo / a) if a.startswith("analysis/records") else a for a in argv[3:]])
    rows, started = [], False
    for line in buf.getvalue().splitlines():
        if line.strip().startswith("|"):
            rows.append(line.strip())
            started = True
        elif started:
            break
    return rows


def refresh(path: Path, write: bool) -> list[str]:
    """The commands whose table in ``path`` differs from what they render; with ``write`` the document's
    table is replaced (its indentation kept)."""
    lines = path.read_text().split("\n")
    stale = []
    for marker, rows, start in reversed(tables(path)):
        command = command_of(marker) if marker else None
        if not command:
            continue
        fresh = render(command)
        if fresh != rows:
            stale.append(command)
            indent = re.match(r"\s*", lines[start]).group(0)
            lines[start:start + len(rows)] = [indent + row for row in fresh]
    if write and stale:
        path.write_text("\n".join(lines))
    return stale[::-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.doc_tables", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="re-render the stale tables in place")
    args = p.parse_args(argv)
    stale = {path: refresh(path, args.write) for path in documents()}
    for path, commands in stale.items():
        for command in commands:
            print(f"{path.relative_to(REPO)}: {'re-rendered' if args.write else 'stale'}: {command}")
    return 0 if args.write or not any(stale.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

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

Prose numbers of docs/ (every decimal outside tables, code, comments and arXiv numbers; history.md, which
claims nothing current, aside) are checked too: each must
be a number of its ``##`` section's rendered tables, or of what a command named in the section by
``<!-- numbers from: python -m analysis.<module> ARGS -->`` prints from archived records (figures the prose quotes
that no shown table has, e.g. per-seed values), rounded as the prose rounds it; or be named in the section by
``<!-- prose constants: 0.05 1.5 -->``: a setting, a target or a bound the text states, not a measurement
(:func:`prose_problems`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*<!-- (table: (?P<command>.+?)|not a measurement|quoted: docs/benchmarks\.md"
                    r"|history: no records) -->\s*$")
CONSTANTS = re.compile(r"<!-- prose constants: (?P<numbers>[^>]*?) -->")
SOURCES = re.compile(r"<!-- numbers from: (?P<command>.+?) -->")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
# every document but the history page (which claims nothing current) and the README (whose numbers are
# checked against docs/benchmarks.md by tests/test_readme.py)
PROSE_CHECKED = tuple(p.relative_to(REPO).as_posix() for p in sorted((REPO / "docs").glob("*.md")) if p.name != "history.md")
RENDERERS = ("analysis.tables", "analysis.scale", "analysis.solver_timing", "analysis.rank_projection",
             "analysis.answer_bias", "analysis.record_facts")


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


def output(command: str, repo: Path = REPO) -> str:
    """What the command prints, run in-process (its module's ``main``)."""
    argv = shlex.split(command)
    if argv[:2] != ["python", "-m"] or argv[2] not in RENDERERS:
        raise ValueError(f"not a table command: {command!r}; allowed: python -m {' | '.join(RENDERERS)} ...")
    main = importlib.import_module(argv[2]).main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([str(repo / a) if a.startswith("analysis/records") else a for a in argv[3:]])
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def _source_numbers(command: str) -> frozenset:
    """The numbers a ``numbers from`` command prints, rendered once however many sections name it."""
    return frozenset(NUMBER.findall(output(command)))


def render(command: str, repo: Path = REPO) -> list[str]:
    """The first table the command prints."""
    rows, started = [], False
    for line in output(command, repo).splitlines():
        if line.strip().startswith("|"):
            rows.append(line.strip())
            started = True
        elif started:
            break
    return rows


def _sections(path: Path) -> list[tuple[str, list[tuple[int, str]]]]:
    """The document cut at its ``##`` headings: ``(heading, [(line number, line)])``, code fences dropped."""
    out, fenced = [("", [])], False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("## "):
            out.append((line[3:].strip(), []))
        out[-1][1].append((i, line))
    return out


def _prose(line: str) -> str:
    """A prose line without its comments, inline code and link targets (settings and paths, not results)."""
    line = re.sub(r"<!--.*?-->", "", line)
    line = re.sub(r"`[^`]*`", "", line)
    line = re.sub(r"arXiv:? ?\d{4}\.\d{4,5}", "arXiv", line)  # a paper's number
    return re.sub(r"\]\([^)]*\)", "]", line)


def _quotes(number: str, candidates: set[str]) -> bool:
    """``number`` as the prose writes it (``d.dd``) is one of ``candidates`` as printed, or one printed with one
    more decimal rounded to it (a table's 1.656× quoted as 1.66×), or, for a number of three or more significant
    digits (which does not match by chance), any longer one rounded to it (a record's 11.304230690 as 11.304231)."""
    if number in candidates:
        return True
    places = len(number.split(".")[1])
    loose = len(number.replace(".", "").lstrip("0")) >= 3
    return any(f"{float(c):.{places}f}" == number for c in candidates
               if len(c.partition(".")[2]) == places + 1 or (loose and len(c.partition(".")[2]) > places))


def prose_problems(path: Path) -> list[str]:
    """Every prose decimal of ``path`` that is neither a number of its section's rendered tables or ``numbers
    from`` commands nor one of the section's declared constants, and every declared constant its section's
    prose does not use."""
    problems = []
    rendered_lines = {start + k + 1 for marker, rows, start in tables(path) if marker and command_of(marker)
                      for k in range(len(rows))}
    for heading, lines in _sections(path):
        text = "\n".join(line for _, line in lines)
        sources = {n for i, line in lines if i in rendered_lines for n in NUMBER.findall(line)}
        for found in SOURCES.finditer(text):
            sources |= _source_numbers(found.group("command"))
        constants = {n for m in CONSTANTS.finditer(text) for n in m.group("numbers").split()}
        used = set()
        for number, line in ((n, line) for _, line in lines if not line.strip().startswith("|")
                             for n in DECIMAL.findall(_prose(line))):
            used.add(number)
            if number not in constants and not _quotes(number, sources):
                problems.append(f"{path.name}, \"{heading}\": {number} is in no rendered table or numbers-from "
                                f"command of the section: {line.strip()[:100]}")
        problems += [f"{path.name}, \"{heading}\": declared constant {n} is not in the section's prose"
                     for n in sorted(constants - used)]
    return problems


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
    prose = [p for name in PROSE_CHECKED for p in prose_problems(REPO / name)]
    print("\n".join(prose))
    return 0 if (args.write or not any(stale.values())) and not prose else 1


if __name__ == "__main__":
    sys.exit(main())

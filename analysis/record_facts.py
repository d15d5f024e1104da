"""Every number a result record holds, one per line, with the units the documents quote it in.

    python -m analysis.record_facts analysis/records/larger-than-memory [--match KEY] [--layers]

What the prose of docs/benchmarks.md quotes that no table shows (a record's peak memory in GB, its minutes of
evaluation, its saved shards) is read from here: each record's numeric fields outside ``config``, ``versions``
and the per-layer rows, as ``path: key = value``; a byte count also in GB (10⁹), GiB (2³⁰) and MB (10⁶), a
count of seconds also in minutes and hours, rounded to two decimals. ``--match`` keeps the keys containing it;
``--layers`` adds the per-layer rows (a scale record's seven linears; a job's are many).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SKIP = ("config", "versions", "layers", "inputs")


def leaves(record: dict, prefix: str = "", skip: tuple = SKIP):
    """``(dotted key, number)`` for every int or float of ``record`` outside ``skip`` (lists by index)."""
    items = record.items() if isinstance(record, dict) else enumerate(record)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if not prefix and key in skip:
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield name, value
        elif isinstance(value, (dict, list)):
            yield from leaves(value, name, skip)


def units(key: str, value: float) -> str:
    """The value in the units a document quotes it in, for byte counts and seconds."""
    last = key.rsplit(".", 1)[-1]
    if "bytes" in last:
        return f" = {value / 1e9:.2f} GB = {value / 2 ** 30:.2f} GiB = {value / 1e6:.1f} MB"
    if (last.endswith("_s") and not last.endswith("per_s")) or last == "seconds":
        return f" = {value / 60:.2f} min = {value / 3600:.2f} h"
    return ""


def facts(root: Path, match: str | None = None, layers: bool = False) -> list[str]:
    paths = sorted(root.rglob("results.json")) if root.is_dir() else [root]
    if not paths:
        raise SystemExit(f"no results.json under {root}")
    out = []
    for path in paths:
        record = json.loads(path.read_text())
        where = path.parent.relative_to(root) if root.is_dir() else path.name
        skip = tuple(k for k in SKIP if not (layers and k == "layers"))
        out += [f"{where}: {key} = {value}{units(key, value)}" for key, value in leaves(record, skip=skip)
                if match is None or match in key]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.record_facts", description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a records directory (or one results.json)")
    p.add_argument("--match", help="only keys containing this")
    p.add_argument("--layers", action="store_true", help="the per-layer rows too")
    args = p.parse_args(argv)
    print("\n".join(facts(args.root, args.match, args.layers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

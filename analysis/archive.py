"""Copy complete result records from one tree to another, keeping their layout.

    python -m analysis.archive outputs/sweeps/frontier analysis/records/frontier   # keep a sweep's records
    python -m analysis.archive analysis/records/frontier outputs/sweeps/frontier   # resume it elsewhere

Only ``results.json`` of complete, current records is copied, with the per-document zero-shot results
kept beside a record (``zero_shot_samples.json``, the zero-shot table's paired tests read them; written
in the compact form of :func:`pruning.results.write_samples_atomic` whatever form the source had), and
no logs, checkpoints or W&B runs: the
records behind ``docs/benchmarks.md`` live in ``analysis/records/`` this way, so its tables can be
re-rendered without a run (``python -m analysis.tables analysis/records/frontier --table frontier``).
Copied back below ``outputs/sweeps/<sweep_name>``, they make the sweep skip those jobs (a job skips
itself when a complete record of its config is in its directory), so a sweep of many hours resumes
on another machine. Failed, running and stale records (:func:`pruning.record.stale_reason`) are left
out. A complete record already at the destination is never replaced by a different one unless
``--replace`` is given: the difference is reported and the command exits 1. Each copy is atomic.
Records from different machines may sit side by side (``versions.cpu``/``versions.gpu`` say which):
compare methods only where both ran on one machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from analysis.significance import samples_path
from pruning.record import stale_reason
from pruning.results import RESULTS_FILE, is_complete, read_record, write_samples_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class ArchiveReport:
    """What :func:`archive` did, by relative record path."""
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)   # a different complete record kept at the destination
    left_out: dict[str, str] = field(default_factory=dict)  # path -> why (incomplete, stale, unreadable)

    def summary(self) -> str:
        return (f"copied {len(self.copied)}, unchanged {len(self.unchanged)}, kept {len(self.conflicts)} "
                f"differing record(s) at the destination, left out {len(self.left_out)}")


def _copy_samples(src: Path, dst: Path) -> None:
    """A job's per-document results, written in the compact form whatever form the source had."""
    write_samples_atomic(dst, json.loads(src.read_text(encoding="utf-8")))


def archive(src: str | Path, dst: str | Path, replace: bool = False, dry_run: bool = False) -> ArchiveReport:
    """Copy every complete, current ``results.json`` below ``src`` to the same relative path below ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory of records")
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise ValueError(f"source {src} and destination {dst} overlap: choose two separate trees")
    report = ArchiveReport()
    for path in sorted(src.rglob(RESULTS_FILE)):
        rel = path.relative_to(src).as_posix()
        text = path.read_text(encoding="utf-8")
        record = read_record(path)
        if record is None:
            report.left_out[rel] = "unreadable"
            continue
        if not is_complete(record):
            report.left_out[rel] = f"status {record.get('status')!r}"
            continue
        if reason := stale_reason(record):
            report.left_out[rel] = f"stale: {reason}"
            continue
        target = dst / rel
        existing = read_record(target)
        samples = samples_path(path.parent, record)
        if existing == record:
            kept = samples_path(target.parent, record)
            if samples.is_file() and not kept.is_file() and not dry_run:  # an archive from before samples were kept
                _copy_samples(samples, kept)
            report.unchanged.append(rel)
            continue
        if is_complete(existing) and not replace:
            report.conflicts.append(rel)
            log.warning("%s: a different complete record is already there (config %s, finished %s; the source's: "
                        "config %s, finished %s); kept it (--replace overwrites)", target, existing.get("config_hash"),
                        (existing.get("job") or {}).get("finished"), record.get("config_hash"),
                        (record.get("job") or {}).get("finished"))
            continue
        if not dry_run:
            if samples.is_file():  # first, so that a record at the destination always has its samples
                _copy_samples(samples, samples_path(target.parent, record))
            write_text_atomic(target, text)  # the source's bytes, not a re-serialisation
        report.copied.append(rel)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.archive", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a tree of job directories, e.g. outputs/sweeps/frontier")
    p.add_argument("dst", help="where the records go, same layout, e.g. analysis/records/frontier")
    p.add_argument("--replace", action="store_true", help="overwrite differing complete records at the destination")
    p.add_argument("--dry-run", action="store_true", help="report what would be copied, copy nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = archive(args.src, args.dst, replace=args.replace, dry_run=args.dry_run)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for rel, why in report.left_out.items():
        log.info("left out %s (%s)", rel, why)
    print(("would have " if args.dry_run else "") + report.summary())
    return 1 if report.conflicts else 0


if __name__ == "__main__":
    raise SystemExit(main())

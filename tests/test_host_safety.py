"""The test suite leaves the host alone unless asked: without PRUNING_SLURM_TESTS=1 the SLURM integration
tests skip before they touch anything. Run as root (as in most containers and in CI), the SLURM test module
must leave /etc and /usr/local as they were, start no process that outlives it and stop none (a real SLURM's
daemons, the host's munged)."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

WATCHED = ("/etc", "/usr/local")
NAMES = ("slurm", "munge")  # the processes a careless test of a scheduler would start or stop


def _files() -> dict[str, tuple]:
    out = {}
    for root in WATCHED:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                out[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _processes() -> dict[tuple[int, str], str]:
    """(pid, start time) -> command line of the live processes named like a scheduler's or marked as ours."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes() if os.access(proc / "environ", os.R_OK) else b""
        except OSError:
            continue
        if stat[0] != "Z" and (any(n in cmd for n in NAMES) or b"PRUNING_SLURM_LOCAL=" in env):
            out[(int(proc.name), stat[19])] = cmd
    return out


def test_the_slurm_tests_without_being_asked_touch_neither_files_nor_processes(tmp_path):
    files, procs = _files(), _processes()
    env = {k: v for k, v in os.environ.items() if k != "PRUNING_SLURM_TESTS"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
                          f"--basetemp={tmp_path / 'base'}", "tests/test_slurm.py"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and "skipped" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PRUNING_SLURM_TESTS=1 runs them" in out.stdout  # the skip says how to ask
    after_files, after_procs = _files(), _processes()
    changed = sorted(p for p in set(files) | set(after_files) if files.get(p) != after_files.get(p))
    assert not changed, f"files under {WATCHED} changed: {changed[:10]}"
    started = {k: v for k, v in after_procs.items() if k not in procs}
    stopped = {k: v for k, v in procs.items() if k not in after_procs}
    assert not started and not stopped, (started, stopped)

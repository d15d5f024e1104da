"""Provenance (issue: records a reviewer can audit): the machine's fingerprint and the windows' fingerprints
in every record, and the frontier table refusing to pair records drawn on other windows."""

import json
import subprocess
import sys

import pytest
import torch

from analysis.collect import collect
from analysis.frontier import frontier_long, frontier_markdown
from pruning.pipeline import run_job
from pruning.provenance import machine, windows_sha256
from pruning.record import check_record
from tests.conftest import REPO, compose_cfg, tiny_overrides
from tests.test_analysis import write
from tests.test_analysis_frontier import frontier_record


def test_the_machine_fingerprint_is_stable_and_reveals_no_host_name():
    import socket
    a, b = machine(), machine()
    assert a == b and len(a["id"]) == 12
    assert a["logical_cpus"] >= a["usable_cpus"] >= 1 and a["memory_gib"] > 0 and isinstance(a["gpus"], list)
    assert socket.gethostname() not in json.dumps(a)
    # a fresh interpreter computes the same id (nothing in it depends on the process)
    code = "from pruning.provenance import machine; print(machine()['id'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == a["id"]


def test_windows_fingerprints_tell_windows_apart():
    ids = torch.arange(24).view(3, 8)
    assert windows_sha256(ids) == windows_sha256(ids.clone().to(torch.int32))  # the values, not the dtype
    assert windows_sha256(ids) != windows_sha256(ids.view(4, 6))  # the shape counts
    changed = ids.clone()
    changed[2, 7] += 1
    assert windows_sha256(ids) != windows_sha256(changed)


def test_a_record_carries_the_machine_and_window_fingerprints(tiny_data_root, tmp_path):
    over = tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "calibration.nsamples=4",
                          "calibration.seqlen=32", "calibration.heldout_nsamples=2")
    rec = run_job(compose_cfg(over), tmp_path / "a")
    assert rec["schema_version"] == 2 and check_record(rec) == []
    assert rec["versions"]["machine"] == machine()
    calib = rec["protocol"]["calibration"]
    assert len(calib["windows_sha256"]) == 16 and calib["heldout"]["windows_sha256"] != calib["windows_sha256"]
    ppl = rec["metrics"]["perplexity"]["wikitext2"]
    assert len(ppl["windows_sha256"]) == 16
    other = run_job(compose_cfg([*over, "calibration.seed=1"]), tmp_path / "b")
    assert other["protocol"]["calibration"]["windows_sha256"] != calib["windows_sha256"]
    assert other["metrics"]["perplexity"]["wikitext2"]["windows_sha256"] == ppl["windows_sha256"]
    old = {**rec, "schema_version": 1}  # records of schema 1 are still read
    assert check_record(old) == []
    frame = collect(tmp_path).frame
    assert set(frame["machine_id"]) == {machine()["id"]} and frame["calib_windows"].nunique() == 2


def test_the_frontier_refuses_to_pair_records_drawn_on_other_windows(tmp_path):
    for label, ppl, calib in (("sparsegpt", 44.0, "a" * 16), ("apt-refit", 40.0, "b" * 16)):
        rec = frontier_record(label, 0.5, 0, ppl, 70.0, 10.0)
        rec["protocol"]["calibration"]["windows_sha256"] = calib
        write(tmp_path, label, rec)
    frame = collect(tmp_path).frame
    with pytest.raises(ValueError, match="calibration windows bbbbbbbbbbbbbbbb != the baseline's aaaaaaaaaaaaaaaa"):
        frontier_long(frame)
    assert "| APT-refit |" in frontier_markdown(frame, allow_window_mismatch=True)
    frame.loc[frame.label == "apt-refit", "calib_windows"] = None  # a schema-1 record: cannot be checked
    assert frontier_long(frame).shape[0] == 2

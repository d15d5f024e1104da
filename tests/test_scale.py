"""The scale benchmark's harness (experiments/scale.py) on a tiny block: the engine a job uses, the time split,
memory, projections and the table."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_the_scale_harness_prunes_real_shaped_blocks_through_the_engine_and_tables_them(tmp_path):
    sweep = tmp_path / "scale"
    out = subprocess.run([sys.executable, "-m", "experiments.scale", "-m", "arch=tiny",
                          "method=sparsegpt,apt-refit-dense-seq", "nsamples=4", "seqlen=32", "blocks=2", "threads=1",
                          f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = {json.loads(p.read_text())["method"]["label"]: json.loads(p.read_text())
               for p in sweep.rglob("results.json")}
    assert sorted(records) == ["apt-refit-dense-seq", "sparsegpt"]
    for label, rec in records.items():
        b, proj = rec["per_block"], rec["projection"]
        assert rec["kind"] == "scale" and rec["arch"] == "tiny" and rec["memory"]["block_bytes"] == 4 * (
            64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3 + 2 * 64)  # q, o, k, v, gate, up, down, two norms (float32)
        assert 0 < b["calib_stats_s"] <= b["calib_forward_s"] and b["solver_s"] > 0
        assert (b["calib_dense_forward_s"] > 0) == (label == "apt-refit-dense-seq")
        assert b["error_report_s"] == 0  # no dense-output error report without engine.dense_error
        assert proj["passes"] == (4 + 1 + 1 if label == "apt-refit-dense-seq" else 2)  # one dense pass per block
        assert proj["layers"] == 4 and proj["prune_s"] == pytest.approx(4 * b["prune_total_s"],
                                                                        abs=0.1)
        assert proj["prune_s_paper_protocol"] > proj["prune_s"] and proj["peak_bytes"] > proj["peak_bytes_offload"]
        assert rec["matmul_flops_per_s"] > 0 and proj["forward_bound_s"] > 0
    table = (sweep / "scale.md").read_text()
    assert "| tiny | SparseGPT |" in table and "1.00×" in table and "APT-refit-dense-seq" in table
    from analysis.collect import collect
    assert collect(sweep).frame.empty  # benchmark records are not pruning jobs


def test_the_scale_harness_rejects_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.scale", "arch=tiny", "dtype=float8",
                          f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "dtype='float8'; allowed: float32, bfloat16, float16" in out.stderr


# a stand-in for a checkout of IST-DASLab/sparsegpt (CI has none): the same interface (SparseGPT(layer),
# add_batch, fasterprune, free), here backed by this project's own SparseGPT; it also imports a sibling module
# as the reference's sparsegpt.py imports quant.py
STAND_IN = '''
import torch
from helper import solve


class SparseGPT:
    def __init__(self, layer):
        self.layer, self.H, self.n = layer, 0, 0

    def add_batch(self, inp, out):
        x = inp.reshape(-1, inp.shape[-1]).float()
        self.H = self.H + 2 * x.t() @ x
        self.n += 1

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01):
        torch.cuda.synchronize()  # the reference calls it unconditionally
        print("time 0.0")
        self.layer.weight.data = solve(self.layer.weight.data, self.H / self.n, sparsity, prunen, prunem, blocksize,
                                       percdamp)

    def free(self):
        self.H = None
'''
HELPER = '''
from pruning.solvers.sparsegpt import sparsegpt
from pruning.sparsity import parse_sparsity


def solve(w, H, sparsity, prunen, prunem, blocksize, percdamp):
    spec = parse_sparsity(f"{prunen}:{prunem}" if prunen else sparsity)
    return sparsegpt(w, spec, H=H, blocksize=blocksize, percdamp=percdamp).weight
'''


def test_the_reference_anchor_runs_beside_a_row_on_the_same_block_and_windows(tmp_path):
    checkout = tmp_path / "sparsegpt"
    checkout.mkdir()
    (checkout / "sparsegpt.py").write_text(STAND_IN)
    (checkout / "helper.py").write_text(HELPER)
    out = subprocess.run([sys.executable, "-m", "experiments.scale", "arch=tiny", "method=sparsegpt", "nsamples=4",
                          "seqlen=32", "blocks=2", "threads=1", f"anchor={checkout}", f"hydra.run.dir={tmp_path / 'job'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rec = json.loads((tmp_path / "job" / "results.json").read_text())
    anchor = rec["anchor"]
    assert anchor["source"] == "IST-DASLab/sparsegpt" and anchor["commit"] is None  # not a git checkout
    assert anchor["params"] == {"blocksize": 128, "percdamp": 0.01}
    assert anchor["per_block"]["solver_s"] > 0 and anchor["per_block"]["calib_forward_s"] > 0
    assert anchor["mask_agreement"] > 0.99  # the same solver on the same block and windows
    from analysis.scale import scale_long
    row = scale_long(tmp_path).iloc[0]
    assert row["ref_block_s"] == anchor["per_block"]["prune_total_s"] and row["x_ref"] > 0
    bad = subprocess.run([sys.executable, "-m", "experiments.scale", "arch=tiny", f"anchor={tmp_path / 'none'}",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no sparsegpt.py there; clone IST-DASLab/sparsegpt" in bad.stderr

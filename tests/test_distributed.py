"""One prune across several processes (pruning/distributed.py): 2 gloo ranks on the CPU give bit for bit the
weights and report rows of one process accumulating the same two shards (engine.shards=2), and one unsharded
accumulation differs from those by float32 rounding only."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pruning.distributed import Comm, balance, batch_parts, shard_bounds
from pruning.engine import prune_model
from pruning.errors import ConfigError
from pruning.models import load_model
from pruning.solvers import SOLVERS
from pruning.spec import EngineSpec, parse_method
from pruning.stats import LayerStats, merge_stats
from tests.conftest import REPO, compose_cfg, tiny_overrides

METHODS = ("sparsegpt", "wanda", "apt-refit-dense-seq")
CALIB = (5, 16)  # 5 windows: uneven shards (3 + 2)


def _windows(n, seed):
    return torch.randint(0, 256, (n, CALIB[1]), generator=torch.Generator().manual_seed(seed))


def _prune(method: str, engine: EngineSpec, comm: Comm | None = None):
    """tiny-llama pruned at 50% with held-out windows; returns its state dict and report rows (seconds dropped)."""
    torch.set_num_threads(1)
    lm = load_model(compose_cfg(["model=tiny-llama"]).model)
    spec, target = parse_method(compose_cfg([f"method={method}"]).method, 0.5)
    extra = {"comm": comm} if comm is not None else {}
    report = prune_model(lm.model, lm.adapter, _windows(CALIB[0], 0), SOLVERS[spec.name], target,
                         dict(spec.solver_params), engine, spec.fit, heldout=_windows(3, 1), **extra)
    rows = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in report.layers]
    return {k: v.clone() for k, v in lm.model.state_dict().items()}, rows, report


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        comm = Comm(rank=rank, world=world, backend="gloo")
        out = {}
        for method in METHODS:
            state, rows, report = _prune(method, EngineSpec(), comm)
            out[method] = (state, rows, report.rank_timings)
        with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
            pickle.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    mp.spawn(_rank, args=(2, str(d / "init"), str(d)), nprocs=2, join=True)
    return [pickle.loads((d / f"rank{r}.pkl").read_bytes()) for r in range(2)]


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process_with_two_shards_bit_for_bit(two_ranks, method):
    state, rows, _ = _prune(method, EngineSpec(shards=2))
    for r in range(2):
        r_state, r_rows, timings = two_ranks[r][method]
        assert r_rows == rows
        for k, v in state.items():
            assert torch.equal(r_state[k], v), (method, r, k)
        assert len(timings) == 2 and all(t["prune_total_s"] > 0 for t in timings)


@pytest.mark.parametrize("method", METHODS)
def test_shards_change_the_statistics_by_rounding_only(method):
    """Against one accumulation over every window: the same masks here and weights within 1e-4 (the statistics
    differ in their last float32 bits; the solvers amplify that by their conditioning)."""
    one, rows1, _ = _prune(method, EngineSpec())
    two, rows2, _ = _prune(method, EngineSpec(shards=2))
    for k, v in one.items():
        assert torch.equal(v == 0, two[k] == 0), k
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-5)
    for a, b in zip(rows1, rows2):
        assert a["rel_error"] == pytest.approx(b["rel_error"], rel=1e-3)


def test_merged_shards_are_the_running_mean_of_every_window():
    torch.manual_seed(0)
    xs = [torch.randn(2, 7, 6) for _ in range(5)]
    whole, a, b = LayerStats(6), LayerStats(6), LayerStats(6)
    for i, x in enumerate(xs):
        whole.add_batch(x, 2)
        (a if i < 3 else b).add_batch(x, 2)
    merged = merge_stats([a, b])
    assert merged.nsamples == whole.nsamples == 10
    torch.testing.assert_close(merged.H, whole.H, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(merged.sq_norms, whole.sq_norms, rtol=1e-6, atol=1e-7)
    exact = sum(2 / 10 * x.reshape(-1, 6).double().t() @ x.reshape(-1, 6).double() for x in xs)
    torch.testing.assert_close(merged.H.double(), exact, rtol=1e-5, atol=1e-6)
    assert merge_stats([a]) is a


def test_shards_cut_at_batch_boundaries_and_balance_is_deterministic():
    assert shard_bounds(5, 1, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(7, 2, 2) == [(0, 4), (4, 7)]  # 4 batches: 2 + 2, the last one short
    assert shard_bounds(2, 2, 3, allow_empty=True) == [(0, 2), (2, 2), (2, 2)]
    with pytest.raises(ConfigError, match="fewer than the 3 shards"):
        shard_bounds(2, 2, 3)
    assert batch_parts(7, 2, 2) == [range(0, 2), range(2, 4)]
    assert batch_parts(7, 2, 1) is None
    # longest first, each to the least loaded rank: 8 -> 0, 5 -> 1, 4 -> 1, 3 -> 0
    assert balance({"q": 3.0, "k": 4.0, "v": 8.0, "o": 5.0}, 2) == {"v": 0, "o": 1, "k": 1, "q": 0}
    assert balance({"a": 1.0, "b": 1.0}, 2) == {"a": 0, "b": 1}


def _job(args, tmp_path, name, env=None):
    out = tmp_path / name
    proc = subprocess.run([*args, f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_torchrun_job_writes_one_record_with_the_two_ranks_and_the_one_process_numbers(tiny_data_root, tmp_path):
    """`torchrun --nproc-per-node 2 -m experiments.run runtime.distributed=true`: rank 0 writes one record (both
    ranks' timings and hosts in it, its zero-shot scores); its layers and perplexity are those of one process with
    engine.shards=2."""
    common = tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "calibration.nsamples=4",
                            "calibration.seqlen=32", "runtime.threads=1", "eval.perplexity.max_windows=3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dist_rec = _job([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                     str(29500 + os.getpid() % 1000), "-m", "experiments.run", *common, "runtime.distributed=true",
                     "eval=zeroshot", "eval.zero_shot.tasks=[piqa]", "eval.zero_shot.limit=2"], tmp_path, "two", env)
    one_rec = _job([sys.executable, "-m", "experiments.run", *common, "engine.shards=2"], tmp_path, "one", env)
    info = dist_rec["job"]["distributed"]
    assert info["world_size"] == 2 and info["backend"] == "gloo" and [r["rank"] for r in info["ranks"]] == [0, 1]
    assert all(r["timings"]["prune_total_s"] > 0 and r["sent_bytes"] > 0 and r["comm_s"] > 0 for r in info["ranks"])
    assert dist_rec["metrics"]["zero_shot"]["tasks"]["piqa"]["n_docs"] == 2  # rank 0 alone, rank 1 waiting
    assert [r["rel_error"] for r in dist_rec["layers"]] == [r["rel_error"] for r in one_rec["layers"]]
    ppl = dist_rec["metrics"]["perplexity"]["wikitext2"]
    assert ppl["ppl"] == one_rec["metrics"]["perplexity"]["wikitext2"]["ppl"] and ppl["nwindows"] == 3
    assert not list(tmp_path.glob("two@*"))  # no second directory: rank 1 claimed nothing
    from analysis.collect import collect
    from analysis.ranks_table import ranks_long, ranks_markdown

    frame = collect(tmp_path, keep_duplicates=True).frame
    table = ranks_long(frame)
    assert list(table["processes"]) == [1, 2] and list(table["shards"]) == [2, 2]
    assert table["sent_mb_per_block"].iloc[0] == 0 and table["sent_mb_per_block"].iloc[1] > 0
    assert table["ppl"].iloc[0] == table["ppl"].iloc[1]
    assert sum(line.startswith("| tiny-llama |") for line in ranks_markdown(frame).splitlines()) == 2


def test_distributed_needs_a_launcher_and_no_shards_of_its_own(tiny_data_root, tmp_path, monkeypatch):
    from pruning.distributed import init
    from pruning.pipeline import validate

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set.*torchrun"):
        init()
    with pytest.raises(ConfigError, match="distributed_backend='mpi'"):
        init("mpi")
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "runtime.distributed=true", "engine.shards=2",
                                     "method=sparsegpt"))
    with pytest.raises(ConfigError, match="engine.shards=2: the ranks are the shards"):
        validate(cfg)


def _scale_record(true_sequential: bool) -> dict:
    """A scale record of one LLaMA-shaped block (hidden 8, MLP 16) with chosen per-linear solver seconds."""
    shapes = {"self_attn.q_proj": [8, 8], "self_attn.k_proj": [8, 8], "self_attn.v_proj": [8, 8],
              "self_attn.o_proj": [8, 8], "mlp.gate_proj": [16, 8], "mlp.up_proj": [16, 8], "mlp.down_proj": [8, 16]}
    seconds = {"self_attn.q_proj": 1.0, "self_attn.k_proj": 1.0, "self_attn.v_proj": 1.0, "self_attn.o_proj": 1.0,
               "mlp.gate_proj": 2.0, "mlp.up_proj": 2.0, "mlp.down_proj": 4.0}  # 12 s; the block's solver: 24 s
    params = {"true_sequential": True, "output_target": "dense"} if true_sequential else {}
    return {"kind": "scale", "arch": "llama-2-7b", "config": {"arch": {"config": {"model_type": "llama"}},
                                                              "nsamples": 16, "seqlen": 512},
            "method": {"label": "apt-refit-dense-seq" if true_sequential else "sparsegpt", "params": params},
            "per_block": {"calib_forward_s": 40.0, "solver_s": 24.0, "prune_total_s": 64.0},
            "projection": {"layers": 32, "tokens": 8192, "paper_tokens": 262144}, "memory": {"block_bytes": 1000},
            "layers": [{"block": 0, "layer": n, "shape": s, "solver_s": seconds[n]} for n, s in shapes.items()]}


def test_rank_projection_divides_the_passes_and_shares_each_group_by_its_costs():
    from analysis.rank_projection import project

    one, two, eight = project(_scale_record(False), [1, 2, 8], link_gbs=1e-6)  # 1 kB/s: bytes visible in seconds
    assert one["block_s"] == pytest.approx(64.0) and one["received_gb"] == 0  # one rank: the measured block
    assert one["paper_model_h"] == pytest.approx((40.0 * 32 + 24.0) * 32 / 3600)  # passes x 32 tokens, not solves
    # 2 ranks, one group (costs doubled to 24 s): down 8 | gate 4 + up 4 ... -> 12 / 12
    assert two["forward_s"] == 20.0 and two["solver_s"] == pytest.approx(12.0)
    stats = 3 * 8 * 8 * 4 + 16 * 16 * 4  # q/k/v's, o's and gate/up's inputs of 8 columns, down's of 16
    assert two["received_gb"] * 1e9 == pytest.approx(stats + 500)
    assert eight["solver_s"] == pytest.approx(8.0)  # no group divides below its largest linear
    seq = project(_scale_record(True), [2, 8], link_gbs=1e-6)
    # groups q/k/v (2+2+2: 4 on the slower rank), o (2), gate/up (4+4: 4), down (8) -> 18; at 8 ranks 2+2+4+8 = 16
    assert [r["solver_s"] for r in seq] == pytest.approx([18.0, 16.0])
    assert seq[0]["received_gb"] * 1e9 == pytest.approx(2 * stats + 500)  # C beside H with the dense target


def _rank_job(rank: int, world: int, init_file: str, out_dir: str, args: list, kill: bool, result: str) -> None:
    """One rank of a distributed job run in-process (run_job with its Comm); ``kill``: rank 1 dies while it writes
    block 1 back, before saving its progress, after rank 0 has saved its own (rank 0 then fails in the barrier)."""
    import datetime
    import time

    from pruning.offload import BlockStore
    from pruning.pipeline import run_job

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    if kill and rank == 1:
        original = BlockStore.stage

        def stage(self, i, block):
            if i == 1:
                time.sleep(3)  # rank 0 saves its progress of block 1 meanwhile and waits in the barrier
                raise KeyboardInterrupt
            original(self, i, block)
        BlockStore.stage = stage
    torch.set_num_threads(1)
    try:
        rec = run_job(compose_cfg(args), out_dir, Comm(rank=rank, world=world, backend="gloo"))
        with open(f"{result}.rank{rank}", "wb") as f:
            pickle.dump(rec, f)
    finally:
        dist.destroy_process_group()


def _spawn_job(tmp_path, name, args, kill=False, out="job"):
    init = tmp_path / f"init-{name}"
    mp.spawn(_rank_job, args=(2, str(init), str(tmp_path / out), args, kill, str(tmp_path / name)), nprocs=2)
    return pickle.loads((tmp_path / f"{name}.rank0").read_bytes())


def test_a_killed_distributed_offloaded_prune_resumes_where_the_slowest_rank_stopped(tiny_data_root, tmp_path):
    """Blocks on disk, a store per rank, the default method; rank 1 killed before its progress of block 1, rank 0
    one block ahead: the same command resumes both from block 1 (rank 0 back to its previous progress) and ends
    with the uninterrupted 2-rank run's layers and perplexity; rank 0 saves and verifies the model from its store."""
    args = tiny_overrides("tiny-llama", tiny_data_root, "calibration.nsamples=4", "calibration.seqlen=64",
                          "method=apt-refit-dense-seq", "runtime.offload=disk", "runtime.distributed=true")
    whole = _spawn_job(tmp_path, "whole", [*args, "save.enabled=true"], out="whole")
    assert whole["save"]["verification"]["passed"] and whole["job"]["distributed"]["world_size"] == 2
    with pytest.raises(mp.ProcessRaisedException):
        _spawn_job(tmp_path, "killed", args, kill=True)
    stores = tmp_path / "job" / "offload"
    assert json.loads((tmp_path / "job" / "results.json").read_text())["status"] == "failed"  # rank 0's record
    assert (stores / "rank0" / "progress.prev.pt").exists() and (stores / "rank1" / "progress.pt").exists()
    resumed = _spawn_job(tmp_path, "resumed", args)
    assert resumed["protocol"]["engine"]["resumed_from_block"] == 1
    assert [r["rel_error"] for r in resumed["layers"]] == [r["rel_error"] for r in whole["layers"]]
    assert resumed["metrics"]["perplexity"]["wikitext2"]["ppl"] == whole["metrics"]["perplexity"]["wikitext2"]["ppl"]
    assert not stores.exists()  # complete: the temporary stores go


def test_one_shard_keeps_the_hash_of_older_records_and_runtime_distributed_is_not_in_it():
    from omegaconf import OmegaConf

    from pruning.results import config_hash

    cfg = OmegaConf.to_container(compose_cfg(["model=tiny-llama", "method=sparsegpt"]), resolve=True)
    assert cfg["engine"]["shards"] == 1 and cfg["runtime"]["distributed"] is False
    without = {**cfg, "engine": {k: v for k, v in cfg["engine"].items() if k != "shards"}}
    assert config_hash(cfg) == config_hash(without)
    assert config_hash({**cfg, "engine": {**cfg["engine"], "shards": 2}}) != config_hash(cfg)
    assert config_hash({**cfg, "runtime": {**cfg["runtime"], "distributed": True}}) == config_hash(cfg)


def test_progress_keeps_the_state_before_and_falls_back_to_it(tmp_path):
    """Each save keeps the one before (a rank one block ahead goes back to it, resume.agree); a kill between the
    save's two renames leaves only that one, which is then the state; done() removes both."""
    from pruning.resume import Progress, agree

    p = Progress(tmp_path, "cfg")
    p.save({"next_block": 1})
    assert p.previous() is None
    p.save({"next_block": 2})
    assert p.load()["next_block"] == 2 and p.previous()["next_block"] == 1
    assert agree(p, Comm())["next_block"] == 2  # one process: its own state
    p.path.unlink()  # killed between the renames
    assert p.exists() and p.load()["next_block"] == 1
    p.done()
    assert not p.exists() and p.load() is None

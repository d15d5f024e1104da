"""The engine against an independent transcription of the reference sequential loops.

``reference_sequential`` follows SparseGPT's ``llama_sequential`` / ``opt_sequential`` and Wanda's
``prune_wanda`` as written in those repositories: catch the first block's inputs by replacing the
block with a module that raises, then per block: hook every linear to accumulate its statistics over
the calibration sequences, prune each linear, and recompute the block's outputs *with the pruned
weights* as the next block's inputs. It shares no code with ``pruning/engine.py`` (only the solver
functions, which ``tests/test_solvers*.py`` check against the references on their own), so a change
in what the engine feeds the next block, or in how it gathers statistics, shows here.
"""

import math

import pytest
import torch
from torch import nn

from pruning.engine import prune_model
from pruning.spec import EngineSpec
from pruning.models import load_model
from pruning.solvers import SOLVERS, Solver, SolverResult
from pruning.sparsity import parse_sparsity
from tests.conftest import TINY_FAMILIES, compose_cfg

BLOCKS = {"llama": lambda m: m.model.layers, "opt": lambda m: m.model.decoder.layers, "mamba": lambda m: m.backbone.layers,
          "gemma3": lambda m: m.model.layers}


def _tiny(name):
    return load_model(compose_cfg([f"model={name}"]).model)


def _windows(n=6, seqlen=24, seed=3):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _linears(block):
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


class _Catcher(nn.Module):
    def __init__(self, block, cache):
        super().__init__()
        self.block, self.cache = block, cache

    def forward(self, hidden, *args, **kwargs):
        self.cache["inps"].append(hidden)
        self.cache["kwargs"] = kwargs
        raise ValueError  # the references stop the forward pass here


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def reference_sequential(model, blocks, windows, solve):
    """``solve(block_index, name, W, H, scaler_row) -> new W``; returns {(block, name): (H, scaler_row)}."""
    cache = {"inps": [], "kwargs": None}
    blocks[0] = _Catcher(blocks[0], cache)
    for j in range(windows.shape[0]):
        try:
            model(windows[j:j + 1], use_cache=False)
        except ValueError:
            pass
    blocks[0] = blocks[0].block
    inps, kwargs = cache["inps"], cache["kwargs"]
    seen = {}
    for i, block in enumerate(blocks):
        subset = _linears(block)
        state = {name: {"n": 0, "H": torch.zeros(m.in_features, m.in_features),
                        "scaler_row": torch.zeros(m.in_features)} for name, m in subset.items()}

        def add_batch(name):
            def hook(module, inp, out):
                x = inp[0].data
                if x.dim() == 2:
                    x = x.unsqueeze(0)
                tmp = x.shape[0]
                x = x.reshape(-1, x.shape[-1]).t().float()
                s = state[name]
                s["H"] *= s["n"] / (s["n"] + tmp)
                s["scaler_row"] *= s["n"] / (s["n"] + tmp)
                s["n"] += tmp
                s["scaler_row"] += torch.norm(x, p=2, dim=1) ** 2 / s["n"]
                x = math.sqrt(2 / s["n"]) * x
                s["H"] += x.matmul(x.t())
            return hook

        handles = [subset[name].register_forward_hook(add_batch(name)) for name in subset]
        if "mixer.dt_proj" in subset:  # the model bypasses dt_proj's forward: hook where its input is made
            rank = subset["mixer.dt_proj"].in_features

            def dt_input(module, inp, out):
                add_batch("mixer.dt_proj")(None, (out[..., :rank],), None)
            handles.append(subset["mixer.x_proj"].register_forward_hook(dt_input))
        for j in range(len(inps)):
            block(inps[j], **kwargs)
        for h in handles:
            h.remove()
        for name, m in subset.items():
            s = state[name]
            seen[(i, name)] = (s["H"].clone(), s["scaler_row"].clone())
            m.weight.data = solve(i, name, m.weight.data, s["H"], s["scaler_row"]).to(m.weight.dtype)
        inps = [_out(block(inps[j], **kwargs)) for j in range(len(inps))]
    return seen


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("method, spec", [("sparsegpt", 0.5), ("sparsegpt", "2:4"), ("wanda", 0.5), ("wanda", "2:4")])
def test_engine_equals_the_reference_loop(model, method, spec):
    sp = parse_sparsity(spec)
    ours, ref = _tiny(model), _tiny(model)
    prune_model(ours.model, ours.adapter, _windows(), SOLVERS[method], sp)

    def solve(i, name, w, H, scaler_row):
        return SOLVERS[method].fn(w, sp, H=H, sq_norms=scaler_row).weight

    reference_sequential(ref.model, BLOCKS[ours.adapter.family](ref.model), _windows(), solve)
    a, b = dict(ours.model.named_parameters()), dict(ref.model.named_parameters())
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), f"{name}: masks differ"
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=f"{name}: weights differ")


def _hessian(inputs):
    """``(2/n) Σ x xᵀ`` over the sequences of ``inputs`` (one tensor per sequence), as a running mean."""
    n, H = 0, None
    for x in inputs:
        x = x.reshape(-1, x.shape[-1]).t().float()
        H = torch.zeros(x.shape[0], x.shape[0]) if H is None else H
        H = H * n / (n + 1) + 2 * x @ x.t() / (n + 1)
        n += 1
    return H


def _recorder(store):
    """A solver that changes nothing and keeps the statistics it was given."""
    def keep(w, sparsity, *, H=None, sq_norms=None):
        store.append((H.clone(), sq_norms.clone()))
        return SolverResult(w.float().clone(), torch.zeros_like(w, dtype=torch.bool), 0.0)
    return Solver(keep, needs_hessian=True, needs_norms=True)


@pytest.mark.parametrize("model", TINY_FAMILIES)
def test_dense_propagation_feeds_every_layer_what_the_full_model_feeds_it(model):
    """With a solver that prunes nothing, every layer's statistics equal those of its inputs in one forward
    pass of the whole model (for Mamba's dt_proj: the time-step slice the model itself splits off)."""
    lm = _tiny(model)
    got = []
    prune_model(lm.model, lm.adapter, _windows(), _recorder(got), parse_sparsity(0.5))

    blocks = BLOCKS[lm.adapter.family](lm.model)
    names = [(i, n) for i, b in enumerate(blocks) for n in lm.adapter.prunable(b)]
    want = {key: [] for key in names}
    handles = []
    for i, b in enumerate(blocks):
        for n, m in lm.adapter.prunable(b).items():
            handles.append(m.register_forward_hook(lambda mod, inp, out, key=(i, n): want[key].append(inp[0])))
    split = torch.split
    mixers = lm.adapter.family == "mamba"

    def observe_split(tensor, sizes, dim=-1):  # Mamba: the time_step chunk the model multiplies by dt_proj.weight
        parts = split(tensor, sizes, dim=dim)
        if isinstance(sizes, (list, tuple)) and len(sizes) == 3 and len(parts) == 3:
            rank = blocks[0].mixer.time_step_rank
            if sizes[0] == rank:
                observed.append(parts[0])
        return parts

    observed = []
    with torch.no_grad():
        if mixers:
            torch.split = observe_split
        try:
            for j in range(_windows().shape[0]):
                lm.model(_windows()[j:j + 1], use_cache=False)
        finally:
            torch.split = split
            for h in handles:
                h.remove()
    if mixers:  # one time_step per block and window, in forward order
        nblocks = len(blocks)
        for i in range(nblocks):
            want[(i, "mixer.dt_proj")] = observed[i::nblocks]

    assert len(got) == len(names)
    for (key, (H, _)) in zip(names, got):
        torch.testing.assert_close(H, _hessian(want[key]), rtol=1e-4, atol=1e-5, msg=f"{key}")


def test_with_true_sequential_later_groups_see_the_pruned_earlier_ones():
    lm = _tiny("tiny-llama")
    got = []
    magnitude = SOLVERS["magnitude"].fn

    def prune_and_record(w, sparsity, *, H=None, sq_norms=None):
        got.append(H.clone())
        return magnitude(w, sparsity, H=H)

    fresh = _tiny("tiny-llama")
    prune_model(lm.model, lm.adapter, _windows(), Solver(prune_and_record, True, False), parse_sparsity(0.5),
                engine=EngineSpec(true_sequential=True))
    order = [n for group in lm.adapter.sequential_groups for n in group]
    o_proj_h = got[order.index("self_attn.o_proj")]  # block 0
    # the same block with only q/k/v pruned (as the engine left them), o_proj's input from the full model
    block, pruned = fresh.model.model.layers[0], lm.model.model.layers[0]
    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        block.get_submodule(n).weight.data = pruned.get_submodule(n).weight.data.clone()
    def o_proj_stats(model):
        seen = []
        h = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        with torch.no_grad():
            for j in range(_windows().shape[0]):
                model(_windows()[j:j + 1], use_cache=False)
        h.remove()
        return _hessian(seen)

    torch.testing.assert_close(o_proj_h, o_proj_stats(fresh.model), rtol=1e-4, atol=1e-5)
    dense = o_proj_stats(_tiny("tiny-llama").model)  # without true_sequential o_proj would have seen this
    assert not torch.allclose(o_proj_h, dense, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
def test_batched_calibration_gives_the_statistics_of_one_window_at_a_time(model):
    """engine.batch_size > 1: the running means over sequences are the same, whatever the batching."""
    one, three = [], []
    a, b = _tiny(model), _tiny(model)
    prune_model(a.model, a.adapter, _windows(), _recorder(one), parse_sparsity(0.5), engine=EngineSpec(batch_size=1))
    prune_model(b.model, b.adapter, _windows(), _recorder(three), parse_sparsity(0.5), engine=EngineSpec(batch_size=3))
    assert len(one) == len(three) > 0
    for (h1, n1), (h3, n3) in zip(one, three):
        torch.testing.assert_close(h1, h3, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(n1, n3, rtol=1e-4, atol=1e-5)

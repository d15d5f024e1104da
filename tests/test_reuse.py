"""engine.reuse_outputs: submodule outputs a group-by-group pass keeps for the next (pruning/reuse.py)."""

import pytest
import torch

from pruning.capture import StopForward
from pruning.engine import prune_model
from pruning.reuse import OutputReuse
from pruning.solvers import SOLVERS
from pruning.sparsity import parse_sparsity
from pruning.spec import EngineSpec, FitSpec
from tests.conftest import TINY_FAMILIES
from tests.test_engine import tiny, windows


def _prune(model: str, mode: str, method: str = "sparsegpt", params: dict | None = None, dense: bool = True):
    run = tiny(model)
    fit = FitSpec("dense" if dense else "pruned", target_alpha=0.25, true_sequential=True)
    report = prune_model(run.model, run.adapter, windows(4, 32), SOLVERS[method], parse_sparsity(0.5), params,
                         engine=EngineSpec(reuse_outputs=mode), fit=fit)
    return run, report


@pytest.mark.parametrize("model", TINY_FAMILIES)
def test_reused_outputs_prune_to_the_same_weights_bit_for_bit(model):
    """Every family, group by group with the dense-output target: keeping the sublayers' outputs (and single
    linears') gives the weights, layer errors and next-block inputs of running every pass whole, to the bit;
    where a block has a sublayer of two or more prunable linears some calls are answered from kept outputs."""
    base, base_report = _prune(model, "none")
    assert base_report.reused_calls == 0
    for mode in ("sublayers", "all"):
        run, report = _prune(model, mode)
        for (name, x), y in zip(base.model.named_parameters(), run.model.parameters()):
            assert torch.equal(x, y), (mode, name)
        assert [r["rel_error"] for r in report.layers] == [r["rel_error"] for r in base_report.layers]
        if model in ("tiny-llama", "tiny-gemma3", "tiny-opt"):
            assert report.reused_calls > 0, mode
    assert _prune(model, "all")[1].reused_calls >= _prune(model, "sublayers")[1].reused_calls


def test_the_attention_sublayer_runs_twice_per_block_instead_of_four_times():
    """Llama (groups q/k/v, o, gate/up, down, then the output pass): the o and gate/up passes run the attention
    sublayer (counted by its o_proj), the down pass and the output pass reuse its output; without reuse all four
    run it (and the dense pass and the replay check, in both). APT-refit (the default's solver) prunes to the
    same weights either way."""
    calls = {}
    for mode in ("none", "sublayers"):
        run = tiny("tiny-llama")
        blocks = run.adapter.blocks(run.model)
        count = [0]
        handles = [b.self_attn.o_proj.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1)) for b in blocks]
        params = {"variant": "block", "blocksize": 16, "dtype": "float32", "refine_iters": 2}
        prune_model(run.model, run.adapter, windows(4, 32), SOLVERS["apt"], parse_sparsity(0.5), params,
                    engine=EngineSpec(reuse_outputs=mode), fit=FitSpec("dense", target_alpha=0.25, true_sequential=True))
        for h in handles:
            h.remove()
        calls[mode] = (count[0], [p.clone() for p in run.model.parameters()])
    nblocks, nwin = len(blocks), 4
    assert calls["none"][0] - calls["sublayers"][0] == 2 * nblocks * nwin
    assert all(torch.equal(a, b) for a, b in zip(calls["none"][1], calls["sublayers"][1]))


class _Pair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x))


class _Twice(torch.nn.Module):
    """A sublayer called twice in one forward pass, around another linear."""
    def __init__(self):
        super().__init__()
        self.pair, self.c = _Pair(), torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.pair(self.c(self.pair(x)))


def _linears(m):
    return {"pair.a": m.pair.a, "pair.b": m.pair.b, "c": m.c}


def test_a_sublayer_called_twice_is_never_reused_silently():
    torch.manual_seed(0)
    m, x = _Twice(), torch.randn(2, 4)
    reuse = OutputReuse(m, _linears(m))
    assert list(reuse.modules) == ["pair"]
    # a whole pass sees both calls: the module is never kept
    with reuse.pass_over(("c",), _linears(m)):
        reuse.window(0)
        m(x)
    assert "pair" in reuse.banned and not reuse.kept
    # a pass that stops at c sees one call: kept; the next pass's second call stops the run
    reuse = OutputReuse(m, _linears(m))
    stop = m.c.register_forward_hook(lambda *a: (_ for _ in ()).throw(StopForward()))
    with reuse.pass_over(("c",), _linears(m)):
        reuse.window(0)
        with pytest.raises(StopForward):
            m(x)
    stop.remove()
    assert "pair" in reuse.kept
    with pytest.raises(RuntimeError, match="ran twice in one window"):
        with reuse.pass_over((), {}, record=False):
            reuse.window(0)
            m(x)
    assert "forward" not in m.pair.__dict__  # the module's own forward is back


def test_kept_outputs_are_private_copies_and_the_modes_are_checked():
    torch.manual_seed(1)
    m, x = _Twice(), torch.randn(2, 4)
    single = torch.nn.Sequential(m.pair)
    reuse = OutputReuse(single, {"0.a": m.pair.a, "0.b": m.pair.b}, "sublayers")
    with reuse.pass_over(("0.b",), {"0.b": m.pair.b}):  # the pair holds b: it completes after b is called
        reuse.window(0)
        single(x)
    assert not reuse.kept
    reuse = OutputReuse(single, {"0.a": m.pair.a, "0.b": m.pair.b}, "all")
    assert set(reuse.modules) == {"0", "0.a", "0.b"}
    with reuse.pass_over(("0.b",), {"0.b": m.pair.b}):
        reuse.window(0)
        single(x)
    assert set(reuse.kept) == {"0.a"}  # completed before b was called
    expected = m.pair.a(x).detach()
    spoil = m.pair.a.register_forward_hook(lambda mod, inp, out: out.mul_(0))  # a caller writing into what it got
    with reuse.pass_over(("0.b",), {"0.b": m.pair.b}):
        reuse.window(0)
        single(x)
    spoil.remove()
    assert reuse.reused == 1 and torch.equal(reuse.kept["0.a"][0], expected)  # ... leaves the kept output alone
    with pytest.raises(ValueError, match="engine.reuse_outputs='some'"):
        OutputReuse(single, {}, "some")

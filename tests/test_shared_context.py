"""Zero-shot requests sharing a context: grouping, per-request equality with lm-eval's own path on
tiny Llama, Gemma-3 (sliding window shorter than the contexts), OPT and Mamba, and the fall-back."""

from __future__ import annotations

import random

import pytest
import torch

from pruning.evaluation.shared_context import group_by_context, score_batch
from tests.conftest import compose_cfg

ALL_TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa"]


def test_requests_are_grouped_by_identical_context_tokens():
    a, b, c = [1] * 6, [2] * 6, [3] * 10
    reqs = [(None, a, [4]), (None, a, [5, 6]), (None, [7], [8, 9]), (None, b, [4, 4]),
            (None, a, [9]), (None, c, [1] * 3), (None, b, [3, 3]), (None, c, [2] * 3),
            (None, [4] * 6, [1]), (None, [4] * 6, [2]), (None, [5] * 3, [1] * 4), (None, [5] * 3, [2] * 4)]
    groups, rest = group_by_context(reqs, max_length=11)
    assert groups == [[0, 1, 4], [3, 6]]
    # a one-token context has nothing to share; 10 + 3 > 11 + 1 is truncated by lm-eval; one-token
    # continuations only: lm-eval runs their context once already; a short context before long
    # continuations saves less (2 tokens) than they cost (8)
    assert rest == [2, 5, 7, 8, 9, 10, 11]
    groups, rest = group_by_context(reqs, max_length=12)
    assert groups == [[0, 1, 4], [3, 6], [5, 7]] and rest == [2, 8, 9, 10, 11]
    groups, rest = group_by_context(reqs[:6], max_length=12)
    assert groups == [[0, 1, 4]] and rest == [2, 3, 5]  # a context of one request: nothing to share


def test_sharing_is_chosen_where_it_saves_more_tokens_than_it_costs():
    from pruning.evaluation.shared_context import worth_sharing

    assert worth_sharing(40, [3, 5, 4, 6])  # ARC: 117 context tokens saved, 18 continuation tokens
    assert not worth_sharing(14, [30, 28])  # PIQA: 13 saved, 58 paid
    assert not worth_sharing(300, [1, 1])  # BoolQ: lm-eval runs it once already
    assert not worth_sharing(300, [7])  # one request
    assert worth_sharing(400, [30, 28, 35, 31])  # 5-shot HellaSwag: 1197 saved, 124 paid


def _stock_scores(lm_model, tokenizer, requests):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=lm_model, tokenizer=tokenizer, batch_size=4, max_length=2048, device="cpu")
    return lm._loglikelihood_tokens(requests, disable_tqdm=True)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3", "tiny-opt"])
def test_scores_equal_lm_evals_own_path(model):
    from pruning.models import load_model

    lm = load_model(compose_cfg([f"model={model}"]).model)
    rng = random.Random(0)
    tokens = lambda n: [rng.randrange(3, 250) for _ in range(n)]  # noqa: E731
    # contexts of different lengths in one batch (left padding), longer than tiny-gemma3's sliding window (8)
    items = [(tokens(40), [tokens(n) for n in (1, 5, 3, 12)]), (tokens(9), [tokens(2), tokens(7)]),
             (tokens(2), [tokens(4)]), (tokens(25), [tokens(1), tokens(1), tokens(1)])]
    trims = model != "tiny-opt"
    batched = score_batch(lm.model, items, trims=trims)
    requests = [(None, context, c) for context, conts in items for c in conts]
    stock = _stock_scores(lm.model, lm.tokenizer, requests)
    ours = [a for answers in batched for a in answers]
    for (ll, greedy), (theirs, their_greedy) in zip(ours, stock, strict=True):
        assert ll == pytest.approx(theirs, abs=1e-4)
        assert greedy == their_greedy
    for (context, conts), answers in zip(items, batched):  # one context alone: the same numbers
        for (ll, _), (alone, _) in zip(answers, score_batch(lm.model, [(context, conts)], trims=trims)[0]):
            assert ll == pytest.approx(alone, abs=1e-4)
    # and not by accident: another context gives other numbers
    other = score_batch(lm.model, [(items[0][0][1:], items[0][1][:1])], trims=False)[0]
    assert abs(other[0][0] - batched[0][0][0]) > 1e-3


def _evaluate(model: str, tiny_data_root, share: bool, tasks=ALL_TASKS):
    from pruning.evaluation.zero_shot import evaluate_zero_shot
    from pruning.models import load_model

    lm = load_model(compose_cfg([f"model={model}"]).model)
    zs = {"tasks": tasks, "num_fewshot": 0, "limit": 6, "batch_size": 8}
    data = {"root": str(tiny_data_root), "verify_checksums": False}
    return evaluate_zero_shot(lm.model, lm.tokenizer, zs, data, logits_gb=4.0, share_context=share)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_a_zero_shot_run_scores_the_same_with_shared_contexts(model, tiny_data_root):
    plain = _evaluate(model, tiny_data_root, share=False)
    shared = _evaluate(model, tiny_data_root, share=True)
    info = shared["config"]["shared_context"]
    assert info["used"] and not info["fallback"] and info["checked_groups"] >= 2
    assert info["max_abs_diff"] < 1e-3
    assert 0 < info["token_share"] < 1  # each context ran once
    assert plain["config"]["shared_context"] == {"enabled": False, "used": False, "requests": 0, "groups": 0,
                                                 "checked_groups": 0, "max_abs_diff": None, "fallback": None}
    for task in ALL_TASKS:
        for key in ("acc", "acc_norm", "pred"):
            assert shared["samples"][task].get(key) == plain["samples"][task].get(key), (task, key)


def test_a_disagreeing_shared_path_hands_the_run_to_lm_eval(tiny_data_root, monkeypatch, caplog):
    import pruning.evaluation.budgeted_hflm as budgeted

    def off_by_one(*args, **kwargs):
        return [[(ll + 1.0, greedy) for ll, greedy in answers] for answers in score_batch(*args, **kwargs)]

    monkeypatch.setattr(budgeted, "score_batch", off_by_one)
    plain = _evaluate("tiny-llama", tiny_data_root, share=False, tasks=["hellaswag", "piqa"])
    with caplog.at_level("WARNING"):
        shared = _evaluate("tiny-llama", tiny_data_root, share=True, tasks=["hellaswag", "piqa"])
    info = shared["config"]["shared_context"]
    assert not info["used"] and "against lm-eval's" in info["fallback"]
    assert "lm-eval's own path" in caplog.text
    for task in ("hellaswag", "piqa"):
        assert shared["samples"][task]["pred"] == plain["samples"][task]["pred"]


def test_a_model_whose_cache_cannot_be_shared_is_scored_by_lm_eval(tiny_data_root):
    shared = _evaluate("tiny-mamba", tiny_data_root, share=True, tasks=["arc_easy", "piqa"])
    plain = _evaluate("tiny-mamba", tiny_data_root, share=False, tasks=["arc_easy", "piqa"])
    info = shared["config"]["shared_context"]
    # either the shared path agrees with lm-eval's on Mamba's state cache, or it is not used and says why
    assert (info["used"] and not info["fallback"]) or (not info["used"] and info["fallback"])
    for task in ("arc_easy", "piqa"):
        assert shared["samples"][task]["pred"] == plain["samples"][task]["pred"]


def test_the_shared_context_knob_is_a_runtime_setting():
    from pruning.results import config_hash
    from pruning.spec import parse_job
    from omegaconf import OmegaConf

    off, on = compose_cfg(["model=tiny-llama"]), compose_cfg(["model=tiny-llama", "runtime.zero_shot_shared_context=true"])
    assert parse_job(off).runtime.zero_shot_shared_context is False  # lm-eval's own path unless asked
    assert parse_job(on).runtime.zero_shot_shared_context is True
    # how the job runs, not what it computes: records keep their config hash
    assert config_hash(OmegaConf.to_container(on, resolve=True)) == config_hash(OmegaConf.to_container(off, resolve=True))


def test_score_batch_needs_no_gradient():
    from pruning.models import load_model

    lm = load_model(compose_cfg(["model=tiny-llama"]).model)
    with torch.enable_grad():
        scores = score_batch(lm.model, [([5, 6, 7], [[8], [9, 10]])])[0]
    assert len(scores) == 2 and all(isinstance(ll, float) for ll, _ in scores)

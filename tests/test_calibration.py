"""The sampler must reproduce the reference draw order exactly (docs/evaluation.md, "Calibration sampler")."""

import random

import pytest
import torch

from pruning.calibration import build_calibration, sample_documents, sample_stream
from pruning.errors import DataError
from pruning.models import byte_tokenizer


def reference_c4_sampler(docs, tokenizer, nsamples, seqlen, seed):
    """Direct transcription of sparsegpt datautils.get_c4's training loop (global `random`)."""
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            trainenc = tokenizer(docs[i], return_tensors="pt")
            if trainenc.input_ids.shape[1] > seqlen:
                break
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        trainloader.append(trainenc.input_ids[:, i:j])
    return torch.cat(trainloader)


def reference_stream_sampler(text, tokenizer, nsamples, seqlen, seed):
    """Direct transcription of sparsegpt datautils.get_wikitext2's training loop."""
    trainenc = tokenizer(text, return_tensors="pt")
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        out.append(trainenc.input_ids[:, i:i + seqlen])
    return torch.cat(out)


@pytest.fixture(scope="module")
def docs():
    rng = random.Random(7)
    # many documents shorter than seqlen, so the accept loop rejects often
    return ["".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 90))) for _ in range(200)]


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_document_sampler_matches_reference(docs, seed):
    tok = byte_tokenizer()
    ours = sample_documents(docs, tok, nsamples=16, seqlen=48, seed=seed)
    ref = reference_c4_sampler(docs, tok, nsamples=16, seqlen=48, seed=seed)
    assert torch.equal(ours, ref)
    assert ours.shape == (16, 48) and ours.dtype == torch.long


def test_accept_rule_is_strictly_greater(docs):
    tok = byte_tokenizer()
    # a document of exactly seqlen tokens must never be accepted (randint(0, -1) in the old `>=` rule)
    exact = ["x" * 10] * 5 + ["y" * 11]
    windows = sample_documents(exact, tok, nsamples=20, seqlen=10, seed=0)
    assert (windows == tok("y").input_ids[0]).all()


def test_sampler_is_deterministic_and_leaves_global_random_alone(docs):
    tok = byte_tokenizer()
    random.seed(99)
    before = random.random()
    random.seed(99)
    a = sample_documents(docs, tok, 8, 32, seed=3)
    after = random.random()
    assert before == after
    assert torch.equal(a, sample_documents(docs, tok, 8, 32, seed=3))
    assert not torch.equal(a, sample_documents(docs, tok, 8, 32, seed=4))


def test_stream_sampler_matches_reference(docs):
    tok = byte_tokenizer()
    text = " ".join(docs)
    ours = sample_stream(tok(text).input_ids, 12, 64, seed=0)
    assert torch.equal(ours, reference_stream_sampler(text, tok, 12, 64, seed=0))


def test_no_long_document_is_a_clear_error():
    with pytest.raises(DataError, match="none with more than seqlen=50"):
        sample_documents(["short"] * 10, byte_tokenizer(), 1, 50, seed=0, max_draws=100)
    with pytest.raises(DataError, match="not more than seqlen"):
        sample_stream(list(range(10)), 1, 10, seed=0)


@pytest.mark.parametrize("dataset, split, sampler", [("c4", "train", "documents"),
                                                     ("wikitext2", "validation", "stream"),
                                                     ("ptb", "validation", "stream")])
def test_build_calibration_from_data_root(tiny_data_root, dataset, split, sampler):
    cfg = {"dataset": dataset, "split": split, "nsamples": 4, "seqlen": 32, "seed": 0}
    data_cfg = {"root": str(tiny_data_root), "verify_checksums": False}
    cal = build_calibration(cfg, byte_tokenizer(), data_cfg)
    assert cal.windows.shape == (4, 32)
    assert cal.info["sampler"] == sampler and cal.info["data"]["source"] == "local"
    assert torch.equal(cal.windows, build_calibration(cfg, byte_tokenizer(), data_cfg).windows)


def test_heldout_documents_are_disjoint_and_leave_the_calibration_windows_alone(docs):
    from pruning.calibration import draw_documents
    tok = byte_tokenizer()
    windows, used = draw_documents(docs, tok, 16, 48, seed=0)
    assert torch.equal(windows, sample_documents(docs, tok, 16, 48, seed=0))
    held, held_used = draw_documents(docs, tok, 8, 48, seed=1, exclude=frozenset(used))
    assert held.shape == (8, 48) and not set(held_used) & set(used)
    with pytest.raises(DataError, match="all 3 documents are taken"):
        draw_documents(docs[:3], tok, 1, 4, seed=1, exclude=frozenset({0, 1, 2}))


def test_heldout_stream_windows_share_no_token_position(docs):
    from pruning.calibration import draw_stream
    ids = byte_tokenizer()(" ".join(docs)).input_ids
    windows, starts = draw_stream(ids, 12, 64, seed=0)
    assert torch.equal(windows, sample_stream(ids, 12, 64, seed=0))
    held, held_starts = draw_stream(ids, 12, 64, seed=1, avoid=starts)
    assert all(abs(h - s) >= 64 for h in held_starts for s in starts)
    assert any(abs(h - s) < 64 for h in draw_stream(ids, 12, 64, seed=1)[1] for s in starts)  # the check does work
    with pytest.raises(DataError, match="clear of the 1 calibration windows"):
        draw_stream(list(range(20)), 1, 10, seed=0, avoid=[5], max_draws=50)


def test_both_samplers_return_heldout_windows_with_one_provenance_shape(docs):
    from pruning.calibration import HELDOUT_SEED_OFFSET, document_windows, draw_stream, stream_windows
    tok = byte_tokenizer()
    ids = tok(" ".join(docs)).input_ids
    assert stream_windows(ids, 4, 32, seed=3)[1:] == (None, None)
    windows, held, info = stream_windows(ids, 4, 32, seed=3, heldout_nsamples=2)
    assert torch.equal(windows, sample_stream(ids, 4, 32, seed=3))
    starts = draw_stream(ids, 4, 32, seed=3)[1]
    assert torch.equal(held, draw_stream(ids, 2, 32, seed=3 + HELDOUT_SEED_OFFSET, avoid=starts)[0])
    doc_info = document_windows(docs, tok, 4, 32, seed=3, heldout_nsamples=2)[2]
    assert info.keys() == doc_info.keys() and info["seed"] == doc_info["seed"] == 3 + HELDOUT_SEED_OFFSET


@pytest.mark.parametrize("dataset, split", [("c4", "train"), ("wikitext2", "validation")])
def test_build_calibration_with_heldout_windows(tiny_data_root, dataset, split):
    cfg = {"dataset": dataset, "split": split, "nsamples": 4, "seqlen": 32, "seed": 0}
    data_cfg = {"root": str(tiny_data_root), "verify_checksums": False}
    plain = build_calibration(cfg, byte_tokenizer(), data_cfg)
    cal = build_calibration({**cfg, "heldout_nsamples": 3}, byte_tokenizer(), data_cfg)
    assert plain.heldout is None and "heldout" not in plain.info
    assert torch.equal(cal.windows, plain.windows) and cal.heldout.shape == (3, 32)
    assert cal.info["heldout"]["nsamples"] == 3 and cal.info["heldout"]["seed"] == 1
    assert not any(torch.equal(h, w) for h in cal.heldout for w in cal.windows)

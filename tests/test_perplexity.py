"""Perplexity protocol: window count, remainder dropped, hand-computed values."""

import math

import pytest
import torch
from torch import nn

from pruning.errors import ConfigError, DataError
from pruning.evaluation.perplexity import evaluate_perplexity, perplexity_from_ids, window_losses
from pruning.models import byte_tokenizer, load_model
from tests.conftest import compose_cfg


class _Out:
    def __init__(self, logits):
        self.logits = logits


class UniformLM(nn.Module):
    """Equal logits over V tokens: every prediction has loss log V, so ppl = V exactly."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        return _Out(torch.zeros(*input_ids.shape, self.vocab))


class BigramLM(nn.Module):
    """Logits depend only on the current token through a fixed table: losses are computable by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, use_cache=False):
        return _Out(self.table[input_ids])


def test_uniform_model_has_perplexity_vocab():
    ids = torch.randint(0, 37, (1000,))
    r = perplexity_from_ids(UniformLM(37), ids, seqlen=100)
    assert r["ppl"] == pytest.approx(37.0, rel=1e-6)  # float32 log-softmax
    assert r["nwindows"] == 10


def test_hand_computed_bigram_perplexity_and_remainder_dropped():
    torch.manual_seed(0)
    V, seqlen = 5, 4
    table = torch.randn(V, V)
    ids = torch.tensor([0, 1, 2, 3, 4, 0, 2, 2, 1, 3])  # 2 windows of 4, remainder [1, 3] dropped
    logp = torch.log_softmax(table.double(), dim=-1)
    w1 = -(logp[0, 1] + logp[1, 2] + logp[2, 3]) / 3
    w2 = -(logp[4, 0] + logp[0, 2] + logp[2, 2]) / 3
    expected = math.exp(float((w1 + w2) / 2))
    for bs in (1, 2):
        r = perplexity_from_ids(BigramLM(table), ids, seqlen, batch_size=bs)
        assert r["ppl"] == pytest.approx(expected, rel=1e-6)
        assert r["nwindows"] == 2 and r["ntokens"] == 8
    r = perplexity_from_ids(BigramLM(table), ids, seqlen, max_windows=1)
    assert r["ppl"] == pytest.approx(math.exp(float(w1)), rel=1e-6)


def test_tiny_model_matches_manual_loop():
    lm = load_model(compose_cfg(["model=tiny-llama"]).model)
    ids = torch.randint(0, 256, (3 * 32 + 5,))
    losses = window_losses(lm.model, ids, 32, batch_size=2)
    manual = []
    with torch.no_grad():
        for k in range(3):
            w = ids[k * 32:(k + 1) * 32][None]
            logits = lm.model(w).logits[0]
            manual.append(nn.functional.cross_entropy(logits[:-1], w[0, 1:]).item())
    assert losses.tolist() == pytest.approx(manual, rel=1e-5)


def test_bad_windows_are_clear_errors():
    with pytest.raises(DataError, match="do not fill one window"):
        perplexity_from_ids(UniformLM(3), torch.zeros(10, dtype=torch.long), seqlen=11)
    with pytest.raises(ConfigError, match="seqlen=1"):
        perplexity_from_ids(UniformLM(3), torch.zeros(10, dtype=torch.long), seqlen=1)


def test_join_rules_and_c4_cap(tiny_data_root):
    tok = byte_tokenizer()
    cfg = {"datasets": ["wikitext2", "ptb", "c4"], "splits": {"wikitext2": "test", "ptb": "test", "c4": "validation"},
           "seqlen": 16, "max_windows": None, "batch_size": 4}
    out = evaluate_perplexity(UniformLM(300), tok, cfg, {"root": str(tiny_data_root), "verify_checksums": False})
    wiki_rows = [line if line.strip() else "" for line in
                 (tiny_data_root / "wikitext2" / "wiki.test.raw").read_text().splitlines(keepends=True)]
    n_tokens = len(tok("\n\n".join(wiki_rows)).input_ids)
    assert out["wikitext2"]["nwindows"] == n_tokens // 16
    ptb = [line.strip() for line in (tiny_data_root / "ptb" / "ptb.test.txt").read_text().splitlines()]
    assert out["ptb"]["nwindows"] == len(tok(" ".join(ptb)).input_ids) // 16
    assert out["c4"]["nwindows"] <= 256 and out["c4"]["split"] == "validation"
    assert all(r["ppl"] == pytest.approx(300) for r in out.values())


def test_c4_joins_exactly_the_first_1100_documents_and_caps_at_256_windows(tmp_path):
    """The SparseGPT rule, on a root with more documents than the rule takes: ' '.join(first 1100 documents),
    tokenized once, at most 256 windows."""
    import json

    root = tmp_path / "root"
    (root / "c4").mkdir(parents=True)
    docs = [f"doc{i:04d} " + "x" * (i % 7) for i in range(1300)]  # 1300 documents; only the first 1100 count
    with open(root / "c4" / "c4_validation_subset_2k.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    tok = byte_tokenizer()
    from pruning.data import perplexity_text
    text = perplexity_text("c4", "validation", root=str(root), verify=False)
    assert text.rows == [" ".join(docs[:1100])] and text.info["rows_used"] == 1100 and text.info["rows"] == 1300
    n_tokens = len(tok(" ".join(docs[:1100])).input_ids)
    cfg = {"datasets": ["c4"], "splits": {"c4": "validation"}, "seqlen": 8, "max_windows": None, "batch_size": 64}
    out = evaluate_perplexity(UniformLM(300), tok, cfg, {"root": str(root), "verify_checksums": False})["c4"]
    assert n_tokens // 8 > 256 and out["nwindows"] == 256  # the protocol's cap, not the text's length
    cfg["seqlen"] = 64
    out = evaluate_perplexity(UniformLM(300), tok, cfg, {"root": str(root), "verify_checksums": False})["c4"]
    assert out["nwindows"] == min(256, n_tokens // 64)

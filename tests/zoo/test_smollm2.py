"""Perplexity windows checked exactly on a toy model; the real SmolLM2 (slow)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.zoo.smollm2 import perplexity, token_nll


class Bigram(nn.Module):
    """Logits depend only on the current token, so any windowing gives the same NLL."""

    def __init__(self, vocab: int = 11, wrap: bool = False) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator()
                                              .manual_seed(0)))
        self.wrap = wrap

    def forward(self, input_ids, use_cache=False):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits) if self.wrap else logits


def direct_nll(model: Bigram, ids: torch.Tensor, skip: set[int] = frozenset()) -> float:
    """NLL of every target position except those in ``skip``."""
    logp = torch.log_softmax(model.table.double(), dim=-1)
    return -sum(logp[ids[t - 1], ids[t]].item() for t in range(1, len(ids)) if t not in skip)


@pytest.mark.parametrize(("seq_len", "stride"), [(8, 4), (8, 3), (8, 7), (8, 1), (50, 25), (2, 1)])
def test_overlapping_windows_score_every_token_once(seq_len, stride):
    model = Bigram()
    ids = torch.randint(0, 11, (37,), generator=torch.Generator().manual_seed(1))
    nll, n = token_nll(model, ids, seq_len=seq_len, stride=stride)
    assert n == 36
    assert nll == pytest.approx(direct_nll(model, ids), rel=1e-12)


def test_non_overlapping_windows_skip_each_window_start():
    model = Bigram()
    ids = torch.randint(0, 11, (37,), generator=torch.Generator().manual_seed(1))
    nll, n = token_nll(model, ids, seq_len=8, stride=8)
    # windows [0,8) [8,16) [16,24) [24,32) [32,37): a window's first token has no context
    assert n == 36 - 4
    assert nll == pytest.approx(direct_nll(model, ids, skip={8, 16, 24, 32}), rel=1e-12)


def test_max_windows_counts_tokens():
    ids = torch.arange(100) % 11
    _, n = token_nll(Bigram(wrap=True), ids, seq_len=16, stride=8, max_windows=3)
    assert n == 15 + 8 + 8
    _, n = token_nll(Bigram(), ids, seq_len=16, max_windows=1)
    assert n == 15


def test_context_is_used_inside_a_window():
    class CountsContext(nn.Module):
        """Predicts token 0 with probability growing with the position in the window."""

        def forward(self, input_ids, use_cache=False):
            t = input_ids.shape[1]
            logits = torch.zeros(1, t, 2)
            logits[0, :, 0] = torch.arange(t, dtype=torch.float)
            return logits

    ids = torch.zeros(9, dtype=torch.long)
    nll_full, _ = token_nll(CountsContext(), ids, seq_len=9, stride=9)
    nll_short, _ = token_nll(CountsContext(), ids, seq_len=3, stride=3)
    assert nll_full < nll_short  # longer context, more confident, lower NLL


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    class Uniform(nn.Module):
        def forward(self, input_ids, use_cache=False):
            return torch.zeros(*input_ids.shape, 7)

    def tokenizer(text, return_tensors):
        return SimpleNamespace(input_ids=torch.tensor([[ord(c) % 7 for c in text]]))

    assert perplexity(Uniform(), tokenizer, "some text of a certain length",
                      seq_len=8) == pytest.approx(7.0, rel=1e-12)


def test_bad_arguments():
    ids = torch.arange(10) % 11
    with pytest.raises(InputError):
        token_nll(Bigram(), ids, seq_len=1)
    with pytest.raises(InputError):
        token_nll(Bigram(), ids, seq_len=8, stride=9)
    with pytest.raises(InputError):
        token_nll(Bigram(), ids[:1])
    with pytest.raises(InputError):
        token_nll(Bigram(), ids, max_windows=0)
    with pytest.raises(InputError):
        perplexity(Bigram(), None, "   ")


@pytest.mark.slow
def test_real_smollm2_perplexity_on_python_docs():
    import time

    from lowbit.zoo.smollm2 import load_smollm2
    from lowbit.zoo.text import python_docs_text

    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    loaded = time.perf_counter() - start
    assert model.config.num_hidden_layers == 30 and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = python_docs_text(max_chars=20_000)
    start = time.perf_counter()
    ppl = perplexity(model, tokenizer, text, seq_len=512, max_windows=2)
    print(f"SmolLM2 load {loaded:.1f} s; perplexity {ppl:.2f} on 2 windows of 512 tokens "
          f"in {time.perf_counter() - start:.1f} s")
    assert math.isfinite(ppl) and 1.0 < ppl < 100.0
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])

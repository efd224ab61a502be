"""A causal LM's decoding step with its KV cache as plain tensors, for ONNX export.

Hugging Face models keep the cache in Python objects, which an exported graph
cannot take; `DecodeStep` turns it into ``2 * layers`` tensor inputs and
outputs, so one ONNX graph with dynamic query and past lengths serves the
prompt (past = 0) and every new token. `export_decode_step` writes it with
lowbit's exporter (int4 weight-only Linear layers as MatMulNBits) or, for an
FP32 reference, with torch's.

    names, outs, dynamic = io_names(model.config.num_hidden_layers)
    export_decode_step(qmodel, Path("step.int4.onnx"), quantized=True)
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class DecodeStep(nn.Module):
    """One decoding step of a transformers causal LM with the KV cache as plain tensors.

    ``forward(input_ids [1, q], k_0, v_0, k_1, v_1, ...)`` with ``k_i, v_i`` of shape
    ``[batch, kv_heads, past, head_dim]`` (``past`` may be 0) returns the logits of the
    last position ``[batch, vocab]`` and the keys / values grown to ``past + q``.
    Positions are ``past .. past + q - 1``; the causal mask is built here as a 4D
    additive mask (transformers uses a prepared 4D mask as is), so the traced graph
    has no data-dependent branch and serves both the prompt and single tokens.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        from transformers import DynamicCache

        q, past_len = input_ids.shape[1], past[0].shape[2]
        positions = torch.arange(q, dtype=torch.long).unsqueeze(0) + past_len  # [1, q]
        keys = torch.arange(past_len + q, dtype=torch.long).unsqueeze(0)      # [1, past + q]
        allowed = keys <= positions.transpose(0, 1)                            # [q, past + q]
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)])
        out = self.model(input_ids=input_ids, position_ids=positions, attention_mask=mask,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        grown = []
        for layer in out.past_key_values.layers:
            grown += [layer.keys, layer.values]
        return (out.logits[:, -1], *grown)


def io_names(n_layers: int) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """Input / output names and dynamic axes of an exported `DecodeStep`."""
    past = [f"past_{i}_{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present_{i}_{kv}" for i in range(n_layers) for kv in ("key", "value")]
    dynamic = {"input_ids": {1: "q"}, **{n: {2: "past"} for n in past}, **{n: {2: "total"} for n in present}}
    return ["input_ids", *past], ["logits", *present], dynamic


def example_step_inputs(config: Any, q: int = 2, past: int = 3) -> tuple[Tensor, ...]:
    """Trace inputs with ``q > 1`` and ``past > 0``, so that neither length is baked in as 1 or 0."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (1, config.num_key_value_heads, past, head_dim)
    ids = torch.zeros(1, q, dtype=torch.long)
    return (ids, *[torch.zeros(shape) for _ in range(2 * config.num_hidden_layers)])


def export_decode_step(model: nn.Module, path: Path, *, quantized: bool, accuracy_level: int = 0) -> Path:
    """Export `DecodeStep` of ``model``: lowbit's exporter (MatMulNBits) or torch's for FP32."""
    names, outs, dynamic = io_names(model.config.num_hidden_layers)
    step = DecodeStep(model).eval()
    example = example_step_inputs(model.config)
    if quantized:
        import lowbit

        return lowbit.export.onnx(step, example, path, input_names=names, output_names=outs,
                                  dynamic_axes=dynamic, matmul_nbits_layers=True,
                                  nbits_accuracy_level=accuracy_level)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, example, str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=outs, dynamic_axes=dynamic)
    return path


# --- greedy decoding: one `Stepper` per backend --------------------------------------------


@dataclass
class Generation:
    tokens: list[int]
    first_logits: np.ndarray  # logits after the prompt step
    prefill_s: float
    decode_s: float


class TorchStepper:
    """transformers' own forward with a DynamicCache (no `DecodeStep`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompt: Tensor, n_new: int) -> Generation:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        start = time.perf_counter()
        out = self.model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        first = out.logits[0, -1]
        tokens = [int(first.argmax())]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(n_new - 1):
            ids = torch.tensor([[tokens[-1]]])
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tokens.append(int(out.logits[0, -1].argmax()))
        return Generation(tokens, first.numpy().copy(), prefill, time.perf_counter() - start)


class OrtStepper:
    """An exported `DecodeStep` in ONNX Runtime; the KV cache goes round as numpy arrays."""

    def __init__(self, path: Path, config: Any) -> None:
        from lowbit import runtime

        self.sess = runtime.session(path, threads=torch.get_num_threads())
        self.past_names = [i.name for i in self.sess.get_inputs()][1:]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.empty = np.zeros((1, config.num_key_value_heads, 0, head_dim), np.float32)

    def generate(self, prompt: Tensor, n_new: int) -> Generation:
        feeds = {"input_ids": prompt.numpy(), **{n: self.empty for n in self.past_names}}
        start = time.perf_counter()
        out = self.sess.run(None, feeds)
        first = out[0][0]
        tokens = [int(first.argmax())]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(n_new - 1):
            feeds = dict(zip(self.past_names, out[1:], strict=True))
            feeds["input_ids"] = np.array([[tokens[-1]]], dtype=np.int64)
            out = self.sess.run(None, feeds)
            tokens.append(int(out[0][0].argmax()))
        return Generation(tokens, first.copy(), prefill, time.perf_counter() - start)

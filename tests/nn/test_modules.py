"""Quantized layers: float equivalence when off, fake-quant semantics, convert, state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn import QuantConvTranspose2d, QuantEmbedding, QuantLinear, quantized_version
from lowbit.primitives import choose_qparams, fake_quantize
from lowbit.recipes import LayerSpec, QuantSpec

SPEC = LayerSpec(weight=QuantSpec("int8", "channel"), input=QuantSpec("uint8", symmetric=False))
LAYERS = [
    (lambda: nn.Linear(12, 5), (3, 12)),
    (lambda: nn.Conv1d(4, 6, 3), (2, 4, 9)),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 7, 7)),
    (lambda: nn.Conv3d(2, 3, 2), (1, 2, 4, 4, 4)),
    (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2), (2, 4, 5, 5)),
]


def _prepared(make, shape):
    torch.manual_seed(0)
    float_layer = make()
    x = torch.randn(shape)
    layer = quantized_version(float_layer, SPEC, "layer")
    layer.calibrate_weight()
    layer(x)
    layer.input_quantizer.freeze()
    return float_layer, layer, x


@pytest.mark.parametrize("make,shape", LAYERS)
def test_off_equals_float_and_on_equals_fake_quantized_operands(make, shape):
    float_layer, layer, x = _prepared(make, shape)
    reference = float_layer(x)
    for q in layer.quantizers().values():
        q.mode = "off"
    assert torch.equal(layer(x), reference)
    for q in layer.quantizers().values():
        q.mode = "quantize"
    wq = layer.weight_quantizer
    w_hat = fake_quantize(layer.weight, wq.scale, wq.zero_point, wq.fmt, axis=wq.axis)
    x_hat = layer.input_quantizer(x)
    float_layer.weight.data = w_hat.detach()
    assert torch.equal(layer(x), float_layer(x_hat))


@pytest.mark.parametrize("make,shape", LAYERS)
def test_convert_keeps_outputs_and_holds_codes(make, shape):
    _, layer, x = _prepared(make, shape)
    before = layer(x)
    layer.convert_weight()
    assert torch.equal(layer(x), before)
    state = layer.state_dict()
    assert "weight" not in state and state["weight_codes"].dtype == torch.int8
    fresh = quantized_version(make(), SPEC, "layer")
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), before)


def test_conv_transpose_per_channel_axis_is_output_channels():
    layer = QuantConvTranspose2d.from_float(nn.ConvTranspose2d(4, 6, 3), SPEC, "t")
    layer.calibrate_weight()
    assert layer.weight_quantizer.axis == 1 and layer.weight_quantizer.scale.shape == (6,)


def test_embedding_is_weight_only_and_per_row():
    table = nn.Embedding(50, 16)
    layer = QuantEmbedding.from_float(table, SPEC, "emb")
    assert layer.input_quantizer is None
    layer.calibrate_weight()
    idx = torch.tensor([[1, 2, 49]])
    p = choose_qparams(table.weight.detach(), "int8", "channel", axis=0)
    expected = fake_quantize(table.weight, p.scale, p.zero_point, "int8", axis=0)[idx]
    assert torch.equal(layer(idx), expected)


def test_group_weights_run_along_input_channels():
    spec = LayerSpec(weight=QuantSpec("int4", "group", group_size=32))
    layer = QuantLinear.from_float(nn.Linear(100, 8), spec, "fc")
    layer.calibrate_weight()
    assert layer.weight_quantizer.scale.shape == (8, 4) and layer.weight_quantizer.block_size == 32


def test_unsupported_module_is_a_clear_error():
    with pytest.raises(LowbitError, match=r"LayerNorm.*Exclude it"):
        quantized_version(nn.LayerNorm(4), SPEC, "norm")


def test_gradients_flow_to_weights_through_fake_quantization():
    _, layer, x = _prepared(*LAYERS[0])
    layer(x).sum().backward()
    assert layer.weight.grad is not None and bool(layer.weight.grad.abs().sum() > 0)

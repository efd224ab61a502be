"""requant="float": IntConv2d / IntLinear outputs equal ONNX Runtime's QLinearConv / QLinearMatMul.

The issue's bar is ≥ 99.99 % equal elements and no difference above 1; the
float multiplier is computed as ORT computes it ((s_x · s_w) / s_y in float32)
and applied as MLAS does, so the outputs are expected to be identical.

u8 × s8 cases keep weights in [-64, 64]: on AVX2 CPUs without VNNI, ORT's
u8s8 kernels add pairs of products in int16 with saturation (seed 003 §3.1),
and |w| ≤ 64 keeps every pair sum below 255 · 128 < 32768, so the comparison
holds on any x86 machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from integer.ort_models import qlinear_conv, qlinear_matmul
from lowbit.nn.integer import CodeParams, IntConv2d, IntLinear, OutputStage, along
from lowbit.nn.integer_overflow import avx2_u8s8_saturation

ACT = {"int8": (torch.int8, -128, 127), "uint8": (torch.uint8, 0, 255)}


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _weights(shape, act: str, gen) -> tuple[torch.Tensor, torch.Tensor]:
    limit = 127 if act == "int8" else 64
    w = torch.randint(-limit, limit + 1, shape, generator=gen).to(torch.int8)
    if act == "uint8":
        assert not avx2_u8s8_saturation(w, 8).saturates
    scale = torch.rand(shape[0], generator=gen) * 0.02 + 1e-3
    return w, scale


def _output_params(layer, x, act: str, gen) -> CodeParams:
    """An output scale that spans the accumulators (a few percent saturate), a random zero point."""
    acc = layer(x).double() * layer.input_params.scale
    acc = acc * along(layer.weight_scale.double(), layer.channel_axis, acc.dim())
    scale = _f32(float(acc.abs().quantile(0.98)) / 100)
    _, lo, hi = ACT[act]
    zero_point = int(torch.randint(lo + 40, hi - 40, (1,), generator=gen))
    return CodeParams(scale, zero_point, act)


def _compare(ours: torch.Tensor, ref: np.ndarray) -> None:
    diff = np.abs(ours.numpy().astype(np.int64) - ref.astype(np.int64))
    assert ours.shape == ref.shape
    assert (diff == 0).mean() >= 0.9999, f"only {(diff == 0).mean():.6f} equal"
    assert diff.max() <= 1


CONV_CASES = [
    # (in, out, kernel, stride, pads (top, left, bottom, right), dilation, groups)
    (8, 16, 3, 1, (1, 1, 1, 1), 1, 1),
    (8, 12, 3, 2, (1, 0, 2, 1), 1, 1),
    (16, 16, 3, 1, (1, 1, 1, 1), 1, 16),  # depthwise, as in MobileNetV2
    (6, 6, 3, 1, (2, 2, 2, 2), 2, 3),
    (64, 24, 1, 1, (0, 0, 0, 0), 1, 1),
]


@pytest.mark.parametrize("act", ["int8", "uint8"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_int_conv_equals_qlinearconv(act, case):
    cin, cout, k, stride, pads, dilation, groups = case
    gen = torch.Generator().manual_seed(cin * 31 + cout)
    dtype, lo, hi = ACT[act]
    x = torch.randint(lo, hi + 1, (2, cin, 11, 10), generator=gen).to(dtype)
    w, w_scale = _weights((cout, cin // groups, k, k), act, gen)
    x_params = CodeParams(_f32(0.05), int(torch.randint(lo, hi + 1, (1,), generator=gen)), act)
    top, left, bottom, right = pads
    conv = IntConv2d(w, w_scale, torch.zeros(cout), x_params, torch.randn(cout, generator=gen),
                     stride=stride, padding=[left, right, top, bottom], dilation=dilation,
                     groups=groups, mode="float")
    y_params = _output_params(conv, x, act, gen)
    conv.set_output(OutputStage.plain(y_params))
    ref = qlinear_conv(
        x.numpy(), x_params.scale, x_params.zero_point, w.numpy(), w_scale.numpy(),
        y_params.scale, y_params.zero_point, x.numpy().dtype, conv.bias_codes.numpy(),
        pads=pads, strides=(stride, stride), dilations=(dilation, dilation), group=groups,
    )
    _compare(conv(x), ref)


@pytest.mark.parametrize("act", ["int8", "uint8"])
@pytest.mark.parametrize("k, n", [(64, 10), (300, 48), (1280, 20)])
def test_int_linear_equals_qlinearmatmul(act, k, n):
    gen = torch.Generator().manual_seed(k + n)
    dtype, lo, hi = ACT[act]
    x = torch.randint(lo, hi + 1, (16, k), generator=gen).to(dtype)
    w, w_scale = _weights((n, k), act, gen)
    x_params = CodeParams(_f32(0.02), int(torch.randint(lo, hi + 1, (1,), generator=gen)), act)
    lin = IntLinear(w, w_scale, torch.zeros(n), x_params, None, mode="float")
    y_params = _output_params(lin, x, act, gen)
    lin.set_output(OutputStage.plain(y_params))
    ref = qlinear_matmul(x.numpy(), x_params.scale, x_params.zero_point, w.numpy().T.copy(),
                         w_scale.numpy(), y_params.scale, y_params.zero_point, x.numpy().dtype)
    _compare(lin(x), ref)


def test_many_elements_against_ort():
    # one larger layer: 2 · 32 · 28 · 28 ≈ 50k outputs, so 99.99 % allows at most 5 differences
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-128, 128, (2, 32, 28, 28), generator=gen).to(torch.int8)
    w, w_scale = _weights((32, 32, 3, 3), "int8", gen)
    x_params = CodeParams(_f32(0.031), -7, "int8")
    conv = IntConv2d(w, w_scale, torch.zeros(32), x_params, torch.randn(32, generator=gen),
                     padding=[1, 1, 1, 1], mode="float")
    y_params = _output_params(conv, x, "int8", gen)
    conv.set_output(OutputStage.plain(y_params))
    ref = qlinear_conv(x.numpy(), x_params.scale, x_params.zero_point, w.numpy(), w_scale.numpy(),
                       y_params.scale, y_params.zero_point, np.int8, conv.bias_codes.numpy(),
                       pads=(1, 1, 1, 1))
    _compare(conv(x), ref)

"""requant="fixed_point": integer ops equal a slow plain-Python reference of TFLite's kernels exactly."""

from __future__ import annotations

import pytest
import torch

from integer import tflite_reference as tfl
from lowbit.nn.integer import AccScale, CodeParams, IntConv2d, IntLinear, OutputStage
from lowbit.nn.integer_ops import IntAdd, Requantize


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _multipliers(x_scale: float, w_scale: torch.Tensor, y_scale: float) -> tuple[list, list]:
    # TFLite: double(input_scale) * double(filter_scale) / double(output_scale), per channel
    pairs = [tfl.quantize_multiplier(x_scale * float(s) / y_scale) for s in w_scale]
    return [m for m, _ in pairs], [s for _, s in pairs]


@pytest.mark.parametrize("stride, pad, dilation, groups, relu6", [
    (1, 1, 1, 1, False),
    (2, 1, 1, 1, True),
    (1, 2, 2, 2, True),
    (1, 1, 1, 4, False),  # depthwise
])
def test_int_conv_equals_tflite_conv_per_channel(stride, pad, dilation, groups, relu6):
    gen = torch.Generator().manual_seed(stride * 10 + pad + groups)
    x = torch.randint(-128, 128, (2, 4, 6, 5), generator=gen).to(torch.int8)
    w = torch.randint(-127, 128, (4, 4 // groups, 3, 3), generator=gen).to(torch.int8)
    w_scale = torch.rand(4, generator=gen) * 0.02 + 1e-3
    x_params = CodeParams(_f32(0.04), 9, "int8")
    y_params = CodeParams(_f32(0.09), -20, "int8")
    stage = OutputStage.plain(y_params, 0.0, 6.0) if relu6 else OutputStage.plain(y_params)
    conv = IntConv2d(w, w_scale, torch.zeros(4), x_params, torch.randn(4, generator=gen) * 3,
                     stride=stride, padding=[pad] * 4, dilation=dilation, groups=groups,
                     output=stage, mode="fixed_point")
    multipliers, shifts = _multipliers(x_params.scale, w_scale, y_params.scale)
    ref = tfl.conv_per_channel(
        x.tolist(), w.tolist(), conv.bias_codes.tolist(), -x_params.zero_point, y_params.zero_point,
        multipliers, shifts, stage.act_min, stage.act_max, stride, pad, dilation, groups,
    )
    assert conv(x).tolist() == ref
    if relu6:  # the clamp is ReLU6 in codes: zero point .. zero point + 6 / scale
        assert (stage.act_min, stage.act_max) == (-20, -20 + round(6 / y_params.scale))


@pytest.mark.parametrize("relu", [False, True])
def test_int_linear_equals_tflite_fully_connected(relu):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (3, 40), generator=gen).to(torch.int8)
    w = torch.randint(-127, 128, (7, 40), generator=gen).to(torch.int8)
    w_scale = torch.rand(7, generator=gen) * 0.01 + 1e-3
    x_params, y_params = CodeParams(_f32(0.05), -3, "int8"), CodeParams(_f32(0.2), 11, "int8")
    stage = OutputStage.plain(y_params, 0.0, float("inf")) if relu else OutputStage.plain(y_params)
    lin = IntLinear(w, w_scale, torch.zeros(7), x_params, torch.randn(7, generator=gen),
                    output=stage, mode="fixed_point")
    multipliers, shifts = _multipliers(x_params.scale, w_scale, y_params.scale)
    ref = tfl.fully_connected_per_channel(x.tolist(), w.tolist(), lin.bias_codes.tolist(),
                                          3, 11, multipliers, shifts, stage.act_min, stage.act_max)
    assert lin(x).tolist() == ref


@pytest.mark.parametrize("scales", [(0.05, 0.02, 0.06), (0.01, 0.3, 0.25), (0.1, 0.1, 0.1)])
def test_int_add_equals_tflite_add(scales):
    gen = torch.Generator().manual_seed(5)
    sa, sb, so = (_f32(s) for s in scales)
    a = torch.randint(-128, 128, (500,), generator=gen).to(torch.int8)
    b = torch.randint(-128, 128, (500,), generator=gen).to(torch.int8)
    pa, pb, po = CodeParams(sa, 4, "int8"), CodeParams(sb, -9, "int8"), CodeParams(so, 2, "int8")
    add = IntAdd(pa, pb, OutputStage.plain(po), "fixed_point")
    ref = tfl.add(a.tolist(), b.tolist(), sa, 4, sb, -9, so, 2, -128, 127)
    assert add(a, b).tolist() == ref


def test_requantize_equals_tflite_requantize():
    q = torch.arange(-128, 128, dtype=torch.int8)
    src, dst = CodeParams(_f32(0.0537), -6, "int8"), CodeParams(_f32(0.0411), 3, "int8")
    ours = Requantize(src, OutputStage.plain(dst), "fixed_point")(q)
    assert ours.tolist() == tfl.requantize(q.tolist(), src.scale, -6, dst.scale, 3, -128, 127)


def test_requantize_of_accumulators_is_tflite_multiply_by_quantized_multiplier():
    acc = torch.randint(-(1 << 24), 1 << 24, (4, 3, 5), generator=torch.Generator().manual_seed(2))
    scale = AccScale(_f32(0.02), (0.001, 0.004, 0.0003), axis=1)
    stage = OutputStage.plain(CodeParams(_f32(0.5), 7, "uint8"))
    ours = Requantize(scale, stage, "fixed_point")(acc.to(torch.int32))
    for c, w_scale in enumerate(scale.weight_scale):
        m, s = tfl.quantize_multiplier(scale.input_scale * w_scale / stage.codes.scale)
        expected = [min(max(tfl.multiply_by_quantized_multiplier(v, m, s) + 7, 0), 255)
                    for v in acc[:, c].flatten().tolist()]
        assert ours[:, c].flatten().tolist() == expected

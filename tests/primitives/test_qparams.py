"""choose_qparams / qparams_from_minmax: formulas, granularity shapes and degenerate ranges."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError, GranularityError, InputError, QParamsError
from lowbit.formats import FP8_E4M3FN, INT4, INT8, UINT8, get_format
from lowbit.primitives import (
    MIN_SCALE,
    choose_qparams,
    dequantize,
    per_channel,
    per_group,
    per_token,
    qparams_from_minmax,
    quantize,
)


def test_asymmetric_formula():
    s, z = qparams_from_minmax(torch.tensor(-1.0), torch.tensor(3.0), UINT8, symmetric=False)
    assert float(s) == pytest.approx(4 / 255)
    assert int(z) == round(0 - (-1.0) / float(s))


def test_symmetric_formula_signed_and_unsigned():
    s, z = qparams_from_minmax(torch.tensor(-2.0), torch.tensor(1.0), INT8)
    assert float(s) == pytest.approx(2 / 127) and int(z) == 0
    s, z = qparams_from_minmax(torch.tensor(-2.0), torch.tensor(1.0), UINT8)
    assert float(s) == pytest.approx(2 / 127) and int(z) == 128
    s, z = qparams_from_minmax(torch.tensor(-2.0), torch.tensor(1.0), "int8_narrow")
    assert float(s) == pytest.approx(2 / 127)


def test_range_is_widened_to_include_zero():
    s, z = qparams_from_minmax(torch.tensor(2.0), torch.tensor(6.0), UINT8, symmetric=False)
    assert int(z) == 0 and float(s) == pytest.approx(6 / 255)


@pytest.mark.parametrize("fmt", ["int8", "uint8", "int4", "uint4", "int2", "int16"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("value", [0.0, 0.3, -7.25, 1e-30, 3e37, 0.1])
def test_constant_tensors_are_exact(fmt, symmetric, value):
    fmt = get_format(fmt)
    if symmetric and not fmt.signed and value < 0:
        pass
    x = torch.full((5,), value)
    p = choose_qparams(x, fmt, symmetric=symmetric)
    assert bool(torch.isfinite(p.scale)) and float(p.scale) > 0
    back = dequantize(quantize(x, p.scale, p.zero_point, fmt), p.scale, p.zero_point, fmt)
    if abs(value) >= MIN_SCALE * 2**16 or value == 0:
        assert torch.equal(back, x), (back, x)


def test_tiny_ranges_keep_a_normal_scale():
    p = choose_qparams(torch.tensor([1e-42, -1e-42]), INT8)
    assert float(p.scale) >= MIN_SCALE


def test_granularity_shapes():
    w = torch.randn(16, 8, 3, 3)
    assert choose_qparams(w, INT8, per_channel(0)).scale.shape == (16,)
    assert choose_qparams(w, INT8, per_channel(1)).scale.shape == (8,)
    a = torch.randn(2, 7, 96)
    p = choose_qparams(a, INT8, per_token())
    assert p.scale.shape == (2, 7, 1) and p.axis == 2 and p.block_size == 96
    p = choose_qparams(torch.randn(64, 576), INT4, per_group(128))
    assert p.scale.shape == (64, 5)
    p = choose_qparams(torch.randn(64, 576), INT4, per_group(32, axis=0))
    assert p.scale.shape == (2, 576)


def test_per_channel_values_equal_per_tensor_on_each_slice():
    w = torch.randn(6, 20)
    p = choose_qparams(w, UINT8, per_channel(0), symmetric=False)
    for c in range(6):
        pc = choose_qparams(w[c], UINT8, symmetric=False)
        assert float(pc.scale) == float(p.scale[c]) and int(pc.zero_point) == int(p.zero_point[c])


def test_float_formats_are_symmetric():
    p = choose_qparams(torch.tensor([-896.0, 10.0]), FP8_E4M3FN)
    assert float(p.scale) == 2.0
    with pytest.raises(FormatError, match="symmetric"):
        choose_qparams(torch.tensor([1.0]), FP8_E4M3FN, symmetric=False)


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e6, 1e6, width=32), st.floats(0, 1e6, width=32),
       st.sampled_from(["int8", "uint8", "int4", "uint4", "uint2", "int16"]))
def test_zero_is_exact_and_zero_point_in_range(low, width, name):
    fmt = get_format(name)
    lo, hi = torch.tensor(low), torch.tensor(low + width)
    s, z = qparams_from_minmax(lo, hi, fmt, symmetric=False)
    assert fmt.qmin <= int(z) <= fmt.qmax
    q = quantize(torch.zeros(1), s, z, fmt)
    assert dequantize(q, s, z, fmt).item() == 0.0


def test_bad_inputs():
    with pytest.raises(InputError, match="empty"):
        choose_qparams(torch.empty(0), INT8)
    with pytest.raises(InputError, match="1 NaN and 1 Inf"):
        choose_qparams(torch.tensor([1.0, float("nan"), float("inf")]), INT8)
    with pytest.raises(InputError, match="float tensor"):
        choose_qparams(torch.tensor([1, 2]), INT8)
    with pytest.raises(QParamsError, match="larger"):
        qparams_from_minmax(torch.tensor(2.0), torch.tensor(1.0), INT8)
    with pytest.raises(GranularityError, match="group_size"):
        choose_qparams(torch.randn(4, 4), INT8, "group", group_size=0)
    with pytest.raises(GranularityError, match="at least one dimension"):
        choose_qparams(torch.tensor(1.0), INT8, per_channel(0))
    with pytest.raises(GranularityError, match="out of range"):
        choose_qparams(torch.randn(4, 4), INT8, per_channel(3))

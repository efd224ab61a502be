"""quantize / dequantize against a slow plain-Python reference, properties and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import GranularityError, InputError, LowbitError, QParamsError
from lowbit.formats import INT4, INT8, UINT8, get_format, int_format
from lowbit.primitives import choose_qparams, dequantize, quantize


def slow_round(v: float, mode: str) -> float:
    if mode == "half_even":
        return float(round(v))  # Python's round() is half to even
    if mode == "half_away":
        return math.copysign(math.floor(abs(v) + 0.5), v) if abs(v) < 2**52 else v
    return float({"floor": math.floor, "ceil": math.ceil, "truncate": math.trunc}[mode](v))


def slow_quantize(values, scale, zp, qmin, qmax, mode="half_even"):
    out = []
    for v in values:
        r = torch.tensor(v, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
        out.append(int(min(max(slow_round(float(r), mode) + zp, qmin), qmax)))
    return out


@pytest.mark.parametrize("mode", ["half_even", "half_away", "floor", "ceil", "truncate"])
@pytest.mark.parametrize("bits,signed", [(8, True), (8, False), (4, True), (3, False), (7, False),
                                         (16, True), (2, True), (12, False)])
def test_per_tensor_equals_slow_reference(mode, bits, signed):
    fmt = int_format(bits, signed)
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(300, generator=gen) * 4
    x[:40] = (torch.arange(-20, 20) + 0.5) * 0.125  # exact ties
    scale, zp = 0.125, int(fmt.qmin + fmt.qmax) // 2
    ours = quantize(x, scale, zp, fmt, rounding=mode)
    assert ours.tolist() == slow_quantize(x.tolist(), scale, zp, fmt.qmin, fmt.qmax, mode)


def test_per_channel_and_group_equal_per_tensor_slices():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 13, generator=gen)
    p = choose_qparams(w, INT4, "group", group_size=4)
    q = quantize(w, p.scale, p.zero_point, INT4, axis=p.axis, block_size=p.block_size)
    for row in range(5):
        for g in range(4):
            cols = slice(4 * g, min(4 * g + 4, 13))
            ref = quantize(w[row, cols], p.scale[row, g], p.zero_point[row, g], INT4)
            assert torch.equal(q[row, cols], ref)
    pc = choose_qparams(w, INT8, "channel", axis=1)
    qc = quantize(w, pc.scale, pc.zero_point, INT8, axis=1)
    for col in range(13):
        assert torch.equal(qc[:, col], quantize(w[:, col], pc.scale[col], 0, INT8))


def test_group_size_that_does_not_divide_pads_last_group():
    w = torch.randn(8, 576)
    p = choose_qparams(w, INT4, "group", group_size=128)
    assert tuple(p.scale.shape) == (8, 5)
    q = quantize(w, p.scale, p.zero_point, INT4, axis=p.axis, block_size=p.block_size)
    err = (dequantize(q, p.scale, p.zero_point, INT4, axis=1, block_size=128) - w).abs()
    bound = p.scale.repeat_interleave(128, dim=1)[:, :576] / 2
    assert bool((err <= bound * (1 + 1e-6)).all())


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=64), st.sampled_from(["int8", "uint8", "int4", "uint3"]),
       st.booleans())
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(values, name, symmetric):
    fmt = get_format(name)
    if symmetric and not fmt.signed:
        symmetric = False
    x = torch.tensor(values, dtype=torch.float32)
    p = choose_qparams(x, fmt, symmetric=symmetric)
    back = dequantize(quantize(x, p.scale, p.zero_point, fmt), p.scale, p.zero_point, fmt)
    low = float(p.scale) * (fmt.qmin - int(p.zero_point))
    high = float(p.scale) * (fmt.qmax - int(p.zero_point))
    inside = (x >= low) & (x <= high)
    err = (back - x).abs()[inside]
    # half a step, plus float32 rounding of the division and the multiply
    assert bool((err <= float(p.scale) * 0.5 * (1 + 1e-5) + 1e-6 * x.abs().max()).all())


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=32), st.floats(1e-3, 10), st.integers(-128, 127))
def test_saturation_monotonicity_and_zero(values, scale, zp):
    x = torch.tensor(sorted(values), dtype=torch.float32)
    q = quantize(x, scale, zp, INT8).to(torch.int32)
    assert bool((q[1:] >= q[:-1]).all())  # monotone
    big = quantize(torch.tensor([1e30, -1e30]), scale, zp, INT8)
    assert big.tolist() == [127, -128]  # saturates
    zero = quantize(torch.tensor([0.0]), scale, zp, INT8)
    assert dequantize(zero, scale, zp, INT8).item() == 0.0  # zero is exact


@pytest.mark.parametrize("bad", [float("nan")])
def test_nan_input_is_an_error_for_integer_codes(bad):
    with pytest.raises(InputError, match="NaN"):
        quantize(torch.tensor([1.0, bad]), 0.1, 0, INT8)


def test_inf_saturates_like_onnx():
    q = quantize(torch.tensor([float("inf"), -float("inf")]), 0.1, 0, INT8)
    assert q.tolist() == [127, -128]


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scales_are_rejected(scale):
    with pytest.raises(QParamsError, match="positive and finite"):
        quantize(torch.ones(3), scale, 0, INT8)


def test_bad_zero_points_and_shapes():
    with pytest.raises(QParamsError, match="zero points must lie"):
        quantize(torch.ones(3), 1.0, 300, UINT8)
    with pytest.raises(QParamsError, match="integers"):
        quantize(torch.ones(3), 1.0, torch.tensor(0.5), UINT8)
    with pytest.raises(GranularityError, match="needs"):
        quantize(torch.ones(4, 3), torch.ones(4), None, INT8, axis=1)
    with pytest.raises(GranularityError, match="one scale"):
        quantize(torch.ones(4, 3), torch.ones(4), None, INT8)
    with pytest.raises(GranularityError, match="out of range"):
        quantize(torch.ones(4, 3), torch.ones(4), None, INT8, axis=2)
    with pytest.raises(GranularityError, match="needs an axis"):
        quantize(torch.ones(4, 3), torch.ones(4), None, INT8, block_size=2)
    with pytest.raises(InputError, match="float tensor"):
        quantize(torch.ones(3, dtype=torch.int32), 1.0, 0, INT8)
    with pytest.raises(InputError, match="integer tensor"):
        dequantize(torch.ones(3), 1.0, 0, INT8)
    with pytest.raises(LowbitError, match="2 to 16 bits"):
        quantize(torch.ones(3), 1.0, 0, "int99")


def test_empty_tensor_quantizes_to_empty():
    q = quantize(torch.empty(0, 4), 1.0, 0, INT8)
    assert q.shape == (0, 4) and q.dtype == torch.int8
    assert dequantize(q, 1.0, 0, INT8).shape == (0, 4)


def test_stochastic_rounding_is_seeded_and_unbiased():
    x = torch.full((20000,), 0.3)
    a = quantize(x, 1.0, 0, INT8, rounding="stochastic", generator=torch.Generator().manual_seed(1))
    b = quantize(x, 1.0, 0, INT8, rounding="stochastic", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0, 1}
    assert abs(a.float().mean().item() - 0.3) < 0.02


def test_binary_and_ternary_codes():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.4, 3.0])
    assert quantize(x, 1.0, None, "binary").tolist() == [-1, -1, 1, 1, 1]
    assert quantize(x, 1.0, None, "ternary").tolist() == [-1, 0, 0, 0, 1]
    assert dequantize(torch.tensor([-1, 0, 1], dtype=torch.int8), 0.5, None, "ternary").tolist() == [
        -0.5, 0.0, 0.5]


def test_unknown_format_name_lists_the_known_ones():
    with pytest.raises(LowbitError, match=r"unknown format 'fp7'.*int8"):
        quantize(torch.ones(3), 1.0, 0, "fp7")


def test_out_argument_is_filled_and_validated():
    x = torch.randn(3, 8)
    buffer = torch.empty(3, 8, dtype=torch.int8)
    q = quantize(x, 0.1, 0, INT8, out=buffer)
    assert q.data_ptr() == buffer.data_ptr() and torch.equal(q, quantize(x, 0.1, 0, INT8))
    back = torch.empty(3, 8)
    assert dequantize(q, 0.1, 0, INT8, out=back).data_ptr() == back.data_ptr()
    with pytest.raises(InputError, match="contiguous"):
        quantize(x, 0.1, 0, INT8, out=torch.empty(3, 8))

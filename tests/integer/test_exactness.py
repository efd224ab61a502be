"""Integer layers compute the exact integer sums of Jacob et al.'s expansion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.nn.integer import (
    FLOAT32_EXACT,
    AccumulatorOverflowError,
    CodeParams,
    IntConv,
    IntegerError,
    IntLinear,
    OutputStage,
    quantize_bias,
)


def int64_conv(x, w, zx, zw, padding, stride=1, dilation=1, groups=1):
    """Σ (qx − zx)(qw − zw) in int64: unfold (an exact copy) and an integer matmul."""
    xp = F.pad(x.double(), padding, value=float(zx))
    kernel = w.shape[2:]
    out_per_group = w.shape[0] // groups
    in_per_group = w.shape[1]
    parts = []
    for g in range(groups):
        xs = xp[:, g * in_per_group:(g + 1) * in_per_group]
        cols = F.unfold(xs, kernel, dilation=dilation, stride=stride).to(torch.int64) - zx
        ws = w[g * out_per_group:(g + 1) * out_per_group].to(torch.int64).reshape(out_per_group, -1)
        ws = ws - zw[g * out_per_group:(g + 1) * out_per_group].reshape(-1, 1)
        parts.append(ws @ cols)
    out = torch.cat(parts, 1)
    h = (xp.shape[2] - dilation * (kernel[0] - 1) - 1) // stride + 1
    return out.reshape(x.shape[0], w.shape[0], h, -1)


def _conv(w, zw, params, **kw):
    return IntConv(w, torch.full((w.shape[0],), 0.01), zw, params, None, **kw)


@pytest.mark.parametrize("fmt, zx", [("uint8", 255), ("int8", -128), ("uint8", 0), ("int16", 0)])
def test_worst_case_inputs_are_summed_exactly(fmt, zx):
    # every input at an end of its range and every weight at +-127 reaches the bound
    # that decides float32 chunks; the sums must still be exact
    params = CodeParams(0.1, zx, fmt)
    gen = torch.Generator().manual_seed(0)
    w = torch.where(torch.rand(8, 64, 3, 3, generator=gen) > 0.5, 127, -127).to(torch.int8)
    zw = torch.zeros(8, dtype=torch.int64)
    ends = torch.tensor([params.qmin, params.qmax])
    x = ends[torch.randint(0, 2, (2, 64, 6, 6), generator=gen)].to(params.dtype)
    x[0] = params.qmax if fmt != "int8" else params.qmin
    conv = _conv(w, zw, params, padding=[1, 1, 1, 1])
    assert torch.equal(conv(x).to(torch.int64), int64_conv(x, w, zx, zw, [1, 1, 1, 1]))
    # uint8: 255 * 127 * 9 per input channel allows 57 of the 64 channels per float32 pass
    assert conv.compute_dtype == (torch.float64 if fmt == "int16" else torch.float32)
    if fmt == "uint8":
        assert 0 < conv.chunk_inputs < 64
        assert conv.chunk_inputs * 9 * 255 * 127 < FLOAT32_EXACT


def test_weight_zero_points_follow_the_expansion():
    # uint8 weights with per-channel zero points: the zw * Σ qx term at run time
    gen = torch.Generator().manual_seed(1)
    w = torch.randint(0, 256, (6, 2, 3, 3), generator=gen).to(torch.uint8)
    zw = torch.randint(0, 256, (6,), generator=gen)
    params = CodeParams(0.05, 17, "uint8")
    x = torch.randint(0, 256, (2, 6, 7, 7), generator=gen).to(torch.uint8)
    conv = _conv(w, zw, params, padding=[2, 0, 1, 1], stride=2, dilation=1, groups=3)
    expected = int64_conv(x, w, 17, zw, [2, 0, 1, 1], stride=2, groups=3)
    assert conv.has_weight_zero_point
    assert torch.equal(conv(x).to(torch.int64), expected)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 300),
    zx=st.integers(-128, 127),
    seed=st.integers(0, 2**16),
    zw_nonzero=st.booleans(),
)
def test_linear_equals_the_direct_sum(k, zx, seed, zw_nonzero):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (5, k), generator=gen).to(torch.int8)
    zw = torch.randint(-20, 20, (5,), generator=gen) if zw_nonzero else torch.zeros(5, dtype=torch.int64)
    x = torch.randint(-128, 128, (3, k), generator=gen).to(torch.int8)
    bias = torch.randn(5, generator=gen)
    params = CodeParams(0.02, zx, "int8")
    lin = IntLinear(w, torch.full((5,), 0.003), zw, params, bias)
    direct = (x.to(torch.int64) - zx) @ (w.to(torch.int64) - zw.reshape(-1, 1)).T
    assert torch.equal(lin(x).to(torch.int64), direct + lin.bias_codes.to(torch.int64))


def test_offset_folds_bias_and_zero_point_terms():
    w = torch.tensor([[1, -2, 3]], dtype=torch.int8)
    params = CodeParams(0.5, 4, "int8")
    lin = IntLinear(w, torch.tensor([0.25]), torch.tensor([2]), params, torch.tensor([1.0]))
    # bias 1.0 / (0.5 * 0.25) = 8; −zx·Σqw = −4·2 = −8; K·zx·zw = 3·4·2 = 24
    assert lin.bias_codes.tolist() == [8]
    assert lin.offset.tolist() == [8 - 8 + 24]


def test_bias_rounds_half_to_even():
    codes = quantize_bias(torch.tensor([0.25, 0.75, -0.25]), 0.5, torch.tensor([1.0, 1.0, 1.0]))
    assert codes.tolist() == [0, 2, 0]
    assert codes.dtype == torch.int32


def test_bias_codes_are_the_integers_nearest_the_real_quotient():
    # b / s = 1330664.5305...: a float32 division lands on the tie 1330664.5 and rounds
    # to even (1330664); the nearest integer is 1330665, and the ONNX export writes it too.
    bias, scale = 4.562938690185547, 3.429067646720796e-06
    assert float(torch.round(torch.tensor(bias) / torch.tensor(scale))) == 1330664
    assert quantize_bias(torch.tensor([bias]), 1.0, torch.tensor([scale])).tolist() == [1330665]


def test_bias_overflow_is_an_error():
    with pytest.raises(AccumulatorOverflowError, match="bias does not fit int32"):
        quantize_bias(torch.tensor([1e6]), 1e-3, torch.tensor([1e-4]), "layer")


def test_runtime_accumulator_overflow_is_reported():
    # 16-bit inputs, weights 127, K = 1024: sums reach 32767 * 127 * 1024 > 2**31
    w = torch.full((1, 1024), 127, dtype=torch.int16)
    lin = IntLinear(w, torch.ones(1), torch.zeros(1), CodeParams(1.0, 0, "int16"), name="fc")
    assert lin.compute_dtype == torch.float64  # too wide for float32 chunks, exact in float64
    with pytest.raises(AccumulatorOverflowError, match="fc: the int32 accumulator overflows"):
        lin(torch.full((1, 1024), 32767, dtype=torch.int16))
    small = lin(torch.full((1, 1024), 10, dtype=torch.int16))
    assert small.tolist() == [[10 * 127 * 1024]]


def test_sums_beyond_float64_are_refused():
    w = torch.full((1, 1 << 23), -32768, dtype=torch.int16)  # 2**23 * 2**15 * 2**15
    with pytest.raises(IntegerError, match="2\\*\\*53"):
        IntLinear(w, torch.ones(1), torch.zeros(1), CodeParams(1.0, 0, "int16"))


def test_float_inputs_and_out_of_range_codes_are_refused():
    lin = IntLinear(torch.ones(2, 3, dtype=torch.int8), torch.ones(2), torch.zeros(2),
                    CodeParams(1.0, 0, "uint7"), output=OutputStage.plain(CodeParams(1.0, 0)))
    with pytest.raises(IntegerError, match="takes integer codes"):
        lin(torch.ones(1, 3))
    with pytest.raises(IntegerError, match=r"codes in \[0, 127\]"):
        lin(torch.tensor([[200, 0, 0]], dtype=torch.uint8))

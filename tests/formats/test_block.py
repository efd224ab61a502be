"""lowbit.formats.block against a per-block reference written from the OCP MX v1.0 text."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError, GranularityError, InputError
from lowbit.formats import FP4_E2M1, FP16, INT8, UINT8
from lowbit.formats.block import (
    BLOCK_FORMATS,
    FLEX16_5,
    MSFP12,
    MSFP16,
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    NAN_EXPONENT,
    BlockFormat,
    block_dequantize,
    block_fake_quantize,
    block_quantize,
)
from lowbit.formats.floats import decode

ML = {
    "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}
# emax_elem from the spec's element tables (exponent of the largest normal)
SPEC_EMAX = {"fp8_e4m3fn": 8, "fp8_e5m2": 15, "fp6_e2m3": 2, "fp6_e3m2": 4, "fp4_e2m1": 2}
FORMATS = list(BLOCK_FORMATS.values())


def ref_element(p: float, el) -> float:
    """One scaled value P = V / X quantized to the element, saturating (spec 6.3)."""
    if el.kind == "float":
        top = float(ml_dtypes.finfo(ML[el.name]).max)
        clipped = np.float32(min(max(p, -top), top))
        return float(np.array(clipped).astype(ML[el.name]).astype(np.float64))
    step = 2.0 ** -(el.bits - 2)  # int elements: implicit scale, values in [-2, 2)
    k = min(max(round(p / step), el.qmin), el.qmax)  # round(): half to even
    return k * step


def ref_block(values: list[float], fmt: BlockFormat) -> tuple[int, list[float]]:
    """Shared exponent and dequantized values of one block, straight from the definitions."""
    if any(not math.isfinite(v) for v in values):
        return NAN_EXPONENT, [math.nan] * len(values)
    emax_scale = 2 ** (fmt.scale_bits - 1) - 1
    amax = max(abs(v) for v in values)
    if amax == 0:
        e = -emax_scale
    else:
        emax_elem = SPEC_EMAX[fmt.element.name] if fmt.element.kind == "float" else 0
        e = math.frexp(amax)[1] - 1 - emax_elem  # floor(log2(amax)) - emax_elem
        e = min(max(e, -emax_scale), emax_scale)
    scale = 2.0**e
    return e, [ref_element(v / scale, fmt.element) * scale for v in values]


def ref_quantize(x: np.ndarray, fmt: BlockFormat) -> tuple[np.ndarray, np.ndarray]:
    """Blocks along the last axis of a 2-D array; the last block is simply shorter."""
    bs = fmt.block_size or x.size
    rows = x.reshape(-1, x.shape[-1]) if fmt.block_size else x.reshape(1, -1)
    exps, out = [], []
    for row in rows.tolist():
        row_e, row_v = [], []
        for start in range(0, len(row), bs):
            e, v = ref_block(row[start : start + bs], fmt)
            row_e.append(e)
            row_v.extend(v)
        exps.append(row_e)
        out.append(row_v)
    return np.array(exps), np.array(out, dtype=np.float32).reshape(x.shape)


def sample(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values spread over many binades, with zeros, ties and exact powers of two mixed in."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, (*shape[:-1], 1))
    x = x * 10.0 ** rng.uniform(-2, 0, shape)
    x[rng.random(shape) < 0.05] = 0.0
    x[rng.random(shape) < 0.05] = 2.0 ** rng.integers(-10, 10)
    return x.astype(np.float32)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        a[~np.isnan(a)].view(np.uint32), b[~np.isnan(b)].view(np.uint32)
    )


def test_spec_constants():
    mx_fp = (MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4)
    assert {f.name: f.emax_elem for f in mx_fp} == {
        "mxfp8_e4m3": 8,
        "mxfp8_e5m2": 15,
        "mxfp6_e2m3": 2,
        "mxfp6_e3m2": 4,
        "mxfp4": 2,
    }
    assert MXINT8.emax_elem == 0 and MXINT8.block_size == 32
    assert all(f.block_size == 32 and f.scale_bits == 8 for f in FORMATS if f.kind == "mx")
    assert MXFP8_E4M3.bits_per_element == 8.25 and MXFP4.bits_per_element == 4.25
    assert MXFP6_E3M2.bits_per_element == 6.25
    assert MSFP12.bits_per_element == 4.5 and MSFP16.bits_per_element == 8.5  # 1+3, 1+7 bits
    assert (MSFP12.element.qmin, MSFP12.element.qmax) == (-7, 7)
    assert FLEX16_5.bits_per_element == 16.0 and FLEX16_5.scale_emax == 15
    assert repr(MXFP4) == "BlockFormat(mxfp4)"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("length", [576, 100, 32, 7])
def test_matches_per_block_reference(fmt, length):
    x = sample(np.random.default_rng(length), (6, length))
    bq = block_quantize(torch.from_numpy(x), fmt)
    ref_e, ref_v = ref_quantize(x, fmt)
    if fmt.block_size:
        assert bq.exponents.shape == (6, math.ceil(length / fmt.block_size))
        assert bq.codes.shape == (6, math.ceil(length / fmt.block_size), fmt.block_size)
    assert np.array_equal(bq.exponents.numpy().reshape(ref_e.shape), ref_e)
    assert bq.codes.dtype == fmt.element.storage_dtype
    assert same(block_dequantize(bq).numpy(), ref_v)
    assert same(block_fake_quantize(torch.from_numpy(x), fmt).numpy(), ref_v)


def test_padding_is_zeros_and_does_not_move_scales():
    x = torch.linspace(-3, 5, 100)
    bq = block_quantize(x, MXFP8_E4M3)
    assert bq.codes.shape == (4, 32)
    assert (bq.codes.view(torch.uint8)[3, 4:] == 0).all()
    last = block_quantize(x[96:], MXFP8_E4M3)
    assert bq.exponents[3] == last.exponents[0]
    assert torch.equal(block_dequantize(bq)[96:], block_dequantize(last))
    assert block_dequantize(bq).shape == (100,)


@pytest.mark.parametrize("fmt", [MXFP4, MXINT8, MSFP12], ids=lambda f: f.name)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_axis_is_the_block_direction(fmt, axis):
    x = torch.from_numpy(sample(np.random.default_rng(3), (5, 40, 33)))
    got = block_fake_quantize(x, fmt, axis=axis)
    want = block_fake_quantize(x.movedim(axis, -1), fmt).movedim(-1, axis)
    assert got.shape == x.shape
    assert torch.equal(got, want)
    bq = block_quantize(x, fmt, axis=axis)
    assert bq.axis == axis % 3


def test_zero_and_constant_blocks():
    zeros = block_quantize(torch.zeros(64), MXFP8_E4M3)
    assert zeros.exponents.tolist() == [-127, -127]
    assert (zeros.codes.view(torch.uint8) == 0).all()
    assert torch.equal(block_dequantize(zeros), torch.zeros(64))
    for fmt in FORMATS:
        for c in (3.0, -0.7, 1e-30, 2.5e30):
            x = torch.full((64,), c)
            y = block_fake_quantize(x, fmt)
            assert (y == y[0]).all(), fmt
            _, ref = ref_block([c], fmt)
            assert y[0].item() == np.float32(ref[0]), (fmt, c)
    # a constant with few significant bits is exact in every format
    for fmt in FORMATS:
        x = torch.full((40,), -0.375)
        assert torch.equal(block_fake_quantize(x, fmt), x)


def test_extreme_exponents_clamp_to_e8m0_range():
    tiny = block_quantize(torch.full((32,), 1e-40), MXFP8_E4M3)
    assert tiny.exponents.item() == -127  # floor(log2(1e-40)) - 8 = -141, clamped
    _, ref = ref_block([float(np.float32(1e-40))], MXFP8_E4M3)
    assert torch.equal(block_dequantize(tiny), torch.full((32,), ref[0]))
    assert ref[0] == 9 * 2.0**-136  # 1e-40 * 2**127 = 8.7 steps of 2**-9: a subnormal element
    huge = block_quantize(torch.full((32,), 3e38), MXFP8_E5M2)
    assert huge.exponents.item() == 127 - 15
    assert torch.isfinite(block_dequantize(huge)).all()
    assert block_quantize(torch.full((32,), 3e38), MXFP4).scale_codes().item() == 127 + 125
    flex = block_quantize(torch.tensor([1e6, 3.0]), FLEX16_5)
    assert flex.exponents.item() == 15  # 5-bit exponent saturates
    assert block_dequantize(flex).tolist() == [32767 * 2.0 ** (15 - 14), 4.0]  # 1.5 ties to 2


def test_nan_and_inf_give_nan_blocks_in_mx():
    x = torch.arange(96, dtype=torch.float32)
    x[5] = float("nan")
    x[70] = float("-inf")
    bq = block_quantize(x, MXFP8_E4M3)
    assert bq.exponents.tolist()[0] == NAN_EXPONENT and bq.exponents.tolist()[2] == NAN_EXPONENT
    assert bq.scale_codes().tolist()[0] == 0xFF
    y = block_dequantize(bq)
    assert torch.isnan(y[:32]).all() and torch.isnan(y[64:]).all()
    assert torch.equal(y[32:64], block_fake_quantize(x[32:64], MXFP8_E4M3))


def test_bfp_rejects_nan_and_inf():
    with pytest.raises(InputError, match="no NaN or Inf"):
        block_quantize(torch.tensor([1.0, float("inf")]), MSFP12)
    with pytest.raises(FormatError, match="E8M0"):
        block_quantize(torch.ones(3), FLEX16_5).scale_codes()


def test_bad_arguments():
    with pytest.raises(InputError, match="empty"):
        block_quantize(torch.empty(0), MXFP4)
    with pytest.raises(GranularityError, match="axis"):
        block_quantize(torch.ones(4, 4), MXFP4, axis=2)
    with pytest.raises(FormatError):
        block_quantize(torch.ones(4), FP4_E2M1)  # a QFormat, not a BlockFormat
    with pytest.raises(InputError):
        block_quantize(np.ones(4), MXFP4)
    with pytest.raises(FormatError, match="block_size"):
        BlockFormat("b", FP4_E2M1, -1)
    with pytest.raises(FormatError, match="E8M0"):
        BlockFormat("b", FP4_E2M1, 32, scale_bits=5)
    with pytest.raises(FormatError, match="signed int"):
        BlockFormat("b", UINT8, 32)
    with pytest.raises(FormatError, match="float32"):
        BlockFormat("b", FP16, 32)  # fp16's subnormals times 2**-127 leave float32
    with pytest.raises(FormatError, match="kind"):
        BlockFormat("b", INT8, 32, kind="xx")  # type: ignore[arg-type]


def test_scalar_and_dtype_inputs():
    y = block_fake_quantize(torch.tensor(5.1), MXFP4)
    assert y.shape == () and y.item() == 6.0  # X = 2**(2 - 2); 5.1 is past the 5.0 midpoint
    x64 = torch.tensor([1.0], dtype=torch.float64)
    assert block_fake_quantize(x64, MXINT8).dtype == torch.float32
    codes = block_quantize(torch.tensor([0.75, -1.5]), MXFP4).codes
    assert codes.dtype == torch.uint8
    assert codes.shape == (1, 32)  # one padded block
    assert decode(codes, FP4_E2M1)[0, :3].tolist() == [3.0, -6.0, 0.0]  # X = 2**-2


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([f for f in FORMATS if f.block_size]),
    st.lists(
        st.floats(min_value=-(2.0**100), max_value=2.0**100, width=32),
        min_size=1,
        max_size=70,
    ),
)
def test_error_is_at_most_half_an_element_step(fmt, values):
    x = torch.tensor(values, dtype=torch.float32)
    bq = block_quantize(x, fmt)
    y = block_dequantize(bq)
    bs = fmt.block_size
    el = fmt.element
    for i, (v, q) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        scale = 2.0 ** bq.exponents[i // bs].item()
        p = v / scale
        if el.kind == "float":
            if abs(p) > el.max_finite:
                assert abs(q) == el.max_finite * scale  # saturated
                continue
            e = max(math.frexp(abs(p))[1] - 1, el.min_exponent) if p else el.min_exponent
            half = 2.0 ** (e - el.mantissa_bits) * scale / 2
        else:
            step = 2.0 ** -(el.bits - 2)
            if not el.qmin * step <= p <= el.qmax * step:
                assert q == min(max(round(p / step), el.qmin), el.qmax) * step * scale
                continue
            half = step * scale / 2
        assert abs(v - q) <= half


def test_docstring_examples_run():
    import doctest

    import lowbit.formats.block as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

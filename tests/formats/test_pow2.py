"""lowbit.formats.pow2: fixed point and power-of-two scales against plain-Python references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError, InputError, QParamsError
from lowbit.formats.pow2 import (
    MAX_FRAC_BITS,
    FixedPoint,
    choose_fraction_length,
    fixed_point_dequantize,
    fixed_point_quantize,
    pow2_exponent,
    pow2_scale,
)

FP32_MAX = float(np.finfo(np.float32).max)


def ref_frac_length(values: list[float], bits: int, signed: bool) -> int:
    """Brute force over f with exact rational arithmetic."""
    qmin = -(2 ** (bits - 1)) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    vals = [Fraction(v) for v in values if signed or v > 0]
    if not any(vals):
        vals = [Fraction(1)]
    best = None
    for f in range(-140, 200):
        if all(qmin <= v * Fraction(2) ** f <= qmax for v in vals):
            best = f
    assert best is not None
    # documented clamp: 2**-f a float32 value, qmax * 2**-f a finite float32
    lowest = min(f for f in range(-140, 0) if qmax * Fraction(2) ** -f <= Fraction(FP32_MAX))
    return min(max(best, lowest), MAX_FRAC_BITS)


def ref_quantize(v: float, fmt: FixedPoint) -> int:
    q = round(Fraction(v) * Fraction(2) ** fmt.frac_bits)  # Fraction round: half to even
    return min(max(q, fmt.qmin), fmt.qmax)


def test_fixed_point_properties():
    q = FixedPoint(8, 5)
    assert (q.scale, q.qmin, q.qmax, q.min_value, q.max_value) == (1 / 32, -128, 127, -4.0, 3.96875)
    assert str(q) == "Q2.5" and str(FixedPoint(16, 16, signed=False)) == "UQ0.16"
    assert FixedPoint(8, -2).scale == 4.0 and FixedPoint(8, -2).max_value == 508.0
    assert FixedPoint(4, 0, signed=False).qmax == 15
    assert FixedPoint(32, 0).storage_dtype == torch.int32
    assert FixedPoint(32, 0, signed=False).storage_dtype == torch.int64
    assert FixedPoint(12, 3).storage_dtype == torch.int16
    assert FixedPoint(8, 3, signed=False).storage_dtype == torch.uint8
    with pytest.raises(AttributeError):
        q.bits = 4  # type: ignore[misc]


@pytest.mark.parametrize("bits", [1, 0, 33, 2.0, True])
def test_bits_out_of_range(bits):
    with pytest.raises(FormatError, match="bits"):
        FixedPoint(bits, 0)
    with pytest.raises(FormatError):
        choose_fraction_length(torch.ones(3), bits)


def test_frac_bits_out_of_float32_range():
    with pytest.raises(FormatError, match="float32"):
        FixedPoint(8, MAX_FRAC_BITS + 1)
    with pytest.raises(FormatError, match="float32"):
        FixedPoint(8, -125)  # 127 * 2**125 > float32 max
    FixedPoint(8, -120)
    with pytest.raises(FormatError, match="int"):
        FixedPoint(8, 2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        [1.0],
        [-1.0],
        [-1.0, 0.5],
        [0.7, -2.9],
        [127.0],
        [127.5],
        [0.0, 0.0],
        [3e-8, -1e-9],
        [1e-40],
        [1e30, -3.0],
        [-5.0, -7.0],
        [2.0**-20],
    ],
)
@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("signed", [True, False])
def test_choose_fraction_length_matches_brute_force(values, bits, signed):
    v32 = [float(np.float32(v)) for v in values]
    got = choose_fraction_length(torch.tensor(values), bits, signed)
    assert got == ref_frac_length(v32, bits, signed)
    fmt = FixedPoint(bits, got, signed)
    q = fixed_point_quantize(torch.tensor(values), fmt)
    if signed or min(v32) >= 0:  # nothing is clipped: |error| <= half a step
        err = (fixed_point_dequantize(q, fmt).double() - torch.tensor(v32).double()).abs()
        assert (err <= fmt.scale / 2).all()


def test_choose_fraction_length_examples():
    assert choose_fraction_length(torch.tensor([-1.0, 0.5]), 8) == 7  # -1 = -128/128
    assert choose_fraction_length(torch.tensor([1.0]), 8) == 6  # 128 would clip at 127
    assert choose_fraction_length(torch.zeros(4), 8) == 6  # as for max|x| = 1
    assert choose_fraction_length(torch.tensor([3.0e38]), 8) == -121  # 127 * 2**121 = 3.38e38
    assert choose_fraction_length(torch.tensor([3.4e38]), 8) == -121  # clamped: -122 overflows
    assert choose_fraction_length(torch.tensor([1e-45]), 16) == MAX_FRAC_BITS  # clamped
    assert choose_fraction_length(torch.tensor([7], dtype=torch.int32), 4) == 0


def test_choose_fraction_length_bad_input():
    with pytest.raises(InputError, match="empty"):
        choose_fraction_length(torch.empty(0), 8)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="NaN or Inf"):
            choose_fraction_length(torch.tensor([1.0, bad]), 8)
    with pytest.raises(InputError):
        choose_fraction_length([1.0], 8)


@pytest.mark.parametrize(
    "fmt", [FixedPoint(8, 5), FixedPoint(4, 0), FixedPoint(16, 20), FixedPoint(8, -3, False)]
)
def test_quantize_matches_reference(fmt):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * fmt.max_value).astype(np.float32)
    steps = (np.arange(-300, 300) / 2.0 * fmt.scale).astype(np.float32)  # every tie
    x = np.concatenate([x, steps, [0.0, -0.0, fmt.max_value * 4, -fmt.max_value * 4]])
    x = x.astype(np.float32)
    q = fixed_point_quantize(torch.from_numpy(x), fmt)
    assert q.dtype == fmt.storage_dtype
    assert q.tolist() == [ref_quantize(float(v), fmt) for v in x]
    back = fixed_point_dequantize(q, fmt)
    assert back.dtype == torch.float32
    assert back.tolist() == [math.ldexp(c, -fmt.frac_bits) for c in q.tolist()]


def test_quantize_special_values():
    fmt = FixedPoint(8, 4)
    assert fixed_point_quantize(torch.tensor([float("inf"), -float("inf")]), fmt).tolist() == [
        127,
        -128,
    ]
    with pytest.raises(InputError, match="NaN"):
        fixed_point_quantize(torch.tensor([float("nan")]), fmt)
    with pytest.raises(InputError, match="integers"):
        fixed_point_dequantize(torch.tensor([1.0]), fmt)


def ref_pow2(s: float, mode: str) -> int:
    """Exponent from exact rational comparisons."""
    k = 0
    while Fraction(2) ** k > Fraction(s):
        k -= 1
    while Fraction(2) ** (k + 1) <= Fraction(s):
        k += 1
    # now 2**k <= s < 2**(k+1)
    if mode == "floor":
        return k
    if mode == "ceil":
        return k if Fraction(2) ** k == Fraction(s) else k + 1
    return k + 1 if Fraction(s) ** 2 >= Fraction(2) ** (2 * k + 1) else k  # s >= sqrt(2)·2**k


@pytest.mark.parametrize("mode", ["ceil", "floor", "round"])
def test_pow2_matches_reference(mode):
    rng = np.random.default_rng(1)
    s = (10.0 ** rng.uniform(-40, 38, 400)).astype(np.float32)
    powers = np.array([2.0**k for k in range(-149, 128)], dtype=np.float32)
    # around the "round" threshold sqrt(2) * 2**k, the float32 subnormal floor and the top
    edges = np.array([2**0.5, 1.4142134, 1.4142137, 0.70710677, 1e-45, 3e-45, 3.4e38])
    s = np.concatenate([s, powers, powers * np.float32(1.5), edges.astype(np.float32)])
    got = pow2_exponent(torch.from_numpy(s), mode)
    assert got.dtype == torch.int32
    assert got.tolist() == [ref_pow2(float(v), mode) for v in s]


def test_pow2_scale_values_and_dtypes():
    assert pow2_scale(torch.tensor([0.3, 0.25, 3.0])).tolist() == [0.5, 0.25, 4.0]
    assert pow2_scale(torch.tensor([0.3, 0.25, 3.0]), "floor").tolist() == [0.25, 0.25, 2.0]
    assert pow2_scale(torch.tensor([0.3, 0.36, 3.0]), "round").tolist() == [0.25, 0.5, 4.0]
    assert pow2_scale(torch.tensor([0.1], dtype=torch.float64)).dtype == torch.float64
    assert pow2_scale(torch.tensor([3])).tolist() == [4.0]
    assert pow2_scale(torch.tensor(1e-45)).item() == 2.0**-149
    scale = torch.tensor([[0.5, 0.7], [1e-3, 9.0]])
    out = pow2_scale(scale)
    assert out.shape == scale.shape and (out >= scale).all()


def test_pow2_scale_errors():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(QParamsError, match="positive and finite"):
            pow2_scale(torch.tensor([1.0, bad]))
    with pytest.raises(QParamsError, match="overflows"):
        pow2_scale(torch.tensor([3.0e38]))  # the next power of two is 2**128
    with pytest.raises(QParamsError, match="mode"):
        pow2_scale(torch.tensor([1.0]), "up")  # type: ignore[arg-type]
    assert pow2_scale(torch.empty(0)).shape == (0,)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=2.0**-149, max_value=2.0**127, width=32))
def test_pow2_brackets_the_scale(s):
    t = torch.tensor([s], dtype=torch.float32)
    lo, hi = pow2_scale(t, "floor").item(), pow2_scale(t, "ceil").item()
    assert lo <= s <= hi and hi in (lo, 2 * lo)
    r = pow2_scale(t, "round").item()
    assert r in (lo, hi)
    assert abs(math.log2(r) - math.log2(s)) <= 0.5


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=-(2.0**20), max_value=2.0**20, width=32), min_size=1, max_size=30),
    st.sampled_from([4, 8, 16]),
)
def test_chosen_length_is_the_largest_without_clipping(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    f = choose_fraction_length(x, bits)
    fmt = FixedPoint(bits, f)
    scaled = x.double() * 2.0**f
    assert bool((scaled <= fmt.qmax).all() and (scaled >= fmt.qmin).all())
    if f < MAX_FRAC_BITS and bool((x != 0).any()):
        finer = x.double() * 2.0 ** (f + 1)
        assert bool((finer > fmt.qmax).any() or (finer < fmt.qmin).any())


def test_docstring_examples_run():
    import doctest

    import lowbit.formats.pow2 as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

"""Fixed-point requantization against literal gemmlowp / TFLite / ONNX Runtime references."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError, GranularityError, InputError, QParamsError
from lowbit.primitives.fixed_point import (
    REQUANT_MODES,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


# --- slow references in plain Python ints, transcribed line by line from the C++ ------
# Python's >> is arithmetic and & works on two's complement, exactly as int32 in C on
# every platform these kernels run on; only "/" needs care (C truncates toward zero).


def c_div(a: int, b: int) -> int:
    """C99 integer division: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def c_round(x: float) -> int:
    """std::round: half away from zero (TfLiteRound)."""
    f = Fraction(x)
    n = math.floor(abs(f) + Fraction(1, 2))
    return n if f >= 0 else -n


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp/fixedpoint/fixedpoint.h SaturatingRoundingDoublingHighMul(int32, int32)."""
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = c_div(ab_64 + nudge, 1 << 31)
    return INT32_MAX if overflow else ab_x2_high32


def ref_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT(int32, int)."""
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    zero = 0
    one = 1
    remainder = x & mask
    threshold = (mask >> 1) + (one if x < zero else zero)
    return (x >> exponent) + (one if remainder > threshold else zero)


def ref_mbqm(x: int, quantized_multiplier: int, shift: int) -> int:
    """tflite MultiplyByQuantizedMultiplier (the default, double-rounding build)."""
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    # C overflows here when M >= 1 and acc is large (undefined behaviour); Python ints do
    # not, which is the wider-int answer lowbit documents, saturated to int32 at the end.
    shifted = x * (1 << left_shift)
    result = ref_rdbpot(ref_srdhm(shifted, quantized_multiplier), right_shift)
    return max(INT32_MIN, min(INT32_MAX, result))


def ref_quantize_multiplier(double_multiplier: float) -> tuple[int, int]:
    """tflite QuantizeMultiplier (kernels/internal/quantization_util.cc)."""
    if double_multiplier == 0.0:
        return 0, 0
    q, shift = math.frexp(double_multiplier)
    q_fixed = c_round(q * (1 << 31))
    assert q_fixed <= 1 << 31
    if q_fixed == 1 << 31:
        q_fixed = c_div(q_fixed, 2)
        shift += 1
    assert q_fixed <= INT32_MAX
    if shift < -31:
        shift = 0
        q_fixed = 0
    return q_fixed, shift


# --- test data --------------------------------------------------------------------------


def _extremes() -> list[int]:
    """Boundaries, powers of two and their neighbours, and odd multiples that make ties."""
    values = {INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 0, 1, -1, 2, -2, 3, -3}
    for k in range(31):
        for v in (1 << k, (1 << k) - 1, (1 << k) + 1, 3 << k if k < 30 else 1 << k):
            values.update((v, -v))
    return sorted(v for v in values if INT32_MIN <= v <= INT32_MAX)


EXTREMES = _extremes()
RNG = random.Random(20240611)


def _random_int32(n: int) -> list[int]:
    out = [RNG.randint(INT32_MIN, INT32_MAX) for _ in range(n // 2)]
    # Small magnitudes too: uniform int32 almost never lands near zero.
    out += [RNG.randint(-(1 << RNG.randint(1, 31)), 1 << RNG.randint(1, 30)) for _ in range(n // 2)]
    return out


def _t(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# --- SaturatingRoundingDoublingHighMul ----------------------------------------------------


def test_srdhm_bit_exact_on_extreme_pairs():
    a = [x for x in EXTREMES for _ in EXTREMES]
    b = [y for _ in EXTREMES for y in EXTREMES]
    got = saturating_rounding_doubling_high_mul(_t(a).to(torch.int32), _t(b).to(torch.int32))
    assert got.dtype == torch.int32
    assert got.tolist() == [ref_srdhm(x, y) for x, y in zip(a, b, strict=True)]


def test_srdhm_bit_exact_on_random_int32():
    a = _random_int32(20000)
    b = _random_int32(10000) + [RNG.randint(1 << 30, INT32_MAX) for _ in range(10000)]
    got = saturating_rounding_doubling_high_mul(_t(a), _t(b))
    assert got.tolist() == [ref_srdhm(x, y) for x, y in zip(a, b, strict=True)]


def test_srdhm_overflow_and_rounding_ties():
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX)) == -INT32_MAX
    # a*b/2**31 = +-0.5 and +-1.5: the sign-dependent nudge plus C truncation sends
    # ties toward +infinity, not away from zero.
    half = [1, -1, 3, -3]
    got = saturating_rounding_doubling_high_mul(_t(half), 1 << 30).tolist()
    assert got == [1, 0, 2, -1] == [ref_srdhm(x, 1 << 30) for x in half]


def test_srdhm_is_round_half_up_of_the_exact_quotient():
    a = _random_int32(4000) + EXTREMES
    b = [RNG.randint(INT32_MIN + 1, INT32_MAX) for _ in a]
    got = saturating_rounding_doubling_high_mul(_t(a), _t(b)).tolist()
    assert got == [
        math.floor(Fraction(x * y, 1 << 31) + Fraction(1, 2)) for x, y in zip(a, b, strict=True)
    ]


# --- RoundingDivideByPOT -----------------------------------------------------------------


def test_rdbpot_bit_exact_all_exponents():
    xs = EXTREMES + _random_int32(400)
    for e in range(32):
        # Exact ties for this exponent, both signs.
        ties = [] if e == 0 else [s * (2 * k + 1) << (e - 1) for k in range(3) for s in (1, -1)]
        ties = [v for v in ties if INT32_MIN <= v <= INT32_MAX]
        values = xs + ties
        got = rounding_divide_by_pot(_t(values), e)
        assert got.dtype == torch.int32
        assert got.tolist() == [ref_rdbpot(x, e) for x in values], f"exponent {e}"


def test_rdbpot_tensor_exponent_broadcasts():
    x = _t(_random_int32(64)).reshape(2, 32)
    e = torch.arange(32, dtype=torch.int32)
    got = rounding_divide_by_pot(x, e)
    want = [[ref_rdbpot(int(x[i, j]), j) for j in range(32)] for i in range(2)]
    assert got.tolist() == want


# --- MultiplyByQuantizedMultiplier -------------------------------------------------------


def test_mbqm_bit_exact_all_shifts():
    accs = EXTREMES + _random_int32(150)
    multipliers = [0, 1 << 30, INT32_MAX, 1518500250] + [
        RNG.randint(1 << 30, INT32_MAX) for _ in range(2)
    ]
    acc_list, m_list, s_list = [], [], []
    for shift in range(-31, 31):
        for m in multipliers:
            acc_list += accs
            m_list += [m] * len(accs)
            s_list += [shift] * len(accs)
    got = multiply_by_quantized_multiplier(
        _t(acc_list).to(torch.int32), _t(m_list).to(torch.int32), _t(s_list).to(torch.int32)
    )
    assert got.dtype == torch.int32
    want = [ref_mbqm(a, m, s) for a, m, s in zip(acc_list, m_list, s_list, strict=True)]
    assert got.tolist() == want


def test_mbqm_per_channel_broadcast_and_int64_input():
    acc = _t(_random_int32(40)).reshape(4, 10)  # int64 in int32 range is accepted
    m = torch.tensor([[1 << 30], [1234567890], [INT32_MAX], [1 << 30]], dtype=torch.int32)
    s = torch.tensor([[-3], [0], [-31], [2]], dtype=torch.int32)
    got = multiply_by_quantized_multiplier(acc, m, s)
    want = [[ref_mbqm(int(acc[c, j]), int(m[c, 0]), int(s[c, 0])) for j in range(10)]
            for c in range(4)]  # fmt: skip
    assert got.tolist() == want


@pytest.mark.parametrize(
    ("multiplier", "shift"), [(-1, 0), (1 << 31, 0), (1 << 30, 31), (1 << 30, -32)]
)
def test_mbqm_rejects_out_of_range_params(multiplier, shift):
    with pytest.raises(QParamsError, match="quantize_multiplier"):
        multiply_by_quantized_multiplier(torch.tensor([1]), multiplier, shift)


def test_integer_inputs_are_validated():
    with pytest.raises(InputError, match="integers"):
        multiply_by_quantized_multiplier(torch.tensor([1.5]), 1 << 30, 0)
    with pytest.raises(InputError, match="int32"):
        multiply_by_quantized_multiplier(torch.tensor([1 << 31]), 1 << 30, 0)
    with pytest.raises(InputError, match="int32"):
        saturating_rounding_doubling_high_mul(torch.tensor([INT32_MIN - 1]), 1)
    with pytest.raises(QParamsError, match="exponent"):
        rounding_divide_by_pot(torch.tensor([1]), 32)
    with pytest.raises(QParamsError):
        rounding_divide_by_pot(torch.tensor([1]), -1)


# --- QuantizeMultiplier ------------------------------------------------------------------


def test_quantize_multiplier_matches_tflite_and_reconstructs():
    ms = np.concatenate(
        [np.geomspace(2.0**-31, 2.0**20, 4000), np.random.default_rng(0).random(1000)]
    )
    ms = [float(v) for v in ms]
    m, s = quantize_multiplier(torch.tensor(ms, dtype=torch.float64))
    assert m.dtype == torch.int32 and s.dtype == torch.int32
    assert list(zip(m.tolist(), s.tolist(), strict=True)) == [
        ref_quantize_multiplier(v) for v in ms
    ]
    for real, q, shift in zip(ms, m.tolist(), s.tolist(), strict=True):
        assert (1 << 30) <= q < (1 << 31)
        back = Fraction(q) * Fraction(2) ** (shift - 31)
        assert abs(back - Fraction(real)) <= Fraction(real) * Fraction(1, 1 << 31)


@pytest.mark.parametrize(
    ("real", "expected"),
    [
        (0.0, (0, 0)),
        (0.5, (1 << 30, 0)),
        (0.75, (3 << 29, 0)),
        (1.0, (1 << 30, 1)),
        (1.5, (3 << 29, 1)),
        (2.0, (1 << 30, 2)),
        (1000.0, (1000 << 21, 10)),
        (1 - 2.0**-40, (1 << 30, 1)),  # frac rounds up to 2**31 and carries into the shift
        (2.0**-32, (1 << 30, -31)),  # the smallest shift still representable
        (2.0**-33, (0, 0)),  # flushed to zero, as TFLite does
        (5e-324, (0, 0)),  # float64 subnormal
        (2.0**30 - 0.5, (INT32_MAX, 30)),  # the largest multiplier TFLite can apply
    ],
)
def test_quantize_multiplier_cases(real, expected):
    m, s = quantize_multiplier(real)
    assert (int(m), int(s)) == expected == ref_quantize_multiplier(real)


def test_quantize_multiplier_keeps_shape_and_accepts_float32():
    real = torch.tensor([[0.1, 0.2], [0.3, 3.0]], dtype=torch.float32)
    m, s = quantize_multiplier(real)
    assert m.shape == s.shape == (2, 2)
    assert m.dtype == s.dtype == torch.int32
    assert (int(m[1, 1]), int(s[1, 1])) == ref_quantize_multiplier(3.0)
    empty_m, empty_s = quantize_multiplier(torch.empty(0))
    assert empty_m.shape == empty_s.shape == (0,)


@pytest.mark.parametrize(
    "bad",
    [
        -1e-3,
        float("nan"),
        float("inf"),
        -float("inf"),
        2.0**30,
        2.0**30 - 0.25,  # frac rounds up to 2**31 and carries the shift to 31
        torch.tensor([0.5, -0.5]),
    ],
)
def test_quantize_multiplier_rejects_invalid(bad):
    with pytest.raises(QParamsError, match="scale"):
        quantize_multiplier(bad)


# --- requantize --------------------------------------------------------------------------

OUTPUT_RANGES = [(-128, 127), (0, 255), (-127, 127), (-8, 7), (0, 15), (-32768, 32767)]

int32s = st.integers(INT32_MIN, INT32_MAX)
small_accs = st.integers(-(1 << 20), 1 << 20)
acc_lists = st.lists(st.one_of(int32s, small_accs), min_size=1, max_size=64)
multipliers = st.floats(min_value=2.0**-24, max_value=2.0**8, allow_nan=False, allow_infinity=False)


@st.composite
def out_range_and_zp(draw):
    qmin, qmax = draw(st.sampled_from(OUTPUT_RANGES))
    return qmin, qmax, draw(st.integers(qmin, qmax))


def _np_float_mode(acc: list[int], real: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """ORT's requantize in NumPy float32: cast, multiply, nearbyint (ties to even), shift, clip."""
    prod = np.asarray(acc, dtype=np.int32).astype(np.float32) * np.float32(real)
    return np.clip(np.rint(prod).astype(np.int64) + zp, qmin, qmax)


@settings(max_examples=200, deadline=None)
@given(acc=acc_lists, real=multipliers, rng=out_range_and_zp())
def test_fixed_point_within_one_of_exact_rounding(acc, real, rng):
    qmin, qmax, zp = rng
    got = requantize(torch.tensor(acc, dtype=torch.int32), real, zp, qmin, qmax)
    assert got.dtype == torch.int32
    exact = [min(qmax, max(qmin, round(Fraction(real) * a) + zp)) for a in acc]
    assert all(abs(g - e) <= 1 for g, e in zip(got.tolist(), exact, strict=True))
    # And bit-exact against the literal TFLite chain.
    q, shift = ref_quantize_multiplier(real)
    assert got.tolist() == [min(qmax, max(qmin, ref_mbqm(a, q, shift) + zp)) for a in acc]


@settings(max_examples=200, deadline=None)
@given(acc=acc_lists, real=multipliers, rng=out_range_and_zp())
def test_float_mode_equals_numpy_float32(acc, real, rng):
    qmin, qmax, zp = rng
    got = requantize(torch.tensor(acc, dtype=torch.int32), real, zp, qmin, qmax, mode="float")
    assert got.dtype == torch.int32
    assert got.tolist() == _np_float_mode(acc, real, zp, qmin, qmax).tolist()


@settings(max_examples=100, deadline=None)
@given(
    acc=acc_lists,
    real=multipliers,
    rng=out_range_and_zp(),
    mode=st.sampled_from(REQUANT_MODES),
)
def test_requantize_is_monotone_in_acc(acc, real, rng, mode):
    qmin, qmax, zp = rng
    ordered = torch.tensor(sorted(acc), dtype=torch.int32)
    got = requantize(ordered, real, zp, qmin, qmax, mode=mode)
    assert bool((got[1:] >= got[:-1]).all())
    assert int(got.min()) >= qmin and int(got.max()) <= qmax


def test_float_mode_rounds_ties_to_even():
    acc = torch.tensor([1, 3, 5, -1, -3, -5], dtype=torch.int32)
    assert requantize(acc, 0.5, 0, -128, 127, mode="float").tolist() == [0, 2, 2, 0, -2, -2]
    # The fixed-point path (shift 0, so only the high multiply rounds) sends ties up.
    assert requantize(acc, 0.5, 0, -128, 127).tolist() == [1, 2, 3, 0, -1, -2]
    # With a right shift the last rounding is RoundingDivideByPOT: ties away from zero.
    acc2 = torch.tensor([2, 6, 10, -2, -6, -10], dtype=torch.int32)
    assert requantize(acc2, 0.25, 0, -128, 127).tolist() == [1, 2, 3, -1, -2, -3]
    # TFLite's double rounding: 1 * 0.25 becomes 0.5 in the high multiply, then 1.
    acc3 = torch.tensor([1, 5, -1, -5], dtype=torch.int32)
    assert requantize(acc3, 0.25, 0, -128, 127).tolist() == [1, 2, 0, -1]
    assert requantize(acc3, 0.25, 0, -128, 127, mode="float").tolist() == [0, 1, 0, -1]


@pytest.mark.parametrize("mode", REQUANT_MODES)
def test_per_channel_equals_per_tensor_loop(mode):
    acc = _t(_random_int32(60)).reshape(3, 4, 5) // 1000
    reals = torch.tensor([0.001, 0.37, 2.5, 1e-5])
    zps = torch.tensor([0, 10, -5, 127])
    got = requantize(acc, reals, zps, -128, 127, mode=mode, per_channel_axis=1)
    assert got.shape == acc.shape
    for c in range(4):
        one = requantize(acc[:, c], float(reals[c]), int(zps[c]), -128, 127, mode=mode)
        assert torch.equal(got[:, c], one)
    # A negative axis names the same channels; a single value broadcasts to all channels.
    assert torch.equal(got, requantize(acc, reals, zps, -128, 127, mode=mode, per_channel_axis=-2))
    same = requantize(acc, torch.tensor([0.37]), 3, -128, 127, mode=mode, per_channel_axis=1)
    assert torch.equal(same, requantize(acc, 0.37, 3, -128, 127, mode=mode))


def test_requantize_edge_inputs():
    empty = requantize(torch.empty(0, 3, dtype=torch.int32), 0.1, 0, -128, 127)
    assert empty.shape == (0, 3) and empty.dtype == torch.int32
    zero = requantize(torch.tensor([INT32_MIN, 0, INT32_MAX]), 0.0, 7, -128, 127)
    assert zero.tolist() == [7, 7, 7]
    # An int32 output range: float32 cannot hold INT32_MAX, yet nothing wraps.
    wide = torch.tensor([INT32_MIN, INT32_MAX], dtype=torch.int32)
    for mode in REQUANT_MODES:
        assert requantize(wide, 1.0, 0, INT32_MIN, INT32_MAX, mode=mode).tolist() == [
            INT32_MIN,
            INT32_MAX,
        ]
    # M >= 1 where C's left shift would overflow: the wide-int answer, then clamped.
    big = requantize(torch.tensor([INT32_MIN, -1, 1, INT32_MAX]), 1000.0, 0, -128, 127)
    assert big.tolist() == [-128, -128, 127, 127]
    assert requantize(torch.tensor([-1, 1]), 1000.0, 0, -128, 127, mode="float").tolist() == [
        -128,
        127,
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"acc": torch.tensor([1.0])}, InputError, "integers"),
        ({"acc": torch.tensor([1 << 32])}, InputError, "int32"),
        ({"real_multiplier": -0.1}, QParamsError, "scale"),
        ({"real_multiplier": float("nan")}, QParamsError, "NaN"),
        ({"real_multiplier": 1e39, "mode": "float"}, QParamsError, "float32"),
        ({"zero_point": 300}, QParamsError, "zero_point"),
        ({"zero_point": 0.5}, QParamsError, "zero_point"),
        ({"qmin": 10, "qmax": 0, "zero_point": 5}, QParamsError, "qmin"),
        ({"mode": "double"}, FormatError, "fixed_point"),
        ({"real_multiplier": torch.tensor([0.1, 0.2])}, GranularityError, "per_channel_axis"),
        ({"real_multiplier": torch.tensor([0.1, 0.2]), "per_channel_axis": 1},
         GranularityError, "3"),
        ({"per_channel_axis": 2}, GranularityError, "axis"),
    ],
)  # fmt: skip
def test_requantize_rejects_bad_input(kwargs, error, match):
    args = {
        "acc": torch.zeros(2, 3, dtype=torch.int32),
        "real_multiplier": 0.1,
        "zero_point": 0,
        "qmin": -128,
        "qmax": 127,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        requantize(**args)


# --- against ONNX Runtime's QLinearMatMul ------------------------------------------------


def _ort_qlinear_matmul(a, b, b_scale, y_zp, out_dtype):
    """Run a one-node QLinearMatMul whose requantization multiplier is exactly b_scale."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.UINT8 if out_dtype == np.uint8 else TensorProto.INT8
    zp_in = np.array(128 if out_dtype == np.uint8 else 0, dtype=out_dtype)
    inits = [
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "a_scale"),
        numpy_helper.from_array(zp_in, "a_zp"),
        numpy_helper.from_array(np.asarray(b_scale, dtype=np.float32), "b_scale"),
        numpy_helper.from_array(zp_in, "b_zp"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "y_scale"),
        numpy_helper.from_array(np.array(y_zp, dtype=out_dtype), "y_zp"),
    ]
    node = helper.make_node(
        "QLinearMatMul",
        ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"],
        ["y"],
    )
    graph = helper.make_graph(
        [node],
        "requant",
        [helper.make_tensor_value_info("a", elem, list(a.shape)),
         helper.make_tensor_value_info("b", elem, list(b.shape))],
        [helper.make_tensor_value_info("y", elem, [a.shape[0], b.shape[1]])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"a": a, "b": b})[0], int(zp_in)


@pytest.mark.parametrize("out_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("real", [0.5, 0.25, 1 / 3, 0.0123, 0.007812, 1.75])
def test_float_mode_matches_onnxruntime_qlinearmatmul(out_dtype, real):
    # K = 1, so the accumulator is (a - za) * (b - zb): every product of two int8 values.
    info = np.iinfo(out_dtype)
    codes = np.arange(info.min, info.max + 1, dtype=np.int64)
    a = codes.astype(out_dtype).reshape(-1, 1)
    b = codes.astype(out_dtype).reshape(1, -1)
    y_zp = 3 if out_dtype == np.uint8 else -5
    y, zp_in = _ort_qlinear_matmul(a, b, real, y_zp, out_dtype)
    acc = torch.from_numpy((codes - zp_in)[:, None] * (codes - zp_in)[None, :]).to(torch.int32)
    got = requantize(acc, float(np.float32(real)), y_zp, int(info.min), int(info.max), mode="float")
    assert np.array_equal(got.numpy(), y.astype(np.int32))


def test_float_mode_matches_onnxruntime_per_column_scale():
    codes = np.arange(256, dtype=np.int64)
    a = codes.astype(np.uint8).reshape(-1, 1)
    b = codes.astype(np.uint8).reshape(1, -1)
    scales = np.random.default_rng(1).uniform(1e-3, 1.5, size=256).astype(np.float32)
    scales[::7] = 0.5  # plenty of exact ties
    y, zp_in = _ort_qlinear_matmul(a, b, scales, 128, np.uint8)
    acc = torch.from_numpy((codes - zp_in)[:, None] * (codes - zp_in)[None, :]).to(torch.int32)
    got = requantize(acc, torch.from_numpy(scales), 128, 0, 255, mode="float", per_channel_axis=1)
    assert np.array_equal(got.numpy(), y.astype(np.int32))

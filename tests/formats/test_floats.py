"""lowbit.formats.floats: bit-exact against ml_dtypes, the ONNX reference and ONNX Runtime."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from lowbit.errors import FormatError, InputError
from lowbit.formats import (
    BF16,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3FN,
    FP8_E4M3FNUZ,
    FP8_E5M2,
    FP8_E5M2FNUZ,
    FP16,
    INT8,
    QFormat,
    float_format,
)
from lowbit.formats.floats import (
    CastStats,
    cast_stats,
    check_float_format,
    decode,
    encode,
    representable_values,
    round_to_format,
)

ML_DTYPES = {
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "fp8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "fp8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "fp8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "fp8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "fp6_e2m3": np.dtype(ml_dtypes.float6_e2m3fn),
    "fp6_e3m2": np.dtype(ml_dtypes.float6_e3m2fn),
    "fp4_e2m1": np.dtype(ml_dtypes.float4_e2m1fn),
}
ALL = [FP16, BF16, FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ, FP6_E2M3, FP6_E3M2, FP4_E2M1]
SMALL = [f for f in ALL if f.bits <= 8]
FP8 = [FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ]
NO_SPECIALS = [FP6_E2M3, FP6_E3M2, FP4_E2M1]
ONNX_TO = {
    "fp8_e4m3fn": TensorProto.FLOAT8E4M3FN,
    "fp8_e5m2": TensorProto.FLOAT8E5M2,
    "fp8_e4m3fnuz": TensorProto.FLOAT8E4M3FNUZ,
    "fp8_e5m2fnuz": TensorProto.FLOAT8E5M2FNUZ,
    "fp4_e2m1": TensorProto.FLOAT4E2M1,
}
ids = [f.name for f in ALL]


# --- slow, obviously correct references ------------------------------------------------


def ml_codes(fmt: QFormat) -> np.ndarray:
    """Every code of fmt decoded by ml_dtypes, as float32."""
    dt = ML_DTYPES[fmt.name]
    if fmt.bits == 16:
        return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dt).astype(np.float32)
    return np.arange(1 << fmt.bits, dtype=np.uint8).view(dt).astype(np.float32)


def ml_bits(x: np.ndarray, fmt: QFormat) -> np.ndarray:
    """ml_dtypes cast of float32 x, as integer bit patterns."""
    y = x.astype(ML_DTYPES[fmt.name])
    return y.view(np.uint16 if fmt.bits == 16 else np.uint8).astype(np.int64)


def slow_unbounded(a: float, fmt: QFormat) -> float:
    """|value| rounded to nearest even on the grid 2**(E - m), E >= emin, no top limit."""
    if a == 0:
        return 0.0
    exp = max(math.frexp(a)[1] - 1, fmt.min_exponent)
    quantum = 2.0 ** (exp - fmt.mantissa_bits)
    return round(a / quantum) * quantum  # Python's round() on a float is half-even


def slow_round(v: float, fmt: QFormat, saturate: bool) -> float:
    """One value, straight from the definitions and the ONNX Cast tables."""
    maxf = fmt.max_finite
    if math.isnan(v):
        return math.nan if fmt.has_nan else maxf
    r = math.inf if math.isinf(v) else slow_unbounded(abs(v), fmt)
    if r > maxf:
        if saturate or fmt.special == "none":
            r = maxf
        elif fmt.has_inf:
            r = math.inf
        else:
            r = math.nan
    r = math.copysign(r, v)
    if fmt.special == "fnuz" and r == 0:
        r = 0.0
    return r


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as float32 values: NaN where NaN, identical bits (incl. the sign of zero) elsewhere."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    return np.array_equal(a[~nan_a].view(np.uint32), b[~nan_b].view(np.uint32))


def next_up(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.nextafter(a.astype(np.float32), np.float32(np.inf))


def next_down(a: np.ndarray) -> np.ndarray:
    return np.nextafter(a.astype(np.float32), np.float32(-np.inf))


def probe_inputs(fmt: QFormat) -> np.ndarray:
    """Every value, every midpoint (the ties), their float32 neighbours, and the edges."""
    vals = representable_values(fmt).double().numpy()
    pos = vals[vals >= 0]
    mids = (pos[:-1] + pos[1:]) / 2  # exact in float32: at most m + 2 significant bits
    top = fmt.max_finite
    step = 2.0 ** (fmt.max_exponent - fmt.mantissa_bits)  # spacing in the top binade
    edges = np.array(  # for bf16 the points past max overflow float32 to inf: fine
        [
            top + step / 2,  # the tie between max and the first value past it
            top + step / 4,
            top + step,
            top * 2,
            fmt.min_subnormal / 2,  # the tie between 0 and the smallest subnormal
            fmt.min_subnormal / 4,
            fmt.min_normal,
            1e-45,  # float32 subnormals
            1e-39,
            1e30,
            3.4028234663852886e38,
        ]
    )
    with np.errstate(over="ignore"):
        edges = edges.astype(np.float32)
    rng = np.random.default_rng(1234)
    rand = (rng.standard_normal(4000) * 10.0 ** rng.uniform(-12, 8, 4000)).astype(np.float32)
    core = np.concatenate([pos.astype(np.float32), mids.astype(np.float32), edges])
    core = np.concatenate([core, next_up(core), next_down(core)])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    return np.concatenate([core, -core, rand, special]).astype(np.float32)


def cast_model(to: int, saturate: int, roundtrip: bool) -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["x"], ["q"], to=to, saturate=saturate)]
    out_type = to
    if roundtrip:  # ONNX Runtime's Python API cannot return float8/float4 arrays
        nodes.append(helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT))
        out_type = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info(nodes[-1].output[0], out_type, [None])],
    )
    opset = 23 if to == TensorProto.FLOAT4E2M1 else 21
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def rt(x: np.ndarray, fmt: QFormat, saturate: bool = True) -> np.ndarray:
    return round_to_format(torch.from_numpy(x), fmt, saturate=saturate).numpy()


# --- decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL, ids=ids)
def test_decode_every_code_matches_ml_dtypes(fmt):
    codes = torch.arange(1 << fmt.bits, dtype=torch.int32)
    assert same(decode(codes, fmt).numpy(), ml_codes(fmt))


@pytest.mark.parametrize("fmt", ALL, ids=ids)
def test_decode_accepts_storage_dtype(fmt):
    codes = torch.arange(1 << fmt.bits, dtype=torch.int32)
    stored = encode(decode(codes, fmt), fmt, saturate=False)
    assert stored.dtype == fmt.storage_dtype
    assert same(decode(stored, fmt).numpy(), ml_codes(fmt))
    if fmt.storage_dtype.is_floating_point:  # torch's own upcast agrees
        assert same(stored.float().numpy(), ml_codes(fmt))


@pytest.mark.parametrize("fmt", ALL, ids=ids)
def test_encode_of_every_value_gives_back_its_code(fmt):
    codes = torch.arange(1 << fmt.bits, dtype=torch.int32)
    values = decode(codes, fmt)
    keep = ~torch.isnan(values)
    stored = encode(values, fmt, saturate=False)
    raw = stored.view(torch.uint8 if fmt.bits == 8 or fmt.bits < 8 else torch.int16)
    back = raw.to(torch.int32) & ((1 << fmt.bits) - 1)
    assert torch.equal(back[keep], codes[keep])


def test_decode_rejects_bad_codes():
    with pytest.raises(InputError, match="4-bit patterns"):
        decode(torch.tensor([16], dtype=torch.uint8), FP4_E2M1)
    with pytest.raises(InputError, match="dtype"):
        decode(torch.tensor([1.0]), FP8_E4M3FN)
    with pytest.raises(InputError):
        decode([1, 2], FP4_E2M1)
    with pytest.raises(FormatError):
        decode(torch.tensor([1]), INT8)


# --- round_to_format / encode against ml_dtypes and ONNX --------------------------------


@pytest.mark.parametrize("fmt", [f for f in ALL if f.special != "none"], ids=lambda f: f.name)
def test_non_saturating_cast_is_ml_dtypes_cast(fmt):
    # ml_dtypes never saturates: that is ONNX Cast(saturate=0) for float8 and IEEE for fp16/bf16
    x = probe_inputs(fmt)
    with np.errstate(over="ignore"):
        ref = x.astype(ML_DTYPES[fmt.name]).astype(np.float32)
        ref_bits = ml_bits(x, fmt)
    assert same(rt(x, fmt, saturate=False), ref)
    stored = encode(torch.from_numpy(x), fmt, saturate=False)
    raw = stored.view(torch.uint8 if fmt.bits == 8 else torch.int16).numpy().astype(np.int64)
    assert np.array_equal(raw & ((1 << fmt.bits) - 1), ref_bits)


@pytest.mark.parametrize("fmt", [*SMALL, FP16, BF16], ids=lambda f: f.name)
def test_in_range_values_match_ml_dtypes_both_modes(fmt):
    x = probe_inputs(fmt)
    x = x[np.isfinite(x) & (np.abs(x) <= fmt.max_finite)]
    with np.errstate(over="ignore"):  # bf16's max is above float32's max / 2
        ref = x.astype(ML_DTYPES[fmt.name]).astype(np.float32)
    for saturate in (True, False):
        assert same(rt(x, fmt, saturate=saturate), ref)
        codes = encode(torch.from_numpy(x), fmt, saturate=saturate)
        raw = codes.view(torch.uint8 if fmt.bits <= 8 else torch.int16).numpy().astype(np.int64)
        assert np.array_equal(raw & ((1 << fmt.bits) - 1), ml_bits(x, fmt))


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
@pytest.mark.parametrize("saturate", [1, 0])
def test_fp8_matches_onnx_reference_cast(fmt, saturate):
    x = probe_inputs(fmt)
    model = cast_model(ONNX_TO[fmt.name], saturate, roundtrip=False)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float32)
    assert same(rt(x, fmt, saturate=bool(saturate)), ref)


@pytest.mark.parametrize("fmt", FP8, ids=lambda f: f.name)
@pytest.mark.parametrize("saturate", [1, 0])
def test_fp8_matches_onnxruntime_cast(fmt, saturate):
    x = probe_inputs(fmt)
    model = cast_model(ONNX_TO[fmt.name], saturate, roundtrip=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    got = rt(x, fmt, saturate=bool(saturate))
    # Two windows where ONNX Runtime's CPU cast (saturate=0) departs from the ONNX table, the
    # ONNX reference implementation and ml_dtypes; lowbit follows the spec there:
    #   e4m3fn, 480 <= |x| < 496: ORT gives ±448, the spec NaN ([x] = 480 > 448);
    #   e5m2, 61440 <= |x| < 65536: ORT gives NaN, the spec ±Inf (61440 ties to even 65536).
    window = np.zeros(x.shape, dtype=bool)
    if not saturate and fmt == FP8_E4M3FN:
        window = (np.abs(x) >= 480) & (np.abs(x) < 496)
        assert np.array_equal(ref[window], np.copysign(448.0, x[window]).astype(np.float32))
        assert np.isnan(got[window]).all()
    if not saturate and fmt == FP8_E5M2:
        window = (np.abs(x) >= 61440) & (np.abs(x) < 65536)
        assert np.isnan(ref[window]).all()
        assert np.array_equal(got[window], np.copysign(np.inf, x[window]).astype(np.float32))
    assert same(got[~window], ref[~window])


def test_onnx_table_examples():
    t = torch.tensor([np.inf, -np.inf, np.nan, 1e9, -1e9, 464.0, 465.0, -0.0])
    assert rt(t.numpy(), FP8_E4M3FN).tolist()[:2] == [448.0, -448.0]
    sat_off = round_to_format(t, FP8_E4M3FN, saturate=False)
    assert torch.isnan(sat_off[:5]).all()
    assert sat_off[5].item() == 448.0  # 464 is the tie between 448 (even) and 480
    assert torch.isnan(sat_off[6])
    assert torch.signbit(sat_off[7])
    e5 = round_to_format(t, FP8_E5M2, saturate=False)
    assert e5[:2].tolist() == [math.inf, -math.inf] and torch.isnan(e5[2])
    assert e5[3].item() == math.inf and e5[4].item() == -math.inf
    fnuz = round_to_format(t, FP8_E4M3FNUZ, saturate=False)
    assert torch.isnan(fnuz[:5]).all() and not torch.signbit(fnuz[7])
    assert round_to_format(torch.tensor([-1e-30]), FP8_E4M3FNUZ).item() == 0.0
    assert not torch.signbit(round_to_format(torch.tensor([-1e-30]), FP8_E4M3FNUZ))
    assert torch.signbit(round_to_format(torch.tensor([-1e-30]), FP8_E4M3FN))


@pytest.mark.parametrize("fmt", NO_SPECIALS, ids=lambda f: f.name)
@pytest.mark.parametrize("saturate", [True, False])
def test_formats_without_specials_follow_onnx_float4_rules(fmt, saturate):
    # ONNX float4 spec: x > max -> max, x < -max -> -max, ±Inf -> ±max, NaN -> +max
    maxf = fmt.max_finite
    x = torch.tensor([maxf * 1.5, -maxf * 1.5, np.inf, -np.inf, np.nan, -np.nan, 1e38])
    got = round_to_format(x, fmt, saturate=saturate).tolist()
    assert got == [maxf, -maxf, maxf, -maxf, maxf, maxf, maxf]
    codes = encode(x, fmt, saturate=saturate).tolist()
    top = (1 << (fmt.bits - 1)) - 1
    neg = top | (1 << (fmt.bits - 1))
    assert codes == [top, neg, top, neg, top, top, top]


@pytest.mark.parametrize("saturate", [1, 0])
def test_fp4_matches_onnx_reference_except_nan(saturate):
    # The ONNX reference evaluator casts with ml_dtypes, which sends NaN to ±0; the ONNX
    # float4 spec and ONNX Runtime's Float4E2M1x2 send it to +6, as lowbit does.
    x = probe_inputs(FP4_E2M1)
    model = cast_model(TensorProto.FLOAT4E2M1, saturate, roundtrip=False)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float32)
    got = rt(x, FP4_E2M1, saturate=bool(saturate))
    nan = np.isnan(x)
    assert same(got[~nan], ref[~nan])
    assert (got[nan] == 6.0).all()


@pytest.mark.parametrize("fmt", [FP16, BF16], ids=lambda f: f.name)
def test_fp16_bf16_saturate_clamps_to_max_finite(fmt):
    x = probe_inputs(fmt)
    maxf = np.float32(fmt.max_finite)
    with np.errstate(invalid="ignore"):
        ref = np.clip(x, -maxf, maxf).astype(ML_DTYPES[fmt.name]).astype(np.float32)
    assert same(rt(x, fmt, saturate=True), ref)


@pytest.mark.parametrize(
    "fmt",
    [
        float_format("e3m4_ieee", 3, 4, "ieee"),
        float_format("e3m4_fn", 3, 4, "fn"),
        float_format("e2m5_none", 2, 5, "none"),
        float_format("e4m2_fnuz", 4, 2, "fnuz", bias=8),
        float_format("e5m7", 5, 7, "ieee"),
        float_format("e1m2", 1, 2, "none"),
    ],
    ids=lambda f: f.name,
)
@pytest.mark.parametrize("saturate", [True, False])
def test_custom_layouts_match_slow_reference(fmt, saturate):
    x = probe_inputs(fmt)
    ref = np.array([slow_round(float(v), fmt, saturate) for v in x], dtype=np.float32)
    assert same(rt(x, fmt, saturate=saturate), ref)
    values = decode(encode(torch.from_numpy(x), fmt, saturate=saturate), fmt).numpy()
    assert same(values, ref)
    assert encode(torch.zeros(1), fmt).dtype == (torch.uint8 if fmt.bits <= 8 else torch.int16)


def test_slow_reference_agrees_with_ml_dtypes():
    # the reference used above is itself checked on the formats ml_dtypes knows
    for fmt in (FP8_E4M3FN, FP8_E5M2FNUZ, FP6_E3M2):
        x = probe_inputs(fmt)
        x = x[np.isfinite(x) & (np.abs(x) <= fmt.max_finite)]
        ref = x.astype(ML_DTYPES[fmt.name]).astype(np.float32)
        slow = np.array([slow_round(float(v), fmt, True) for v in x], dtype=np.float32)
        assert same(slow, ref)


def test_input_dtypes_and_shapes():
    x64 = torch.tensor([[0.1, 1e5], [-3.3, 7.0]], dtype=torch.float64)
    out = round_to_format(x64, FP8_E4M3FN)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    assert out.tolist() == [[0.1015625, 448.0], [-3.25, 7.0]]
    assert round_to_format(torch.tensor([3, 17]), FP4_E2M1).tolist() == [3.0, 6.0]
    assert round_to_format(torch.tensor([1.0], dtype=torch.bfloat16), FP16).tolist() == [1.0]
    assert round_to_format(torch.empty(0, 3), FP16).shape == (0, 3)
    assert round_to_format(torch.tensor(2.4), FP4_E2M1).item() == 2.0
    grid = torch.randn(6, 5, 4)
    for view in (grid.transpose(0, 2), grid[:, ::2]):  # non-contiguous inputs
        dense = view.contiguous()
        assert torch.equal(round_to_format(view, FP8_E5M2), round_to_format(dense, FP8_E5M2))
        assert torch.equal(encode(view, FP4_E2M1), encode(dense, FP4_E2M1))
    leaf = torch.ones(3, requires_grad=True)
    assert not round_to_format(leaf, FP16).requires_grad
    with pytest.raises(InputError):
        round_to_format(torch.tensor([True]), FP16)
    with pytest.raises(InputError):
        round_to_format(np.ones(3), FP16)
    with pytest.raises(FormatError, match="float QFormat"):
        round_to_format(torch.ones(3), INT8)


def test_check_float_format_rejects_layouts_outside_float32():
    with pytest.raises(FormatError, match="float32"):
        check_float_format(float_format("wide", 8, 7, "ieee", bias=150))
    bad = QFormat(name="nan_free_fn", kind="float", bits=5, exponent_bits=4, special="fn")
    with pytest.raises(FormatError, match="mantissa"):
        check_float_format(bad)


# --- representable values ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL, ids=ids)
def test_representable_values(fmt):
    got = representable_values(fmt).numpy()
    ref = ml_codes(fmt)
    ref = np.unique(ref[np.isfinite(ref)] + np.float32(0.0))
    assert np.array_equal(got, ref)
    assert got[-1] == fmt.max_finite and got[0] == -fmt.max_finite
    assert got[got > 0][0] == fmt.min_subnormal


# --- cast statistics ---------------------------------------------------------------------


def slow_stats(x: np.ndarray, fmt: QFormat, saturate: bool) -> dict:
    counts = dict.fromkeys(
        ["overflow", "underflow_to_zero", "subnormal", "nan_in", "inf_in", "nan_out", "inf_out"], 0
    )
    for v in x.tolist():
        r = slow_round(v, fmt, saturate)
        if math.isnan(v):
            counts["nan_in"] += 1
        elif math.isinf(v):
            counts["inf_in"] += 1
        else:
            if slow_unbounded(abs(v), fmt) > fmt.max_finite:
                counts["overflow"] += 1
            if v != 0 and r == 0:
                counts["underflow_to_zero"] += 1
        if math.isnan(r):
            counts["nan_out"] += 1
        elif math.isinf(r):
            counts["inf_out"] += 1
        elif 0 < abs(r) < fmt.min_normal:
            counts["subnormal"] += 1
    return counts


@pytest.mark.parametrize("fmt", [FP16, FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP4_E2M1], ids=str)
@pytest.mark.parametrize("saturate", [True, False])
def test_cast_stats_match_slow_count(fmt, saturate):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(3000) * 10.0 ** rng.uniform(-10, 6, 3000)).astype(np.float32)
    x = np.concatenate([x, [np.nan, np.inf, -np.inf, 0.0, -0.0]]).astype(np.float32)
    stats = cast_stats(torch.from_numpy(x), fmt, saturate=saturate)
    ref = slow_stats(x, fmt, saturate)
    assert {k: stats.as_dict()[k] for k in ref} == ref
    assert stats.total == x.size and stats.format_name == fmt.name
    assert stats.overflow > 0 and stats.underflow_to_zero > 0 and stats.subnormal > 0


def test_cast_stats_str_and_dict():
    s = cast_stats(torch.tensor([1e-8, 1e-6, 1.0, 1e5]), FP16)
    assert (s.underflow_to_zero, s.subnormal, s.overflow) == (1, 1, 1)
    assert "overflow 1 (25%)" in str(s) and "fp16" in str(s)
    assert s.as_dict()["total"] == 4
    assert isinstance(s, CastStats)
    with pytest.raises(AttributeError):
        s.total = 3  # frozen
    assert "0 values" in str(cast_stats(torch.empty(0), FP16))


# --- properties -------------------------------------------------------------------------

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
fmts = st.sampled_from(ALL)


@settings(max_examples=300, deadline=None)
@given(fmts, st.lists(finite32, min_size=1, max_size=20), st.booleans())
def test_round_is_idempotent(fmt, xs, saturate):
    once = round_to_format(torch.tensor(xs, dtype=torch.float32), fmt, saturate=saturate)
    twice = round_to_format(once, fmt, saturate=saturate)
    assert same(once.numpy(), twice.numpy())


@settings(max_examples=300, deadline=None)
@given(fmts, finite32, finite32)
def test_round_is_monotone(fmt, a, b):
    lo, hi = min(a, b), max(a, b)
    r = round_to_format(torch.tensor([lo, hi], dtype=torch.float32), fmt)
    assert r[0] <= r[1]


@settings(max_examples=300, deadline=None)
@given(fmts, finite32)
def test_round_error_is_at_most_half_the_local_spacing(fmt, v):
    if abs(v) > fmt.max_finite:
        v = math.fmod(v, fmt.max_finite)
    r = round_to_format(torch.tensor([v], dtype=torch.float32), fmt).item()
    v32 = float(np.float32(v))
    exp = max(math.frexp(abs(v32))[1] - 1, fmt.min_exponent) if v32 else fmt.min_exponent
    spacing = 2.0 ** (exp - fmt.mantissa_bits)
    assert abs(r - v32) <= spacing / 2


def test_docstring_examples_run():
    import doctest

    import lowbit.formats.floats as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

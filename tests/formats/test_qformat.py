"""lowbit.formats.qformat: ranges, layouts and type numbers against ml_dtypes and onnx."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto

from lowbit.errors import FormatError, LowbitError
from lowbit.formats import (
    BF16,
    BINARY,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3FN,
    FP8_E4M3FNUZ,
    FP8_E5M2,
    FP8_E5M2FNUZ,
    FP16,
    INT4,
    INT8,
    NAMED,
    ONNX_TYPES,
    TERNARY,
    UINT4,
    UINT8,
    UINT16,
    QFormat,
    float_format,
    get_format,
    int_format,
)

FLOATS = {
    FP16: np.float16,
    BF16: ml_dtypes.bfloat16,
    FP8_E4M3FN: ml_dtypes.float8_e4m3fn,
    FP8_E5M2: ml_dtypes.float8_e5m2,
    FP8_E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
    FP8_E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
    FP6_E2M3: ml_dtypes.float6_e2m3fn,
    FP6_E3M2: ml_dtypes.float6_e3m2fn,
    FP4_E2M1: ml_dtypes.float4_e2m1fn,
}


@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("signed", [True, False])
def test_int_ranges_match_twos_complement(bits, signed):
    f = int_format(bits, signed=signed)
    if signed:
        assert (f.qmin, f.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        narrow = int_format(bits, narrow_range=True)
        assert (narrow.qmin, narrow.qmax) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
        assert narrow.levels == 2**bits - 1
    else:
        assert (f.qmin, f.qmax) == (0, 2**bits - 1)
    assert f.levels == 2**bits
    assert f.is_integer and f.kind == "int"
    info = torch.iinfo(f.storage_dtype)
    assert info.min <= f.qmin and f.qmax <= info.max


def test_named_int_formats():
    assert (INT8.qmin, INT8.qmax, INT8.storage_dtype) == (-128, 127, torch.int8)
    assert (UINT8.qmin, UINT8.qmax, UINT8.storage_dtype) == (0, 255, torch.uint8)
    assert (INT4.qmin, INT4.qmax, UINT4.qmax) == (-8, 7, 15)
    assert UINT16.storage_dtype == torch.uint16
    assert (BINARY.qmin, BINARY.qmax, BINARY.levels) == (-1, 1, 2)
    assert (TERNARY.qmin, TERNARY.qmax, TERNARY.levels) == (-1, 1, 3)
    assert BINARY.storage_dtype == torch.int8 and BINARY.onnx_type is None


@pytest.mark.parametrize("fmt", list(FLOATS), ids=lambda f: f.name)
def test_float_layouts_match_ml_dtypes(fmt):
    info = ml_dtypes.finfo(FLOATS[fmt])
    assert fmt.max_finite == float(info.max)
    assert fmt.qmax == float(info.max) and fmt.qmin == -float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.bits == info.bits
    assert fmt.mantissa_bits == info.nmant
    assert fmt.has_inf == bool(np.isinf(np.array(np.inf, dtype=np.float32).astype(FLOATS[fmt])))
    # levels: codes that stand for a finite value
    codes = np.arange(1 << fmt.bits, dtype=np.uint32)
    raw = codes.astype(np.uint16 if fmt.bits == 16 else np.uint8)
    if fmt.bits < 8:
        values = np.array([np.uint8(c).view(FLOATS[fmt]) for c in raw]).astype(np.float32)
    else:
        values = raw.view(FLOATS[fmt]).astype(np.float32)
    assert fmt.levels == int(np.isfinite(values).sum())
    assert fmt.has_nan == bool(np.isnan(values).any())


def test_storage_and_onnx_types():
    assert FP8_E4M3FN.storage_dtype == torch.float8_e4m3fn
    assert FP8_E5M2FNUZ.storage_dtype == torch.float8_e5m2fnuz
    assert FP16.storage_dtype == torch.float16 and BF16.storage_dtype == torch.bfloat16
    assert FP4_E2M1.storage_dtype == torch.uint8 and FP6_E3M2.storage_dtype == torch.uint8
    assert float_format("e5m7", 5, 7, "ieee").storage_dtype == torch.int16
    expected = {
        INT8: TensorProto.INT8,
        UINT8: TensorProto.UINT8,
        INT4: TensorProto.INT4,
        UINT4: TensorProto.UINT4,
        UINT16: TensorProto.UINT16,
        FP16: TensorProto.FLOAT16,
        BF16: TensorProto.BFLOAT16,
        FP8_E4M3FN: TensorProto.FLOAT8E4M3FN,
        FP8_E5M2: TensorProto.FLOAT8E5M2,
        FP8_E4M3FNUZ: TensorProto.FLOAT8E4M3FNUZ,
        FP8_E5M2FNUZ: TensorProto.FLOAT8E5M2FNUZ,
        FP4_E2M1: TensorProto.FLOAT4E2M1,
    }
    for fmt, onnx_type in expected.items():
        assert fmt.onnx_type == onnx_type, fmt
    assert FP6_E2M3.onnx_type is None
    assert int_format(8, narrow_range=True).onnx_type is None
    assert int_format(5).onnx_type is None


def test_onnx_type_numbers_match_onnx():
    for name, number in ONNX_TYPES.items():
        onnx_name = "FLOAT" if name == "float32" else name.upper()
        assert getattr(TensorProto, onnx_name) == number, name


def test_get_format_names_and_aliases():
    for name, fmt in NAMED.items():
        assert get_format(name) is fmt
        assert get_format(name.upper()) is fmt
    assert get_format("fp8") is FP8_E4M3FN and get_format("e5m2") is FP8_E5M2
    assert get_format("half") is FP16 and get_format("bfloat16") is BF16
    assert get_format(" fp4 ") is FP4_E2M1
    assert get_format("uint5").qmax == 31
    assert get_format("int8_narrow").qmin == -127
    assert get_format(INT8) is INT8
    with pytest.raises(FormatError, match="unknown format"):
        get_format("int1x")
    with pytest.raises(FormatError):
        get_format("int17")


def test_bad_formats_raise_format_errors():
    for bad in (1, 17, 0, 2.5):
        with pytest.raises(FormatError, match="2 to 16"):
            int_format(bad)
    with pytest.raises(FormatError, match="signed"):
        int_format(8, signed=False, narrow_range=True)
    with pytest.raises(FormatError, match="exponent bits"):
        float_format("e9", 9, 2, "ieee")
    with pytest.raises(FormatError, match="exponent bits"):
        float_format("e0", 0, 3, "none")
    with pytest.raises(FormatError, match="special"):
        float_format("x", 4, 3, "weird")  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="mantissa"):
        float_format("e4m0", 4, 0, "fn")
    with pytest.raises(LowbitError):
        float_format("big", 8, 8, "ieee")


def test_qformat_is_frozen_and_hashable():
    with pytest.raises(AttributeError):
        INT8.bits = 4  # type: ignore[misc]
    assert len({INT8, int_format(8), UINT8}) == 2
    assert repr(FP8_E4M3FN) == "QFormat(fp8_e4m3fn)"
    assert isinstance(FP8_E4M3FN, QFormat)
    assert float_format("fp8_e3m4", 3, 4, "fn").max_finite == 30.0


def test_docstring_examples_run():
    import doctest

    import lowbit.formats.qformat as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

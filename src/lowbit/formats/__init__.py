"""Numeric formats: frozen `QFormat` values, float casting, block and codebook formats.

Never touches a model. See DESIGN.md, "Layers".
"""

from __future__ import annotations

from lowbit.formats.qformat import (
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
    INT2,
    INT4,
    INT8,
    INT16,
    NAMED,
    ONNX_TYPES,
    TERNARY,
    UINT2,
    UINT4,
    UINT8,
    UINT16,
    QFormat,
    float_format,
    get_format,
    int_format,
)

__all__ = [
    "BF16",
    "BINARY",
    "FP4_E2M1",
    "FP6_E2M3",
    "FP6_E3M2",
    "FP8_E4M3FN",
    "FP8_E4M3FNUZ",
    "FP8_E5M2",
    "FP8_E5M2FNUZ",
    "FP16",
    "INT2",
    "INT4",
    "INT8",
    "INT16",
    "NAMED",
    "ONNX_TYPES",
    "TERNARY",
    "UINT2",
    "UINT4",
    "UINT8",
    "UINT16",
    "QFormat",
    "float_format",
    "get_format",
    "int_format",
]

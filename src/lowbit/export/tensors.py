"""lowbit codes as ONNX tensors: which element type holds a format, and the bytes.

ONNX QuantizeLinear / DequantizeLinear (opset 21) take int8, uint8, int16,
uint16, int4, uint4 and the float8 types. Formats ONNX lacks are stored in the
next wider ONNX type of the same signedness (int2 / int3 → int4, int5..7 and
narrow int8 → int8, uint7 → uint8): dequantization stays exact, and `qdq`
clips activations where the narrower range matters.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

from lowbit.export.errors import ExportError
from lowbit.export.pack import pack_codes
from lowbit.formats.qformat import ONNX_TYPES, QFormat

# ONNX element type -> (min, max) of its integer range
INT_RANGES = {
    ONNX_TYPES["int4"]: (-8, 7),
    ONNX_TYPES["uint4"]: (0, 15),
    ONNX_TYPES["int8"]: (-128, 127),
    ONNX_TYPES["uint8"]: (0, 255),
    ONNX_TYPES["int16"]: (-32768, 32767),
    ONNX_TYPES["uint16"]: (0, 65535),
}
_NUMPY = {
    ONNX_TYPES["int8"]: np.int8,
    ONNX_TYPES["uint8"]: np.uint8,
    ONNX_TYPES["int16"]: np.int16,
    ONNX_TYPES["uint16"]: np.uint16,
}
FLOAT8_TYPES = {ONNX_TYPES[k] for k in ("float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz")}
FP4_TYPE = ONNX_TYPES["float4e2m1"]


def container_type(fmt: QFormat, *, opset: int = 21) -> int:
    """The ONNX element type that stores codes of ``fmt``.

    Raises:
        ExportError: ONNX's Q/DQ operators have no type for ``fmt`` at this opset.

    Example:
        >>> from lowbit.formats import get_format
        >>> container_type(get_format("uint7")) == ONNX_TYPES["uint8"]
        True
    """
    if fmt.kind in ("binary", "ternary"):
        return ONNX_TYPES["int8"]
    if fmt.kind == "int":
        prefix = "int" if fmt.signed else "uint"
        for width in (4, 8, 16):
            if fmt.bits <= width:
                return ONNX_TYPES[f"{prefix}{width}"]
    onnx_type = fmt.onnx_type
    if onnx_type in FLOAT8_TYPES:
        return onnx_type
    if onnx_type == FP4_TYPE:
        if opset < 23:
            raise ExportError(f"{fmt.name} needs ONNX opset 23 (FLOAT4E2M1); pass opset=23")
        return onnx_type
    raise ExportError(
        f"ONNX QuantizeLinear / DequantizeLinear have no element type for {fmt.name}; "
        "export int2..int16, uint2..uint16 or float8 formats, or keep this layer in float")


def needs_clip(fmt: QFormat, elem_type: int) -> bool:
    """Whether ``fmt``'s code range is narrower than its container's (activations must be clipped)."""
    if elem_type not in INT_RANGES or fmt.kind != "int":
        return False
    return (int(fmt.qmin), int(fmt.qmax)) != INT_RANGES[elem_type]


def codes_tensor(name: str, codes: Tensor, elem_type: int) -> TensorProto:
    """An initializer of ``elem_type`` holding integer codes (or float8 / fp4 storage).

    Args:
        name: initializer name.
        codes: codes as `lowbit.primitives.quantize` returns them (int32 zero points work too).
        elem_type: from `container_type`.

    Returns:
        The TensorProto (sub-byte types packed two per byte, ONNX layout).
    """
    dims = list(codes.shape)
    if elem_type in _NUMPY:
        lo, hi = INT_RANGES[elem_type]
        values = codes.detach().to(torch.int64)
        if values.numel() and (int(values.min()) < lo or int(values.max()) > hi):
            raise ExportError(f"internal: codes of {name} do not fit ONNX type {elem_type}")
        return numpy_helper.from_array(values.numpy().astype(_NUMPY[elem_type]), name)
    if elem_type in (ONNX_TYPES["int4"], ONNX_TYPES["uint4"]):
        raw = pack_codes(codes.detach(), 4).numpy().tobytes()
        return helper.make_tensor(name, elem_type, dims, raw, raw=True)
    if elem_type in FLOAT8_TYPES:
        data = codes.detach()
        if data.is_floating_point():
            data = data.view(torch.uint8) if data.element_size() == 1 else data.to(torch.uint8)
        return helper.make_tensor(name, elem_type, dims, data.to(torch.uint8).numpy().tobytes(), raw=True)
    if elem_type == FP4_TYPE:
        data = codes.detach()
        if data.is_floating_point():
            data = torch.zeros_like(data, dtype=torch.uint8)  # zero points of fp4 are +0
        raw = pack_codes(data.to(torch.int32), 4).numpy().tobytes()
        return helper.make_tensor(name, elem_type, dims, raw, raw=True)
    raise ExportError(f"internal: no encoding for ONNX element type {elem_type}")


def zero_point_tensor(name: str, zero_point: Tensor, elem_type: int) -> TensorProto:
    """Zero points (int32 in lowbit) in the codes' element type; zeros for float types."""
    if elem_type in FLOAT8_TYPES or elem_type == FP4_TYPE:
        return codes_tensor(name, torch.zeros(zero_point.shape, dtype=torch.uint8), elem_type)
    return codes_tensor(name, zero_point, elem_type)


def scale_tensor(name: str, scale: Tensor) -> TensorProto:
    """Scales as a float32 initializer of their own shape (a scalar for per-tensor)."""
    return numpy_helper.from_array(scale.detach().to(torch.float32).numpy(), name)

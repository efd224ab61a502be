"""Dynamic activation quantization in ONNX, computing exactly what lowbit computes.

- uint8, per-tensor, asymmetric: lowbit's dynamic parameters *are* ONNX
  DynamicQuantizeLinear's, so the marker becomes DynamicQuantizeLinear →
  DequantizeLinear; ONNX Runtime fuses that with a quantized MatMul into
  DynamicQuantizeMatMul.
- anything else lowbit computes dynamically (per-token int8 symmetric, the
  w8a8-dynamic preset, or other widths) is written out as the same arithmetic
  in ONNX operators: ReduceMin / ReduceMax over each token (or the tensor),
  the scale and zero point as `lowbit.primitives.qparams` computes them (in
  float64 where lowbit does, so the float32 scale is the same number), then
  Div → Round (half to even) → Add → Clip for the codes and Sub → Mul back.
  `lowbit.export.rewrite` turns a code tensor feeding a Linear into an integer
  MatMulInteger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from lowbit.export.errors import ExportError
from lowbit.export.graph import GraphEditor
from lowbit.formats.qformat import QFormat
from lowbit.primitives.qparams import MAX_SCALE, MIN_SCALE


@dataclass
class DynamicCodes:
    """A dynamically quantized tensor: the names of its codes, scale and zero point.

    ``codes`` is a uint8 tensor when ``uint8`` is set (8-bit formats; signed codes
    shifted by 128, ``zero_point`` then holds the shifted zero point), otherwise
    float32 holding integer values. ``symmetric``: the (unshifted) zero point is 0.
    """

    codes: str
    scale: str
    zero_point: str | None
    fmt: QFormat
    per_token: bool
    onnx_native: bool  # DynamicQuantizeLinear
    uint8: bool = False
    symmetric: bool = False


def lower_dynamic(ed: GraphEditor, node, mark, opset: int) -> DynamicCodes:
    """Write the dynamic quantizer behind ``node`` (a marker) as ONNX operators.

    Raises:
        ExportError: a granularity or rounding ONNX cannot reproduce.
    """
    spec = mark.quantizer.spec
    fmt = spec.fmt
    x, out = node.input[0], node.output[0]
    if fmt.kind != "int":
        raise ExportError(f"{mark.name}: dynamic {fmt.name} activations have no ONNX form; "
                          "use an integer format")
    if spec.rounding != "half_even":
        raise ExportError(f"{mark.name} rounds {spec.rounding!r}; ONNX rounds half to even. Use "
                          "rounding='half_even' for ONNX targets")
    if spec.granularity not in ("tensor", "token"):
        raise ExportError(f"{mark.name}: dynamic {spec.granularity} quantization has no ONNX "
                          "form; use per-tensor or per-token")
    hint = mark.name.replace(".", "_").replace(":", "_")
    per_token = spec.granularity == "token"
    onnx_formulas = not fmt.signed and not spec.symmetric
    if onnx_formulas and not per_token and fmt.bits == 8:
        q, s, z = (ed.unique(f"{hint}_{n}") for n in ("q", "scale", "zero_point"))
        ed.node("DynamicQuantizeLinear", [x], [q, s, z], name=f"{hint}_DynamicQuantizeLinear")
        ed.node("DequantizeLinear", [q, s, z], [out], name=f"{hint}_DequantizeLinear")
        return DynamicCodes(q, s, z, fmt, per_token=False, onnx_native=True)

    reduce_kw = {"keepdims": 1 if per_token else 0}
    axes = [ed.constant("axes_last", np.array([-1], np.int64))] if per_token else []
    lo = ed.node("ReduceMin", [x, *axes], name=f"{hint}_ReduceMin", **reduce_kw).output[0]
    hi = ed.node("ReduceMax", [x, *axes], name=f"{hint}_ReduceMax", **reduce_kw).output[0]
    if onnx_formulas:
        scale, zp = _onnx_qparams(ed, hint, lo, hi, fmt)
    else:
        scale, zp = _minmax_qparams(ed, hint, lo, hi, fmt, spec.symmetric)
    if fmt.bits == 8 and (fmt.qmin, fmt.qmax) in ((0, 255), (-128, 127)):
        return _quantize_uint8(ed, hint, x, out, scale, zp, fmt, mark, per_token, spec.symmetric)
    codes = ed.node("Round", [ed.node("Div", [x, scale]).output[0]], name=f"{hint}_Round").output[0]
    if zp is not None:
        codes = ed.node("Add", [codes, zp]).output[0]
    codes = ed.node("Clip", [codes, _f32(ed, fmt.qmin), _f32(ed, fmt.qmax)], name=f"{hint}_Clip").output[0]
    centered = ed.node("Sub", [codes, zp]).output[0] if zp is not None else codes
    ed.node("Mul", [centered, scale], [out], name=f"{hint}_Dequantize")
    return DynamicCodes(codes, scale, zp, fmt, per_token, onnx_native=False)


def _quantize_uint8(ed: GraphEditor, hint: str, x: str, out: str, scale: str, zp: str | None,
                    fmt: QFormat, mark, per_token: bool, symmetric: bool) -> DynamicCodes:
    """One QuantizeLinear to uint8 (signed codes shifted by 128) with the computed parameters.

    QuantizeLinear divides by the scale and rounds half to even exactly as lowbit
    does; per token it is ONNX's blocked layout with one block per row.
    """
    shift = 128.0 if fmt.signed else 0.0
    if zp is None:
        zp_u8 = ed.node("Expand", [ed.constant("u8", np.uint8(shift)),
                                   ed.node("Shape", [scale]).output[0]]).output[0]
    else:
        moved = ed.node("Add", [zp, _f32(ed, shift)]).output[0] if shift else zp
        zp_u8 = ed.node("Cast", [moved], to=TensorProto.UINT8).output[0]
    attrs = {}
    if per_token:
        if mark.shape is None:
            raise ExportError(f"internal: {mark.name} was not traced; please report this model")
        attrs = {"axis": -1, "block_size": int(mark.shape[-1])}
    codes = ed.node("QuantizeLinear", [x, scale, zp_u8], name=f"{hint}_QuantizeLinear", **attrs).output[0]
    ed.node("DequantizeLinear", [codes, scale, zp_u8], [out], name=f"{hint}_DequantizeLinear", **attrs)
    return DynamicCodes(codes, scale, zp_u8, fmt, per_token, onnx_native=False, uint8=True,
                        symmetric=zp is None and fmt.signed)


def _f32(ed: GraphEditor, value: float) -> str:
    return ed.constant("c", np.float32(value))


def _f64(ed: GraphEditor, value: float) -> str:
    return ed.constant("d", np.float64(value))


def _onnx_qparams(ed: GraphEditor, hint: str, lo: str, hi: str, fmt: QFormat) -> tuple[str, str]:
    """DynamicQuantizeLinear's formulas in float32 (see lowbit.primitives.dynamic)."""
    qmin, qmax = float(fmt.qmin), float(fmt.qmax)
    lo = ed.node("Min", [lo, _f32(ed, 0.0)]).output[0]
    hi = ed.node("Max", [hi, _f32(ed, 0.0)]).output[0]
    span = ed.node("Sub", [hi, lo]).output[0]
    is_zero = ed.node("Equal", [span, _f32(ed, 0.0)]).output[0]
    ratio = ed.node("Div", [span, _f32(ed, qmax - qmin)]).output[0]
    scale = ed.node("Where", [is_zero, _f32(ed, 1.0), ratio], name=f"{hint}_scale").output[0]
    initial = ed.node("Sub", [_f32(ed, qmin), ed.node("Div", [lo, scale]).output[0]]).output[0]
    clipped = ed.node("Clip", [initial, _f32(ed, qmin), _f32(ed, qmax)]).output[0]
    zp = ed.node("Round", [clipped], name=f"{hint}_zero_point").output[0]
    return scale, zp


def _finish(ed: GraphEditor, scale64: str, empty: str) -> str:
    scale = ed.node("Where", [empty, _f64(ed, 1.0), scale64]).output[0]
    scale = ed.node("Clip", [scale, _f64(ed, MIN_SCALE), _f64(ed, MAX_SCALE)]).output[0]
    return ed.node("Cast", [scale], to=TensorProto.FLOAT).output[0]


def _minmax_qparams(ed: GraphEditor, hint: str, lo32: str, hi32: str, fmt: QFormat,
                    symmetric: bool) -> tuple[str, str | None]:
    """`qparams_from_minmax` in float64, as lowbit computes it."""
    qmin, qmax = float(fmt.qmin), float(fmt.qmax)
    min_val = ed.node("Cast", [lo32], to=TensorProto.DOUBLE).output[0]
    max_val = ed.node("Cast", [hi32], to=TensorProto.DOUBLE).output[0]
    constant = ed.node("Equal", [min_val, max_val]).output[0]
    lo = ed.node("Min", [min_val, _f64(ed, 0.0)]).output[0]
    hi = ed.node("Max", [max_val, _f64(ed, 0.0)]).output[0]
    zero = _f64(ed, 0.0)
    if symmetric:
        amax = ed.node("Max", [ed.node("Neg", [lo]).output[0], hi]).output[0]
        middle = 0.0 if fmt.signed else float(math.floor((qmin + qmax + 1) / 2))
        half_levels = qmax - middle
        scale = ed.node("Div", [amax, _f64(ed, half_levels)]).output[0]
        exact = ed.node("Div", [amax, _f64(ed, 2.0 ** math.floor(math.log2(half_levels)))]).output[0]
        positive = ed.node("Greater", [amax, zero]).output[0]
        use_exact = ed.node("And", [constant, positive]).output[0]
        scale = ed.node("Where", [use_exact, exact, scale]).output[0]
        empty = ed.node("Equal", [amax, zero]).output[0]
        scale32 = _finish(ed, scale, empty)
        return scale32, (_f32(ed, middle) if middle else None)
    span = ed.node("Sub", [hi, lo]).output[0]
    scale = ed.node("Div", [span, _f64(ed, qmax - qmin)]).output[0]
    exact = ed.node("Div", [span, _f64(ed, 2.0 ** math.floor(math.log2(qmax - qmin)))]).output[0]
    positive = ed.node("Greater", [span, zero]).output[0]
    scale = ed.node("Where", [ed.node("And", [constant, positive]).output[0], exact, scale]).output[0]
    scale32 = _finish(ed, scale, ed.node("Equal", [span, zero]).output[0])
    back = ed.node("Cast", [scale32], to=TensorProto.DOUBLE).output[0]
    zp = ed.node("Sub", [_f64(ed, qmin), ed.node("Round", [ed.node("Div", [lo, back]).output[0]])
                         .output[0]]).output[0]
    zp = ed.node("Clip", [zp, _f64(ed, qmin), _f64(ed, qmax)]).output[0]
    return scale32, ed.node("Cast", [zp], to=TensorProto.FLOAT, name=f"{hint}_zero_point").output[0]

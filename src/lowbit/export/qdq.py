"""Lowering lowbit's marker nodes to standard ONNX QuantizeLinear / DequantizeLinear.

For every marker left by `lowbit.export.trace`:

- a static activation quantizer becomes QuantizeLinear → DequantizeLinear with
  the quantizer's frozen scale / zero point (per-tensor, per-axis or blocked).
  Consumers of one tensor whose quantizers hold identical parameters share one
  QuantizeLinear (each keeps its own DequantizeLinear, as ONNX Runtime's node
  units want). Narrow ranges (uint7, int8 [-127, 127]) get a Clip first, so the
  codes equal lowbit's exactly;
- a weight becomes DequantizeLinear of its codes (int8, int4, uint4, blocked, …).
  A Transpose torch put after the weight is folded into the codes, so that
  ONNX Runtime sees the weight as a constant DequantizeLinear it can fuse;
- a dynamic quantizer becomes DynamicQuantizeLinear or its exact expansion
  (see `lowbit.export.dynamic`).

`Lowered` records what each DequantizeLinear output holds, for the rewrite passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lowbit.export.dynamic import lower_dynamic
from lowbit.export.errors import ExportError
from lowbit.export.graph import GraphEditor
from lowbit.export.tensors import (
    INT_RANGES,
    codes_tensor,
    container_type,
    needs_clip,
    scale_tensor,
    zero_point_tensor,
)
from lowbit.export.trace import MARKER_DOMAIN, Mark
from lowbit.formats.qformat import ONNX_TYPES, QFormat
from lowbit.primitives.quantize import quantize


@dataclass
class WeightDQ:
    """A weight written as DequantizeLinear of constant codes (names of its inputs and layout)."""

    codes: Tensor
    scale: Tensor
    zero_point: Tensor
    fmt: QFormat
    axis: int | None
    block_size: int | None
    elem_type: int
    codes_name: str
    layer: str


@dataclass
class ActQDQ:
    """A statically quantized activation: the DequantizeLinear's parameters."""

    scale: Tensor
    zero_point: Tensor
    fmt: QFormat
    elem_type: int
    axis: int | None
    block_size: int | None


@dataclass
class Lowered:
    """What the DequantizeLinear outputs of the lowered graph hold."""

    weights: dict[str, WeightDQ] = field(default_factory=dict)
    acts: dict[str, ActQDQ] = field(default_factory=dict)
    dynamic: dict[str, object] = field(default_factory=dict)


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def weight_codes(mark: Mark) -> Tensor:
    """The layer's weight codes (computed from the float weight when not converted yet)."""
    module, wq = mark.module, mark.quantizer
    if bool(module.converted):
        return module.weight_codes.detach()
    p = wq.qparams()
    return quantize(module.weight.detach().float(), p.scale, p.zero_point, p.fmt,
                    axis=p.axis, block_size=p.block_size, rounding=wq.spec.rounding)


def _lower_weight(ed: GraphEditor, node, mark: Mark, consumers, lowered: Lowered, opset: int) -> None:
    p = mark.quantizer.qparams()
    codes = weight_codes(mark)
    scale, zp = p.scale.detach().float(), p.zero_point.detach()
    axis, block = p.axis, p.block_size
    out = node.output[0]
    users = consumers.get(out, [])
    if len(users) == 1 and users[0].op_type == "Transpose" and out not in ed.graph_outputs():
        transpose = users[0]
        perm = _attr(transpose, "perm") or list(reversed(range(codes.dim())))
        codes = codes.permute(*perm).contiguous()
        if block is not None:
            scale, zp = scale.permute(*perm).contiguous(), zp.permute(*perm).contiguous()
        if axis is not None:
            axis = perm.index(axis)
        out = transpose.output[0]
        ed.remove(transpose)
    elem_type = container_type(p.fmt, opset=opset)
    hint = mark.name.replace(".", "_")
    codes_name = ed.add_initializer(codes_tensor(f"{hint}_weight_q", codes, elem_type))
    scale_name = ed.add_initializer(scale_tensor(f"{hint}_weight_scale", scale))
    zp_name = ed.add_initializer(zero_point_tensor(f"{hint}_weight_zero_point", zp, elem_type))
    ed.node("DequantizeLinear", [codes_name, scale_name, zp_name], [out],
                 name=f"{hint}_weight_DequantizeLinear",
                 axis=axis if scale.dim() > 0 else None, block_size=block)
    lowered.weights[out] = WeightDQ(codes, scale, zp, p.fmt, axis if scale.dim() > 0 else None,
                                    block, elem_type, codes_name, mark.name)


def _same_params(act: ActQDQ, scale: Tensor, zp: Tensor, fmt: QFormat, axis: int | None,
                 block: int | None) -> bool:
    return (act.fmt == fmt and act.axis == axis and act.block_size == block
            and act.scale.shape == scale.shape and torch.equal(act.scale, scale)
            and torch.equal(act.zero_point.to(torch.int64), zp.to(torch.int64)))


def _lower_static(ed: GraphEditor, node, mark: Mark, cache: dict, renames: dict[str, str],
                  lowered: Lowered, opset: int) -> None:
    quantizer = mark.quantizer
    p = quantizer.qparams()
    fmt = p.fmt
    if fmt.kind not in ("int", "float"):
        raise ExportError(
            f"{mark.name} quantizes activations to {fmt.name}, which ONNX QuantizeLinear cannot "
            "express; use an integer or float8 format for activations")
    if quantizer.spec.rounding != "half_even" and fmt.kind == "int":
        raise ExportError(
            f"{mark.name} rounds {quantizer.spec.rounding!r}, but ONNX QuantizeLinear rounds half "
            "to even, so the exported model would compute something else. Quantize with "
            "rounding='half_even' for ONNX targets")
    elem_type = container_type(fmt, opset=opset)
    hint = mark.name.replace(".", "_").replace(":", "_")
    scale, zp = p.scale.detach().float(), p.zero_point.detach()
    clip = needs_clip(fmt, elem_type)
    asymmetric = not quantizer.spec.symmetric or bool(zp.any())
    if elem_type == ONNX_TYPES["int8"] and fmt.kind == "int" and not clip and asymmetric:
        # Asymmetric int8 activations as uint8 with the zero point moved by 128: the same
        # values (q + 128 clamps to [0, 255] exactly when q clamps to [-128, 127]). ONNX
        # Runtime converts int8 QDQ to uint8 itself on x86, but only for a QuantizeLinear
        # with a single consumer; TensorRT takes symmetric int8 only, so nothing is lost.
        # Decided by the spec, not by the value: a range that happens to give zero point
        # 0 must not stay int8 between uint8 neighbours, or ONNX Runtime fuses neither
        # the conv nor the add (both need one element type on all their Q/DQ).
        elem_type, zp = ONNX_TYPES["uint8"], zp.to(torch.int32) + 128
    scale_name = ed.shared(scale_tensor(f"{hint}_scale", scale))
    zp_name = ed.shared(zero_point_tensor(f"{hint}_zero_point", zp, elem_type))
    axis = p.axis if scale.dim() > 0 else None
    source = renames.get(node.input[0], node.input[0])
    before = lowered.acts.get(source)
    if before is not None and _same_params(before, scale, zp, fmt, axis, p.block_size):
        renames[node.output[0]] = source  # quantizing codes again with their own parameters
        return
    key = (source, scale_name, zp_name, axis, p.block_size, fmt.name)
    if key in cache:
        # One Q → DQ pair per tensor and parameters, as ONNX Runtime's own quantizer
        # writes it: its int8 → uint8 conversion only handles a Q with a single DQ.
        renames[node.output[0]] = cache[key]
        return
    q_out = ed.node("QuantizeLinear", [source, scale_name, zp_name], name=f"{hint}_QuantizeLinear",
                    axis=axis, block_size=p.block_size).output[0]
    if clip:
        # A range narrower than the container (uint7, int8 [-127, 127]): clamp the codes
        # themselves, which keeps QuantizeLinear next to its producer for fusion.
        low = ed.shared(codes_tensor(f"{hint}_qmin", torch.tensor(int(fmt.qmin)), elem_type))
        high = ed.shared(codes_tensor(f"{hint}_qmax", torch.tensor(int(fmt.qmax)), elem_type))
        q_out = ed.node("Clip", [q_out, low, high], name=f"{hint}_ClipCodes").output[0]
    ed.node("DequantizeLinear", [q_out, scale_name, zp_name], [node.output[0]],
            name=f"{hint}_DequantizeLinear", axis=axis, block_size=p.block_size)
    cache[key] = node.output[0]
    lowered.acts[node.output[0]] = ActQDQ(scale, zp, fmt, elem_type, axis, p.block_size)


def lower_markers(ed: GraphEditor, marks: dict[int, Mark], *, opset: int = 21) -> Lowered:
    """Replace every ``lowbit`` marker in ``ed`` by standard operators.

    Args:
        ed: the traced graph.
        marks: what each marker key stands for (from `lowbit.export.trace.build_twin`).
        opset: the target opset (decides which element types exist).

    Returns:
        `Lowered`: the weight and activation DequantizeLinear outputs and their parameters.

    Raises:
        ExportError: a format or rounding mode ONNX cannot express.
    """
    lowered = Lowered()
    cache: dict = {}
    renames: dict[str, str] = {}
    markers = [n for n in ed.nodes if n.domain == MARKER_DOMAIN]
    consumers = ed.consumers()
    for node in markers:
        mark = marks[_attr(node, "key")]
        ed.remove(node)
        if mark.kind == "weight":
            _lower_weight(ed, node, mark, consumers, lowered, opset)
        elif mark.quantizer.spec.dynamic:
            key = ("dynamic", renames.get(node.input[0], node.input[0]), mark.quantizer.spec)
            if key in cache:  # Q, K and V projections of one input share its quantization
                renames[node.output[0]] = cache[key]
                continue
            lowered.dynamic[node.output[0]] = lower_dynamic(ed, node, mark, opset)
            cache[key] = node.output[0]
        else:
            _lower_static(ed, node, mark, cache, renames, lowered, opset)
    _rename_inputs(ed, renames)
    return lowered


def _rename_inputs(ed: GraphEditor, renames: dict[str, str]) -> None:
    """Point consumers of dropped duplicate DequantizeLinear outputs at the kept one."""
    if not renames:
        return
    for node in ed.nodes:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    outputs = ed.graph_outputs()
    for old, new in renames.items():
        if old in outputs:  # a graph output must keep its name: give it an Identity
            ed.node("Identity", [new], [old])


def int_range(elem_type: int) -> tuple[int, int] | None:
    """Integer range of an ONNX element type (None for float types)."""
    return INT_RANGES.get(elem_type)


"""Rewrites after lowering that let ONNX Runtime pick its integer kernels, without changing results.

- `quantize_biases`: a Conv / Gemm whose input and weight are int8 QDQ gets its
  bias as int32 codes with scale ``s_in · s_w`` (what ONNX Runtime's own
  quantizer writes, and what its QDQ fusion needs to turn a Gemm with a float
  output into QGemm). The bias moves by at most half of ``s_in · s_w``, far
  below one step of any following quantizer.
- `keep_matmul_bias_apart`: a Linear on 3-D input is MatMul → Add(bias); ONNX
  Runtime would fuse that pair into a float Gemm before its QDQ pass sees the
  MatMul, so the bias gets the output's rank ([1, 1, N]): same sums, and the
  MatMul becomes MatMulIntegerToFloat.
- `integer_dynamic_matmuls`: dynamically quantized (per-token) int8 codes
  feeding a Linear become MatMulInteger on int8 codes, then one float scale.
- `matmul_nbits`: weight-only int4 / int8 Linear layers as ONNX Runtime's
  com.microsoft MatMulNBits (optional: ONNX Runtime only).
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, numpy_helper

from lowbit.export.dynamic import DynamicCodes
from lowbit.export.graph import GraphEditor
from lowbit.export.pack import pack_codes
from lowbit.export.qdq import Lowered, WeightDQ
from lowbit.export.tensors import FLOAT8_TYPES, codes_tensor, scale_tensor, zero_point_tensor
from lowbit.formats.qformat import ONNX_TYPES
from lowbit.nn.integer import AccumulatorOverflowError, quantize_bias

INT8_TYPES = (ONNX_TYPES["int8"], ONNX_TYPES["uint8"])


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            if a.type == a.INT:
                return a.i
            if a.type == a.FLOAT:
                return a.f
            return list(a.ints)
    return default


def _plain_gemm(node) -> bool:
    """A Gemm that is ``A @ B' + C`` with alpha = beta = 1 and A not transposed."""
    plain_scales = _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
    return plain_scales and not _attr(node, "transA", 0)


def _weight_out_axis(node, weight: WeightDQ) -> int | None:
    """The weight axis that holds output channels for this consumer, or None."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return weight.codes.dim() - 1
    return None


def quantize_biases(ed: GraphEditor, lowered: Lowered) -> int:
    """Give int32 biases to Conv / Gemm nodes with int8 QDQ input and weight.

    Returns:
        How many biases were quantized.
    """
    count = 0
    for node in list(ed.nodes):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        act, weight = lowered.acts.get(node.input[0]), lowered.weights.get(node.input[1])
        bias = ed.array(node.input[2])
        if act is None or weight is None or bias is None or bias.ndim != 1:
            continue
        if act.elem_type not in INT8_TYPES or weight.elem_type not in INT8_TYPES or act.axis is not None:
            continue
        if weight.block_size is not None or _weight_out_axis(node, weight) != (weight.axis or 0):
            continue
        if node.op_type == "Gemm" and not _plain_gemm(node):
            continue
        bias_scale = (act.scale.float() * weight.scale.float()).reshape(-1)
        if bias_scale.numel() == 1:
            bias_scale = bias_scale.expand(bias.shape[0]).contiguous()
        try:  # the integer model's own bias codes, so the two stay equal
            codes = quantize_bias(torch.tensor(bias), 1.0, bias_scale, weight.layer).numpy()
        except AccumulatorOverflowError:
            continue  # the float bias stays; ONNX Runtime then runs this layer unfused
        q = ed.add_initializer(numpy_helper.from_array(codes, f"{weight.layer}_bias_q"))
        s = ed.add_initializer(scale_tensor(f"{weight.layer}_bias_scale", bias_scale))
        z = ed.constant("bias_zero_point", np.zeros(bias.shape[0], np.int32))
        dq = ed.node("DequantizeLinear", [q, s, z], name=f"{weight.layer}_bias_DequantizeLinear", axis=0)
        node.input[2] = dq.output[0]
        count += 1
    return count


def keep_matmul_bias_apart(ed: GraphEditor, lowered: Lowered, ranks: dict[str, int]) -> int:
    """Reshape the bias of MatMul → Add (quantized Linear on N-D input) to the output's rank."""
    count = 0
    producers = ed.producers()
    for node in list(ed.nodes):
        if node.op_type != "Add":
            continue
        for i, name in enumerate(node.input):
            bias = ed.array(name)
            other = producers.get(node.input[1 - i]) if len(node.input) == 2 else None
            if bias is None or bias.ndim != 1 or other is None or other.op_type != "MatMul":
                continue
            if other.input[1] not in lowered.weights or ranks.get(other.output[0], 0) < 3:
                continue
            shaped = bias.reshape([1] * (ranks[other.output[0]] - 1) + [-1])
            node.input[i] = ed.constant("bias", shaped)
            count += 1
    return count


def _mm_weight(node, weight: WeightDQ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Weight codes as [K, N] with per-column (or scalar) scale and zero point."""
    if weight.block_size is not None or weight.codes.dim() != 2 or weight.elem_type not in INT8_TYPES:
        return None
    codes, scale, zp, axis = weight.codes, weight.scale, weight.zero_point, weight.axis
    transposed = node.op_type == "Gemm" and _attr(node, "transB", 0)
    if axis is not None and axis != (0 if transposed else 1):
        return None
    if transposed:
        codes = codes.t().contiguous()
    return codes, scale, zp


def integer_dynamic_matmuls(ed: GraphEditor, lowered: Lowered) -> int:
    """Turn dynamically quantized int8 / uint8 inputs of Linear layers into MatMulInteger."""
    count = 0
    consumers = ed.consumers()
    for out, dyn in lowered.dynamic.items():
        if not isinstance(dyn, DynamicCodes) or dyn.onnx_native or not dyn.uint8:
            continue
        if not dyn.symmetric and dyn.per_token:
            continue  # a zero point per token: MatMulInteger takes one per tensor
        codes_int = None
        for node in consumers.get(out, []):
            if node.op_type not in ("MatMul", "Gemm") or node.input[0] != out:
                continue
            if node.op_type == "Gemm" and not _plain_gemm(node):
                continue
            weight = lowered.weights.get(node.input[1])
            parts = _mm_weight(node, weight) if weight is not None else None
            if parts is None:
                continue
            w_codes, w_scale, w_zp = parts
            # Signed codes travel as uint8 with zero point 128 (the same products): ONNX
            # Runtime's u8 x s8 kernels are its fast ones.
            codes_int = dyn.codes
            a_zp = ed.constant("a_zero_point", np.uint8(128)) if dyn.symmetric else dyn.zero_point
            b = ed.add_initializer(codes_tensor(f"{weight.layer}_weight_kn", w_codes, weight.elem_type))
            inputs = [codes_int, b, a_zp]
            if bool(w_zp.any()):
                inputs.append(ed.add_initializer(zero_point_tensor(f"{weight.layer}_weight_zp", w_zp,
                                                                   weight.elem_type)))
            acc = ed.node("MatMulInteger", inputs, name=f"{weight.layer}_MatMulInteger").output[0]
            acc_f = ed.node("Cast", [acc], to=TensorProto.FLOAT).output[0]
            w_scale_name = ed.add_initializer(scale_tensor(f"{weight.layer}_weight_scale_n", w_scale))
            result = node.output[0]
            has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
            target = None if has_bias else [result]
            if dyn.per_token:
                # Not Mul(acc, Mul(a_scale, b_scale)): ONNX Runtime would fuse that into
                # MatMulIntegerToFloat, which takes a_scale as one number per tensor.
                by_column = ed.node("Mul", [acc_f, w_scale_name]).output[0]
                scaled = ed.node("Mul", [by_column, dyn.scale], target).output[0]
            else:
                both = ed.node("Mul", [dyn.scale, w_scale_name]).output[0]
                scaled = ed.node("Mul", [acc_f, both], target).output[0]
            if has_bias:
                ed.node("Add", [scaled, node.input[2]], [result])
            ed.remove(node)
            count += 1
    return count


def _nbits_block(weight: WeightDQ, k: int) -> int | None:
    if weight.block_size is not None:
        b = weight.block_size
        return b if b >= 16 and b & (b - 1) == 0 else None
    for b in (128, 64, 32, 16):  # per-channel: any block size repeats the one scale
        if k % b == 0:
            return b
    return 32


def matmul_nbits(ed: GraphEditor, lowered: Lowered, accuracy_level: int = 0) -> int:
    """Write weight-only int4 / int8 Linear layers as com.microsoft MatMulNBits."""
    count = 0
    for node in list(ed.nodes):
        if node.op_type not in ("MatMul", "Gemm") or node.input[0] in lowered.acts:
            continue
        if node.input[0] in lowered.dynamic:
            continue
        weight = lowered.weights.get(node.input[1])
        if weight is None or weight.codes.dim() != 2 or weight.fmt.kind != "int" or weight.fmt.bits > 8:
            continue
        transposed = node.op_type == "Gemm" and _attr(node, "transB", 0)
        if node.op_type == "Gemm" and (not transposed or not _plain_gemm(node)):
            continue
        # MatMulNBits wants [N, K] codes with blocks along K.
        codes, scale, zp, axis = weight.codes, weight.scale, weight.zero_point, weight.axis
        if not transposed:
            codes = codes.t()
            axis = None if axis is None else 1 - axis
            if weight.block_size is not None:
                scale, zp = scale.t(), zp.t()
        if weight.block_size is not None and axis != 1:
            continue
        if weight.block_size is None and axis not in (None, 0):
            continue
        n, k = codes.shape
        block = _nbits_block(weight, k)
        if block is None:
            continue
        n_blocks = -(-k // block)
        if weight.block_size is None:
            scale = scale.reshape(-1, 1).expand(n, n_blocks) if scale.dim() else scale.expand(n, n_blocks)
            zp = zp.reshape(-1, 1).expand(n, n_blocks) if zp.dim() else zp.expand(n, n_blocks)
        bits = 4 if weight.fmt.bits <= 4 else 8
        offset = (1 << (bits - 1)) if weight.fmt.signed else 0
        zp_u = zp.to(torch.int32) + offset
        # Padding of a short last block holds the zero point: it dequantizes to 0.
        padded = zp_u.to(torch.uint8).reshape(n, n_blocks, 1).expand(n, n_blocks, block)
        padded = padded.reshape(n, -1).clone()
        padded[:, :k] = (codes.to(torch.int16) + offset).to(torch.uint8)  # 0..2**bits - 1
        if bits == 4:
            blob = pack_codes(padded, 4).reshape(n, n_blocks, block // 2)
            # One byte-aligned row per output channel (an odd block count pads a 0 nibble):
            # packed in one call, not row by row (the 49k-row lm_head of an LLM took minutes).
            zp_rows = torch.nn.functional.pad(zp_u.reshape(n, n_blocks), (0, n_blocks % 2))
            zp_packed = pack_codes(zp_rows, 4).reshape(n, -1)
        else:
            blob = padded.to(torch.uint8).reshape(n, n_blocks, block)
            zp_packed = zp_u.to(torch.uint8).reshape(n, n_blocks)
        hint = weight.layer.replace(".", "_")
        b_name = ed.add_initializer(numpy_helper.from_array(blob.numpy(), f"{hint}_nbits_B"))
        s_name = ed.add_initializer(scale_tensor(f"{hint}_nbits_scales", scale.reshape(-1).contiguous()))
        inputs = [node.input[0], b_name, s_name]
        if bool((zp_u != offset).any()) or not weight.fmt.signed:
            inputs.append(ed.add_initializer(numpy_helper.from_array(zp_packed.numpy(), f"{hint}_nbits_zp")))
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        out = [node.output[0]] if not has_bias else None
        mm = ed.node("MatMulNBits", inputs, out, name=f"{hint}_MatMulNBits", domain="com.microsoft",
                     K=k, N=n, bits=bits, block_size=block, accuracy_level=accuracy_level)
        if has_bias:
            ed.node("Add", [mm.output[0], node.input[2]], [node.output[0]])
        ed.remove(node)
        count += 1
    return count


def protect_float8_relus(ed: GraphEditor, lowered: Lowered) -> int:
    """Write a Relu that feeds a float8 QuantizeLinear as Max(x, 0).

    ONNX Runtime's ReluQuantFusion drops a Relu before QuantizeLinear whose zero
    point is 0, which is right for uint8 (0 is the lowest code) but not for the
    signed float8 formats: ``Max(x, 0)`` computes the same and is left alone.
    """
    float8 = {act.elem_type for act in lowered.acts.values()} & FLOAT8_TYPES
    if not float8:
        return 0
    consumers = ed.consumers()
    count = 0
    for node in list(ed.nodes):
        if node.op_type != "Relu":
            continue
        users = consumers.get(node.output[0], [])
        if not any(u.op_type == "QuantizeLinear" and _elem_type(ed, u) in FLOAT8_TYPES for u in users):
            continue
        ed.node("Max", [node.input[0], ed.constant("zero", np.float32(0.0))], [node.output[0]],
                name=f"{node.name}_as_Max")
        ed.remove(node)
        count += 1
    return count


def _elem_type(ed: GraphEditor, q_node) -> int | None:
    if len(q_node.input) < 3:
        return None
    tensor = ed.initializers.get(q_node.input[2])
    return tensor.data_type if tensor is not None else None


# Ops that commute with a per-tensor QuantizeLinear: Q(op(x)) == op(Q(x)) exactly.
COMMUTING_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")


def hoist_quantize(ed: GraphEditor) -> int:
    """Quantize before layout ops and max pooling too, so the producer fuses with a QuantizeLinear.

    ``conv → relu → maxpool → flatten → Q`` becomes ``conv → relu → Q → DQ → maxpool →
    Q → DQ → flatten → Q``: max pooling and reshapes commute with a monotone
    per-tensor quantization, and re-quantizing codes with their own parameters is
    the identity, so the values are unchanged. ONNX Runtime then runs the conv as
    QLinearConv and max pooling / reshapes on the 8-bit codes.

    Returns:
        How many QuantizeLinear nodes were added.
    """
    count = 0
    while True:
        producers, consumers = ed.producers(), ed.consumers()
        for q in [n for n in ed.nodes if n.op_type == "QuantizeLinear"]:
            op = producers.get(q.input[0])
            if op is None or op.op_type not in COMMUTING_OPS or len(op.output) != 1:
                continue
            if len(consumers.get(op.output[0], [])) != 1 or len(q.input) < 3:
                continue
            scale = ed.initializers.get(q.input[1])
            if scale is None or list(scale.dims) not in ([], [1]):
                continue
            before = producers.get(op.input[0])
            params = list(q.input[1:])
            if before is not None and before.op_type == "DequantizeLinear" \
                    and list(before.input[1:]) == params:
                continue
            new_q = ed.node("QuantizeLinear", [op.input[0], *params], name=f"{op.name}_in_Q")
            new_dq = ed.node("DequantizeLinear", [new_q.output[0], *params], name=f"{op.name}_in_DQ")
            op.input[0] = new_dq.output[0]
            count += 1
            break
        else:
            return count


def gather_before_dequantize(ed: GraphEditor, lowered: Lowered) -> int:
    """Look up embedding rows in the codes, then dequantize only the rows used.

    ``Gather(DequantizeLinear(table), ids)`` dequantizes the whole table on every
    run; ``Gather(codes, ids)`` then ``(codes - z) · s`` with the rows' own scale
    computes the same numbers (one float32 product per element, as
    DequantizeLinear does) for the looked-up rows only.
    """
    count = 0
    consumers = ed.consumers()
    for out, weight in lowered.weights.items():
        users = consumers.get(out, [])
        if len(users) != 1 or users[0].op_type != "Gather" or users[0].input[0] != out:
            continue
        gather = users[0]
        if _attr(gather, "axis", 0) != 0 or weight.block_size is not None:
            continue
        if weight.elem_type not in INT8_TYPES or weight.axis not in (None, 0):
            continue
        ids = gather.input[1]
        rows = ed.node("Gather", [weight.codes_name, ids], axis=0).output[0]
        if weight.axis is None:
            ed.node("DequantizeLinear", [rows, ed.add_initializer(scale_tensor("emb_scale", weight.scale)),
                                         ed.add_initializer(zero_point_tensor("emb_zp", weight.zero_point,
                                                                              weight.elem_type))],
                    [gather.output[0]])
        else:
            value = ed.node("Cast", [rows], to=TensorProto.FLOAT).output[0]
            if bool(weight.zero_point.any()):
                zp = ed.add_initializer(numpy_helper.from_array(
                    weight.zero_point.to(torch.float32).reshape(-1, 1).numpy(), "emb_zero_point"))
                value = ed.node("Sub", [value, ed.node("Gather", [zp, ids], axis=0).output[0]]).output[0]
            scales = ed.add_initializer(numpy_helper.from_array(
                weight.scale.to(torch.float32).reshape(-1, 1).numpy(), "emb_row_scale"))
            ed.node("Mul", [value, ed.node("Gather", [scales, ids], axis=0).output[0]], [gather.output[0]])
        ed.remove(gather)
        count += 1
    return count

"""One-node ONNX models to check lowbit against the operator definitions.

ONNX Runtime's Python API cannot hand back int4 / float8 tensors, so every
QuantizeLinear model here appends a DequantizeLinear with scale 1 and zero
point 0: its float output is the code itself, exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 21


def _model(nodes, inputs, outputs, initializers, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset < 25 else 12
    return model


def _typed_tensor(name: str, values: np.ndarray, elem_type: int) -> onnx.TensorProto:
    flat = np.asarray(values).reshape(-1).tolist()
    return helper.make_tensor(name, elem_type, list(np.shape(values)), flat)


def quantize_model(
    x_shape, scale: np.ndarray, zero_point: np.ndarray | None, elem_type: int,
    axis: int | None = None, block_size: int | None = None, saturate: int | None = None,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear(1, 0) -> codes as float."""
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size is not None:
        attrs["block_size"] = block_size
    if saturate is not None:
        attrs["saturate"] = saturate
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s")]
    q_inputs = ["x", "s"]
    if zero_point is not None:
        inits.append(_typed_tensor("z", zero_point, elem_type))
        q_inputs.append("z")
    else:
        inits.append(_typed_tensor("z", np.zeros(np.shape(scale), np.float32), elem_type))
        q_inputs.append("z")
    inits += [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        _typed_tensor("zero", np.zeros((), np.float32), elem_type),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", q_inputs, ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "one", "zero"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
        opset,
    )


def dequantize_model(
    q_shape, scale: np.ndarray, zero_point: np.ndarray | None, elem_type: int,
    axis: int | None = None, block_size: int | None = None, opset: int = OPSET,
) -> onnx.ModelProto:
    """codes (fed as float, cast to the element type) -> DequantizeLinear."""
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size is not None:
        attrs["block_size"] = block_size
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s")]
    dq_inputs = ["c", "s"]
    if zero_point is not None:
        inits.append(_typed_tensor("z", zero_point, elem_type))
        dq_inputs.append("z")
    nodes = [
        helper.make_node("Cast", ["x"], ["c"], to=elem_type),
        helper.make_node("DequantizeLinear", dq_inputs, ["y"], **attrs),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(q_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
        opset,
    )


def dynamic_quantize_model(x_shape) -> onnx.ModelProto:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    return _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [
            helper.make_tensor_value_info("y", TensorProto.UINT8, None),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.UINT8, None),
        ],
        [],
    )


def run_ort(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def run_reference(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    return ReferenceEvaluator(model).run(None, feeds)

"""One-node ONNX Runtime models of the integer kernels: QLinearConv and QLinearMatMul.

Each takes integer codes, scales and zero points exactly as lowbit's integer
layers hold them, so their outputs can be compared element for element.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
ONNX_INT = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8}


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _run(nodes, x: np.ndarray, inits, output_type: int) -> np.ndarray:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", ONNX_INT[x.dtype], list(x.shape))],
        [helper.make_tensor_value_info("y", output_type, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def qlinear_conv(x: np.ndarray, x_scale: float, x_zp: int, w: np.ndarray, w_scale: np.ndarray,
                 y_scale: float, y_zp: int, y_dtype, bias: np.ndarray | None = None, *,
                 pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), group: int = 1) -> np.ndarray:
    """ONNX QLinearConv (2-D) with per-output-channel weight scales and zero weight zero points.

    ``pads`` is ONNX order: (top, left, bottom, right).
    """
    inits = [
        _init("xs", np.float32(x_scale)), _init("xz", np.array(x_zp, x.dtype)),
        _init("w", w), _init("ws", w_scale.astype(np.float32)),
        _init("wz", np.zeros(w.shape[0], w.dtype)),
        _init("ys", np.float32(y_scale)), _init("yz", np.array(y_zp, y_dtype)),
    ]
    inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias is not None:
        inits.append(_init("b", bias.astype(np.int32)))
        inputs.append("b")
    node = helper.make_node("QLinearConv", inputs, ["y"], pads=list(pads), strides=list(strides),
                            dilations=list(dilations), group=group,
                            kernel_shape=list(w.shape[2:]))
    return _run([node], x, inits, ONNX_INT[np.dtype(y_dtype)])


def qlinear_matmul(x: np.ndarray, x_scale: float, x_zp: int, w_t: np.ndarray, w_scale: np.ndarray,
                   y_scale: float, y_zp: int, y_dtype) -> np.ndarray:
    """ONNX QLinearMatMul ``x @ w_t`` with per-column scales of ``w_t`` (K, N)."""
    inits = [
        _init("xs", np.float32(x_scale)), _init("xz", np.array(x_zp, x.dtype)),
        _init("w", w_t), _init("ws", w_scale.astype(np.float32)),
        _init("wz", np.zeros(w_t.shape[1], w_t.dtype)),
        _init("ys", np.float32(y_scale)), _init("yz", np.array(y_zp, y_dtype)),
    ]
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    return _run([node], x, inits, ONNX_INT[np.dtype(y_dtype)])

"""One-node ONNX Runtime models of the integer kernels: QLinearConv, QLinearMatMul, QLinearAdd.

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


def _run(nodes, x: np.ndarray | dict[str, np.ndarray], inits, output_type: int) -> np.ndarray:
    feeds = x if isinstance(x, dict) else {"x": x}
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, ONNX_INT[v.dtype], list(v.shape)) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", output_type, None)],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


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


def qlinear_add(a: np.ndarray, a_scale: float, a_zp: int, b: np.ndarray, b_scale: float, b_zp: int,
                c_scale: float, c_zp: int) -> np.ndarray:
    """ONNX Runtime's QLinearAdd (com.microsoft) of two same-shaped code tensors of one dtype."""
    dtype = a.dtype
    inits = [
        _init("as", np.float32(a_scale)), _init("az", np.array(a_zp, dtype)),
        _init("bs", np.float32(b_scale)), _init("bz", np.array(b_zp, dtype)),
        _init("cs", np.float32(c_scale)), _init("cz", np.array(c_zp, dtype)),
    ]
    node = helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["y"],
                            domain="com.microsoft")
    return _run([node], {"a": a, "b": b}, inits, ONNX_INT[dtype])

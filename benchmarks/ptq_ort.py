"""ONNX Runtime peers: export to ONNX, `quantize_static` (QDQ) with each calibrator, run.

Everything the benchmark needs from ONNX Runtime's own tool chain, used as its
documentation shows: `quant_pre_process` (shape inference and graph
optimisation, recommended before quantization), then `quantize_static` with a
`CalibrationDataReader`, QDQ format, per-channel int8 weights and int8
activations (S8S8, ORT's recommended default), once per calibration method.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

METHODS = ("MinMax", "Entropy", "Percentile")


def export_onnx(model: torch.nn.Module, args: tuple, path: Path, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]]) -> Path:
    """torch.onnx.export with the TorchScript exporter (``dynamo=False``).

    torch 2.13's default exporter (``dynamo=True``) needs the ``onnxscript``
    package, which is not installed here; the TorchScript exporter works offline.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a copy: tracing a transformers model for export can leave it computing something else
        torch.onnx.export(copy.deepcopy(model), args, str(path), dynamo=False, opset_version=17,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes)
    return path


def preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    """`quant_pre_process` (ORT's recommended step before quantization).

    Its symbolic shape inference gives up on some transformer exports ("Incomplete
    symbolic shape inference"); then it is run again with ``skip_symbolic_shape=True``
    (ONNX shape inference and the graph optimisation still run), and as a last
    resort the raw export is used.
    """
    from onnxruntime.quantization import quant_pre_process

    for kwargs, note in (({}, "quant_pre_process"),
                         ({"skip_symbolic_shape": True},
                          "quant_pre_process(skip_symbolic_shape=True)")):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                quant_pre_process(str(src), str(dst), **kwargs)
            return dst, note
        except Exception:
            continue
    return src, "quant_pre_process failed; raw export used"


class Reader:
    """A `CalibrationDataReader` over a list of feed dicts (numpy arrays)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0


def make_reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(Reader, CalibrationDataReader):
        pass

    return _Reader(feeds)


def quantize_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], method: str, *,
                    nodes_to_quantize: list[str] | None = None,
                    op_types: list[str] | None = None,
                    nodes_to_exclude: list[str] | None = None) -> Path:
    """ORT `quantize_static`: QDQ, per-channel int8 weights, int8 activations, ``method`` calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static

    # ORT's calibrators print their progress with print(); keep the benchmark's log readable.
    logging.disable(logging.WARNING)  # "Axis 1 is out-of-range for weight ...LayerNorm.weight"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            _quantize_static(
                str(src), str(dst), make_reader(feeds), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_quantize=nodes_to_quantize, op_types_to_quantize=op_types,
                nodes_to_exclude=nodes_to_exclude,
            )
    finally:
        logging.disable(logging.NOTSET)
    return dst


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(sess, feeds: Iterable[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [sess.run(None, feed)[0] for feed in feeds]


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMul / Gemm nodes whose second input is a weight (an initializer).

    These are exactly the nn.Linear layers of the exported model, the layers lowbit
    quantizes when a model does not trace with torch.fx.
    """
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits]


def softmax_inputs(path: Path) -> list[str]:
    """The Softmax nodes and the nodes that produce their inputs (BERT: the attention-mask Add).

    Excluding these from ``quantize_static`` keeps the masked attention scores float:
    with an additive mask (-10000 on padding) in a calibrated range, one per-tensor
    int8 scale spans ~10^4 and rounds every real attention score to the same code.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {o: n.name for n in graph.node for o in n.output}
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    return [n.name for n in softmax] + [producer[n.input[0]] for n in softmax
                                        if n.input[0] in producer]


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantized_op_summary(path: Path) -> str:
    """Which ops a QDQ model quantized: the consumers of DequantizeLinear outputs, by type."""
    import onnx

    graph = onnx.load(str(path)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kinds: dict[str, int] = {}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in n.input):
            kinds[n.op_type] = kinds.get(n.op_type, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


def file_size(path: Path) -> int:
    return Path(path).stat().st_size


def to_numpy_feed(batch: dict[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in batch.items()
            if k in names}

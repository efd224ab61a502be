"""Running exported models in ONNX Runtime: sessions, inputs, and the optimized graph.

`session` builds an ``onnxruntime.InferenceSession`` with the settings that
matter for speed (threads, graph optimization level); `run` feeds torch
tensors or numpy arrays; `optimized_ops` says which kernels ONNX Runtime
actually chose — the way to check that a quantized model runs integer kernels
(QLinearConv, QGemm, MatMulIntegerToFloat, ...) instead of float ones.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.runtime.errors import RuntimeLayerError

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def _ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise RuntimeLayerError(
            "lowbit.runtime needs ONNX Runtime; install it with: pip install onnxruntime") from err
    return onnxruntime


def session_options(*, threads: int | None = None, optimization: str = "all",
                    optimized_model_path: str | Path | None = None,
                    disabled_optimizers: Sequence[str] = (),
                    nbits_accuracy_level: int | None = 0) -> Any:
    """``onnxruntime.SessionOptions`` for CPU inference.

    Args:
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        optimization: graph optimization level: ``"disable"``, ``"basic"``,
            ``"extended"`` or ``"all"`` (the default, which fuses QDQ into integer kernels).
        optimized_model_path: where ONNX Runtime writes the graph it actually runs.
        disabled_optimizers: names of ONNX Runtime graph transformers to skip.
        nbits_accuracy_level: ONNX Runtime fuses int4 / int8 weight-only DequantizeLinear →
            MatMul into MatMulNBits; at its own default accuracy level (4) that kernel
            quantizes the activations to int8 on the fly (faster, approximate). The
            default here, 0, keeps float32 activations: exactly what a lowbit
            weight-only model simulates. None leaves ONNX Runtime's default.

    Returns:
        The options object.

    Example:
        >>> session_options(threads=2).intra_op_num_threads
        2
    """
    ort = _ort()
    if optimization not in OPTIMIZATION_LEVELS:
        raise RuntimeLayerError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {optimization!r}")
    options = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise RuntimeLayerError(f"threads must be a positive integer, got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    options.log_severity_level = 3  # errors only: ORT's warnings are about its own graph rewrites
    if nbits_accuracy_level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level",
                                         str(int(nbits_accuracy_level)))
    if disabled_optimizers:
        options.add_session_config_entry("optimization.disable_specified_optimizers",
                                         ",".join(disabled_optimizers))
    return options


def session(model: str | Path | bytes, *, threads: int | None = None, optimization: str = "all",
            optimized_model_path: str | Path | None = None,
            providers: Sequence[str] = ("CPUExecutionProvider",),
            nbits_accuracy_level: int | None = 0) -> Any:
    """An ONNX Runtime session for an exported model.

    Args:
        model: path of an ``.onnx`` file, or its bytes.
        threads, optimization, optimized_model_path, nbits_accuracy_level: see `session_options`.
        providers: execution providers, in order of preference.

    Returns:
        ``onnxruntime.InferenceSession``.

    Raises:
        RuntimeLayerError: ONNX Runtime is missing or cannot load the model.

    Example:
        >>> sess = session("model.int8.onnx", threads=2)   # doctest: +SKIP
        >>> logits = run(sess, images)[0]                  # doctest: +SKIP
    """
    ort = _ort()
    options = session_options(threads=threads, optimization=optimization,
                              optimized_model_path=optimized_model_path,
                              nbits_accuracy_level=nbits_accuracy_level)
    source = str(model) if isinstance(model, (str, Path)) else model
    if isinstance(model, (str, Path)) and not Path(model).is_file():
        raise RuntimeLayerError(f"no ONNX model at {model}; export one with lowbit.export.onnx")
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types
        what = model if isinstance(model, (str, Path)) else "the model"
        raise RuntimeLayerError(f"ONNX Runtime cannot load {what}: "
                                f"{str(err).strip().splitlines()[0][:300]}") from err


def feeds(sess: Any, inputs: Any) -> dict[str, np.ndarray]:
    """Map ``inputs`` (a tensor/array, a sequence of them, or a dict by name) to the session's inputs.

    Raises:
        RuntimeLayerError: the number or names of the inputs do not match.
    """
    names = [i.name for i in sess.get_inputs()]
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise RuntimeLayerError(f"the model has no inputs named {unknown}; its inputs are {names}")
        items = dict(inputs)
    else:
        values = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(values) != len(names):
            raise RuntimeLayerError(f"the model takes {len(names)} inputs ({names}), got {len(values)}")
        items = dict(zip(names, values, strict=True))
    return {name: _to_numpy(value) for name, value in items.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def run(sess: Any, inputs: Any) -> list[np.ndarray]:
    """Run ``sess`` on ``inputs`` (torch tensors or numpy arrays) and return its outputs.

    Example:
        >>> outputs = run(session("m.onnx"), torch.zeros(1, 3, 224, 224))  # doctest: +SKIP
    """
    try:
        return sess.run(None, feeds(sess, inputs))
    except RuntimeLayerError:
        raise
    except Exception as err:  # ORT's InvalidArgument and friends
        raise RuntimeLayerError(f"ONNX Runtime could not run the model: "
                                f"{str(err).strip().splitlines()[0][:300]}") from err


def optimized_graph(model: str | Path, *, threads: int | None = 1, optimization: str = "all"):
    """The graph ONNX Runtime actually runs after its optimizations (an ``onnx.ModelProto``).

    Example:
        >>> ops = [n.op_type for n in optimized_graph("model.int8.onnx").graph.node]  # doctest: +SKIP
    """
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "optimized.onnx")
        session(model, threads=threads, optimization=optimization, optimized_model_path=target)
        return onnx.load(target)


def optimized_ops(model: str | Path, *, threads: int | None = 1) -> collections.Counter:
    """How many nodes of each operator type ONNX Runtime's optimized graph has.

    Returns:
        ``Counter`` of op types, e.g. ``{"QLinearConv": 20, "QGemm": 1, ...}``.

    Example:
        >>> optimized_ops("model.int8.onnx")["QLinearConv"]  # doctest: +SKIP
        20
    """
    return collections.Counter(node.op_type for node in optimized_graph(model, threads=threads).graph.node)

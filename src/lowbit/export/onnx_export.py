"""`lowbit.export.onnx`: a quantized model as a standard ONNX QDQ model.

How it works (see `trace`, `qdq`, `dynamic`, `rewrite`):

1. the quantized model is traced with torch's ONNX exporter, each quantizer
   and each low-bit weight replaced by a marker node — so the data flow is the
   traced one, never guessed from names;
2. every marker becomes standard operators: QuantizeLinear → DequantizeLinear
   with the quantizer's frozen parameters, DequantizeLinear of the packed
   weight codes (per-channel axis, int4 / uint4, blocked), DynamicQuantizeLinear
   or its exact expansion for dynamic quantizers;
3. small exact rewrites let ONNX Runtime use its integer kernels (QLinearConv,
   QGemm, QLinearMatMul, MatMulIntegerToFloat, DynamicQuantizeMatMul,
   MatMulNBits); check with `lowbit.runtime.optimized_ops`.

The model is opset 21 (QDQ with int4 and blocked quantization) or higher, and
runs in ONNX Runtime and TensorRT (which loads explicit QDQ).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.export.errors import ExportError
from lowbit.export.trace import MARKER_DOMAIN, default_input_names, trace

MIN_OPSET = 21
MS_DOMAIN = "com.microsoft"


def _output_names(qmodel: nn.Module, example_inputs: Any) -> list[str]:
    from torch.utils._pytree import tree_leaves

    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                out = qmodel(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                out = qmodel(*example_inputs)
            else:
                out = qmodel(example_inputs)
    except Exception as err:  # the user's model raised: say so before tracing
        raise ExportError(f"the model does not run on example_inputs ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from err
    if hasattr(out, "to_tuple"):  # transformers ModelOutput
        out = out.to_tuple()
    leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    return ["output"] if len(leaves) == 1 else [f"output_{i}" for i in range(len(leaves))]


def _set_opsets(model, opset: int) -> None:
    from onnx import helper

    domains = {node.domain for node in model.graph.node}
    if MARKER_DOMAIN in domains:
        raise ExportError("internal: a lowbit marker survived lowering; please report this model")
    imports = [helper.make_opsetid("", opset)]
    if MS_DOMAIN in domains:
        imports.append(helper.make_opsetid(MS_DOMAIN, 1))
    del model.opset_import[:]
    model.opset_import.extend(imports)
    model.ir_version = helper.find_min_ir_version_for(imports, ignore_unknown=True)


def _ranks(model) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a hint here, never a requirement
        return {}
    ranks = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
    return ranks


def _metadata(qmodel: nn.Module) -> dict[str, str]:
    from lowbit import __version__

    state = getattr(qmodel, "lowbit_state", None)
    data = {"lowbit_version": __version__}
    if state is not None:
        data["lowbit_recipe"] = json.dumps(state.recipe.to_dict())
    return data


def onnx(
    qmodel: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int = MIN_OPSET,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    dynamic_batch: bool = True,
    matmul_nbits_layers: bool = False,
    nbits_accuracy_level: int = 0,
) -> Path:
    """Write a quantized model as an ONNX QDQ model that ONNX Runtime and TensorRT run.

    Args:
        qmodel: a model quantized by lowbit (`lowbit.quantize`, or prepare →
            calibrate → convert; QAT models after `lowbit.convert`).
        example_inputs: a tensor, a tuple of positional tensors, or a dict of
            keyword tensors (e.g. ``{"input_ids": ..., "attention_mask": ...}``).
        path: the ``.onnx`` file to write.
        opset: ONNX opset, at least 21 (QuantizeLinear with int4 and blocks).
        input_names, output_names: graph input / output names (default:
            ``input`` / ``output`` or the keyword names, numbered when several).
        dynamic_axes: as for ``torch.onnx.export``; overrides ``dynamic_batch``.
        dynamic_batch: make dimension 0 of every input and output dynamic.
        matmul_nbits_layers: write weight-only int4 / int8 Linear layers as ONNX
            Runtime's com.microsoft ``MatMulNBits`` (ONNX Runtime only; it also
            fuses plain blocked int4 DequantizeLinear → MatMul by itself).
        nbits_accuracy_level: MatMulNBits ``accuracy_level``: 0 computes in float32
            (matches lowbit), 4 quantizes the input to int8 on the fly (faster, approximate).

    Returns:
        The path written.

    Raises:
        ExportError: the model is not calibrated, does not trace, or uses a
            format / rounding ONNX cannot express exactly.

    Example:
        >>> qmodel = lowbit.quantize(model, "x86", calibrate=batches)   # doctest: +SKIP
        >>> lowbit.export.onnx(qmodel, batches[0], "model.int8.onnx")    # doctest: +SKIP
    """
    import onnx as onnx_lib

    # onnx is an optional dependency: the graph passes import it, so import them here.
    from lowbit.export.graph import GraphEditor
    from lowbit.export.qdq import lower_markers
    from lowbit.export.rewrite import (
        gather_before_dequantize,
        hoist_quantize,
        integer_dynamic_matmuls,
        keep_matmul_bias_apart,
        matmul_nbits,
        protect_float8_relus,
        quantize_biases,
    )

    if opset < MIN_OPSET:
        raise ExportError(f"QDQ export needs opset {MIN_OPSET} or newer (int4, blocked "
                          f"quantization); got opset={opset}")
    if not isinstance(qmodel, nn.Module):
        raise ExportError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    qmodel = qmodel.eval()
    if input_names is None:
        input_names = default_input_names(example_inputs)  # also checks example_inputs
    if output_names is None:
        output_names = _output_names(qmodel, example_inputs)
    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    traced = trace(qmodel, example_inputs, input_names=input_names, output_names=output_names,
                   dynamic_axes=dynamic_axes)
    ed = GraphEditor(traced.model)
    lowered = lower_markers(ed, traced.marks, opset=opset)
    quantize_biases(ed, lowered)
    hoist_quantize(ed)
    gather_before_dequantize(ed, lowered)
    protect_float8_relus(ed, lowered)
    integer_dynamic_matmuls(ed, lowered)
    if matmul_nbits_layers:
        matmul_nbits(ed, lowered, nbits_accuracy_level)
    model = ed.finish()
    _set_opsets(model, opset)
    ed = GraphEditor(model)
    keep_matmul_bias_apart(ed, lowered, _ranks(model))
    model = ed.finish()
    model.producer_name = "lowbit"
    for key, value in _metadata(qmodel).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx_lib.checker.check_model(model)
    except onnx_lib.checker.ValidationError as err:
        raise ExportError(f"internal: the exported model does not pass the ONNX checker ({err}); "
                          "please report this model") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_lib.save(model, str(path))
    return path

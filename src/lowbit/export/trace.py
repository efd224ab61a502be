"""Tracing a quantized model to ONNX, with a marker node wherever lowbit quantizes.

The simulated model is copied and each place that quantizes is wrapped in a
`torch.autograd.Function` whose forward is the simulation itself (so shapes
and values flow exactly as in lowbit) and whose ONNX symbolic is a one-input
node of the ``lowbit`` domain carrying an integer key:

- ``lowbit::Act``: an activation quantizer (static or dynamic) — becomes
  QuantizeLinear → DequantizeLinear (or DynamicQuantizeLinear) in `qdq`;
- ``lowbit::Weight``: a layer's weight — becomes DequantizeLinear of the
  low-bit codes (int8 / int4 / blocked ...), never a float copy;
- FP16 / BF16 layers kept in float (`FloatKept`) get Cast → Cast directly.

The data flow (which tensor a quantizer sees, where a Linear becomes Gemm or
MatMul) is thus the traced one, not a guess from names; `qdq` then swaps each
marker for the exact operators, knowing the `Quantizer` behind each key.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.export.errors import ExportError
from lowbit.flows.fuse import set_submodule
from lowbit.nn.float_cast import FloatKept
from lowbit.nn.modules import QuantMixin
from lowbit.nn.quantizer import Quantizer

MARKER_DOMAIN = "lowbit"
# torch's TorchScript exporter writes opset 20 at most; qdq raises the model to 21+
# (the operators torch emits did not change meaning between 20 and 21).
TORCH_OPSET = 20
# ONNX element types of FloatKept casts.
_CAST_TYPES = {"fp16": 10, "bf16": 16}


@dataclass
class Mark:
    """What one marker stands for.

    Attributes:
        key: the integer in the marker's ``key`` attribute.
        kind: ``"act"`` (activation quantizer) or ``"weight"``.
        name: the quantizer's or layer's name, for messages.
        quantizer: the activation quantizer (``"act"``) or the weight quantizer.
        module: the quantized layer (``"weight"``).
        shape: the shape the activation had when traced.
    """

    key: int
    kind: str
    name: str
    quantizer: Quantizer
    module: nn.Module | None = None
    shape: tuple[int, ...] | None = None  # the traced tensor's shape (activations)


@dataclass
class Traced:
    """The traced ONNX model with markers, and what each marker means."""

    model: Any  # onnx.ModelProto
    marks: dict[int, Mark] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)


def _untraced(fn, x: Tensor) -> Tensor:
    """Run the simulation with the TorchScript tracer paused: the marker is one node,
    and nested autograd Functions (fake quantization) never reach the tracer."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        return fn(x)
    finally:
        torch._C._set_tracing_state(state)


class _Mark(torch.autograd.Function):
    """Identity-shaped marker: computes ``owner.simulate(x)``, exports ``lowbit::<op>(x)``."""

    @staticmethod
    def forward(ctx, x: Tensor, owner: Any) -> Tensor:
        return _untraced(owner.simulate, x)

    @staticmethod
    def symbolic(g, x, owner):
        out = g.op(f"{MARKER_DOMAIN}::{owner.op}", x, key_i=owner.key)
        out.setType(x.type())
        return out


class _CastBack(torch.autograd.Function):
    """Round to FP16 / BF16 and back (FloatKept), exported as two Casts."""

    @staticmethod
    def forward(ctx, x: Tensor, owner: Any) -> Tensor:
        return _untraced(owner.simulate, x)

    @staticmethod
    def symbolic(g, x, owner):
        low = g.op("Cast", x, to_i=_CAST_TYPES[owner.keep])
        out = g.op("Cast", low, to_i=1)
        out.setType(x.type())
        return out


class ActMarker(nn.Module):
    """Stands in for an activation `Quantizer` during tracing."""

    op = "Act"

    def __init__(self, quantizer: Quantizer, mark: Mark) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.key = mark.key
        self.mark = mark

    @property
    def mode(self) -> str:  # QuantCat asks its quantizer's mode
        return "quantize"

    @property
    def spec(self):  # layers print their quantizers' specs
        return self.quantizer.spec

    def simulate(self, x: Tensor) -> Tensor:
        self.mark.shape = tuple(x.shape)
        return self.quantizer(x)

    def forward(self, x: Tensor) -> Tensor:
        return _Mark.apply(x, self)


class _WeightOwner:
    """Marker owner of one layer's weight: simulates the layer's effective weight."""

    op = "Weight"

    def __init__(self, module: nn.Module, key: int) -> None:
        self.module = module
        self.key = key
        self.original = type(module).effective_weight.__get__(module)

    def simulate(self, w: Tensor) -> Tensor:
        return self.original()

    def __call__(self) -> Tensor:
        return _Mark.apply(self.module.weight, self)


class _KeptTwin(nn.Module):
    """A `FloatKept` layer whose input rounding exports as Cast → Cast."""

    def __init__(self, kept: FloatKept) -> None:
        super().__init__()
        self.module = kept.module
        self.keep = kept.keep
        self.kept = kept

    def simulate(self, x: Tensor) -> Tensor:
        from lowbit.nn.float_cast import _cast

        return _cast(x, self.kept.fmt)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if x.is_floating_point():
            x = _CastBack.apply(x, self)
        return self.module(x, *args, **kwargs)


def _replace_child(parent: nn.Module, child: nn.Module, new: nn.Module) -> None:
    for attr, value in parent._modules.items():
        if value is child:
            parent._modules[attr] = new
            return
    raise ExportError(f"internal: quantizer not found among the children of {type(parent).__name__}")


def build_twin(qmodel: nn.Module) -> tuple[nn.Module, dict[int, Mark]]:
    """Copy ``qmodel`` and put markers where it quantizes.

    Args:
        qmodel: a prepared and calibrated (usually converted) lowbit model.

    Returns:
        ``(twin, marks)``: the traceable copy and the meaning of each marker key.

    Raises:
        ExportError: a quantizer is still observing (the model was not calibrated).
    """
    twin = copy.deepcopy(qmodel).eval()
    marks: dict[int, Mark] = {}
    kept = [(name, m) for name, m in twin.named_modules() if isinstance(m, FloatKept)]
    for name, module in kept:
        set_submodule(twin, name, _KeptTwin(module))
    for name, module in list(twin.named_modules()):
        quantizers = getattr(module, "quantizers", None)
        if not callable(quantizers) or isinstance(module, (FloatKept, _KeptTwin)):
            continue
        for role, quantizer in quantizers().items():
            label = f"{name or 'model'}:{role}"
            if role == "weight" and isinstance(module, QuantMixin):
                continue
            if quantizer.mode == "observe":
                raise ExportError(
                    f"quantizer {label} is still observing: the model was prepared but not "
                    "calibrated. Run lowbit.calibrate (or lowbit.quantize) before exporting")
            if quantizer.mode == "off":
                _replace_child(module, quantizer, nn.Identity())
                continue
            key = len(marks)
            marks[key] = Mark(key, "act", label, quantizer)
            _replace_child(module, quantizer, ActMarker(quantizer, marks[key]))
        if isinstance(module, QuantMixin) and module.weight_quantizer is not None:
            wq = module.weight_quantizer
            if not bool(module.converted) and wq.mode != "quantize":
                continue  # weight left float (quantizer off): export the float weight
            key = len(marks)
            marks[key] = Mark(key, "weight", name or "model", wq, module)
            module.effective_weight = _WeightOwner(module, key)
    return twin, marks


class _KeywordCall(nn.Module):
    """Calls ``model(**dict(zip(names, inputs)))``: keyword models traced with positional inputs,
    and model outputs with ``to_tuple`` (transformers) flattened."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: Tensor):
        out = self.model(**dict(zip(self.names, inputs, strict=True)))
        return out.to_tuple() if hasattr(out, "to_tuple") else out


def _as_args(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ExportError(
        f"example_inputs must be a tensor, a tuple of tensors or a dict of keyword tensors, "
        f"got {type(example_inputs).__name__}")


def default_input_names(example_inputs: Any) -> list[str]:
    """``input`` (one tensor), ``input_0, input_1, ...`` (a tuple) or the keyword names (a dict)."""
    args, kwargs = _as_args(example_inputs)
    if kwargs:
        return list(kwargs)
    return ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]


def trace(
    qmodel: nn.Module,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Traced:
    """Trace ``qmodel`` with torch's TorchScript ONNX exporter, markers included.

    Args:
        qmodel: the quantized model.
        example_inputs: a tensor, a tuple of positional tensors or a dict of keyword tensors.
        input_names, output_names: ONNX graph input / output names.
        dynamic_axes: as for ``torch.onnx.export``.

    Returns:
        The `Traced` model (opset 20, with ``lowbit`` marker nodes).

    Raises:
        ExportError: the model does not trace.
    """
    import onnx

    twin, marks = build_twin(qmodel)
    args, kwargs = _as_args(example_inputs)
    if kwargs:
        twin, args, kwargs = _KeywordCall(twin, list(kwargs)), tuple(kwargs.values()), {}
    if input_names is None:
        input_names = default_input_names(example_inputs)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                twin, args, buffer, dynamo=False,
                opset_version=TORCH_OPSET, input_names=list(input_names),
                output_names=list(output_names) if output_names else None,
                dynamic_axes=dynamic_axes, custom_opsets={MARKER_DOMAIN: 1},
                do_constant_folding=True,
            )
    except Exception as err:  # torch raises many types; all mean "does not trace"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"torch.onnx could not trace the model ({type(err).__name__}: {first[:300]}). "
            "Check that the model runs on example_inputs and has no data-dependent Python "
            "control flow on the traced path") from err
    model = onnx.load_from_string(buffer.getvalue())
    return Traced(model, marks, list(input_names))

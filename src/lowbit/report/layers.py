"""`layer_table`: one row per layer saying how it was quantized and how much error it carries.

For every layer that ``lowbit.quantize`` touched (``qmodel.lowbit_state``) a
`LayerRow` holds the weight and activation formats, the chosen activation
range, and three SQNRs that together say *where* error enters:

- weight SQNR: the layer's weight against its quantized weight (the layer's own damage);
- input SQNR: the layer's input in the quantized model against the float
  model (the error that arrives from earlier layers);
- output SQNR: the same for the layer's output (all error up to and including
  this layer). A big drop from input to output points at this layer.

Layers lowbit did not quantize appear as status rows (kept in FP16 / BF16,
excluded by the recipe, unsupported module types, quantizers switched off)
with the reason; where a module of the same name exists in both models its
input / output SQNR are measured too (error flowing through a LayerNorm is
still error).

Which float weight: after ``convert`` the quantized layer holds only codes,
so its float weight comes from ``float_model``. When BatchNorm was fused into
the layer (``lowbit_state.fused``), the float model's conv weight is not what
was quantized; the reference is then the float weight with that BN folded in
(by `lowbit.flows.fuse.fold_bn_into`, the same arithmetic ``quantize`` used),
and the layer's float output is taken after the BN. A model that was not
converted (QAT, or ``prepare`` + ``calibrate``) still holds its float weight,
which is compared with its fake-quantized weight and needs no float model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.flows.fuse import fold_bn_into
from lowbit.flows.prepare import quantizer_modules
from lowbit.nn.float_cast import FloatKept
from lowbit.nn.modules import QuantMixin
from lowbit.nn.quantizer import Quantizer
from lowbit.report.errors import ReportError
from lowbit.report.metrics import flatten_outputs, sqnr_from_sums
from lowbit.report.running import call_model, check_pair, evaluating, take_batches

STATUSES = ("quantized", "disabled", "functional", "kept", "excluded", "unsupported")
ACTIVATION_ROLES = ("input", "a", "shared", "output")


@dataclass
class LayerRow:
    """One layer of the per-layer table.

    Attributes:
        name: qualified module name.
        module_type: the float module type (``"Conv2d"``) or op (``"add"``).
        status: one of ``STATUSES``.
        reason: why a layer is not (fully) quantized; empty otherwise.
        weight: weight format and granularity (``"int8 per-channel sym"``), the
            float dtype of a kept layer, or None.
        activation: input format and granularity, None when activations stay float.
        act_range: the chosen activation clipping range ``(lo, hi)`` (per-tensor static only).
        weight_sqnr_db, input_sqnr_db, output_sqnr_db: see the module docstring;
            None where not measured, +inf where identical, -inf where the
            quantized tensor holds NaN / Inf.
        sensitivity: the caller's sensitivity score (e.g. metric drop when only this layer is quantized).
        fused_with: the BatchNorm folded into this layer, if any.
        clipped_fraction: fraction of the float input outside ``act_range`` (filled from histograms).
        nonfinite: the quantized layer produced NaN / Inf.
    """

    name: str
    module_type: str
    status: str = "quantized"
    reason: str = ""
    weight: str | None = None
    activation: str | None = None
    act_range: tuple[float, float] | None = None
    weight_sqnr_db: float | None = None
    input_sqnr_db: float | None = None
    output_sqnr_db: float | None = None
    sensitivity: float | None = None
    fused_with: str | None = None
    clipped_fraction: float | None = None
    nonfinite: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite floats become the strings ``"inf"`` / ``"-inf"`` / ``"nan"``."""
        data = asdict(self)
        data["act_range"] = list(self.act_range) if self.act_range is not None else None
        return {k: json_float(v) for k, v in data.items()}


def json_float(value: Any) -> Any:
    """A value JSON can hold strictly: non-finite floats as strings, containers converted throughout.

    Example:
        >>> json_float({"a": [1.0, float("inf")], "b": float("nan")})
        {'a': [1.0, 'inf'], 'b': 'nan'}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [json_float(v) for v in value]
    if isinstance(value, dict):
        return {k: json_float(v) for k, v in value.items()}
    return value


class _Sqnr:
    """Streaming SQNR: sums of signal and noise power in float64 over many tensors."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.count = 0
        self.nonfinite = False

    def add(self, reference: Tensor, approx: Tensor) -> None:
        if reference.shape != approx.shape or not reference.is_floating_point():
            return
        ref = reference.detach().to("cpu", torch.float64)
        signal = float(ref.pow(2).sum())
        noise = float((ref - approx.detach().to("cpu", torch.float64)).pow(2).sum())
        # float32 values cannot overflow a float64 sum of squares: a non-finite sum means NaN / Inf.
        if not math.isfinite(signal):
            return
        if not math.isfinite(noise):
            self.nonfinite = True
            return
        self.signal += signal
        self.noise += noise
        self.count += 1

    def value(self) -> float | None:
        if self.nonfinite:
            return -math.inf
        return sqnr_from_sums(self.signal, self.noise) if self.count else None


# --- what the state says -------------------------------------------------------------
def _spec_text(quantizers: dict[str, Quantizer]) -> str | None:
    inp = quantizers.get("input") or quantizers.get("a") or quantizers.get("shared")
    out = quantizers.get("output")
    if inp is not None and out is not None:
        return f"{inp.spec} → out {out.spec}"
    if inp is not None:
        return str(inp.spec)
    return f"out {out.spec}" if out is not None else None


def _act_range(quantizers: dict[str, Quantizer]) -> tuple[float, float] | None:
    for role in ACTIVATION_ROLES:
        q = quantizers.get(role)
        if q is not None and q.mode != "off":
            return q.chosen_range()
    return None


def _off_roles(quantizers: dict[str, Quantizer]) -> list[str]:
    return [role for role, q in quantizers.items() if q.mode == "off"]


def _base_rows(qmodel: nn.Module) -> list[LayerRow]:
    state = getattr(qmodel, "lowbit_state", None)
    by_layer: dict[str, dict[str, Quantizer]] = {}
    for name, role, quantizer in quantizer_modules(qmodel):
        by_layer.setdefault(name, {})[role] = quantizer
    if state is None and not by_layer:
        raise ReportError(
            "the model has no lowbit quantizers and no lowbit_state; pass the model that "
            "lowbit.quantize (or prepare / convert) returned"
        )
    quantized = dict(state.quantized) if state is not None else {
        name: type(qmodel.get_submodule(name)).__name__ for name in by_layer
        if isinstance(qmodel.get_submodule(name), QuantMixin)}
    functional = dict(state.functional) if state is not None else {}
    disabled = dict(state.disabled) if state is not None else {}
    fused = {pair.layer: pair.norm for pair in state.fused} if state is not None else {}
    rows: list[LayerRow] = []
    for name, type_name in quantized.items():
        quantizers = by_layer.get(name, {})
        weight_q = quantizers.get("weight")
        row = LayerRow(
            name=name, module_type=type_name,
            weight=str(weight_q.spec) if weight_q is not None else None,
            activation=_spec_text(quantizers), act_range=_act_range(quantizers),
            fused_with=fused.get(name),
        )
        off = _off_roles(quantizers)
        if name in disabled or off:
            row.status = "disabled"
            row.reason = disabled.get(name) or f"{', '.join(off)} quantizer off (runs in float)"
        rows.append(row)
    for name, kind in functional.items():
        quantizers = by_layer.get(name, {})
        rows.append(LayerRow(
            name=name, module_type=kind, status="functional",
            reason=f"quantized {kind} from the traced graph (no float module to compare with)",
            activation=_spec_text(quantizers), act_range=_act_range(quantizers),
        ))
    if state is None:
        return _sort_by_model(qmodel, rows)
    # Fusion runs before the recipe is applied, so kept and excluded layers may hold folded BN too.
    for name, keep in state.kept.items():
        rows.append(LayerRow(name=name, module_type=_float_type(qmodel, name), status="kept",
                             reason=f"kept in {keep} by the recipe", weight=keep,
                             activation=keep if keep != "fp32" else None, fused_with=fused.get(name)))
    for name in state.excluded:
        rows.append(LayerRow(name=name, module_type=_float_type(qmodel, name), status="excluded",
                             reason="excluded by the recipe; runs in float", fused_with=fused.get(name)))
    for name, type_name in state.unsupported.items():
        rows.append(LayerRow(name=name, module_type=type_name, status="unsupported",
                             reason=f"lowbit has no quantized {type_name}; runs in float",
                             fused_with=fused.get(name)))
    return _sort_by_model(qmodel, rows)


def model_order(model: nn.Module) -> dict[str, int]:
    """Module name -> position: execution order from the fx graph when the model was traced,
    otherwise the order of ``named_modules()`` (definition order, usually close to execution)."""
    order: dict[str, int] = {}
    graph = getattr(model, "graph", None)
    if isinstance(model, torch.fx.GraphModule) and graph is not None:
        for node in graph.nodes:
            if node.op == "call_module" and node.target not in order:
                order[str(node.target)] = len(order)
    for name, _ in model.named_modules():
        order.setdefault(name, len(order))
    return order


def _sort_by_model(model: nn.Module, rows: list[LayerRow]) -> list[LayerRow]:
    order = model_order(model)
    end = len(order)

    def key(item: tuple[int, LayerRow]) -> tuple[int, int]:
        index, row = item
        # A child module (``stem.0`` inside a traced ``stem``) sorts with its parent.
        parts = row.name.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in order:
                return order[prefix], index
        return end, index
    return [row for _, row in sorted(enumerate(rows), key=key)]


def _float_type(model: nn.Module, name: str) -> str:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return "?"
    return type(module.module if isinstance(module, FloatKept) else module).__name__


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


# --- weight SQNR ---------------------------------------------------------------------
def _float_weight(float_model: nn.Module | None, row: LayerRow) -> Tensor | None:
    if float_model is None:
        return None
    layer = _get(float_model, row.name)
    if layer is None or not isinstance(getattr(layer, "weight", None), Tensor):
        return None
    if row.fused_with is None:
        return layer.weight
    norm = _get(float_model, row.fused_with)
    if norm is None or getattr(norm, "running_var", None) is None:
        return None
    folded = copy.deepcopy(layer)
    fold_bn_into(folded, norm)
    return folded.weight


def weight_sqnr(qmodel: nn.Module, float_model: nn.Module | None, row: LayerRow) -> float | None:
    """Weight SQNR of one row's layer (None when it cannot be measured); see the module docstring."""
    module = _get(qmodel, row.name)
    acc = _Sqnr()
    with torch.no_grad():
        if isinstance(module, FloatKept):
            ref = _float_weight(float_model, row)
            approx = getattr(module.module, "weight", None)
        elif isinstance(module, QuantMixin) and module.weight_quantizer is not None:
            if bool(module.converted):
                ref, approx = _float_weight(float_model, row), module.weight
            else:
                ref, approx = module.weight, module.effective_weight()
        else:
            return None
        if ref is None or approx is None:
            return None
        acc.add(ref, approx)
    return acc.value()


# --- activation SQNR -----------------------------------------------------------------
def _first_tensor(args: tuple) -> Tensor | None:
    flat = flatten_outputs(args)
    return flat[0] if flat else None


def _capture_q(module: nn.Module, name: str, store: dict[str, list]):
    def hook(_module, args, output):
        inp = _first_tensor(args)
        store.setdefault(name, []).append(
            (inp.detach() if inp is not None else None, [t.detach() for t in flatten_outputs(output)]))
    return [module.register_forward_hook(hook)]


def _compare_f(module: nn.Module, name: str, store: dict[str, list],
               inputs: dict[str, _Sqnr], outputs: dict[str, _Sqnr]):
    def hook(_module, args, output):
        calls = store.get(name)
        if not calls:
            return
        q_in, q_out = calls.pop(0)
        f_in = _first_tensor(args)
        if f_in is not None and q_in is not None:
            inputs[name].add(f_in, q_in)
        for f_t, q_t in zip(flatten_outputs(output), q_out, strict=False):
            outputs[name].add(f_t, q_t)
    return [module.register_forward_hook(hook)]


def _activation_sqnr(qmodel: nn.Module, float_model: nn.Module, rows: list[LayerRow],
                     batches: list[Any]) -> None:
    """Fill input / output SQNR of every row whose layer exists in both models."""
    inputs = {row.name: _Sqnr() for row in rows}
    outputs = {row.name: _Sqnr() for row in rows}
    store: dict[str, list] = {}
    handles = []
    for row in rows:
        q_mod, f_mod = _get(qmodel, row.name), _get(float_model, row.name)
        if q_mod is None or f_mod is None or row.status == "functional":
            continue
        handles += _capture_q(q_mod, row.name, store)
        if row.fused_with is None:
            handles += _compare_f(f_mod, row.name, store, inputs, outputs)
        else:
            # Fused: the float layer's input is the input; the BN after it gives the output.
            norm = _get(float_model, row.fused_with)
            handles += _split_fused(f_mod, norm, row.name, store, inputs, outputs)
    try:
        with evaluating(qmodel, float_model):
            for batch in batches:
                store.clear()
                call_model(qmodel, batch, "quantized")
                call_model(float_model, batch, "float")
    finally:
        for handle in handles:
            handle.remove()
        store.clear()
    for row in rows:
        row.input_sqnr_db = inputs[row.name].value()
        row.output_sqnr_db = outputs[row.name].value()
        row.nonfinite = outputs[row.name].nonfinite


def _split_fused(layer: nn.Module, norm: nn.Module | None, name: str, store: dict[str, list],
                 inputs: dict[str, _Sqnr], outputs: dict[str, _Sqnr]):
    """Hooks for a fused pair: compare the input at ``layer`` and the output after ``norm``."""
    pending: dict[str, list] = {}
    def at_layer(_module, args, _output):
        calls = store.get(name)
        if not calls:
            return
        q_in, q_out = calls.pop(0)
        f_in = _first_tensor(args)
        if f_in is not None and q_in is not None:
            inputs[name].add(f_in, q_in)
        pending.setdefault(name, []).append(q_out)

    def at_norm(_module, _args, output):
        waiting = pending.get(name)
        if not waiting:
            return
        for f_t, q_t in zip(flatten_outputs(output), waiting.pop(0), strict=False):
            outputs[name].add(f_t, q_t)

    handles = [layer.register_forward_hook(at_layer)]
    if norm is not None:
        handles.append(norm.register_forward_hook(at_norm))
    return handles


def layer_table(
    qmodel: nn.Module,
    float_model: nn.Module | None = None,
    data: Iterable[Any] | None = None,
    max_batches: int | None = 8,
    sensitivity: dict[str, float] | None = None,
) -> list[LayerRow]:
    """Per-layer rows: formats, chosen ranges, weight / input / output SQNR, sensitivity, status.

    Args:
        qmodel: the quantized model (``lowbit.quantize``'s result, or a prepared one).
        float_model: the untouched float model; needed for the SQNR of converted
            weights and for input / output SQNR.
        data: iterable of input batches for input / output SQNR (needs ``float_model``).
        max_batches: batches of ``data`` to use (None: all).
        sensitivity: optional ``{layer name: score}`` to show in the table.

    Returns:
        Rows in the quantized model's execution order (the fx graph's when it
        was traced, else module definition order), status rows included.

    Raises:
        ReportError: ``qmodel`` has no quantizers, the float model is the
            quantized one, data without a float model, or a model fails on the data.

    Example:
        >>> qmodel = lowbit.flows.quantize(model, "x86", calibrate=batches)  # doctest: +SKIP
        >>> rows = layer_table(qmodel, model, batches)                      # doctest: +SKIP
        >>> min(rows, key=lambda r: r.output_sqnr_db or 1e9).name           # doctest: +SKIP
        'features.3'
    """
    if float_model is not None:
        check_pair(float_model, qmodel)
    if data is not None and float_model is None:
        raise ReportError("input / output SQNR compare against the float model: pass float_model "
                          "together with data")
    rows = _base_rows(qmodel)
    for row in rows:
        row.weight_sqnr_db = weight_sqnr(qmodel, float_model, row)
        if sensitivity is not None and row.name in sensitivity:
            row.sensitivity = float(sensitivity[row.name])
    if data is not None and float_model is not None:
        _activation_sqnr(qmodel, float_model, rows, take_batches(data, max_batches))
    return rows

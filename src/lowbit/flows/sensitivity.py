"""Sensitivity analysis: how much each quantized layer costs, measured one layer at a time.

A calibrated (not converted) copy of the model keeps its float weights, so a
layer's quantizers can be switched between their calibrated mode and
``"off"`` without re-preparing anything. Two numbers per layer:

- *only this*: every quantizer off except this layer's (the layer's own cost);
- *all but this*: every quantizer on except this layer's (what un-quantizing
  it buys back in the fully quantized model).

The metric is the output SQNR (dB) against the same model with every
quantizer off — so folding batch norm is not counted as error — over the first
``max_batches`` batches, or a user's ``eval_fn(model) -> float`` (higher is
better, e.g. accuracy). Seed 004 names the first and last layers as the usual
suspects for mixed precision; this module measures instead of assuming.
Bias correction (``recipe.bias_correction``) is not applied here: the numbers
describe the rounding error itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.flows.calibrate import CalibrationData, calibrate, run_batch
from lowbit.flows.fuse import fuse
from lowbit.flows.prepare import prepare, quantizer_modules
from lowbit.flows.smooth import smooth
from lowbit.nn.quantizer import Quantizer
from lowbit.recipes import Recipe

EvalFn = Callable[[nn.Module], float]
FUNCTIONAL_PREFIX = "lowbit_"  # prepare names the add / matmul / cat modules it inserts this way


class SensitivityError(LowbitError, ValueError):
    """Sensitivity analysis cannot run as asked (no usable data or metric)."""


# --- metric helpers (private: lowbit.report is a lower layer and must not be imported) ------

def _flatten_outputs(out: Any) -> list[Tensor]:
    """Floating-point tensors of a model output: tensor, tuple / list, dict or ModelOutput."""
    if isinstance(out, Tensor):
        return [out.detach()] if out.is_floating_point() else []
    if isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        return [t for key in list(out.keys()) for t in _flatten_outputs(out[key])]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten_outputs(item)]
    return []


def _sqnr_db(reference: list[list[Tensor]], outputs: list[list[Tensor]]) -> float:
    """10·log10(Σ‖ref‖² / Σ‖ref − out‖²) over all batches; +inf when exact, -inf for NaN."""
    signal = noise = 0.0
    for ref_batch, out_batch in zip(reference, outputs, strict=True):
        if len(ref_batch) != len(out_batch):
            raise SensitivityError(
                f"the model returned {len(out_batch)} tensors where the float model returned "
                f"{len(ref_batch)}; sensitivity needs outputs of a fixed structure")
        for ref, out in zip(ref_batch, out_batch, strict=True):
            if ref.shape != out.shape:
                raise SensitivityError(
                    f"output shape {tuple(out.shape)} differs from the float shape "
                    f"{tuple(ref.shape)}; sensitivity needs deterministic output shapes")
            ref64 = ref.double()
            signal += float(ref64.abs().pow(2).sum())
            noise += float((ref64 - out.double()).abs().pow(2).sum())
    if math.isnan(noise) or math.isinf(noise):
        return -math.inf
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _noise_ratio(sqnr_db: float) -> float:
    """Output noise power relative to the signal, the linear quantity that adds across layers."""
    if sqnr_db == math.inf:
        return 0.0
    if sqnr_db == -math.inf:
        return math.inf
    return 10.0 ** (-sqnr_db / 10.0)


def progress_bar(items: Iterable, total: int | None, desc: str, show: bool) -> Iterable:
    """``items`` wrapped in a tqdm bar over layers when ``show`` (and tqdm is installed)."""
    if not show:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety, never a requirement
        return items
    return tqdm(items, total=total, desc=desc, unit="layer", leave=False)


# --- the probe: one calibrated model whose quantizers can be toggled --------------------------

@dataclass
class Unit:
    """One quantized layer (or functional add / matmul / cat) of a probe model."""

    name: str
    type: str
    params: int
    bits: int | None  # weight bits; None when the weight stays float or there is none
    quantizers: dict[str, Quantizer]


@dataclass
class Probe:
    """A calibrated, unconverted copy of a model plus cached float outputs.

    Build it with `make_probe`. `measure` switches quantizers and returns the
    metric (SQNR in dB, or ``eval_fn``); `score` measures any other model against
    the same float reference, so a rebuilt model is judged on equal terms.
    """

    model: nn.Module
    recipe: Recipe
    units: dict[str, Unit]
    baseline: dict[int, str]  # id(quantizer) -> calibrated mode
    batches: list[Any] | None
    reference: list[list[Tensor]] | None
    eval_fn: EvalFn | None
    float_metric: float = math.nan
    quantized_metric: float = math.nan

    @property
    def metric_name(self) -> str:
        return "eval_fn" if self.eval_fn is not None else "sqnr_db"

    def set_off(self, off: Callable[[str, str], bool]) -> None:
        """Switch quantizer ``(layer, role)`` off where ``off`` says so, to its calibrated mode elsewhere."""
        for unit in self.units.values():
            for role, quantizer in unit.quantizers.items():
                quantizer.mode = "off" if off(unit.name, role) else self.baseline[id(quantizer)]

    def measure(self, off: Callable[[str, str], bool]) -> float:
        """The metric with the quantizers ``off`` selects switched off (the rest as calibrated)."""
        self.set_off(off)
        try:
            return self.score(self.model)
        finally:
            self.set_off(lambda name, role: False)

    def score(self, model: nn.Module) -> float:
        """The metric of ``model`` (output SQNR vs the cached float outputs, or ``eval_fn``)."""
        was_training = model.training
        model.eval()
        try:
            if self.eval_fn is not None:
                with torch.no_grad():
                    value = self.eval_fn(model)
                try:
                    value = float(value)
                except (TypeError, ValueError) as err:
                    raise SensitivityError(
                        f"eval_fn must return a number (higher is better), got {type(value).__name__}"
                    ) from err
                if math.isnan(value):
                    raise SensitivityError("eval_fn returned NaN; it must return a number (higher is better)")
                return value
            return _sqnr_db(self.reference, _run_outputs(model, self.batches))
        finally:
            model.train(was_training)


def _run_outputs(model: nn.Module, batches: list[Any]) -> list[list[Tensor]]:
    with torch.no_grad():
        return [[t.float().cpu() for t in _flatten_outputs(run_batch(model, b))] for b in batches]


def _is_one_shot(data: Any) -> bool:
    try:
        return iter(data) is data
    except TypeError:
        return False


def _collect_units(model: nn.Module) -> dict[str, Unit]:
    state = model.lowbit_state
    modules = dict(model.named_modules())
    grouped: dict[str, dict[str, Quantizer]] = {}
    for name, role, quantizer in quantizer_modules(model):
        grouped.setdefault(name, {})[role] = quantizer
    units = {}
    for name, quantizers in grouped.items():
        module = modules[name]
        weight_q = quantizers.get("weight")
        weight = getattr(module, "weight", None)
        units[name] = Unit(
            name=name,
            type=state.quantized.get(name) or state.functional.get(name) or type(module).__name__,
            params=int(weight.numel()) if isinstance(weight, Tensor) else 0,
            bits=int(weight_q.fmt.bits) if weight_q is not None else None,
            quantizers=quantizers,
        )
    return units


def make_probe(model: nn.Module, recipe: Recipe, data: CalibrationData, *,
               eval_fn: EvalFn | None = None, max_batches: int = 8, progress: bool = True) -> Probe:
    """Fuse, prepare, smooth and calibrate a deep copy of ``model`` (not converted) for toggling.

    Args:
        model: the float model (left untouched).
        recipe: how to quantize it.
        data: calibration batches (iterated more than once: a list or a DataLoader,
            not a generator), or a ``forward_loop(model)`` when ``eval_fn`` is given.
        eval_fn: ``eval_fn(model) -> float``, higher is better; None measures output SQNR.
        max_batches: batches of ``data`` used for the SQNR metric (cached with their
            float outputs, so keep it small for big models).
        progress: show progress bars.

    Returns:
        A `Probe` with ``float_metric`` and ``quantized_metric`` measured.

    Raises:
        SensitivityError: data cannot be iterated twice, SQNR asked without batches,
            or the float outputs are not finite.

    Example:
        >>> from lowbit.recipes import preset
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
        >>> p = make_probe(m, preset("x86"), [torch.randn(8, 4)], progress=False)
        >>> sorted(p.units)
        ['0', '2']
    """
    if not isinstance(recipe, Recipe):
        raise SensitivityError(f"recipe must be a lowbit Recipe, got {type(recipe).__name__}; "
                               "use lowbit.recipes.preset(name) for a preset")
    if max_batches is None or max_batches < 1:
        raise SensitivityError(f"max_batches must be >= 1, got {max_batches}")
    if data is None:
        raise SensitivityError("sensitivity needs data: pass a list of batches (or a DataLoader)")
    is_loop = callable(data) and not isinstance(data, (Tensor, list, tuple, dict))
    if not is_loop and _is_one_shot(data):
        raise SensitivityError(
            "data is a one-shot iterator (e.g. a generator), but sensitivity analysis runs it "
            "several times; pass a list of batches or a DataLoader")
    if is_loop and eval_fn is None:
        raise SensitivityError(
            "output SQNR needs batches to compare, but data is a forward_loop callable; pass a "
            "list of batches, or give eval_fn(model) -> float")
    work = copy.deepcopy(model).eval()
    fused = fuse(work) if recipe.fuse else []
    work = prepare(work, recipe)
    work.lowbit_state.fused = fused
    if recipe.smooth_alpha is not None:
        # as `quantize` does: without it the probe (and `auto_mixed_precision`'s search)
        # would rank and evaluate the unsmoothed model, not the one `quantize` returns
        smooth(work, data, recipe.smooth_alpha, max_batches=min(recipe.calibration_batches, 16),
               progress=progress)
    calibrate(work, data, max_batches=recipe.calibration_batches, progress=progress)
    units = _collect_units(work)
    baseline = {id(q): q.mode for unit in units.values() for q in unit.quantizers.values()}
    batches = reference = None
    if eval_fn is None:
        batches = list(islice(iter(data), max_batches))
        if not batches:
            raise SensitivityError("data yielded no batch; pass a non-empty list of batches")
    probe = Probe(work, recipe, units, baseline, batches, None, eval_fn)
    probe.set_off(lambda name, role: True)
    if eval_fn is None:
        reference = _run_outputs(work, batches)
        if not any(reference):
            raise SensitivityError("the model returned no floating-point tensor to compare; "
                                   "give eval_fn(model) -> float instead")
        if not all(torch.isfinite(t).all() for batch in reference for t in batch):
            raise SensitivityError("the float model's outputs hold NaN / Inf on this data; "
                                   "fix the model or the data before measuring sensitivity")
        probe.reference = reference
        probe.float_metric = math.inf
    else:
        probe.float_metric = probe.score(work)
    probe.set_off(lambda name, role: False)
    probe.quantized_metric = probe.score(work)
    return probe


# --- results -------------------------------------------------------------------------------------

@dataclass
class LayerSensitivity:
    """One layer's numbers. Exactly one of the ``*_sqnr`` / ``*_metric`` pairs is set.

    ``sensitivity`` is one number per layer, higher = more sensitive: for SQNR, the
    share of the fully quantized model's output noise power this layer causes
    (mean of the only-this and all-but-this estimates; about 1.0 = all of it); for
    ``eval_fn``, the metric it costs (mean of float − only-this and
    all-but-this − all-quantized).
    """

    name: str
    type: str
    params: int
    bits: int | None
    only_this_sqnr: float | None = None
    all_but_this_sqnr: float | None = None
    only_this_metric: float | None = None
    all_but_this_metric: float | None = None
    sensitivity: float = 0.0

    @property
    def only_this(self) -> float:
        return self.only_this_sqnr if self.only_this_metric is None else self.only_this_metric

    @property
    def all_but_this(self) -> float:
        return self.all_but_this_sqnr if self.all_but_this_metric is None else self.all_but_this_metric


@dataclass
class SensitivityResult:
    """Per-layer sensitivity of one model under one recipe.

    Attributes:
        layers: one `LayerSensitivity` per quantized layer / functional op, model order.
        metric: ``"sqnr_db"`` or ``"eval_fn"``.
        float_metric: the metric with every quantizer off (+inf for SQNR).
        quantized_metric: the metric with every quantizer on.
        roles: the quantizer roles that were toggled (None = all of a layer's).
    """

    layers: list[LayerSensitivity]
    metric: str
    float_metric: float
    quantized_metric: float
    roles: tuple[str, ...] | None = None
    recipe_name: str = ""
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> LayerSensitivity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; known: {[layer.name for layer in self.layers]}")

    def ranked(self) -> list[LayerSensitivity]:
        """Layers, most sensitive first."""
        return sorted(self.layers, key=lambda layer: -layer.sensitivity)

    def to_rows(self) -> dict[str, float]:
        """``{layer name: sensitivity}``, most sensitive first (for the report's per-layer table)."""
        return {layer.name: layer.sensitivity for layer in self.ranked()}

    def to_markdown(self) -> str:
        """A Markdown table, most sensitive first."""
        unit = "SQNR dB" if self.metric == "sqnr_db" else "eval_fn"
        what = "noise share" if self.metric == "sqnr_db" else "metric cost"
        lines = [
            f"Sensitivity ({self.recipe_name or 'recipe'}; {unit}): float {_fmt(self.float_metric)}, "
            f"all quantized {_fmt(self.quantized_metric)}",
            "",
            f"| rank | layer | type | params | weight bits | only this ({unit}) "
            f"| all but this ({unit}) | {what} |",
            "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for rank, layer in enumerate(self.ranked(), 1):
            bits = "float" if layer.bits is None else str(layer.bits)
            lines.append(
                f"| {rank} | `{layer.name}` | {layer.type} | {layer.params} | {bits} "
                f"| {_fmt(layer.only_this)} | {_fmt(layer.all_but_this)} | {layer.sensitivity:.3g} |")
        lines.extend(f"\n{note}" for note in self.notes)
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def layer_score(metric: str, float_metric: float, quantized_metric: float,
                only_this: float, all_but_this: float) -> float:
    """The ``sensitivity`` of `LayerSensitivity` from the four measured numbers."""
    if metric == "sqnr_db":
        total = _noise_ratio(quantized_metric)
        if total == 0.0:
            return 0.0
        if math.isinf(total):
            # A broken model (NaN / Inf outputs): a layer matters iff un-quantizing it repairs it.
            return 1.0 if not math.isinf(_noise_ratio(all_but_this)) or math.isinf(
                _noise_ratio(only_this)) else 0.0
        # Errors of different layers can partly cancel, so either estimate can come out
        # negative on its own; a negative one says "no measurable cost", not "a gain".
        removed = max((total - _noise_ratio(all_but_this)) / total, 0.0)
        alone = min(_noise_ratio(only_this) / total, 1e6)
        return 0.5 * (removed + alone)
    return 0.5 * (max(all_but_this - quantized_metric, 0.0) + max(float_metric - only_this, 0.0))


def measure_sensitivity(probe: Probe, *, roles: tuple[str, ...] | None = None,
                        names: Iterable[str] | None = None, progress: bool = True) -> SensitivityResult:
    """Only-this and all-but-this numbers for the units of ``probe``.

    Args:
        probe: from `make_probe`.
        roles: the quantizer roles that make up "the layer" (None = all of them;
            ``("weight",)`` measures the weights alone). Units without such a role are skipped.
        names: units to measure (default: all, in model order).
        progress: show a progress bar over layers.

    Returns:
        A `SensitivityResult`.
    """
    chosen = [probe.units[n] for n in (names if names is not None else probe.units)]
    if roles is not None:
        chosen = [u for u in chosen if any(r in u.quantizers for r in roles)]

    def mine(unit: Unit, role: str) -> bool:
        return roles is None or role in roles

    layers = []
    metric = probe.metric_name
    for unit in progress_bar(chosen, len(chosen), "sensitivity", progress):
        only = probe.measure(lambda name, role, u=unit: not (name == u.name and mine(u, role)))
        all_but = probe.measure(lambda name, role, u=unit: name == u.name and mine(u, role))
        record = LayerSensitivity(unit.name, unit.type, unit.params, unit.bits)
        if metric == "sqnr_db":
            record.only_this_sqnr, record.all_but_this_sqnr = only, all_but
        else:
            record.only_this_metric, record.all_but_this_metric = only, all_but
        record.sensitivity = layer_score(metric, probe.float_metric, probe.quantized_metric,
                                         only, all_but)
        layers.append(record)
    notes = []
    if probe.model.lowbit_state.graph_note:
        notes.append(probe.model.lowbit_state.graph_note)
    if probe.model.lowbit_state.disabled:
        notes.append("quantizers that never ran during calibration stay float: "
                     + ", ".join(sorted(probe.model.lowbit_state.disabled)))
    return SensitivityResult(layers, metric, probe.float_metric, probe.quantized_metric, roles,
                             probe.recipe.name, notes)


def analyze_sensitivity(model: nn.Module, recipe: Recipe, data: CalibrationData, *,
                        eval_fn: EvalFn | None = None, max_batches: int = 8,
                        progress: bool = True) -> SensitivityResult:
    """Per layer: the error when only that layer is quantized, and when all but it are.

    Works on a deep copy (``model`` is untouched): fuse (when ``recipe.fuse``) →
    prepare → smooth (when ``recipe.smooth_alpha``) → calibrate on ``data``, as
    `quantize` does; weights stay float so each layer's quantizers
    (input, weight, output; the operands of functional add / matmul / cat) can be
    switched on and off. Costs two passes over ``max_batches`` batches (or two
    ``eval_fn`` calls) per layer.

    Args:
        model: the float model.
        recipe: how it would be quantized (e.g. ``preset("x86")``).
        data: calibration batches, iterable more than once (a list or a DataLoader);
            with ``eval_fn`` a ``forward_loop(model)`` works too.
        eval_fn: ``eval_fn(model) -> float``, higher is better (accuracy, ...); called
            under ``torch.no_grad()`` with the model in eval mode. None measures
            output SQNR (dB) against the float outputs.
        max_batches: batches of ``data`` the SQNR is measured on (their float
            outputs are cached: keep it small for big models).
        progress: show progress bars (tqdm) over layers.

    Returns:
        `SensitivityResult`: ``ranked()`` most sensitive first, ``to_rows()``,
        ``to_markdown()``.

    Raises:
        SensitivityError: unusable data or metric (the message says what to pass).

    Example:
        >>> from lowbit.recipes import preset
        >>> m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> result = analyze_sensitivity(m, preset("x86"), [torch.randn(16, 8)], progress=False)
        >>> [layer.name for layer in result.ranked()][:1] in (['0'], ['2'])
        True
    """
    probe = make_probe(model, recipe, data, eval_fn=eval_fn, max_batches=max_batches,
                       progress=progress)
    return measure_sensitivity(probe, progress=progress)


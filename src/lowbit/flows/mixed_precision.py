"""Automatic mixed precision: keep the fewest high-precision bits that meet an accuracy budget.

Seed 004: "sensitive layers (such as the first and the last) stay in FP16 or
FP32, the others go to INT8". Which layers are sensitive is measured here,
never assumed: a middle layer with an outlier channel is found as readily as
the classifier.

The algorithm (greedy by gain per bit, then pruned):

1. measure each layer's sensitivity on one calibrated copy (`analyze_sensitivity`'s
   only-this and all-but-this numbers), and its cost: extra bits =
   weight parameters × (fallback bits − current weight bits), fp32 = 32,
   fp16 / bf16 = 16, int8 = 8;
2. starting from the fully quantized model, promote the layer with the largest
   sensitivity per extra bit and re-measure the whole model, until the budget
   holds;
3. drop again every promoted layer the budget does not need (most bits first);
4. build the final model from the returned recipe with `lowbit.flows.api.quantize`
   and measure it; should it miss the budget (fp16 rounding or bias correction,
   which the toggled search does not simulate), promote further on real builds.

Re-measuring is cheap for float fallbacks: the layer's quantizers are switched
off on the same calibrated model. An ``"int8"`` fallback changes the weight format,
which needs new weight quantizers: each measurement then builds a fresh deep copy
with ``lowbit.quantize`` and a recipe holding int8 rules (prepare + calibrate again;
acceptable for small and medium models, slow for large ones).

A budget no choice of layers can meet raises `MixedPrecisionError` (rather than
returning a model that misses it): for ``"int8"`` up front, after one build with every
candidate at int8, saying the best value reachable; for float fallbacks when the
budget needs every quantized layer promoted, which would leave nothing quantized.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.errors import LowbitError
from lowbit.flows.api import quantize
from lowbit.flows.calibrate import CalibrationData
from lowbit.flows.sensitivity import (
    FUNCTIONAL_PREFIX,
    EvalFn,
    Probe,
    SensitivityResult,
    Unit,
    make_probe,
    measure_sensitivity,
    progress_bar,
)
from lowbit.recipes import QuantSpec, Recipe, Rule

FALLBACK_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}
FLOAT_BITS = 32  # a weight no quantizer touches


class MixedPrecisionError(LowbitError, ValueError):
    """Mixed precision cannot run as asked, or the budget cannot be met."""


@dataclass(frozen=True)
class Budget:
    """The accuracy budget: a minimum output SQNR, or a maximum drop of ``eval_fn``."""

    min_sqnr_db: float | None = None
    max_drop: float | None = None
    float_metric: float = math.inf

    def met(self, metric: float) -> bool:
        if self.min_sqnr_db is not None:
            return metric >= self.min_sqnr_db
        slack = 1e-12 * max(1.0, abs(self.float_metric))
        return self.float_metric - metric <= self.max_drop + slack

    def __str__(self) -> str:
        if self.min_sqnr_db is not None:
            return f"output SQNR >= {self.min_sqnr_db:g} dB"
        return f"eval_fn drop <= {self.max_drop:g} (float {self.float_metric:.4g})"


@dataclass
class Promotion:
    """One layer kept at the fallback precision."""

    name: str
    type: str
    params: int
    bits: int | None
    extra_bits: int
    sensitivity: float


@dataclass
class MixedPrecisionResult:
    """What `auto_mixed_precision` chose and what it measured.

    Attributes:
        recipe: the original recipe plus one rule per promoted layer (save it with ``recipe.save``).
        model: the quantized model built from ``recipe`` (``lowbit.quantize``).
        promoted: names of the layers kept at ``fallback``, in model order.
        fallback: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
        extra_bits: high-precision bits the promotions add (weights only).
        metric: ``"sqnr_db"`` or ``"eval_fn"``.
        budget: the budget that holds for ``model``.
        float_metric / metric_before / metric_after: float model, everything quantized
            (the search's measurement, without bias correction), and the returned model.
        weight_bits_before / weight_bits_after: weight storage of the quantized layers.
        promotions: details per promoted layer; sensitivity: the measurement it rests on.
        trail: the search step by step: ``(action, layer, metric after)``, action
            ``"promote"`` or ``"drop"`` (pruning), metric of the whole model.
        evaluations: whole-model measurements the search made.
    """

    recipe: Recipe
    model: nn.Module
    promoted: list[str]
    fallback: str
    extra_bits: int
    metric: str
    budget: Budget
    float_metric: float
    metric_before: float
    metric_after: float
    weight_bits_before: int
    weight_bits_after: int
    promotions: list[Promotion] = field(default_factory=list)
    sensitivity: SensitivityResult | None = None
    trail: list[tuple[str, str, float]] = field(default_factory=list)
    evaluations: int = 0

    def to_markdown(self) -> str:
        """A short Markdown summary: budget, before / after, and the promoted layers."""
        unit = "SQNR dB" if self.metric == "sqnr_db" else "eval_fn"
        overhead = self.extra_bits / max(self.weight_bits_before, 1)
        lines = [
            f"Mixed precision ({self.recipe.name}): budget {self.budget}, fallback {self.fallback}",
            "",
            f"- {unit}: float {_fmt(self.float_metric)}, all quantized {_fmt(self.metric_before)}, "
            f"mixed {_fmt(self.metric_after)}",
            f"- promoted {len(self.promoted)} layer(s), +{self.extra_bits} weight bits "
            f"({overhead:.1%} of {self.weight_bits_before}); {self.evaluations} evaluations",
        ]
        if self.promotions:
            lines += ["", "| layer | type | params | bits | → | extra bits | sensitivity |",
                      "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
            for p in self.promotions:
                bits = "float" if p.bits is None else p.bits
                lines.append(f"| `{p.name}` | {p.type} | {p.params} | {bits} | {self.fallback} "
                             f"| {p.extra_bits} | {p.sensitivity:.3g} |")
        if self.trail:
            steps = ", ".join(f"{'+' if action == 'promote' else '−'}`{name}` → {_fmt(metric)}"
                              for action, name, metric in self.trail)
            lines += ["", f"Search ({unit} after each step): {steps}"]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def _check_budget(min_sqnr_db: Any, eval_fn: Any, max_drop: Any, fallback: str) -> None:
    if fallback not in FALLBACK_BITS:
        raise MixedPrecisionError(f"fallback must be one of {sorted(FALLBACK_BITS)}, got {fallback!r}")
    sqnr_given, drop_given = min_sqnr_db is not None, max_drop is not None
    if sqnr_given == drop_given:
        raise MixedPrecisionError(
            "give exactly one budget: min_sqnr_db=<dB> (output SQNR on the data), or "
            "eval_fn=<model -> float> with max_drop=<largest allowed drop in eval_fn units>")
    if drop_given and eval_fn is None:
        raise MixedPrecisionError("max_drop is measured with eval_fn; pass eval_fn(model) -> float")
    if sqnr_given and eval_fn is not None:
        raise MixedPrecisionError("min_sqnr_db measures output SQNR, so eval_fn is not used; "
                                  "drop eval_fn, or use max_drop instead of min_sqnr_db")
    value = min_sqnr_db if sqnr_given else max_drop
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MixedPrecisionError(f"the budget must be a finite number, got {value!r}")
    if drop_given and max_drop < 0:
        raise MixedPrecisionError(f"max_drop must be >= 0, got {max_drop}")


def _exact_pattern(name: str) -> str:
    # Rule patterns are globs: escape the glob characters a module name could hold.
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _extra_bits(unit: Unit, fallback: str) -> int:
    current = FLOAT_BITS if unit.bits is None else unit.bits
    return unit.params * max(FALLBACK_BITS[fallback] - current, 0)


def promotion_rule(unit: Unit, recipe: Recipe, fallback: str) -> Rule:
    """The recipe rule that keeps ``unit`` at ``fallback`` (exact name, limited to its type)."""
    name = unit.name.removeprefix(FUNCTIONAL_PREFIX) if unit.type in ("add", "matmul", "cat") \
        else unit.name
    pattern = _exact_pattern(name)
    if fallback != "int8":
        return Rule(pattern, types=(unit.type,), keep=fallback)
    base = recipe.layer_spec(name, unit.type).weight
    spec = QuantSpec("int8", "channel", symmetric=base.symmetric, rounding=base.rounding,
                     clip_search=base.clip_search)
    return Rule(pattern, types=(unit.type,), weight=spec)


def mixed_recipe(recipe: Recipe, units: list[Unit], fallback: str) -> Recipe:
    """``recipe`` plus a `promotion_rule` per unit (model order)."""
    if not units:
        return recipe
    kept = "int8 weights" if fallback == "int8" else fallback
    note = f"mixed precision: {len(units)} layer(s) at {kept} (auto_mixed_precision)"
    return recipe.with_rules(*(promotion_rule(u, recipe, fallback) for u in units)).with_(
        name=f"{recipe.name}-mixed",
        description=f"{recipe.description}; {note}" if recipe.description else note,
    )


def _build(model: nn.Module, recipe: Recipe, data: CalibrationData) -> nn.Module:
    with warnings.catch_warnings():
        # Rules for functional ops name fx nodes ("add"), which are not modules yet when
        # prepare checks patterns; that warning is noise here.
        warnings.filterwarnings("ignore", message=r"recipe pattern .* matches no layer")
        return quantize(model, recipe, calibrate=data, progress=False)


def auto_mixed_precision(
    model: nn.Module,
    recipe: Recipe,
    data: CalibrationData,
    *,
    min_sqnr_db: float | None = None,
    eval_fn: EvalFn | None = None,
    max_drop: float | None = None,
    fallback: str = "fp32",
    max_batches: int = 8,
    progress: bool = True,
) -> MixedPrecisionResult:
    """Choose the layers to keep at higher precision so that a budget holds, with the fewest bits.

    Exactly one budget: ``min_sqnr_db`` (output SQNR against the float model on
    the first ``max_batches`` batches), or ``eval_fn`` with ``max_drop`` (the
    largest allowed drop below the float model's ``eval_fn``, in its units).

    Args:
        model: the float model (left untouched).
        recipe: how the other layers are quantized.
        data: calibration batches (a list or a DataLoader; with ``eval_fn`` a
            ``forward_loop(model)`` works too).
        min_sqnr_db: minimum output SQNR in dB.
        eval_fn: ``eval_fn(model) -> float``, higher is better.
        max_drop: largest allowed ``float − quantized`` of ``eval_fn``.
        fallback: what a promoted layer becomes: ``"fp32"``, ``"fp16"`` / ``"bf16"``
            (``Rule(keep=...)``) or ``"int8"`` (int8 per-channel weights instead of
            fewer bits; activations stay as the recipe says; slower, see the module docs).
        max_batches: batches the SQNR is measured on.
        progress: show progress bars.

    Returns:
        `MixedPrecisionResult`: the new ``recipe``, the quantized ``model`` built
        from it, ``promoted`` layers, ``extra_bits`` and the metrics.

    Raises:
        MixedPrecisionError: no or two budgets, an unknown fallback, no layer to
            promote, or a budget that no choice of layers can meet (the message
            gives the best value reachable).

    Example:
        >>> import torch
        >>> from lowbit.recipes import preset
        >>> m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> data = [torch.randn(16, 8)]
        >>> r = auto_mixed_precision(m, preset("x86"), data, min_sqnr_db=30, progress=False)
        >>> r.metric_after >= 30
        True
    """
    _check_budget(min_sqnr_db, eval_fn, max_drop, fallback)
    probe = make_probe(model, recipe, data, eval_fn=eval_fn, max_batches=max_batches,
                       progress=progress)
    budget = Budget(min_sqnr_db, max_drop, probe.float_metric)
    units = list(probe.units.values())
    if fallback == "int8":
        candidates = [u for u in units if u.bits is not None and u.bits < 8]
    else:
        candidates = units
    if not candidates:
        why = ("no quantized layer has weights below 8 bits" if fallback == "int8"
               else "the recipe quantizes no layer")
        raise MixedPrecisionError(f"nothing to promote to {fallback}: {why}; use another fallback "
                                  "or recipe")
    roles = ("weight",) if fallback == "int8" else None
    sensitivity = measure_sensitivity(probe, roles=roles, names=[u.name for u in candidates],
                                      progress=progress)
    scores = {layer.name: layer.sensitivity for layer in sensitivity.layers}
    cost = {u.name: _extra_bits(u, fallback) for u in candidates}
    # Most sensitivity per extra bit first; ties go to the cheaper layer.
    order = sorted((u for u in candidates if u.name in scores),
                   key=lambda u: (-scores[u.name] / max(cost[u.name], 1), cost[u.name]))

    search = _Search(probe, model, recipe, data, fallback, budget)
    if not budget.met(probe.quantized_metric):
        # With float fallbacks, everything promoted is the float model, which meets any budget.
        best = search.evaluate(order) if fallback == "int8" else probe.float_metric
        if not budget.met(best):
            raise MixedPrecisionError(
                f"the budget ({budget}) cannot be met even with all {len(order)} candidate layers "
                f"at {fallback}: the best reachable {probe.metric_name} is {_fmt(best)}. Loosen the "
                "budget, use fallback='fp32', or quantize less (recipe exclude / rules)")
        promoted = search.prune(search.greedy(order, progress), cost)
    else:
        promoted = []
    final_model, final_metric, promoted = search.finish(promoted, order)

    promoted_names = {u.name for u in promoted}
    chosen = [u for u in units if u.name in promoted_names]
    bits_before = sum(u.params * (FLOAT_BITS if u.bits is None else u.bits) for u in units)
    extra = sum(cost[u.name] for u in chosen)
    promotions = [Promotion(u.name, u.type, u.params, u.bits, cost[u.name], scores.get(u.name, 0.0))
                  for u in chosen]
    return MixedPrecisionResult(
        recipe=mixed_recipe(recipe, chosen, fallback),
        model=final_model,
        promoted=[u.name for u in chosen],
        fallback=fallback,
        extra_bits=extra,
        metric=probe.metric_name,
        budget=budget,
        float_metric=probe.float_metric,
        metric_before=probe.quantized_metric,
        metric_after=final_metric,
        weight_bits_before=bits_before,
        weight_bits_after=bits_before + extra,
        promotions=promotions,
        sensitivity=sensitivity,
        trail=search.trail,
        evaluations=search.evaluations,
    )


@dataclass
class _Search:
    """Whole-model measurements of a set of promoted layers, counted."""

    probe: Probe
    model: nn.Module
    recipe: Recipe
    data: CalibrationData
    fallback: str
    budget: Budget
    evaluations: int = 0
    trail: list[tuple[str, str, float]] = field(default_factory=list)

    def evaluate(self, promoted: list[Unit]) -> float:
        """The metric with ``promoted`` at the fallback (toggled for floats, rebuilt for int8)."""
        self.evaluations += 1
        if self.fallback != "int8":
            names = {u.name for u in promoted}
            return self.probe.measure(lambda name, role: name in names)
        return self.probe.score(self.build(promoted))

    def build(self, promoted: list[Unit]) -> nn.Module:
        names = {u.name for u in promoted}
        if self.fallback != "int8" and len(names) == len(self.probe.units):
            raise MixedPrecisionError(
                f"the budget ({self.budget}) needs every quantized layer at {self.fallback} (or "
                "more), which leaves nothing quantized; loosen the budget, or use fallback='fp32' "
                "if it was fp16 / bf16")
        units = [u for u in self.probe.units.values() if u.name in names]  # model order
        return _build(self.model, mixed_recipe(self.recipe, units, self.fallback), self.data)

    def greedy(self, order: list[Unit], progress: bool) -> list[Unit]:
        """Promote in ``order``, re-measuring the whole model each time, until the budget holds."""
        promoted: list[Unit] = []
        bar = progress_bar(order, len(order), "mixed precision", progress)
        for unit in bar:
            promoted.append(unit)
            metric = self.evaluate(promoted)
            self.trail.append(("promote", unit.name, metric))
            if self.budget.met(metric):
                break
        if hasattr(bar, "close"):
            bar.close()
        return promoted

    def prune(self, promoted: list[Unit], cost: dict[str, int]) -> list[Unit]:
        """Drop promotions the budget holds without, most extra bits first."""
        for unit in sorted(promoted, key=lambda u: -cost[u.name]):
            if len(promoted) == 1:
                break
            trial = [u for u in promoted if u.name != unit.name]
            metric = self.evaluate(trial)
            if self.budget.met(metric):
                promoted = trial
                self.trail.append(("drop", unit.name, metric))
        return promoted

    def finish(self, promoted: list[Unit], order: list[Unit]) -> tuple[nn.Module, float, list[Unit]]:
        """Build the final model; promote further on real builds should it miss the budget."""
        promoted = list(promoted)
        self.evaluations += 1
        built = self.build(promoted)
        metric = self.probe.score(built)
        chosen = {u.name for u in promoted}
        remaining = [u for u in order if u.name not in chosen]
        while not self.budget.met(metric) and remaining:
            unit = remaining.pop(0)
            promoted.append(unit)
            self.evaluations += 1
            built = self.build(promoted)
            metric = self.probe.score(built)
            self.trail.append(("promote", unit.name, metric))
        if not self.budget.met(metric):
            raise MixedPrecisionError(
                f"the built model misses the budget ({self.budget}) with every candidate layer at "
                f"{self.fallback}: {self.probe.metric_name} is {_fmt(metric)}. Loosen the budget "
                "or use fallback='fp32'")
        return built, metric, promoted

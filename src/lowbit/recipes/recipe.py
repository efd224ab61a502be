"""`Recipe`: what to quantize in a model and how, as one frozen value.

A recipe holds default specs for weights, inputs and outputs, a list of
module types to quantize, include / exclude globs over module names and an
ordered list of `Rule` overrides. `Recipe.layer_spec` resolves all of that
for one module; the ``flows`` layer walks the model and calls it. Recipes are
saved and loaded as YAML or TOML and round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from lowbit.recipes import files
from lowbit.recipes.rule import (
    SPEC_ROLES,
    Rule,
    as_spec,
    as_str_tuple,
    glob_match,
    spec_to_data,
)
from lowbit.recipes.spec import (
    MODES,
    LayerSpec,
    QuantSpec,
    RecipeError,
    check_type,
    join_key,
    type_name,
)

__all__ = ["DEFAULT_MODULE_TYPES", "FILE_VERSION", "WEIGHT_ONLY_TYPES", "Recipe", "Rule"]

DEFAULT_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Embedding",
                        "add", "cat", "matmul", "avgpool")
# Lower-case types name operations, not modules: residual adds, concatenations,
# activation x activation matmuls and average pooling (functional or module),
# quantized when the model traces with torch.fx.
FUNCTIONAL_TYPES = ("add", "cat", "matmul", "avgpool")
# An embedding's input is a tensor of indices and its output a table lookup:
# only its weight can be quantized, whatever the recipe's mode.
WEIGHT_ONLY_TYPES = ("Embedding",)
FILE_VERSION = 1
# The defaults are ONNX Runtime's S8S8 QDQ scheme (see presets.py); specs are
# frozen, so sharing one instance as a dataclass default is safe.
DEFAULT_WEIGHT = QuantSpec("int8", "channel")
DEFAULT_INPUT = QuantSpec("int8", symmetric=False)


@dataclass(frozen=True)
class Recipe:
    """What to quantize in a model and how.

    Resolution for one module (`layer_spec`): its class name must be in
    ``module_types``; its name must match an ``include`` glob (when any are
    given) and no ``exclude`` glob (exclude always wins); then the defaults are
    overridden by every matching rule in order, field by field.

    Args:
        name: short name, shown in reports.
        mode: ``"static"`` (calibrated activation ranges), ``"dynamic"`` (activation
            ranges from each batch: input / output specs get ``dynamic=True``) or
            ``"weight_only"`` (input / output are always float; the recipe's own
            input / output are set to None).
        weight: default weight spec (None = float weights).
        input: default spec of each quantized layer's input.
        output: default spec of its output (usually None: the next layer's input
            quantizer covers it).
        rules: `Rule` overrides, later ones win.
        include: globs of module names to quantize; empty = all.
        exclude: globs of module names never to quantize.
        module_types: class names quantized by default.
        fuse: fuse Conv-BN(-ReLU) / Linear-ReLU before quantizing.
        bias_correction: correct the mean output shift weight quantization causes.
        backend: deployment target the recipe matches (``"x86"``, ``"tensorrt"``, ...).
        description: one line for humans.
        calibration_batches: batches a static calibration needs (about 100 is enough).

    Example:
        >>> r = Recipe("demo", rules=(Rule("classifier", keep="fp32"),))
        >>> r.layer_spec("classifier", "Linear").keep
        'fp32'
    """

    name: str = "custom"
    mode: str = "static"
    weight: QuantSpec | None = DEFAULT_WEIGHT
    input: QuantSpec | None = DEFAULT_INPUT
    output: QuantSpec | None = None
    rules: tuple[Rule, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    module_types: tuple[str, ...] = DEFAULT_MODULE_TYPES
    fuse: bool = True
    bias_correction: bool = False
    backend: str | None = None
    description: str = ""
    calibration_batches: int = 100
    # SmoothQuant-style outlier migration (0 < alpha < 1; None = off): see lowbit.flows.smooth.
    smooth_alpha: float | None = None

    def __post_init__(self) -> None:
        check_type(self.name, (str,), "name", "a string")
        if not self.name:
            raise RecipeError("must not be empty", "name")
        if self.mode not in MODES:
            raise RecipeError(f"{self.mode!r} is unknown; use one of {MODES}", "mode")
        for role in SPEC_ROLES:
            object.__setattr__(self, role, as_spec(getattr(self, role), role))
        if self.mode == "weight_only":
            # The mode is the explicit statement: activations stay float.
            object.__setattr__(self, "input", None)
            object.__setattr__(self, "output", None)
            if self.weight is None:
                raise RecipeError("a weight_only recipe needs a weight spec", "weight")
        _check_roles(self.weight, self.input, self.output, "")
        object.__setattr__(self, "rules", self._coerce_rules(self.rules))
        for key in ("include", "exclude", "module_types"):
            object.__setattr__(self, key, as_str_tuple(getattr(self, key), key))
        if not self.module_types:
            raise RecipeError("is empty, so nothing would be quantized; list class names "
                              f"such as {list(DEFAULT_MODULE_TYPES[:2])}", "module_types")
        check_type(self.fuse, (bool,), "fuse", "true or false")
        check_type(self.bias_correction, (bool,), "bias_correction", "true or false")
        check_type(self.backend, (str, type(None)), "backend", "a string or null")
        check_type(self.description, (str,), "description", "a string")
        check_type(self.calibration_batches, (int,), "calibration_batches", "an integer >= 0")
        if self.calibration_batches < 0:
            raise RecipeError(f"must be >= 0, got {self.calibration_batches}",
                              "calibration_batches")
        check_type(self.smooth_alpha, (float, int, type(None)), "smooth_alpha", "a number or null")
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise RecipeError(f"must be in (0, 1) (0.5 is SmoothQuant's default), got "
                              f"{self.smooth_alpha}", "smooth_alpha")

    def _coerce_rules(self, rules: Any) -> tuple[Rule, ...]:
        if isinstance(rules, (Rule, dict)):
            rules = (rules,)
        if not isinstance(rules, (list, tuple)):
            raise RecipeError(f"must be a list of rules, got {type_name(rules)}", "rules")
        out = []
        for i, rule in enumerate(rules):
            where = f"rules[{i}]"
            if isinstance(rule, dict):
                rule = Rule.from_dict(rule, where)
            if not isinstance(rule, Rule):
                raise RecipeError(f"must be a Rule or a mapping, got {type_name(rule)}", where)
            if self.mode == "weight_only":
                for role in ("input", "output"):
                    if isinstance(getattr(rule, role), QuantSpec):
                        raise RecipeError(
                            "mode is weight_only, so activations stay float; remove this spec "
                            "or use mode: static", f"{where}.{role}")
            out.append(rule)
        return tuple(out)

    # --- resolution ---------------------------------------------------------

    def layer_spec(self, name: str, module_type: str | type) -> LayerSpec | None:
        """Resolve how module ``name`` of class ``module_type`` is quantized.

        Args:
            name: qualified name from ``model.named_modules()``.
            module_type: the module's class name (``"Linear"``) or the class itself.

        Returns:
            None when the module is not quantized (wrong type, not included,
            excluded, skipped, or every spec float); ``LayerSpec(keep="fp16")`` for a
            layer kept in a float dtype; otherwise its weight / input / output specs.
            ``extra["rules"]`` lists the indices of the rules that matched.

        Example:
            >>> Recipe().layer_spec("encoder.layer.0.attention.self.query", "Linear").weight.format
            'int8'
        """
        type_name_ = module_type if isinstance(module_type, str) else module_type.__name__
        if type_name_ not in self.module_types:
            return None
        if self.include and not any(glob_match(p, name) for p in self.include):
            return None
        if any(glob_match(p, name) for p in self.exclude):
            return None
        chosen: dict[str, Any] = {"weight": self.weight, "input": self.input,
                                  "output": self.output, "keep": None, "skip": False}
        matched = []
        for i, rule in enumerate(self.rules):
            if rule.matches(name, type_name_):
                matched.append(i)
                chosen.update(rule.overrides())
        extra = {"rules": tuple(matched)}
        if chosen["skip"]:
            return None
        if chosen["keep"] not in (None, "none"):
            return LayerSpec(keep=chosen["keep"], extra=extra)
        weight, inp, out = chosen["weight"], chosen["input"], chosen["output"]
        if self.mode == "weight_only" or type_name_ in WEIGHT_ONLY_TYPES:
            inp = out = None
        if self.mode == "dynamic":
            inp = inp.with_(dynamic=True) if inp is not None else None
            out = out.with_(dynamic=True) if out is not None else None
        if weight is None and inp is None and out is None:
            return None
        return LayerSpec(weight=weight, input=inp, output=out, extra=extra)

    def unmatched_patterns(self, names: Iterable[str]) -> list[str]:
        """Rule, include and exclude patterns that match no module name.

        A recipe naming layers that do not exist is usually a typo or a recipe
        written for another model; ``flows`` warns or raises with this list.
        Only names count: a rule limited to ``types`` is not reported because
        the model lacks that type (presets rely on that).

        Args:
            names: qualified module names (a mapping name -> module works too).

        Returns:
            The patterns (each once, in recipe order) that match no name.

        Example:
            >>> Recipe(exclude=("lm_head",)).unmatched_patterns(["encoder.fc"])
            ['lm_head']
        """
        all_names = list(names)
        missing: list[str] = []
        for pattern in (*(r.pattern for r in self.rules), *self.include, *self.exclude):
            if pattern not in missing and not any(glob_match(pattern, n) for n in all_names):
                missing.append(pattern)
        return missing

    # --- building -----------------------------------------------------------

    def with_rules(self, *rules: Rule) -> Recipe:
        """A copy with ``rules`` appended (so they win over the existing ones).

        Example:
            >>> Recipe().with_rules(Rule("head", skip=True)).layer_spec("head", "Linear") is None
            True
        """
        return replace(self, rules=(*self.rules, *rules))

    def with_(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def describe(self) -> str:
        """A short multi-line summary for humans.

        Example:
            >>> print(Recipe("demo").describe().splitlines()[0])
            Recipe 'demo' (static)
        """
        head = f"Recipe {self.name!r} ({self.mode}"
        head += f", backend {self.backend})" if self.backend else ")"
        lines = [head + (f": {self.description}" if self.description else "")]
        for role in SPEC_ROLES:
            spec = getattr(self, role)
            lines.append(f"  {role + ':':8}{'float' if spec is None else spec}")
        lines.append(f"  modules: {', '.join(self.module_types)}")
        if self.include:
            lines.append(f"  include: {', '.join(self.include)}")
        if self.exclude:
            lines.append(f"  exclude: {', '.join(self.exclude)}")
        for i, rule in enumerate(self.rules):
            lines.append(f"  rule[{i}] {rule}")
        lines.append(f"  fuse={self.fuse} bias_correction={self.bias_correction} "
                     f"calibration_batches={self.calibration_batches}")
        return "\n".join(lines)

    # --- files --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no None: float is ``"none"``, an unset backend is left out).

        Example:
            >>> Recipe("demo").to_dict()["input"]
            {'format': 'int8', 'symmetric': False}
        """
        data: dict[str, Any] = {"version": FILE_VERSION, "name": self.name, "mode": self.mode}
        if self.backend is not None:
            data["backend"] = self.backend
        data["description"] = self.description
        for role in SPEC_ROLES:
            data[role] = spec_to_data(getattr(self, role))
        data["module_types"] = list(self.module_types)
        data["include"] = list(self.include)
        data["exclude"] = list(self.exclude)
        data["fuse"] = self.fuse
        data["bias_correction"] = self.bias_correction
        data["calibration_batches"] = self.calibration_batches
        if self.smooth_alpha is not None:
            data["smooth_alpha"] = self.smooth_alpha
        data["rules"] = [rule.to_dict() for rule in self.rules]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build and validate a recipe from plain data; missing keys take the defaults.

        Errors name the full key path, e.g. ``rules[2].weight.formt: unknown key``.

        Example:
            >>> Recipe.from_dict({"name": "w8", "mode": "weight_only"}).input is None
            True
        """
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a mapping, got {type_name(data)}")
        known = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in data.items():
            if key == "version":
                if value != FILE_VERSION:
                    raise RecipeError(f"recipe file version {value!r} is not supported; this "
                                      f"lowbit reads version {FILE_VERSION}", "version")
                continue
            if key not in known:
                raise RecipeError(f"unknown key; known keys are {['version', *known]}", str(key))
            kwargs[key] = value
        # __post_init__ turns mappings into specs / rules, naming the key path on error.
        return cls(**kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the recipe as YAML (``.yaml`` / ``.yml``) or TOML (``.toml``).

        Returns:
            The path written, so ``Recipe.load(r.save(p)) == r``.
        """
        return files.save_data(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe saved by `save` or written by hand.

        Example:
            >>> Recipe.load("recipe.yaml")  # doctest: +SKIP
        """
        data = files.load_data(path)
        try:
            return cls.from_dict(data)
        except RecipeError as err:
            raise RecipeError(f"{err.reason} (in {path})", err.key) from err


def _check_roles(weight: Any, inp: Any, out: Any, where: str) -> None:
    """Weight specs are never dynamic; clipping search is for weights only."""
    if isinstance(weight, QuantSpec) and weight.dynamic:
        raise RecipeError("dynamic applies to activations only; remove it",
                          join_key(where, "weight.dynamic"))
    for role, spec in (("input", inp), ("output", out)):
        if isinstance(spec, QuantSpec) and spec.clip_search:
            raise RecipeError("clip_search applies to weights only; remove it",
                              join_key(where, f"{role}.clip_search"))


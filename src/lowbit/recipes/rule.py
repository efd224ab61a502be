"""`Rule`: a per-layer override in a recipe, chosen by module name glob and type.

Rules are applied in order; a later rule overrides an earlier one field by
field, and a field a rule leaves out (``"inherit"``) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from lowbit.recipes.spec import FLOAT_KEEPS, QuantSpec, RecipeError, check_type, join_key, type_name

INHERIT = "inherit"
# "none" in a file (or None in Python) means: this tensor stays in float.
FLOAT_WORDS = ("none", "float")
RULE_KEEPS = (*FLOAT_KEEPS, "none")
SPEC_ROLES = ("weight", "input", "output")


def glob_match(pattern: str, name: str) -> bool:
    """Whether ``pattern`` matches a module's qualified name or one of its ancestors.

    The match is case-sensitive (module names are) and uses `fnmatch` syntax:
    ``*`` matches any run of characters, dots included. A pattern that names a
    parent module matches all of its children too, so ``"encoder.layer.11"``
    covers ``"encoder.layer.11.attention.self.query"``.

    Args:
        pattern: glob such as ``"encoder.layer.*.attention.*"``.
        name: qualified module name from ``model.named_modules()``.

    Returns:
        True when the name or one of its dotted prefixes matches.

    Example:
        >>> glob_match("features.0", "features.0.1")
        True
    """
    if fnmatchcase(name, pattern):
        return True
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts)))


def as_spec(value: Any, key: str, inherit_ok: bool = False) -> QuantSpec | str | None:
    """Coerce a spec slot: a `QuantSpec`, a mapping of its fields, None / "none" (float).

    With ``inherit_ok`` the word ``"inherit"`` (a rule that leaves the slot alone)
    is accepted too.
    """
    if value is None or isinstance(value, QuantSpec):
        return value
    if isinstance(value, str) and value.lower() in FLOAT_WORDS:
        return None
    if inherit_ok and value == INHERIT:
        return INHERIT
    if isinstance(value, dict):
        return QuantSpec.from_dict(value, key)
    choices = "a mapping of QuantSpec fields or 'none' (float)"
    raise RecipeError(f"must be {choices}, got {value!r} ({type_name(value)})", key)


def as_str_tuple(value: Any, key: str) -> tuple[str, ...]:
    """A tuple of strings from a list / tuple (a lone string counts as one item)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise RecipeError(f"must be a list of strings, got {value!r} ({type_name(value)})", key)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise RecipeError(f"must be a non-empty string, got {item!r}", f"{key}[{i}]")
    return tuple(value)


def spec_to_data(spec: QuantSpec | None) -> dict[str, Any] | str:
    # TOML has no null, so float is written as the word "none" in both formats.
    return "none" if spec is None else spec.to_dict()


@dataclass(frozen=True)
class Rule:
    """Override the recipe for the layers whose name (and type) match.

    Args:
        pattern: `glob_match` pattern over qualified module names
            (``"encoder.layer.*.attention.*"``, ``"features.0"``, ``"*"``).
        types: module class names the rule is limited to (``("Linear",)``);
            empty = any type the recipe quantizes.
        weight: `QuantSpec` for the weight, None / ``"none"`` to leave it in
            float, ``"inherit"`` (default) to keep what earlier rules chose.
        input: the same for the layer's input.
        output: the same for the layer's output.
        keep: ``"fp32"``, ``"fp16"`` or ``"bf16"``: leave the layer unquantized in that
            float dtype; ``"none"`` undoes an earlier rule's keep; None inherits.
        skip: True leaves the layer untouched; False undoes an earlier skip; None inherits.

    Example:
        >>> r = Rule("encoder.layer.*.attention.*", types=("Linear",), keep="fp16")
        >>> r.matches("encoder.layer.0.attention.self.query", "Linear")
        True
    """

    pattern: str = "*"
    types: tuple[str, ...] = ()
    weight: QuantSpec | str | None = INHERIT
    input: QuantSpec | str | None = INHERIT
    output: QuantSpec | str | None = INHERIT
    keep: str | None = None
    skip: bool | None = None

    def __post_init__(self) -> None:
        check_type(self.pattern, (str,), "pattern", "a glob over module names")
        if not self.pattern:
            raise RecipeError("must not be empty; use '*' to match every module", "pattern")
        object.__setattr__(self, "types", as_str_tuple(self.types, "types"))
        for role in SPEC_ROLES:
            object.__setattr__(self, role, as_spec(getattr(self, role), role, inherit_ok=True))
        if self.keep is not None and self.keep not in RULE_KEEPS:
            raise RecipeError(f"{self.keep!r} is unknown; use one of {RULE_KEEPS}", "keep")
        check_type(self.skip, (bool, type(None)), "skip", "true, false or null")
        if self.weight is not None and self.weight != INHERIT and self.weight.dynamic:
            raise RecipeError("dynamic applies to activations only; remove it", "weight.dynamic")
        for role in ("input", "output"):
            spec = getattr(self, role)
            if isinstance(spec, QuantSpec) and spec.clip_search:
                raise RecipeError("clip_search applies to weights only", f"{role}.clip_search")
        if self.overrides() == {}:
            raise RecipeError(
                f"rule {self.pattern!r} changes nothing; give weight, input, output, keep or skip")

    def matches(self, name: str, module_type: str) -> bool:
        """Whether the rule applies to module ``name`` of class ``module_type``."""
        return (not self.types or module_type in self.types) and glob_match(self.pattern, name)

    def overrides(self) -> dict[str, Any]:
        """The fields this rule sets (those not inherited)."""
        found: dict[str, Any] = {r: getattr(self, r) for r in SPEC_ROLES
                                 if getattr(self, r) != INHERIT}
        if self.keep is not None:
            found["keep"] = self.keep
        if self.skip is not None:
            found["skip"] = self.skip
        return found

    def with_(self, **changes: Any) -> Rule:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Only what the rule sets: inherited slots are left out, float is ``"none"``."""
        data: dict[str, Any] = {"pattern": self.pattern}
        if self.types:
            data["types"] = list(self.types)
        for key, value in self.overrides().items():
            data[key] = spec_to_data(value) if key in SPEC_ROLES else value
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "rule") -> Rule:
        """Build a rule from a mapping; errors name the key path under ``where``.

        Example:
            >>> Rule.from_dict({"pattern": "classifier", "keep": "fp32"}).keep
            'fp32'
        """
        if not isinstance(data, dict):
            raise RecipeError(f"must be a mapping with a pattern, got {type_name(data)}", where)
        known = ("pattern", "types", *SPEC_ROLES, "keep", "skip")
        for key in data:
            if key not in known:
                raise RecipeError(f"unknown key; known keys are {list(known)}",
                                  join_key(where, str(key)))
        try:
            return cls(**data)
        except RecipeError as err:
            raise err.under(where) from err

    def __str__(self) -> str:
        text = repr(self.pattern)
        if self.types:
            text += f" ({', '.join(self.types)})"
        parts = []
        for key, value in self.overrides().items():
            if key in SPEC_ROLES:
                parts.append(f"{key}={'float' if value is None else value}")
            elif key == "skip":
                parts.append("skip" if value else "unskip")
            else:
                parts.append(f"keep={value}")
        return f"{text}: {', '.join(parts)}"

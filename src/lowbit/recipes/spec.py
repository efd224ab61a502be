"""`QuantSpec`: how one tensor is quantized; `LayerSpec`: the specs of one layer.

Frozen values: they describe, never run. The `lowbit.nn` layer turns a
`QuantSpec` into a `Quantizer` module.

A `RecipeError` carries the dotted path of the offending key (``key``), so
that a mistake deep in a recipe file is reported as e.g.
``rules[2].weight.format: unknown format 'unt8'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from lowbit.errors import LowbitError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives.granularity import Granularity, as_granularity
from lowbit.primitives.rounding import ROUNDING_MODES

OBSERVER_NAMES = ("minmax", "moving_average", "ema", "histogram")
RANGE_METHODS = ("minmax", "percentile", "entropy", "mse")
Mode = Literal["static", "dynamic", "weight_only"]
MODES = ("static", "dynamic", "weight_only")
FLOAT_KEEPS = ("fp32", "fp16", "bf16")
LEARN_MODES = ("none", "lsq", "lsq+")


def join_key(prefix: str | None, key: str | None) -> str | None:
    """``join_key("rules[2]", "weight.format") == "rules[2].weight.format"``."""
    if not prefix:
        return key
    if not key:
        return prefix
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


class RecipeError(LowbitError, ValueError):
    """A recipe or spec is invalid; the message names the offending key.

    Args:
        message: what is wrong and what to do.
        key: dotted path of the offending key (``"rules[2].weight.format"``), if any;
            the message is prefixed with it.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.reason = message

    def under(self, prefix: str) -> RecipeError:
        """The same error, one level deeper: its key prefixed with ``prefix``."""
        return RecipeError(self.reason, join_key(prefix, self.key))


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_type(value: Any, expected: tuple[type, ...], key: str, what: str) -> None:
    """Raise a `RecipeError` naming ``key`` unless ``value`` is one of ``expected``.

    ``bool`` is a subclass of ``int`` in Python; a YAML ``true`` given for an
    integer field is a mistake, so it is refused unless ``bool`` is expected.
    """
    ok = isinstance(value, expected)
    if isinstance(value, bool) and bool not in expected:
        ok = False
    if not ok:
        raise RecipeError(f"must be {what}, got {value!r} ({type_name(value)})", key)


# field -> (accepted types, description for the message)
_SPEC_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), "a format name such as 'int8'"),
    "granularity": ((str,), "'tensor', 'channel', 'token' or 'group'"),
    "axis": ((int, type(None)), "an integer or null"),
    "group_size": ((int, type(None)), "a positive integer or null"),
    "symmetric": ((bool,), "true or false"),
    "observer": ((str,), f"one of {OBSERVER_NAMES}"),
    "method": ((str,), f"one of {RANGE_METHODS}"),
    "percentile": ((int, float), "a number in (0, 100]"),
    "momentum": ((int, float), "a number in [0, 1)"),
    "rounding": ((str,), f"one of {ROUNDING_MODES}"),
    "dynamic": ((bool,), "true or false"),
    "clip_search": ((bool,), "true or false"),
    "learn": ((str,), f"one of {LEARN_MODES}"),
}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor (a weight, an input or an output) is quantized.

    Args:
        format: format name (``"int8"``, ``"uint8"``, ``"int4"``, ``"fp8_e4m3fn"``, ...).
        granularity: ``"tensor"``, ``"channel"``, ``"token"`` or ``"group"``.
        axis: channel axis or group axis; ``None`` lets the layer choose (weights:
            its output-channel axis for ``"channel"``, its input-channel axis for
            ``"group"``; ConvTranspose stores output channels on axis 1).
        group_size: elements per group for ``"group"``.
        symmetric: zero point fixed (0 for signed formats).
        observer: range estimator: ``"minmax"``, ``"moving_average"``, ``"ema"``, ``"histogram"``.
        method: how a histogram observer picks the range: ``"minmax"``, ``"percentile"``,
            ``"entropy"`` or ``"mse"``.
        percentile: for ``method="percentile"``.
        momentum: for the EMA observer.
        rounding: rounding mode of the deployment backend.
        dynamic: parameters computed from each batch at run time (activations only).
        clip_search: weights only: MSE search of a per-channel clipping range.
        learn: quantization-aware training only: ``"none"`` (scale from statistics),
            ``"lsq"`` (learned scale, Esser et al.) or ``"lsq+"`` (learned scale and
            offset, Bhalgat et al.; asymmetric specs only). PTQ ignores it.

    Example:
        >>> QuantSpec("int4", "group", group_size=32).granularity_value().group_size
        32
    """

    format: str = "int8"
    granularity: str = "tensor"
    axis: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    observer: str = "minmax"
    method: str = "minmax"
    percentile: float = 99.99
    momentum: float = 0.9
    rounding: str = "half_even"
    dynamic: bool = False
    clip_search: bool = False
    learn: str = "none"

    def __post_init__(self) -> None:
        # Accept the value objects too, but store names so specs compare and serialise.
        if isinstance(self.format, QFormat):
            object.__setattr__(self, "format", self.format.name)
        if isinstance(self.granularity, Granularity):
            g = self.granularity
            object.__setattr__(self, "axis", g.axis if g.kind in ("channel", "group") else None)
            object.__setattr__(self, "group_size", g.group_size)
            object.__setattr__(self, "granularity", g.kind)
        for name, (types, what) in _SPEC_TYPES.items():
            check_type(getattr(self, name), types, name, what)
        object.__setattr__(self, "percentile", float(self.percentile))
        object.__setattr__(self, "momentum", float(self.momentum))
        try:
            fmt = get_format(self.format)
        except LowbitError as err:
            raise RecipeError(str(err), "format") from err
        try:
            kind = as_granularity(self.granularity, axis=self.axis, group_size=self.group_size).kind
        except LowbitError as err:
            key = "group_size" if "group_size" in str(err) else "granularity"
            raise RecipeError(str(err), key) from err
        object.__setattr__(self, "granularity", kind)  # "per_channel" -> "channel"
        if self.group_size is not None and kind != "group":
            raise RecipeError(
                f"applies to granularity 'group' only, but granularity is {kind!r}; "
                "remove group_size or set granularity: group", "group_size")
        if self.axis is not None and kind not in ("channel", "group"):
            raise RecipeError(
                f"applies to granularity 'channel' or 'group' only, but granularity is {kind!r}; "
                "remove axis", "axis")
        if self.observer not in OBSERVER_NAMES:
            raise RecipeError(f"{self.observer!r} is unknown; use one of {OBSERVER_NAMES}",
                              "observer")
        if self.method not in RANGE_METHODS:
            raise RecipeError(f"{self.method!r} is unknown; use one of {RANGE_METHODS}", "method")
        if self.method != "minmax" and self.observer != "histogram":
            raise RecipeError(
                f"{self.method!r} needs observer: histogram (it picks the range from a "
                f"histogram), but observer is {self.observer!r}", "method")
        if self.rounding not in ROUNDING_MODES:
            raise RecipeError(f"{self.rounding!r} is unknown; use one of {ROUNDING_MODES}",
                              "rounding")
        if self.learn not in LEARN_MODES:
            raise RecipeError(f"{self.learn!r} is unknown; use one of {LEARN_MODES}", "learn")
        if self.learn != "none" and self.dynamic:
            raise RecipeError("a dynamic spec computes its scale from each batch, so it cannot "
                              "be learned; use learn: none or dynamic: false", "learn")
        if self.learn == "lsq+" and self.symmetric:
            raise RecipeError("lsq+ learns an offset, which a symmetric spec fixes at its zero "
                              "point; use learn: lsq, or symmetric: false", "learn")
        if not 0 < self.percentile <= 100:
            raise RecipeError(f"must be in (0, 100], got {self.percentile}", "percentile")
        if not 0 <= self.momentum < 1:
            raise RecipeError(f"must be in [0, 1), got {self.momentum}", "momentum")
        if fmt.kind == "float" and not self.symmetric:
            raise RecipeError(
                f"must be true for float format {fmt.name} (float formats have no zero point)",
                "symmetric")

    @property
    def fmt(self):
        return get_format(self.format)

    def granularity_value(self) -> Granularity:
        return as_granularity(self.granularity, axis=self.axis, group_size=self.group_size)

    def with_(self, **changes: Any) -> QuantSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults (plus ``format``), for short files."""
        default = QuantSpec()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name) or f.name == "format"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> QuantSpec:
        """Build a spec from a mapping; errors name the key path under ``where``.

        Example:
            >>> QuantSpec.from_dict({"format": "uint8", "symmetric": False}).symmetric
            False
        """
        if not isinstance(data, dict):
            raise RecipeError(
                f"must be a mapping of QuantSpec fields (or 'none' for float), "
                f"got {data!r} ({type_name(data)})", where)
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise RecipeError(f"unknown key; known keys are {known}", join_key(where, str(key)))
        try:
            return cls(**data)
        except RecipeError as err:
            raise err.under(where) from err

    def __str__(self) -> str:
        gran = str(self.granularity_value())
        if self.axis is None and self.granularity in ("channel", "group"):
            # The layer picks the axis; printing the placeholder would mislead.
            gran = f"per-group({self.group_size})" if self.group_size else "per-channel"
        text = f"{self.format} {gran}"
        text += " sym" if self.symmetric else " asym"
        if self.dynamic:
            text += " dynamic"
        elif self.observer == "histogram":
            text += f" {self.method}"
        elif self.observer != "minmax":
            text += f" {self.observer}"
        if self.clip_search:
            text += " clip-search"
        if self.rounding != "half_even":
            text += f" round={self.rounding}"
        if self.learn != "none":
            text += f" {self.learn}"
        return text


@dataclass(frozen=True)
class LayerSpec:
    """The quantization of one layer: its weight, input and output specs (None = float).

    ``keep`` names a float dtype (``"fp32"``, ``"fp16"``, ``"bf16"``) for layers
    left unquantized on purpose (mixed precision).
    """

    weight: QuantSpec | None = None
    input: QuantSpec | None = None
    output: QuantSpec | None = None
    keep: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def quantized(self) -> bool:
        return self.keep is None and (self.weight is not None or self.input is not None)

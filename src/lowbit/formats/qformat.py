"""`QFormat`: one frozen value per numeric format.

A format knows its code range (qmin/qmax), the torch dtype its codes are
stored in, and the ONNX element type a runtime uses for it. It never touches
a model or a tensor; casting lives in :mod:`lowbit.formats.floats` and the
affine map in :mod:`lowbit.primitives`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from lowbit.errors import FormatError

Kind = Literal["int", "float", "binary", "ternary"]

# How a float format spends its all-ones exponent:
#   "ieee": Inf and NaN as in IEEE 754 (fp16, bf16, fp8 e5m2);
#   "fn":   finite only, NaN is the single all-ones pattern (fp8 e4m3fn);
#   "fnuz": finite only, NaN is the negative-zero pattern, no -0 (fp8 *fnuz);
#   "none": finite only and no NaN at all (fp6, fp4 e2m1 of OCP MX).
Special = Literal["ieee", "fn", "fnuz", "none"]

# ONNX TensorProto element types, copied as numbers so the core never imports onnx.
ONNX_TYPES = {
    "float32": 1,
    "uint8": 2,
    "int8": 3,
    "uint16": 4,
    "int16": 5,
    "int32": 6,
    "float16": 10,
    "bfloat16": 16,
    "float8e4m3fn": 17,
    "float8e4m3fnuz": 18,
    "float8e5m2": 19,
    "float8e5m2fnuz": 20,
    "uint4": 21,
    "int4": 22,
    "float4e2m1": 23,
    "float8e8m0": 24,
    "uint2": 25,
    "int2": 26,
}

MIN_INT_BITS = 2
MAX_INT_BITS = 16


@dataclass(frozen=True)
class QFormat:
    """A numeric format for quantized codes.

    Args:
        name: canonical name, e.g. ``"int8"``, ``"uint4"``, ``"fp8_e4m3fn"``.
        kind: ``"int"`` (uniform integer grid), ``"float"`` (minifloat),
            ``"binary"`` ({-1, +1}) or ``"ternary"`` ({-1, 0, +1}).
        bits: bits per code.
        signed: whether codes can be negative.
        narrow_range: integers only: drop the most negative code so the range
            is symmetric ([-127, 127] for int8).
        exponent_bits, mantissa_bits, exponent_bias, special: floats only.

    Example:
        >>> from lowbit.formats import INT8
        >>> INT8.qmin, INT8.qmax
        (-128, 127)
    """

    name: str
    kind: Kind
    bits: int
    signed: bool = True
    narrow_range: bool = False
    exponent_bits: int = 0
    mantissa_bits: int = 0
    exponent_bias: int = 0
    special: Special = "none"

    # --- integer range -------------------------------------------------------------
    @property
    def qmin(self) -> float:
        """Smallest code (integers) or most negative finite value (floats)."""
        if self.kind == "float":
            return -self.max_finite if self.signed else 0.0
        if self.kind in ("binary", "ternary"):
            return -1
        if not self.signed:
            return 0
        low = -(1 << (self.bits - 1))
        return low + 1 if self.narrow_range else low

    @property
    def qmax(self) -> float:
        """Largest code (integers) or largest finite value (floats)."""
        if self.kind == "float":
            return self.max_finite
        if self.kind in ("binary", "ternary"):
            return 1
        if not self.signed:
            return (1 << self.bits) - 1
        return (1 << (self.bits - 1)) - 1

    @property
    def levels(self) -> int:
        """Number of codes that stand for a value.

        For floats these are the codes of finite values: NaN and Inf patterns are
        not counted, +0 and -0 are two codes.
        """
        if self.kind == "binary":
            return 2
        if self.kind == "ternary":
            return 3
        if self.kind == "int":
            return int(self.qmax - self.qmin + 1)
        codes = 1 << self.bits
        if self.special == "ieee":
            return codes - 2 * (1 << self.mantissa_bits)  # all-ones exponent: Inf and NaNs
        if self.special == "fn":
            return codes - 2  # S.1111.111
        if self.special == "fnuz":
            return codes - 1  # the negative-zero pattern
        return codes

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "binary", "ternary")

    # --- float layout ---------------------------------------------------------------
    @property
    def max_exponent(self) -> int:
        """Unbiased exponent of the largest finite value (floats)."""
        field = (1 << self.exponent_bits) - 1
        if self.special == "ieee":
            field -= 1  # all-ones exponent is Inf/NaN
        return field - self.exponent_bias

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal value (floats)."""
        return 1 - self.exponent_bias

    @property
    def max_finite(self) -> float:
        """Largest finite value of a float format."""
        if self.kind != "float":
            return float(self.qmax)
        top_mantissa = (1 << self.mantissa_bits) - 1
        if self.special == "fn":
            top_mantissa -= 1  # S.1111.111 is NaN
        return 2.0**self.max_exponent * (1 + top_mantissa / (1 << self.mantissa_bits))

    @property
    def min_normal(self) -> float:
        return 2.0**self.min_exponent

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def has_inf(self) -> bool:
        return self.kind == "float" and self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.kind == "float" and self.special != "none"

    # --- storage --------------------------------------------------------------------
    @property
    def storage_dtype(self) -> torch.dtype:
        """The torch dtype :func:`lowbit.primitives.quantize` returns codes in.

        Sub-byte formats without a torch dtype (int4, fp4, ...) hold one code per
        byte; :mod:`lowbit.export` packs them.
        """
        if self.kind == "float":
            native = {
                "fp16": torch.float16,
                "bf16": torch.bfloat16,
                "fp8_e4m3fn": torch.float8_e4m3fn,
                "fp8_e5m2": torch.float8_e5m2,
                "fp8_e4m3fnuz": torch.float8_e4m3fnuz,
                "fp8_e5m2fnuz": torch.float8_e5m2fnuz,
            }
            # non-native layouts hold their bit pattern right-aligned in an integer container
            return native.get(self.name, torch.uint8 if self.bits <= 8 else torch.int16)
        if self.kind in ("binary", "ternary"):
            return torch.int8
        if self.signed:
            return torch.int8 if self.bits <= 8 else torch.int16
        return torch.uint8 if self.bits <= 8 else torch.uint16

    @property
    def onnx_type(self) -> int | None:
        """ONNX TensorProto element type, or None where ONNX has no such type.

        Integer widths ONNX lacks (int3, int5..7) and narrow ranges are not
        native: they are stored in the next wider ONNX type by the exporter.
        """
        if self.kind != "int" and self.kind != "float":
            return None
        key = {
            "fp16": "float16",
            "bf16": "bfloat16",
            "fp8_e4m3fn": "float8e4m3fn",
            "fp8_e5m2": "float8e5m2",
            "fp8_e4m3fnuz": "float8e4m3fnuz",
            "fp8_e5m2fnuz": "float8e5m2fnuz",
            "fp4_e2m1": "float4e2m1",
        }.get(self.name, self.name)
        if self.narrow_range:
            return None
        return ONNX_TYPES.get(key)

    def __repr__(self) -> str:
        return f"QFormat({self.name})"


def int_format(bits: int, signed: bool = True, narrow_range: bool = False) -> QFormat:
    """An integer format of any width from 2 to 16 bits.

    Example:
        >>> int_format(7, signed=False).qmax
        127
    """
    if not isinstance(bits, int) or not MIN_INT_BITS <= bits <= MAX_INT_BITS:
        raise FormatError(
            f"integer formats have {MIN_INT_BITS} to {MAX_INT_BITS} bits, got {bits!r}; "
            "use BINARY for 1 bit or a float format for wider ranges"
        )
    if narrow_range and not signed:
        raise FormatError("narrow_range applies to signed integers only; use signed=True")
    name = f"{'' if signed else 'u'}int{bits}" + ("_narrow" if narrow_range else "")
    return QFormat(name=name, kind="int", bits=bits, signed=signed, narrow_range=narrow_range)


def float_format(
    name: str, exponent_bits: int, mantissa_bits: int, special: Special, bias: int | None = None
) -> QFormat:
    """A signed minifloat with the given layout (bias defaults to 2**(e-1) - 1).

    Example:
        >>> float_format("fp8_e3m4", 3, 4, "fn").max_finite
        30.0
    """
    if not 1 <= exponent_bits <= 8 or mantissa_bits < 0 or exponent_bits + mantissa_bits > 15:
        raise FormatError(
            f"float layout e{exponent_bits}m{mantissa_bits} is not supported; "
            "use 1..8 exponent bits and at most 15 bits in all"
        )
    if special not in ("ieee", "fn", "fnuz", "none"):
        raise FormatError(
            f"unknown special-value rule {special!r}; use 'ieee', 'fn', 'fnuz' or 'none'"
        )
    if special in ("ieee", "fn") and mantissa_bits < 1:
        raise FormatError(
            f"special={special!r} encodes NaN in the mantissa; use at least one mantissa bit"
        )
    if bias is None:
        bias = (1 << (exponent_bits - 1)) - 1
    return QFormat(
        name=name,
        kind="float",
        bits=1 + exponent_bits + mantissa_bits,
        signed=True,
        exponent_bits=exponent_bits,
        mantissa_bits=mantissa_bits,
        exponent_bias=bias,
        special=special,
    )


INT8 = int_format(8)
UINT8 = int_format(8, signed=False)
INT16 = int_format(16)
UINT16 = int_format(16, signed=False)
INT4 = int_format(4)
UINT4 = int_format(4, signed=False)
INT2 = int_format(2)
UINT2 = int_format(2, signed=False)
BINARY = QFormat(name="binary", kind="binary", bits=1, signed=True)
TERNARY = QFormat(name="ternary", kind="ternary", bits=2, signed=True)

FP16 = float_format("fp16", 5, 10, "ieee")
BF16 = float_format("bf16", 8, 7, "ieee")
FP8_E4M3FN = float_format("fp8_e4m3fn", 4, 3, "fn")
FP8_E5M2 = float_format("fp8_e5m2", 5, 2, "ieee")
FP8_E4M3FNUZ = float_format("fp8_e4m3fnuz", 4, 3, "fnuz", bias=8)
FP8_E5M2FNUZ = float_format("fp8_e5m2fnuz", 5, 2, "fnuz", bias=16)
FP6_E2M3 = float_format("fp6_e2m3", 2, 3, "none")
FP6_E3M2 = float_format("fp6_e3m2", 3, 2, "none")
FP4_E2M1 = float_format("fp4_e2m1", 2, 1, "none")

NAMED: dict[str, QFormat] = {
    f.name: f
    for f in (
        INT8, UINT8, INT16, UINT16, INT4, UINT4, INT2, UINT2, BINARY, TERNARY,
        FP16, BF16, FP8_E4M3FN, FP8_E5M2, FP8_E4M3FNUZ, FP8_E5M2FNUZ,
        FP6_E2M3, FP6_E3M2, FP4_E2M1,
    )
}  # fmt: skip

_ALIASES = {
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "e4m3": "fp8_e4m3fn",
    "fp8": "fp8_e4m3fn",
    "float8e4m3fn": "fp8_e4m3fn",
    "float8_e4m3fn": "fp8_e4m3fn",
    "e5m2": "fp8_e5m2",
    "float8e5m2": "fp8_e5m2",
    "float8_e5m2": "fp8_e5m2",
    "fp4": "fp4_e2m1",
    "float4e2m1": "fp4_e2m1",
    "e2m1": "fp4_e2m1",
    "int1": "binary",
}

_INT_NAME = re.compile(r"^(u?)int(\d+)(_narrow)?$")


def get_format(name: str | QFormat) -> QFormat:
    """Look a format up by name (``"int8"``, ``"uint5"``, ``"int8_narrow"``, ``"fp8"``, ...).

    Example:
        >>> get_format("uint4").qmax
        15
    """
    if isinstance(name, QFormat):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in NAMED:
        return NAMED[key]
    match = _INT_NAME.match(key)
    if match:
        return int_format(int(match[2]), signed=not match[1], narrow_range=bool(match[3]))
    known = ", ".join(sorted(NAMED))
    raise FormatError(
        f"unknown format {name!r}; use one of {known}, or intN / uintN for N in 2..16"
    )

"""Power-of-two scales and fixed point with a fractional length.

Fixed point (Qm.n) stores ``q`` and means ``q · 2**-frac_bits``: the scale is a
power of two, so rescaling is a shift. Older quantizers (Ristretto,
Distiller's "fractional length", many DSP/NPU toolchains) choose the
fractional length per tensor from its range; :func:`pow2_scale` turns any
positive scale into a power of two for backends that only shift.

Rounding is half to even, as in ONNX QuantizeLinear. Quantizing runs in
float64, where ``x · 2**f`` is exact for every float32 ``x`` and every
fractional length allowed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lowbit.errors import FormatError, InputError, QParamsError

__all__ = [
    "MAX_FRAC_BITS",
    "FixedPoint",
    "choose_fraction_length",
    "fixed_point_dequantize",
    "fixed_point_quantize",
    "pow2_exponent",
    "pow2_scale",
]

MIN_FIXED_BITS = 2
MAX_FIXED_BITS = 32
# The scale 2**-frac_bits must be a float32 value and every code's value must be finite.
MAX_FRAC_BITS = 149
_FP32_MAX = 3.4028234663852886e38

Pow2Mode = Literal["ceil", "round", "floor"]


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point format: ``bits``-bit integers scaled by ``2**-frac_bits``.

    Args:
        bits: word length, 2..32.
        frac_bits: fractional length; may be negative (scale > 1) or larger
            than ``bits`` (all values below 1).
        signed: two's complement (True) or unsigned.

    Example:
        >>> q = FixedPoint(8, 5)  # Q2.5: -4.0 .. 3.96875 by 1/32
        >>> q.scale, q.qmin, q.qmax, q.max_value
        (0.03125, -128, 127, 3.96875)
    """

    bits: int
    frac_bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        if (
            not isinstance(self.bits, int)
            or isinstance(self.bits, bool)
            or not MIN_FIXED_BITS <= self.bits <= MAX_FIXED_BITS
        ):
            raise FormatError(
                f"fixed point has {MIN_FIXED_BITS} to {MAX_FIXED_BITS} bits, got {self.bits!r}"
            )
        if not isinstance(self.frac_bits, int) or isinstance(self.frac_bits, bool):
            raise FormatError(f"frac_bits must be an int, got {self.frac_bits!r}")
        if self.frac_bits > MAX_FRAC_BITS or math.ldexp(self.qmax, -self.frac_bits) > _FP32_MAX:
            raise FormatError(
                f"frac_bits={self.frac_bits} with {self.bits} bits leaves float32's range; "
                f"use frac_bits in [{_min_frac_bits(self.bits, self.signed)}, {MAX_FRAC_BITS}]"
            )

    @property
    def scale(self) -> float:
        """The value of one step, ``2**-frac_bits``."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def min_value(self) -> float:
        return math.ldexp(self.qmin, -self.frac_bits)

    @property
    def max_value(self) -> float:
        return math.ldexp(self.qmax, -self.frac_bits)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The narrowest torch integer dtype holding every code."""
        if self.signed:
            return torch.int8 if self.bits <= 8 else torch.int16 if self.bits <= 16 else torch.int32
        return torch.uint8 if self.bits <= 8 else torch.int32 if self.bits <= 31 else torch.int64

    def __str__(self) -> str:
        prefix = "Q" if self.signed else "UQ"
        return f"{prefix}{self.bits - self.frac_bits - int(self.signed)}.{self.frac_bits}"


def _min_frac_bits(bits: int, signed: bool = True) -> int:
    """Smallest fractional length whose largest value is still a finite float32."""
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    f = -128  # qmax >= 1 and 2**127 < float32 max < 2**128: the answer is at least -127
    while math.ldexp(qmax, -f) > _FP32_MAX:
        f += 1
    return f


def _check_tensor(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.is_complex() or x.dtype == torch.bool:
        raise InputError(f"{what} expects a real torch.Tensor")
    return x


def choose_fraction_length(x: Tensor, bits: int, signed: bool = True) -> int:
    """The largest fractional length at which no value of ``x`` is clipped.

    "Not clipped" means ``qmin ≤ x · 2**f ≤ qmax`` before rounding, for the
    largest and the most negative value alike (so ``[-1, 0.5]`` in 8 signed bits
    gets ``f = 7``: -1 is exactly -128/128). The result is clamped to the range
    where the format stays inside float32 (``FixedPoint`` accepts it).

    Args:
        x: real tensor, non-empty, finite.
        bits: word length, 2..32.
        signed: two's complement or unsigned (negative values then clip at 0
            whatever ``f`` is, and are ignored here).

    Returns:
        The fractional length ``f``. An all-zero tensor gets the value for
        ``max|x| = 1``, since any ``f`` represents it exactly.

    Raises:
        InputError: empty input or NaN/Inf.
        FormatError: ``bits`` out of range.

    Example:
        >>> import torch
        >>> choose_fraction_length(torch.tensor([0.7, -2.9]), bits=8)
        5
    """
    fmt = FixedPoint(bits, 0, signed)  # validates bits
    x = _check_tensor(x, "choose_fraction_length")
    if x.numel() == 0:
        raise InputError("cannot choose a fraction length for an empty tensor")
    lo, hi = (float(v) for v in torch.aminmax(x.detach().double()))
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise InputError(
            "the tensor holds NaN or Inf; a fixed-point range cannot cover them. "
            "Clean it first (torch.nan_to_num) or exclude those values"
        )
    limits = []  # largest f with value * 2**f inside [qmin, qmax], for each side that matters
    if hi > 0:
        limits.append(_largest_f(hi, fmt.qmax))
    if lo < 0 and signed:
        limits.append(_largest_f(-lo, -fmt.qmin))
    f = min(limits) if limits else _largest_f(1.0, fmt.qmax)
    return max(min(f, MAX_FRAC_BITS), _min_frac_bits(bits, signed))


def _largest_f(a: float, limit: int) -> int:
    """Largest integer f with a · 2**f ≤ limit (a > 0), exactly."""
    f = math.floor(math.log2(limit) - math.log2(a))
    # log2 is rounded: step to the exact answer (ldexp is exact in float64)
    while math.ldexp(a, f) > limit:
        f -= 1
    while math.ldexp(a, f + 1) <= limit:
        f += 1
    return f


def fixed_point_quantize(x: Tensor, fmt: FixedPoint) -> Tensor:
    """Codes ``clamp(round_half_even(x · 2**frac_bits), qmin, qmax)`` in ``fmt.storage_dtype``.

    Args:
        x: real tensor; ±Inf saturates to qmin/qmax.
        fmt: the :class:`FixedPoint` format.

    Returns:
        Integer tensor of codes, same shape.

    Raises:
        InputError: NaN in ``x``.

    Example:
        >>> import torch
        >>> fixed_point_quantize(torch.tensor([0.1, -5.0, 0.046875]), FixedPoint(8, 5)).tolist()
        [3, -128, 2]
    """
    x = _check_tensor(x, "fixed_point_quantize")
    xd = x.detach().to(torch.float64)
    if bool(torch.isnan(xd).any()):
        raise InputError("cannot quantize NaN to fixed point; clean the tensor first")
    q = torch.round(xd * math.ldexp(1.0, fmt.frac_bits)).clamp_(fmt.qmin, fmt.qmax)
    return q.to(fmt.storage_dtype)


def fixed_point_dequantize(q: Tensor, fmt: FixedPoint) -> Tensor:
    """Values ``q · 2**-frac_bits`` as float32 (exact for codes of up to 24 bits; wider
    codes round to the nearest float32).

    Args:
        q: integer codes.
        fmt: the :class:`FixedPoint` format.

    Returns:
        float32 tensor.

    Example:
        >>> import torch
        >>> fixed_point_dequantize(torch.tensor([3, -128]), FixedPoint(8, 5)).tolist()
        [0.09375, -4.0]
    """
    q = _check_tensor(q, "fixed_point_dequantize")
    if q.dtype.is_floating_point:
        raise InputError(f"fixed-point codes are integers, got dtype {q.dtype}")
    return (q.to(torch.float64) * fmt.scale).to(torch.float32)


def pow2_exponent(scale: Tensor, mode: Pow2Mode = "ceil") -> Tensor:
    """Integer exponents ``k`` with ``2**k`` the power-of-two version of ``scale``.

    Args:
        scale: positive finite scales (any shape).
        mode: ``"ceil"``: smallest ``2**k ≥ scale`` (keeps the range: nothing
            that fit before is clipped); ``"floor"``: largest ``2**k ≤ scale``
            (finer steps, may clip); ``"round"``: nearest in log2, i.e. ``2**k``
            with ``k = round(log2(scale))``; the threshold is ``√2 · 2**(k-1)``,
            which no float is exactly, so there are no ties (decided exactly
            for float32 scales).

    Returns:
        int32 tensor of exponents.

    Raises:
        QParamsError: a scale that is not positive and finite, or an unknown mode.

    Example:
        >>> import torch
        >>> pow2_exponent(torch.tensor([0.3, 0.25, 3.0]), "ceil").tolist()
        [-1, -2, 2]
    """
    if mode not in ("ceil", "round", "floor"):
        raise QParamsError(f"mode must be 'ceil', 'round' or 'floor', got {mode!r}")
    scale = _check_tensor(scale, "pow2_exponent")
    s = scale.detach().to(torch.float64)
    if s.numel() and not bool(((s > 0) & torch.isfinite(s)).all()):
        raise QParamsError("scales must be positive and finite to round them to powers of two")
    mant, e = torch.frexp(s)  # s = mant * 2**e, mant in [0.5, 1)
    floor = e - 1
    if mode == "floor":
        k = floor
    elif mode == "ceil":
        k = torch.where(mant == 0.5, floor, e)
    else:
        k = torch.where(mant * mant >= 0.5, e, floor)  # mant >= sqrt(1/2), exact in float64
    return k.to(torch.int32)


def pow2_scale(scale: Tensor, mode: Pow2Mode = "ceil") -> Tensor:
    """Round positive scales to powers of two (see :func:`pow2_exponent` for the modes).

    Args:
        scale: positive finite scales.
        mode: ``"ceil"`` (default: keeps the range, never clips), ``"round"`` or ``"floor"``.

    Returns:
        Tensor of powers of two, in ``scale``'s dtype (float32 for integer input).

    Raises:
        QParamsError: non-positive or non-finite scales, or a result that
            overflows the dtype.

    Example:
        >>> import torch
        >>> pow2_scale(torch.tensor([0.3, 0.25, 3.0])).tolist()
        [0.5, 0.25, 4.0]
    """
    k = pow2_exponent(scale, mode)
    dtype = scale.dtype if scale.dtype.is_floating_point else torch.float32
    # build 2**k bit by bit in float64 (k is far inside its exponent range): exact, no pow()
    out = ((k.to(torch.int64) + 1023) << 52).view(torch.float64).to(dtype)
    if out.numel() and not bool(torch.isfinite(out).all()):
        raise QParamsError(
            f"a power-of-two scale overflows {dtype}; use mode='floor' or a wider dtype"
        )
    return out

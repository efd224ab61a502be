"""Requantization: an int32 accumulator to the next layer's integer codes.

Integer-only inference computes ``q3 = z3 + M * sum((q1 - z1) * (q2 - z2))``
with ``M = s1 * s2 / s3``. Runtimes apply ``M`` in one of two ways, and both
are named modes here (:data:`REQUANT_MODES`) because a simulation has to
agree with the runtime bit for bit:

- ``"fixed_point"`` (gemmlowp / TFLite): ``M = m * 2**(shift - 31)`` with an
  int32 ``m`` in ``[2**30, 2**31)``; the product is taken with
  ``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``. This is
  TFLite's default double-rounding path, not the ``TFLITE_SINGLE_ROUNDING``
  build option.
- ``"float"`` (ONNX Runtime, MLAS ``MlasRequantizeOutput``): ``float32(acc) *
  float32(M)``, rounded to nearest with ties to even.

Every function is pure and vectorised: values are carried in int64 so that the
C int32 semantics (truncating division, arithmetic shifts, the one overflow
case) can be emulated exactly.
"""

from __future__ import annotations

from typing import Literal

import torch

from lowbit.errors import FormatError, GranularityError, InputError, QParamsError

RequantMode = Literal["fixed_point", "float"]
REQUANT_MODES: tuple[str, ...] = ("fixed_point", "float")

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
# TFLite's MultiplyByQuantizedMultiplier DCHECKs shift in [-31, 30]: a left
# shift of 31 would already overflow every non-zero int32 accumulator.
MIN_SHIFT = -31
MAX_SHIFT = 30

# Integer dtypes whose every value converts to int64 exactly.
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

TensorLike = torch.Tensor | int | float


# --- validation helpers ----------------------------------------------------------------


def _int64_tensor(value: torch.Tensor | int, name: str, error: type[Exception]) -> torch.Tensor:
    """``value`` as an int64 tensor, refusing floats, bools and unsigned 16/32/64-bit."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in _INT_DTYPES:
            raise error(
                f"{name} must hold integers (int8/16/32/64 or uint8), got dtype {value.dtype}; "
                f"round and cast it first, e.g. {name}.round().to(torch.int32)"
            )
        return value.to(torch.int64)
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.tensor(value, dtype=torch.int64)
    raise error(f"{name} must be an integer tensor or a Python int, got {type(value).__name__}")


def _check_range(
    t: torch.Tensor, low: int, high: int, name: str, error: type[Exception], hint: str
) -> None:
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < low or hi > high:
        raise error(f"{name} must lie in [{low}, {high}], got values in [{lo}, {hi}]; {hint}")


def _int32_values(value: torch.Tensor | int, name: str) -> torch.Tensor:
    """Validate int32-range integer data (accumulators, SRDHM operands); return int64."""
    t = _int64_tensor(value, name, InputError)
    _check_range(
        t, INT32_MIN, INT32_MAX, name, InputError,
        "integer-only kernels accumulate in int32, so split the reduction or lower the scales",
    )  # fmt: skip
    return t


def _shift_values(value: torch.Tensor | int, low: int, high: int, name: str) -> torch.Tensor:
    t = _int64_tensor(value, name, QParamsError)
    _check_range(
        t, low, high, name, QParamsError,
        "get multiplier and shift from quantize_multiplier(real_multiplier)",
    )  # fmt: skip
    return t


def _real_multiplier(value: TensorLike, name: str = "real_multiplier") -> torch.Tensor:
    """``value`` as a float64 tensor, checked to be finite and non-negative."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            raise QParamsError(f"{name} must be a real number, got a bool tensor")
        t = value.detach().to(torch.float64)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor(float(value), dtype=torch.float64)
    else:
        raise QParamsError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise QParamsError(
            f"{name} contains NaN or Inf; it is s_in * s_weight / s_out, so check that every "
            "scale is finite and the output scale is not zero"
        )
    if t.numel() and bool((t < 0).any()):
        raise QParamsError(
            f"{name} must be >= 0, got {float(t.min())}; scales are positive, so check their signs"
        )
    return t


# --- gemmlowp / TFLite primitives ------------------------------------------------------


def quantize_multiplier(real_multiplier: TensorLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a real multiplier into TFLite's int32 fixed-point multiplier and shift.

    Follows TFLite's ``QuantizeMultiplier``: ``M = frac * 2**exp`` with
    ``frac`` in [0.5, 1), ``m = round_half_away(frac * 2**31)`` (carrying into
    the exponent when it rounds up to ``2**31``), so that
    ``M ≈ m * 2**(shift - 31)``. Multipliers below about ``2**-32`` (shift
    < -31) flush to ``(0, 0)``, as TFLite does.

    Args:
        real_multiplier: ``M >= 0`` as a float or a tensor (e.g. one per channel);
            computed in float64, as TFLite does.

    Returns:
        ``(multiplier, shift)``, int32 tensors of the input's shape; ``multiplier``
        is in [2**30, 2**31) or 0, ``shift`` in [-31, 30] with positive meaning a
        left shift (TFLite's convention).

    Raises:
        QParamsError: ``M`` is negative, NaN, Inf, or too large (shift > 30).

    Example:
        >>> m, s = quantize_multiplier(0.75)
        >>> int(m), int(s)
        (1610612736, 0)
    """
    m = _real_multiplier(real_multiplier)
    frac, exp = torch.frexp(m)  # frexp(0) = (0, 0), which is already TFLite's answer for M == 0
    # frac * 2**31 is exact in float64 and below 2**31, so adding 0.5 is exact too: floor(x + 0.5)
    # is std::round (half away from zero) for the non-negative values seen here.
    q = torch.floor(frac * float(1 << 31) + 0.5).to(torch.int64)
    carry = q == (1 << 31)
    q = torch.where(carry, q // 2, q)
    shift = exp.to(torch.int64) + carry.to(torch.int64)
    underflow = shift < MIN_SHIFT
    q = torch.where(underflow, torch.zeros_like(q), q)
    shift = torch.where(underflow, torch.zeros_like(shift), shift)
    if shift.numel() and int(shift.max()) > MAX_SHIFT:
        raise QParamsError(
            f"real_multiplier up to {float(m.max())} is too large for a fixed-point multiplier "
            f"(TFLite allows shifts up to {MAX_SHIFT}, i.e. M < 2**30); check that the output "
            "scale is not tiny compared with input_scale * weight_scale"
        )
    return q.to(torch.int32), shift.to(torch.int32)


def _trunc_div_pot(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """C's ``x / 2**exponent`` on int64: division that truncates toward zero.

    ``>>`` floors, so negative values with a non-zero remainder are one too low.
    """
    floor = x >> exponent
    inexact = (x & ((1 << exponent) - 1)) != 0
    return floor + ((x < 0) & inexact).to(torch.int64)


def _srdhm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SaturatingRoundingDoublingHighMul on validated int64 values; returns int64."""
    overflow = (a == b) & (a == INT32_MIN)
    ab = a * b  # |a*b| <= 2**62, so int64 holds it
    # With C's truncation toward zero, the sign-dependent nudge makes the quotient
    # floor((a*b + 2**30) / 2**31) for either sign: nearest, ties toward +infinity.
    nudge = torch.where(ab >= 0, torch.tensor(1 << 30), torch.tensor(1 - (1 << 30)))
    high = _trunc_div_pot(ab + nudge, 31)
    # INT32_MIN * INT32_MIN is the only product whose doubled high half leaves int32.
    return torch.where(overflow, torch.tensor(INT32_MAX), high)


def _rdbpot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """RoundingDivideByPOT on validated int64 values; returns int64."""
    mask = (torch.ones_like(exponent) << exponent) - 1
    remainder = x & mask  # mask < 2**31, so the low bits are those of the int32 value
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


def _mbqm(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """MultiplyByQuantizedMultiplier on validated int64 values; returns int64, unsaturated."""
    left = shift.clamp(min=0)
    right = (-shift).clamp(min=0)
    shifted = acc * (torch.ones_like(left) << left)
    high = _srdhm(shifted.clamp(INT32_MIN, INT32_MAX), multiplier)
    # Where acc * 2**left leaves int32, C has undefined behaviour. We answer what C would
    # with wider ints: for 0 <= m < 2**31 SRDHM(a, m) == floor((a*m + 2**30) / 2**31), and
    # dividing through by 2**left keeps a*m inside int64. Overflow needs left >= 1, hence
    # right == 0 and RoundingDivideByPOT leaves the value alone.
    overflow = (shifted < INT32_MIN) | (shifted > INT32_MAX)
    wide = (acc * multiplier + (torch.ones_like(left) << (30 - left))) >> (31 - left)
    return _rdbpot(torch.where(overflow, wide, high), right)


def saturating_rounding_doubling_high_mul(
    a: torch.Tensor | int, b: torch.Tensor | int
) -> torch.Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2**31)`` in int32.

    A nudge of ``2**30`` (or ``1 - 2**30`` for negative products) followed by C's
    truncating division rounds to nearest with ties toward +infinity (-0.5 -> 0,
    0.5 -> 1); ``INT32_MIN * INT32_MIN``, the one product that does not fit,
    saturates to ``INT32_MAX``.

    Args:
        a, b: integer tensors (or ints) with values in int32 range; they broadcast.

    Returns:
        int32 tensor of the broadcast shape.

    Raises:
        InputError: a value is not an integer or lies outside int32.

    Example:
        >>> int(saturating_rounding_doubling_high_mul(torch.tensor(1000), 1 << 30))
        500
    """
    a64 = _int32_values(a, "a")
    b64 = _int32_values(b, "b")
    return _srdhm(a64, b64).to(torch.int32)


def rounding_divide_by_pot(x: torch.Tensor | int, exponent: torch.Tensor | int) -> torch.Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero.

    Args:
        x: integer tensor (or int) with values in int32 range.
        exponent: int or integer tensor in [0, 31]; broadcasts against ``x``
            (e.g. one exponent per channel).

    Returns:
        int32 tensor of the broadcast shape.

    Raises:
        InputError: ``x`` is not integer or lies outside int32.
        QParamsError: ``exponent`` is outside [0, 31].

    Example:
        >>> rounding_divide_by_pot(torch.tensor([5, -5, 6, -6]), 2).tolist()
        [1, -1, 2, -2]
    """
    x64 = _int32_values(x, "x")
    e64 = _shift_values(exponent, 0, 31, "exponent")
    return _rdbpot(x64, e64).to(torch.int32)


def multiply_by_quantized_multiplier(
    acc: torch.Tensor | int, multiplier: torch.Tensor | int, shift: torch.Tensor | int
) -> torch.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier``: ``acc * m * 2**(shift - 31)``, rounded.

    ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc * 2**left, m), right)``
    with ``left = max(shift, 0)`` and ``right = max(-shift, 0)``. Where C would
    overflow on ``acc * 2**left`` (undefined behaviour, only possible for ``M >= 1``)
    the result is computed as with wider integers and then saturated to int32.

    Args:
        acc: integer tensor (int32, or int64 holding int32-range values).
        multiplier: int32 fixed-point multiplier(s) in [0, 2**31 - 1], as from
            :func:`quantize_multiplier`; broadcasts against ``acc``.
        shift: shift(s) in [-31, 30], positive = left; broadcasts against ``acc``.

    Returns:
        int32 tensor of the broadcast shape.

    Raises:
        InputError: ``acc`` is not integer or lies outside int32.
        QParamsError: ``multiplier`` or ``shift`` is out of range.

    Example:
        >>> m, s = quantize_multiplier(0.25)
        >>> multiply_by_quantized_multiplier(torch.tensor([10, -10, 6]), m, s).tolist()
        [3, -3, 2]
    """
    acc64 = _int32_values(acc, "acc")
    m64 = _shift_values(multiplier, 0, INT32_MAX, "multiplier")
    s64 = _shift_values(shift, MIN_SHIFT, MAX_SHIFT, "shift")
    return _mbqm(acc64, m64, s64).clamp(INT32_MIN, INT32_MAX).to(torch.int32)


# --- requantize ------------------------------------------------------------------------


def _along_axis(
    t: torch.Tensor, name: str, ndim: int, axis: int | None, length: int
) -> torch.Tensor:
    """Shape a per-tensor or per-channel parameter so that it broadcasts over the accumulator."""
    if axis is None:
        if t.numel() != 1:
            raise GranularityError(
                f"{name} has {t.numel()} values but per_channel_axis is None; "
                "pass per_channel_axis=<channel axis> for per-channel parameters"
            )
        return t.reshape(())
    if t.numel() == 1:
        return t.reshape(())
    if t.dim() != 1 or t.numel() != length:
        raise GranularityError(
            f"{name} must have 1 or {length} values (the size of axis {axis}), "
            f"got shape {tuple(t.shape)}"
        )
    shape = [1] * ndim
    shape[axis] = length
    return t.reshape(shape)


def _check_output_range(qmin: int, qmax: int) -> None:
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if not isinstance(v, int) or isinstance(v, bool) or not INT32_MIN <= v <= INT32_MAX:
            raise QParamsError(f"{name} must be a Python int in int32 range, got {v!r}")
    if qmin > qmax:
        raise QParamsError(f"qmin ({qmin}) must not exceed qmax ({qmax}); check their order")


def requantize(
    acc: torch.Tensor,
    real_multiplier: TensorLike,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    *,
    mode: RequantMode = "fixed_point",
    per_channel_axis: int | None = None,
) -> torch.Tensor:
    """Turn int32 accumulators into output codes: ``clamp(zp + M * acc, qmin, qmax)``.

    ``mode="fixed_point"`` is TFLite's integer path: ``M`` is split by
    :func:`quantize_multiplier` and applied with
    :func:`multiply_by_quantized_multiplier` (two roundings: ties toward +infinity
    in the high multiply, then ties away from zero in the right shift), then the
    zero point is added and the result clamped.

    ``mode="float"`` is ONNX Runtime's path (MLAS ``MlasRequantizeOutput``, used
    by QLinearConv and QLinearMatMul): ``float32(acc) * float32(M)`` clamped to
    ``[qmin - zp, qmax - zp]``, rounded to nearest with ties to even, plus ``zp``.
    ORT computes ``M`` itself in float32 as ``s1 * s2 / s3``; compute it the same
    way to match ORT bit for bit (it is cast to float32 here once).

    Args:
        acc: integer accumulators (int32, or int64 with int32-range values); any
            bias must already be added in int32 with scale ``s1 * s2``.
        real_multiplier: ``M = s1 * s2 / s3 >= 0``; a float or a tensor with one
            value, or one value per channel along ``per_channel_axis``.
        zero_point: output zero point in ``[qmin, qmax]``; one value, or one per channel.
        qmin, qmax: output code range, e.g. -128 and 127 for int8.
        mode: one of :data:`REQUANT_MODES`.
        per_channel_axis: axis of ``acc`` that per-channel parameters run along;
            None for per-tensor parameters.

    Returns:
        int32 tensor of ``acc``'s shape with values in ``[qmin, qmax]``.

    Raises:
        InputError: ``acc`` is not integer or lies outside int32.
        QParamsError: bad multiplier, zero point or output range.
        FormatError: unknown ``mode``.
        GranularityError: parameter shape does not fit ``acc`` and the axis.

    Example:
        >>> acc = torch.tensor([-300, 0, 10, 999], dtype=torch.int32)
        >>> requantize(acc, 0.1, 3, -128, 127).tolist()
        [-27, 3, 4, 103]
    """
    if mode not in REQUANT_MODES:
        # FormatError, like an unknown rounding mode in lowbit.primitives.rounding.
        raise FormatError(
            f"unknown requantization mode {mode!r}; use one of {', '.join(REQUANT_MODES)}"
        )
    acc64 = _int32_values(acc, "acc")
    _check_output_range(qmin, qmax)
    axis = per_channel_axis
    length = 1
    if axis is not None:
        if not isinstance(axis, int) or not -acc64.dim() <= axis < acc64.dim():
            raise GranularityError(
                f"per_channel_axis {axis!r} does not exist on an accumulator of shape "
                f"{tuple(acc64.shape)}; use an axis in [{-acc64.dim()}, {acc64.dim() - 1}]"
            )
        axis %= acc64.dim()
        length = acc64.shape[axis]
    m = _along_axis(_real_multiplier(real_multiplier), "real_multiplier", acc64.dim(), axis, length)
    zp = _int64_tensor(zero_point, "zero_point", QParamsError)
    _check_range(
        zp, qmin, qmax, "zero_point", QParamsError, "the zero point must be a valid output code"
    )
    zp = _along_axis(zp, "zero_point", acc64.dim(), axis, length)

    if mode == "fixed_point":
        multiplier, shift = quantize_multiplier(m)
        scaled = _mbqm(acc64, multiplier.to(torch.int64), shift.to(torch.int64))
        return (scaled + zp).clamp(qmin, qmax).to(torch.int32)

    m32 = m.to(torch.float32)
    if not bool(torch.isfinite(m32).all()):
        raise QParamsError(
            f"real_multiplier {float(m.max())} overflows float32, which the 'float' mode "
            "(ONNX Runtime) computes in; check the output scale"
        )
    # MLAS: _mm_cvtepi32_ps / vcvtq_f32_s32 (round to nearest), one float32 multiply, clamp
    # to [qmin - zp, qmax - zp], then round to nearest with ties to even (_mm_cvtps_epi32
    # under the default MXCSR, vcvtnq_s32_f32 on ARM64, or the 1.5 * 2**23 "magic number"
    # add in the scalar fallback; all nearbyint). torch.round is also ties-to-even, and
    # clamping before rounding is exact because both bounds are integers. The float clamp
    # keeps huge products convertible; the final integer clamp covers bounds beyond 2**24,
    # which float32 cannot hold exactly (int32 outputs).
    y = acc64.to(torch.float32) * m32
    y = torch.clamp(y, (qmin - zp).to(torch.float32), (qmax - zp).to(torch.float32))
    return (torch.round(y).to(torch.int64) + zp).clamp(qmin, qmax).to(torch.int32)

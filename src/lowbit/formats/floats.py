"""Minifloat casting: float32 values onto any ``QFormat`` with ``kind == "float"``.

One generic path serves every layout (FP16, BF16, the four FP8 variants, FP6,
FP4 and custom ``float_format`` layouts): round to nearest, ties to even, with
gradual underflow, then apply the format's overflow and special-value rules.

The rules follow the ONNX ``Cast`` operator (opset 19+), so that what lowbit
simulates is what a runtime computes:

- float8 (``fn``, ``fnuz``, ``ieee`` e5m2), ``saturate=True``: out-of-range
  values and ±Inf become ±max_finite; NaN stays NaN.
- float8, ``saturate=False``: formats with Inf (e5m2) overflow to ±Inf, the
  others to NaN; Inf becomes NaN where the format has no Inf.
- formats without NaN or Inf (``special == "none"``: fp4 e2m1, fp6): ONNX's
  float4 rules, whatever ``saturate`` says: overflow and ±Inf saturate to
  ±max_finite and NaN becomes **+max_finite** (ONNX float4 spec and ONNX
  Runtime; note that ``ml_dtypes`` maps NaN to ±0 instead).
- ``fnuz`` formats have no -0: negative values that round to zero give +0.
- FP16/BF16: ``saturate`` is honoured like for float8. ONNX ``Cast`` and
  ``torch.Tensor.half()`` never saturate these types; pass ``saturate=False``
  to reproduce them.

Everything is computed on float32: float64 inputs are first rounded to
float32. The arithmetic is exact (scaling by exact powers of two, then
``torch.round``, which rounds half to even), so results are bit-exact.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from lowbit.errors import FormatError, InputError
from lowbit.formats.qformat import QFormat

__all__ = [
    "CastStats",
    "cast_stats",
    "check_float_format",
    "decode",
    "encode",
    "representable_values",
    "round_to_format",
]

_FP32_MIN_EXP = -126  # exponent of the smallest normal float32
_FP32_MIN_SUB_EXP = -149  # exponent of the smallest subnormal float32
_FP32_MAX_EXP = 127
_FP32_MAX = 3.4028234663852886e38
_EXP_MASK = 0x7F800000


def check_float_format(fmt: QFormat) -> QFormat:
    """Check that ``fmt`` is a minifloat that float32 can simulate exactly.

    Args:
        fmt: the format to check.

    Returns:
        ``fmt`` itself.

    Raises:
        FormatError: ``fmt`` is not a float format, or its range does not fit
            inside float32 (every value must be a float32 value).

    Example:
        >>> from lowbit.formats import FP8_E4M3FN
        >>> check_float_format(FP8_E4M3FN).name
        'fp8_e4m3fn'
    """
    if not isinstance(fmt, QFormat) or fmt.kind != "float":
        raise FormatError(
            f"expected a float QFormat (kind='float'), got {fmt!r}; "
            "use one of FP16, BF16, FP8_*, FP6_*, FP4_E2M1 or float_format(...)"
        )
    if fmt.special not in ("ieee", "fn", "fnuz", "none"):
        raise FormatError(f"{fmt.name}: unknown special-value rule {fmt.special!r}")
    if fmt.special in ("ieee", "fn") and fmt.mantissa_bits < 1:
        raise FormatError(
            f"{fmt.name}: special={fmt.special!r} needs at least one mantissa bit to encode NaN"
        )
    if (
        fmt.max_exponent > _FP32_MAX_EXP
        or fmt.min_exponent < _FP32_MIN_EXP
        or fmt.min_exponent - fmt.mantissa_bits < _FP32_MIN_SUB_EXP
    ):
        raise FormatError(
            f"{fmt.name}: exponents {fmt.min_exponent}..{fmt.max_exponent} with "
            f"{fmt.mantissa_bits} mantissa bits do not fit in float32; "
            "choose a bias so that every value is a float32 value"
        )
    if fmt.max_exponent < fmt.min_exponent:
        raise FormatError(f"{fmt.name}: the layout has no normal numbers; check the bias")
    return fmt


def _as_float32(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise InputError(f"{what} expects a real tensor, got dtype {x.dtype}; cast it to float32")
    # casting has no useful gradient (zero almost everywhere): the STE lives in primitives
    x = x.detach()
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def _round_unbounded(x: Tensor, fmt: QFormat) -> Tensor:
    """|x| rounded to fmt's grid, ignoring the top of the range (overflow is handled later).

    The quantum is 2**(E - m) where E is the exponent of |x|'s binade, raised to
    the smallest normal exponent below it: this gives gradual underflow. Dividing
    and multiplying by a power of two is exact in float32, and torch.round rounds
    half to even. NaN stays NaN; Inf is clamped to float32's max first so that it
    rounds to a finite value past every format's max (it then takes the overflow path).
    """
    a = torch.clamp(x.abs(), max=_FP32_MAX)
    # keep the exponent bits only: 2**floor(log2 a) for normal float32, 0 for subnormal/zero
    quantum = torch.bitwise_and(a.view(torch.int32), _EXP_MASK).view(torch.float32)
    quantum.clamp_(min=fmt.min_normal).mul_(2.0**-fmt.mantissa_bits)
    return torch.div(a, quantum).round_().mul_(quantum)


def _round_masks(x: Tensor, fmt: QFormat, saturate: bool) -> tuple[Tensor, Tensor]:
    """(result, unbounded |result|) for float32 x; the latter gives the overflow count."""
    maxf = fmt.max_finite
    unbounded = _round_unbounded(x, fmt)
    if saturate or fmt.special == "none":
        r = unbounded.clamp(max=maxf)  # Inf went to float32's max above, so it saturates too
        if not fmt.has_nan:
            r = r.nan_to_num_(nan=maxf)  # ONNX float4 rule: NaN -> +max
    else:
        fill = float("inf") if fmt.has_inf else float("nan")
        r = unbounded.masked_fill(unbounded > maxf, fill)
    if fmt.has_nan:
        # copysign takes the sign from x: -NaN and -overflow keep their sign, as ONNX Runtime
        # and ml_dtypes do (0xFF for -Inf -> e4m3fn)
        r = torch.copysign(r, x)
    else:
        r = torch.where(torch.isnan(x), r, torch.copysign(r, x))  # NaN -> +max, not -max
    if fmt.special == "fnuz":
        r.add_(0.0)  # -0 + 0 = +0: fnuz has no negative zero
    return r, unbounded


def round_to_format(x: Tensor, fmt: QFormat, *, saturate: bool = True) -> Tensor:
    """Round values to the nearest value of a float format, as ONNX ``Cast`` does.

    Args:
        x: real tensor (computed on its float32 values).
        fmt: a float ``QFormat`` (``FP16``, ``BF16``, ``FP8_E4M3FN``, ...).
        saturate: out-of-range values become ±max_finite (True) or ±Inf/NaN
            following the format (False). Ignored by formats without NaN and
            Inf (fp4, fp6), which always saturate. See the module docstring.

    Returns:
        float32 tensor of values exactly representable in ``fmt`` (or NaN/±Inf
        where the format has them), same shape as ``x``. Not differentiable
        (detached); :mod:`lowbit.primitives` wraps it with a straight-through
        estimator.

    Example:
        >>> import torch
        >>> from lowbit.formats import FP8_E4M3FN
        >>> round_to_format(torch.tensor([0.3, 500.0]), FP8_E4M3FN).tolist()
        [0.3125, 448.0]
    """
    check_float_format(fmt)
    return _round_masks(_as_float32(x, "round_to_format"), fmt, saturate)[0]


def _bits_of(r: Tensor, fmt: QFormat) -> Tensor:
    """int32 bit patterns of float32 values already representable in fmt."""
    m, nbits = fmt.mantissa_bits, fmt.bits
    exp_ones = (1 << fmt.exponent_bits) - 1
    sign_bit = 1 << (nbits - 1)
    a = r.abs()
    # Normal in fmt: re-bias the exponent by scaling with 2**(bias - 127) (exact), then the
    # float32 pattern shifted right by 23 - m is exactly exponent|mantissa of fmt.
    rebias = fmt.exponent_bias - 127
    b = a * 2.0 ** max(rebias, _FP32_MIN_EXP)
    if rebias < _FP32_MIN_EXP:
        b.mul_(2.0 ** (rebias - _FP32_MIN_EXP))
    code = b.view(torch.int32) >> (23 - m)
    # Subnormal in fmt: the mantissa field is |r| / min_subnormal, an exact integer. Kept
    # apart from the trick above, which would need float32 subnormals (gone under FTZ/DAZ).
    small = a < fmt.min_normal
    code = torch.where(small, a.clamp_(max=fmt.min_normal).div_(fmt.min_subnormal).int(), code)
    sign = (r.view(torch.int32) >> 31) & sign_bit  # arithmetic shift gives -1 or 0
    if fmt.special == "ieee":
        code = torch.where(torch.isinf(r), exp_ones << m, code)
        code = torch.where(torch.isnan(r), (exp_ones << m) | (1 << (m - 1)), code)  # quiet NaN
    elif fmt.special == "fn":
        code = torch.where(torch.isnan(r), (exp_ones << m) | ((1 << m) - 1), code)
    code.bitwise_or_(sign)
    if fmt.special == "fnuz":
        code = torch.where(torch.isnan(r), sign_bit, code)  # the only NaN pattern
    return code


def encode(x: Tensor, fmt: QFormat, *, saturate: bool = True) -> Tensor:
    """Cast to a float format and return the codes in ``fmt.storage_dtype``.

    Args:
        x: real tensor.
        fmt: a float ``QFormat``.
        saturate: as in :func:`round_to_format`.

    Returns:
        Tensor of ``fmt.storage_dtype``: a native torch dtype where one exists
        (``torch.float16``, ``torch.bfloat16``, ``torch.float8_e4m3fn``, ...);
        otherwise the bit pattern ``sign|exponent|mantissa`` right-aligned in a
        ``uint8`` (one code per byte, e.g. fp4 and fp6), or in an ``int16`` for
        custom formats wider than 8 bits.

    Example:
        >>> import torch
        >>> from lowbit.formats import FP4_E2M1
        >>> encode(torch.tensor([1.0, -6.0, 100.0]), FP4_E2M1).tolist()
        [2, 15, 7]
    """
    r = round_to_format(x, fmt, saturate=saturate)
    dtype = fmt.storage_dtype
    if dtype.is_floating_point and fmt.bits <= 8 and not bool(torch.isnan(r).any()):
        # r is exactly representable, so torch's own cast is exact and much faster
        # (NaN payloads differ between implementations, so NaN takes the slow path).
        return r.to(dtype)
    code = _bits_of(r, fmt)
    if fmt.bits <= 8:
        stored = code.to(torch.uint8)
        return stored if dtype == torch.uint8 else stored.view(dtype)
    # 16-bit patterns: reinterpret the top half as negative int16 so that .view works
    stored = torch.where(code >= 1 << 15, code - (1 << 16), code).to(torch.int16)
    return stored if dtype == torch.int16 else stored.view(dtype)


def _code_bits(codes: Tensor, fmt: QFormat) -> Tensor:
    if not isinstance(codes, Tensor):
        raise InputError(f"decode expects a torch.Tensor of codes, got {type(codes).__name__}")
    width = 1 << fmt.bits
    if codes.dtype == fmt.storage_dtype and codes.dtype.is_floating_point:
        raw = codes.view(torch.uint8 if fmt.bits <= 8 else torch.int16)
        return raw.to(torch.int64) & (width - 1)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise InputError(
            f"decode({fmt.name}) expects codes of dtype {fmt.storage_dtype} or an integer dtype "
            f"holding bit patterns, got {codes.dtype}; use encode() to produce codes"
        )
    bits = codes.to(torch.int64)
    if fmt.bits == 16:
        bits = bits & 0xFFFF  # int16 containers hold the top half as negative numbers
    elif codes.dtype == torch.uint8 and fmt.bits == 8:
        return bits  # every byte is a valid code
    if codes.numel():
        low, high = int(bits.min()), int(bits.max())
        if low < 0 or high >= width:
            raise InputError(
                f"{fmt.name} codes are {fmt.bits}-bit patterns in [0, {width - 1}], got values "
                f"in [{low}, {high}]; unpack packed data before decoding"
            )
    return bits


def decode(codes: Tensor, fmt: QFormat) -> Tensor:
    """Turn float-format codes back into float32 values (exact).

    Args:
        codes: tensor in ``fmt.storage_dtype`` (as returned by :func:`encode`),
            or any integer tensor holding the bit patterns.
        fmt: a float ``QFormat``.

    Returns:
        float32 tensor of the same shape; NaN/±Inf codes decode to NaN/±Inf.

    Example:
        >>> import torch
        >>> from lowbit.formats import FP4_E2M1
        >>> decode(torch.tensor([2, 15, 7], dtype=torch.uint8), FP4_E2M1).tolist()
        [1.0, -6.0, 6.0]
    """
    check_float_format(fmt)
    return _decode_table(fmt)[_code_bits(codes, fmt)]


@functools.lru_cache(maxsize=64)
def _decode_table(fmt: QFormat) -> Tensor:
    """float32 value of every code of fmt (at most 2**16), from the bit-field definitions."""
    m, nbits = fmt.mantissa_bits, fmt.bits
    exp_ones = (1 << fmt.exponent_bits) - 1
    c = np.arange(1 << nbits, dtype=np.int64)
    sign = (c >> (nbits - 1)) & 1
    exp_field = (c >> m) & exp_ones
    frac = c & ((1 << m) - 1)
    normal = exp_field > 0
    significand = np.where(normal, frac + (1 << m), frac).astype(np.float64)
    exp = np.where(normal, exp_field - fmt.exponent_bias, fmt.min_exponent)
    v = np.ldexp(significand, exp - m)  # exact: every value fits float32 (check_float_format)
    if fmt.special == "ieee":
        top = exp_field == exp_ones
        v = np.where(top, np.where(frac == 0, np.inf, np.nan), v)
    elif fmt.special == "fn":
        v = np.where((exp_field == exp_ones) & (frac == (1 << m) - 1), np.nan, v)
    elif fmt.special == "fnuz":
        v = np.where(c == 1 << (nbits - 1), np.nan, v)
        sign = np.where(c == 1 << (nbits - 1), 0, sign)
    v = np.where(sign == 1, -v, v)
    return torch.from_numpy(v.astype(np.float32))


def representable_values(fmt: QFormat) -> Tensor:
    """All finite values of a float format, sorted ascending, zero once (as +0).

    Args:
        fmt: a float ``QFormat`` (any width; 16-bit formats give ~64k values).

    Returns:
        1-D float32 tensor.

    Example:
        >>> from lowbit.formats import FP4_E2M1
        >>> representable_values(FP4_E2M1).tolist()[7:]
        [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    check_float_format(fmt)
    codes = torch.arange(1 << fmt.bits, dtype=torch.int32)
    v = decode(codes, fmt)
    v = v[torch.isfinite(v)]
    return torch.unique(v + 0.0)  # + 0.0 turns -0 into +0; unique sorts


@dataclass(frozen=True)
class CastStats:
    """What happened to a tensor cast to a float format (see :func:`cast_stats`).

    Attributes:
        total: number of elements.
        overflow: finite inputs whose rounded magnitude exceeds max_finite.
        underflow_to_zero: finite nonzero inputs that became ±0.
        subnormal: results that are nonzero subnormals of the format.
        nan_in: NaN inputs.
        inf_in: ±Inf inputs.
        nan_out: NaN results (NaN inputs, and overflow where the format maps it to NaN).
        inf_out: ±Inf results.
        format_name: the format's name.
    """

    total: int
    overflow: int
    underflow_to_zero: int
    subnormal: int
    nan_in: int
    inf_in: int
    nan_out: int = 0
    inf_out: int = 0
    format_name: str = ""

    def as_dict(self) -> dict[str, int | str]:
        """The counts as a plain dict (for JSON reports)."""
        return asdict(self)

    def __str__(self) -> str:
        def pct(n: int) -> str:
            return f"{n} ({100.0 * n / self.total:.3g}%)" if self.total else str(n)

        return (
            f"cast to {self.format_name or '?'}: {self.total} values, "
            f"overflow {pct(self.overflow)}, underflow to zero {pct(self.underflow_to_zero)}, "
            f"subnormal {pct(self.subnormal)}, NaN in {self.nan_in}, Inf in {self.inf_in}, "
            f"NaN out {self.nan_out}, Inf out {self.inf_out}"
        )


def cast_stats(x: Tensor, fmt: QFormat, *, saturate: bool = True) -> CastStats:
    """Count overflow, underflow and subnormal results of casting ``x`` to ``fmt``.

    Args:
        x: real tensor.
        fmt: a float ``QFormat``.
        saturate: as in :func:`round_to_format` (changes only ``nan_out`` / ``inf_out``).

    Returns:
        A :class:`CastStats`.

    Example:
        >>> import torch
        >>> from lowbit.formats import FP16
        >>> s = cast_stats(torch.tensor([1e-8, 1e-6, 1.0, 1e5]), FP16)
        >>> (s.underflow_to_zero, s.subnormal, s.overflow)
        (1, 1, 1)
    """
    check_float_format(fmt)
    x = _as_float32(x, "cast_stats")
    r, unbounded = _round_masks(x, fmt, saturate)
    finite = torch.isfinite(x)
    a = r.abs()
    return CastStats(
        total=x.numel(),
        overflow=int((finite & (unbounded > fmt.max_finite)).sum()),
        underflow_to_zero=int((finite & (x != 0) & (r == 0)).sum()),
        subnormal=int(((a > 0) & (a < fmt.min_normal)).sum()),
        nan_in=int(torch.isnan(x).sum()),
        inf_in=int(torch.isinf(x).sum()),
        nan_out=int(torch.isnan(r).sum()),
        inf_out=int(torch.isinf(r).sum()),
        format_name=fmt.name,
    )

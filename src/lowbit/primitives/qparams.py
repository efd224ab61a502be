"""Choosing scales and zero points: the affine map's parameters.

    q = clamp(round(r / s) + z, qmin, qmax)        r ≈ s · (q − z)

Symmetric: z = 0 and s = max|r| / qmax (unsigned formats put z at the middle
code). Asymmetric: s = (rmax − rmin) / (qmax − qmin), z = qmin − round(rmin / s),
with the range widened to include 0 so that 0 is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit.errors import FormatError, InputError, QParamsError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives.granularity import Granularity, as_granularity, onnx_layout, reduce_minmax

# The smallest scale lowbit hands out: the smallest normal float32. A subnormal
# scale would make r / s overflow to Inf for ordinary inputs.
MIN_SCALE = 2.0**-126
MAX_SCALE = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class QParams:
    """Scale and zero point laid out as ONNX QuantizeLinear expects.

    ``axis`` is None for per-tensor; ``block_size`` is set for blocked
    (per-token / per-group) layouts, where ``scale`` has the input's rank.
    """

    scale: Tensor
    zero_point: Tensor
    fmt: QFormat
    axis: int | None = None
    block_size: int | None = None


def check_finite(x: Tensor, what: str = "input") -> None:
    """Raise `InputError` naming how many NaN / Inf values ``x`` holds."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise InputError(
        f"{what} has {n_nan} NaN and {n_inf} Inf values out of {x.numel()}; quantization "
        "parameters would be meaningless. Find the layer that produces them, or clean the "
        "tensor with torch.nan_to_num before quantizing."
    )


def qparams_from_minmax(
    min_val: Tensor, max_val: Tensor, fmt: QFormat | str, *, symmetric: bool = True
) -> tuple[Tensor, Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (elementwise).

    Args:
        min_val, max_val: observed ranges, any (equal) shape; finite.
        fmt: target format.
        symmetric: zero point fixed at 0 (signed) or the middle code (unsigned).

    Returns:
        ``(scale, zero_point)``: float32 scale in [MIN_SCALE, float32 max] and
        int32 zero point inside [qmin, qmax] (always 0 for float formats).
        A range of all zeros gets scale 1; a constant c gets a scale of |c|
        divided by a power of two, so c is represented exactly.

    Example:
        >>> s, z = qparams_from_minmax(torch.tensor(-1.0), torch.tensor(3.0), "uint8", symmetric=False)
        >>> float(s), int(z)
        (0.01568627543747425, 64)
    """
    fmt = get_format(fmt)
    min_val = torch.as_tensor(min_val, dtype=torch.float64)
    max_val = torch.as_tensor(max_val, dtype=torch.float64)
    if min_val.shape != max_val.shape:
        raise QParamsError(
            f"min_val {tuple(min_val.shape)} and max_val {tuple(max_val.shape)} differ in shape"
        )
    check_finite(min_val, "min_val")
    check_finite(max_val, "max_val")
    if bool((min_val > max_val).any()):
        raise QParamsError("min_val is larger than max_val somewhere; pass the range as (min, max)")

    constant = min_val == max_val
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    zero_point = torch.zeros_like(lo, dtype=torch.int32)

    if fmt.kind == "float":
        if not symmetric:
            raise FormatError(f"{fmt.name} has no zero point; use symmetric=True for float formats")
        amax = torch.maximum(-lo, hi)
        scale = amax / fmt.max_finite
        return _finish_scale(scale, amax == 0), zero_point

    qmin, qmax = float(fmt.qmin), float(fmt.qmax)
    if symmetric:
        amax = torch.maximum(-lo, hi)
        if fmt.signed:
            half_levels = qmax
        else:
            middle = math.floor((qmin + qmax + 1) / 2)
            zero_point.fill_(int(middle))
            half_levels = qmax - middle
        scale = amax / half_levels
        # Constant c: |c| over the largest power of two <= half_levels is exact.
        exact = amax / 2.0 ** math.floor(math.log2(half_levels))
        scale = torch.where(constant & (amax > 0), exact, scale)
        return _finish_scale(scale, amax == 0), zero_point

    span = hi - lo
    scale = span / (qmax - qmin)
    exact = span / 2.0 ** math.floor(math.log2(qmax - qmin))
    scale = torch.where(constant & (span > 0), exact, scale)
    scale32 = _finish_scale(scale, span == 0)
    # Zero point from the float32 scale actually used, so that 0 maps exactly.
    zp = qmin - torch.round(lo / scale32.double())
    zero_point = torch.clamp(zp, qmin, qmax).to(torch.int32)
    return scale32, zero_point


def _finish_scale(scale: Tensor, empty_range: Tensor) -> Tensor:
    """float32 scale, 1 where the range is all zeros, kept inside normal floats."""
    scale = torch.where(empty_range, torch.ones_like(scale), scale)
    return scale.clamp(MIN_SCALE, MAX_SCALE).to(torch.float32)


def choose_qparams(
    x: Tensor,
    fmt: QFormat | str = "int8",
    granularity: Granularity | str = "tensor",
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
) -> QParams:
    """Min-max quantization parameters for ``x`` at the given granularity.

    Args:
        x: float tensor, finite and non-empty.
        fmt: target format (`QFormat` or name).
        granularity: `Granularity` or ``"tensor"``, ``"channel"``, ``"token"``, ``"group"``.
        symmetric: see :func:`qparams_from_minmax`.
        axis, group_size: used when ``granularity`` is given by name.

    Returns:
        `QParams` in ONNX layout, ready for :func:`lowbit.primitives.quantize`.

    Example:
        >>> w = torch.randn(64, 576)
        >>> p = choose_qparams(w, "int4", "group", group_size=128)
        >>> tuple(p.scale.shape), p.block_size
        ((64, 5), 128)
    """
    fmt = get_format(fmt)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError(f"choose_qparams needs a float tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise InputError("cannot choose quantization parameters for an empty tensor")
    gran = as_granularity(granularity, axis=axis, group_size=group_size)
    onnx_axis, block = onnx_layout(x.shape, gran)
    lo, hi = reduce_minmax(x.detach().float(), onnx_axis, block)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        check_finite(x)
    scale, zero_point = qparams_from_minmax(lo, hi, fmt, symmetric=symmetric)
    return QParams(scale, zero_point, fmt, onnx_axis, block)

"""Clipping search for weights: shrink each channel's range where that lowers the error.

Weights are known in full, so instead of estimating a range from statistics
we can try ranges and measure. For every parameter group (channel, group,
token) the range ``[r·min, r·max]`` is quantized and dequantized for each
ratio ``r`` on a grid in (0, 1], and the ratio with the smallest
``Σ |w − ŵ|^norm`` wins (``norm=2``: MSE; AWQ / GPTQ-style searches also use
2.4, which weighs large errors more). All groups are searched at once; the
loop runs over the grid only.

The quantize–dequantize is lowbit's own (`lowbit.primitives.quantize`, ONNX
semantics: true division, round half to even, saturation), so the error
measured is the error deployed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit.errors import InputError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives.granularity import (
    Granularity,
    as_granularity,
    onnx_layout,
    reduce_minmax,
    reduce_to,
    scale_shape,
)
from lowbit.primitives.qparams import QParams, check_finite, qparams_from_minmax
from lowbit.primitives.quantize import dequantize, quantize


@dataclass(frozen=True)
class ClipSearchResult:
    """What `search_clip` found.

    Attributes:
        qparams: the chosen scale / zero point (ONNX layout).
        ratio: chosen clipping ratio per parameter group (shape of the scale).
        error: ``Σ |w − ŵ|^norm`` per group at the chosen ratio (float64).
        baseline_error: the same without clipping (ratio 1, plain min-max).
        sqnr_db: signal-to-quantization-noise ratio of the whole tensor, in dB.
        baseline_sqnr_db: the same without clipping.
    """

    qparams: QParams
    ratio: Tensor
    error: Tensor
    baseline_error: Tensor
    sqnr_db: float
    baseline_sqnr_db: float

    @property
    def sqnr_gain_db(self) -> float:
        """How many dB the search gained over plain min-max."""
        return self.sqnr_db - self.baseline_sqnr_db


def search_clip(
    w: Tensor,
    fmt: QFormat | str,
    granularity: Granularity | str = "channel",
    *,
    symmetric: bool = True,
    grid: int = 100,
    norm: float = 2.0,
    axis: int | None = None,
    group_size: int | None = None,
) -> ClipSearchResult:
    """Search the per-group clipping ratio that minimises the quantization error.

    Args:
        w: float weight tensor, finite and non-empty.
        fmt: target format.
        granularity: `Granularity` or name; by name, ``"channel"`` defaults to axis 0.
        symmetric: symmetric or asymmetric ranges (as `qparams_from_minmax`).
        grid: ratios ``grid/grid, (grid−1)/grid, …, 1/grid`` are tried.
        norm: error exponent ``p`` in ``Σ |w − ŵ|^p``.
        axis, group_size: used when ``granularity`` is given by name.

    Returns:
        `ClipSearchResult`. Ties keep the larger ratio, and ratio 1 is a
        candidate, so no group ever ends up worse than plain min-max.

    Example:
        >>> w = torch.randn(8, 256)
        >>> res = search_clip(w, "int4")
        >>> bool((res.error <= res.baseline_error).all()), res.sqnr_gain_db >= 0
        (True, True)
    """
    fmt = get_format(fmt)
    if not isinstance(w, Tensor) or not w.is_floating_point() or w.numel() == 0:
        raise InputError("search_clip needs a non-empty float weight tensor")
    if not isinstance(grid, int) or grid < 1:
        raise InputError(f"grid must be a positive integer, got {grid!r}")
    if not float(norm) > 0:
        raise InputError(f"norm must be positive, got {norm!r}")
    gran = as_granularity(granularity, axis=0 if axis is None else axis, group_size=group_size)
    w32 = w.detach().float()
    check_finite(w32, "weight")
    ax, block = onnx_layout(w32.shape, gran)
    lo, hi = reduce_minmax(w32, ax, block)
    lo, hi = lo.double(), hi.double()

    def fake_quant(ratio: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        scale, zero_point = qparams_from_minmax(lo * ratio, hi * ratio, fmt, symmetric=symmetric)
        codes = quantize(w32, scale, zero_point, fmt, axis=ax, block_size=block)
        return (
            dequantize(codes, scale, zero_point, fmt, axis=ax, block_size=block),
            scale,
            zero_point,
        )

    def group_error(w_hat: Tensor) -> Tensor:
        diff = (w32.double() - w_hat.double()).abs_().pow_(norm)
        return reduce_to(diff, scale_shape(w32.shape, ax, block), ax, block)

    baseline_hat, _, _ = fake_quant(1.0)
    baseline = group_error(baseline_hat)
    best, ratio = baseline.clone(), torch.ones_like(baseline)
    for step in range(grid - 1, 0, -1):
        r = step / grid
        err = group_error(fake_quant(r)[0])
        better = err < best  # strict: ties keep the larger ratio
        best = torch.where(better, err, best)
        ratio = torch.where(better, torch.full_like(ratio, r), ratio)

    w_hat, scale, zero_point = fake_quant(ratio)
    signal = float((w32.double() ** 2).sum())
    return ClipSearchResult(
        qparams=QParams(scale, zero_point, fmt, ax, block),
        ratio=ratio,
        error=best,
        baseline_error=baseline,
        sqnr_db=_sqnr_db(signal, w32, w_hat),
        baseline_sqnr_db=_sqnr_db(signal, w32, baseline_hat),
    )


def search_clip_mse(
    w: Tensor,
    fmt: QFormat | str,
    granularity: Granularity | str = "channel",
    symmetric: bool = True,
    grid: int = 100,
    norm: float = 2.0,
) -> QParams:
    """`search_clip` returning only the chosen `QParams` (per channel 0 by default).

    Example:
        >>> p = search_clip_mse(torch.randn(16, 64), "int4")
        >>> tuple(p.scale.shape), p.axis
        ((16,), 0)
    """
    return search_clip(w, fmt, granularity, symmetric=symmetric, grid=grid, norm=norm).qparams


def _sqnr_db(signal: float, w: Tensor, w_hat: Tensor) -> float:
    noise = float(((w.double() - w_hat.double()) ** 2).sum())
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)

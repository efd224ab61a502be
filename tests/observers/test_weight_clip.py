"""search_clip: per-group clipping search vs a slow per-channel loop."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import InputError
from lowbit.observers import search_clip, search_clip_mse
from lowbit.primitives.granularity import per_channel, per_group
from lowbit.primitives.qparams import qparams_from_minmax


def weights(seed: int, shape=(12, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[:, 0] *= 6  # an outlier column makes clipping worth it
    return w


def local_fake_quant(w: torch.Tensor, lo: float, hi: float, fmt: str, symmetric: bool) -> torch.Tensor:
    """Quantize-dequantize one group with plain ops: true division, half-even, clamp."""
    from lowbit.formats import get_format

    f = get_format(fmt)
    s, z = qparams_from_minmax(
        torch.tensor(lo, dtype=torch.float64),
        torch.tensor(hi, dtype=torch.float64),
        f,
        symmetric=symmetric,
    )
    q = torch.clamp(torch.round(w / s) + z.float(), f.qmin, f.qmax)
    return (q - z.float()) * s


def slow_reference(w, fmt, symmetric, grid, norm, axis):
    """For each channel, try every ratio in a Python loop."""
    moved = w.movedim(axis, 0)
    scales, ratios = [], []
    for c in range(moved.shape[0]):
        row = moved[c]
        lo, hi = float(row.min()), float(row.max())
        best_err, best_r = None, None
        for step in range(grid, 0, -1):
            r = step / grid
            err = float(
                (
                    (row.double() - local_fake_quant(row, lo * r, hi * r, fmt, symmetric).double()).abs()
                    ** norm
                ).sum()
            )
            if best_err is None or err < best_err:
                best_err, best_r = err, r
        s, _ = qparams_from_minmax(
            torch.tensor(lo * best_r, dtype=torch.float64),
            torch.tensor(hi * best_r, dtype=torch.float64),
            fmt,
            symmetric=symmetric,
        )
        scales.append(float(s))
        ratios.append(best_r)
    return torch.tensor(scales), torch.tensor(ratios, dtype=torch.float64)


@pytest.mark.parametrize(
    ("fmt", "symmetric", "norm", "axis"),
    [
        ("int4", True, 2.0, 0),
        ("uint4", False, 2.0, 0),
        ("int3", True, 2.4, 1),
        ("int8", True, 2.0, 0),
    ],
)
def test_matches_slow_per_channel_loop(fmt, symmetric, norm, axis):
    w = weights(0)
    res = search_clip(w, fmt, per_channel(axis), symmetric=symmetric, grid=40, norm=norm)
    scales, ratios = slow_reference(w, fmt, symmetric, 40, norm, axis)
    assert torch.equal(res.ratio, ratios)
    assert torch.equal(res.qparams.scale, scales)
    assert res.qparams.axis == axis


@pytest.mark.parametrize(
    "granularity", [per_channel(0), per_group(8), per_group(16, axis=0), "tensor"], ids=str
)
def test_never_worse_than_no_clipping(granularity):
    w = weights(1, (16, 48))
    res = search_clip(w, "int4", granularity, grid=50)
    assert bool((res.error <= res.baseline_error).all())
    assert res.sqnr_db >= res.baseline_sqnr_db
    assert res.sqnr_gain_db == pytest.approx(res.sqnr_db - res.baseline_sqnr_db)
    assert res.ratio.shape == res.qparams.scale.shape
    # the weight with the outlier column gains visibly
    if granularity == per_channel(0):
        assert res.sqnr_gain_db > 0.5


def test_sqnr_is_measured_on_the_returned_qparams():
    from lowbit.primitives.quantize import dequantize, quantize

    w = weights(2)
    res = search_clip(w, "int4")
    p = res.qparams
    back = dequantize(
        quantize(w, p.scale, p.zero_point, p.fmt, axis=p.axis),
        p.scale,
        p.zero_point,
        p.fmt,
        axis=p.axis,
    )
    sqnr = 10 * math.log10(float((w.double() ** 2).sum()) / float(((w - back).double() ** 2).sum()))
    assert res.sqnr_db == pytest.approx(sqnr, rel=1e-9)


def test_search_clip_mse_returns_qparams():
    w = weights(3)
    p = search_clip_mse(w, "int4")
    assert tuple(p.scale.shape) == (12,) and p.axis == 0
    assert torch.equal(p.scale, search_clip(w, "int4").qparams.scale)


def test_bad_input():
    with pytest.raises(InputError, match="NaN"):
        search_clip(torch.tensor([[1.0, float("nan")]]), "int4")
    with pytest.raises(InputError):
        search_clip(torch.zeros(0, 4), "int4")
    with pytest.raises(InputError, match="grid"):
        search_clip(weights(4), "int4", grid=0)

"""Choosing a clipping range from a histogram: percentile, entropy (KL), MSE.

Pure functions of ``(counts, edges)`` as numpy.histogram returns them; no
state, no data. `HistogramObserver` calls them, and so can anyone holding a
histogram. Counts may be a tensor, a numpy array or a list.

Entropy calibration follows NVIDIA's "8-bit Inference with TensorRT" (Szymon
Migacz, GTC 2017), computed exactly but vectorised over all thresholds. The
choices the slides leave open, and how they are settled here:

- candidates ``i = num_quantized_bins … n`` (both ends included; ``i = n``
  clips nothing), where ``n`` is the index past the last non-empty bin:
  empty trailing bins are not candidates, as TensorRT's histogram ends at max;
- reference ``P = hist[:i]`` with the outliers ``sum(hist[i:])`` added to
  ``P[i−1]``;
- candidate ``Q``: ``hist[:i]`` merged into ``num_quantized_bins`` groups of
  ``i // num_quantized_bins`` bins, the last group taking the remainder (as
  MXNet and ONNX Runtime do), then expanded back by spreading each group's
  sum evenly over its *non-empty source bins* (empty source bins stay 0);
- ``KL(P‖Q) = Σ p·log(p/q)`` over bins with ``p > 0``, natural log, both
  normalised. Where ``p > 0`` but ``q = 0`` (outliers folded into an empty
  last bin) the divergence is infinite and that threshold is never chosen.
  MXNet instead counts that bin as non-empty and smooths zeros with an
  epsilon; we keep the slides' definition without smoothing;
- the smallest minimising ``i`` wins ties; the threshold is the *edge*
  ``edges[i]`` (``i·w`` on a histogram of ``|x|``), the end of what ``P``
  describes. The slides write ``(m + 0.5)·w``; MXNet, ONNX Runtime and
  NVIDIA's pytorch-quantization all use the edge.

MSE search integrates the squared error of each bin's values, taken as
spread uniformly over the bin, under the clamped quantizer: rounding error
inside the representable range, clipping error ``(x − clamp(x))²`` outside.
The integral is exact for integer and float grids alike (see `mse_range`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lowbit.errors import InputError
from lowbit.formats.floats import representable_values
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives.qparams import qparams_from_minmax

# Candidate-by-bin error tables are computed this many entries at a time.
_TABLE_CHUNK = 1 << 22


def _as_histogram(hist: object, edges: object) -> tuple[Tensor, Tensor]:
    """float64 CPU copies of a histogram, validated."""
    h = torch.as_tensor(hist).detach().to("cpu", torch.float64).reshape(-1)
    e = torch.as_tensor(edges).detach().to("cpu", torch.float64).reshape(-1)
    if e.numel() != h.numel() + 1:
        raise InputError(f"a histogram with {h.numel()} counts needs {h.numel() + 1} edges, got {e.numel()}")
    if not (bool(torch.isfinite(h).all()) and bool(torch.isfinite(e).all())):
        raise InputError("histogram counts and edges must be finite")
    if bool((h < 0).any()):
        raise InputError("histogram counts must be non-negative")
    if bool((e[1:] <= e[:-1]).any()):
        raise InputError("histogram edges must increase strictly")
    if float(h.sum()) <= 0:
        raise InputError("the histogram is empty; observe some data before choosing a range")
    return h, e


def _occupied(h: Tensor) -> tuple[int, int]:
    """Indices of the first and last non-empty bins."""
    nonzero = torch.nonzero(h > 0).reshape(-1)
    return int(nonzero[0]), int(nonzero[-1])


def _quantile(h: Tensor, e: Tensor, q: float) -> float:
    """Value below which a fraction ``q`` of the counts lies, linear inside a bin."""
    first, last = _occupied(h)
    total = float(h.sum())
    target = q * total
    if target <= 0:
        return float(e[first])
    if target >= total:
        return float(e[last + 1])
    cum = h.cumsum(0)
    # The first bin whose cumulative count reaches the target; it is never empty.
    idx = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64))[0])
    before = float(cum[idx] - h[idx])
    frac = (target - before) / float(h[idx])
    return float(e[idx] + frac * (e[idx + 1] - e[idx]))


def percentile_range(
    hist: object, edges: object, percentile: float = 99.99, *, abs_hist: bool = False
) -> tuple[float, float]:
    """Clip the ``100 − percentile`` percent most extreme values (histogram truncation).

    Args:
        hist, edges: counts and edges (numpy.histogram layout).
        percentile: in (0, 100]; 100 keeps everything.
        abs_hist: ``hist`` counts ``|x|``: one-sided, the result is ``(−t, t)``
            with ``t`` the percentile of ``|x|``. Otherwise two-sided: ``lo``
            is the ``(100 − percentile)``-th and ``hi`` the ``percentile``-th
            percentile, so each tail loses ``100 − percentile`` percent.

    Returns:
        ``(lo, hi)``; within one bin width of ``numpy.percentile(data, ...,
        method="inverted_cdf")`` of the data behind the histogram.

    Example:
        >>> percentile_range([0, 50, 50, 0], [0.0, 1.0, 2.0, 3.0, 4.0], 75.0)
        (1.5, 2.5)
    """
    h, e = _as_histogram(hist, edges)
    if not 0.0 < float(percentile) <= 100.0:
        raise InputError(f"percentile must lie in (0, 100], got {percentile!r}")
    q = float(percentile) / 100.0
    if abs_hist:
        t = _quantile(h, e, q)
        return -t, t
    return _quantile(h, e, 1.0 - q), _quantile(h, e, q)


def _xlogx(v: Tensor) -> Tensor:
    return torch.where(v > 0, v * torch.log(v.clamp(min=1e-300)), torch.zeros_like(v))


def entropy_divergences(hist: object, num_quantized_bins: int = 128) -> tuple[Tensor, Tensor]:
    """KL(P‖Q) of TensorRT's entropy calibration for every candidate bin count.

    See the module docstring for the exact definition. Computed for all
    candidates at once from prefix sums: with ``T`` the total count, ``Z`` the
    counts below the threshold, ``g_j`` / ``n_j`` the sum and the number of
    non-empty bins of merged group ``j``,

        KL = (Σ P·log P − Σ_j g_j·log(g_j/n_j) − outliers·log Q[i−1]) / T − log T + log Z,

    which is the textbook sum rearranged (Q equals g_j/n_j on every non-empty bin).

    Args:
        hist: counts of ``|x|``, the bins ``[0, w), [w, 2w), …``.
        num_quantized_bins: quantized levels on one side of zero (128 for int8).

    Returns:
        ``(candidates, kl)``: int64 bin counts ``i`` and float64 divergences
        (``inf`` where Q is 0 under P's mass). Empty when there are fewer bins
        than ``num_quantized_bins``.

    Example:
        >>> i, kl = entropy_divergences(torch.ones(256), 128)
        >>> int(i[kl.argmin()])
        256
    """
    h = torch.as_tensor(hist).detach().to("cpu", torch.float64).reshape(-1)
    nq = int(num_quantized_bins)
    if nq < 1:
        raise InputError(f"num_quantized_bins must be positive, got {num_quantized_bins!r}")
    n = h.numel()
    if n < nq:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    zero = h.new_zeros(1)
    csum = torch.cat([zero, h.cumsum(0)])  # csum[k] = sum(h[:k]), exact for integer counts
    nonempty = torch.cat([zero, (h > 0).double().cumsum(0)])
    plogp = torch.cat([zero, _xlogx(h).cumsum(0)])
    total = float(csum[-1])

    cand = torch.arange(nq, n + 1, dtype=torch.int64)
    bounds = (cand // nq)[:, None] * torch.arange(nq + 1, dtype=torch.int64)[None, :]
    bounds[:, -1] = cand  # the last group takes the remainder
    group_sum = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
    group_nonempty = nonempty[bounds[:, 1:]] - nonempty[bounds[:, :-1]]
    group_q = group_sum / group_nonempty.clamp(min=1)  # Q on each non-empty bin of the group
    cross = torch.where(group_sum > 0, group_sum * torch.log(group_q.clamp(min=1e-300)), 0.0)
    cross = cross.sum(1)

    outliers = total - csum[cand]
    last = h[cand - 1]
    p_last = last + outliers
    sum_plogp = plogp[cand - 1] + _xlogx(p_last)
    q_last = group_q[:, -1]  # bin i-1 belongs to the last group
    cross = cross + torch.where(outliers > 0, outliers * torch.log(q_last.clamp(min=1e-300)), 0.0)
    kl = (sum_plogp - cross) / total - math.log(total) + torch.log(csum[cand])
    kl = torch.where((outliers > 0) & (last == 0), torch.full_like(kl, math.inf), kl)
    return cand, kl


def entropy_threshold(hist: object, edges: object, num_quantized_bins: int = 128) -> float:
    """TensorRT's entropy (KL-divergence) calibration threshold.

    Args:
        hist, edges: histogram of ``|x|`` (edges start at 0), e.g. 2048 bins.
        num_quantized_bins: quantized levels on one side of zero (128 for int8).

    Returns:
        The threshold ``T`` (clip ``|x|`` at ``T``): ``edges[i]`` for the best
        candidate ``i``. With no more non-empty bins than
        ``num_quantized_bins``, nothing needs clipping and ``T`` is the top
        edge of the last non-empty bin.

    Example:
        >>> x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).abs()
        >>> x[:10] = 50.0  # a few far outliers
        >>> counts = torch.histc(x, 2048, 0, 50.0)
        >>> edges = torch.linspace(0, 50.0, 2049)
        >>> entropy_threshold(counts, edges) < 0.5 * float(x.max())
        True
    """
    h, e = _as_histogram(hist, edges)
    _, last = _occupied(h)
    n = last + 1
    if n <= int(num_quantized_bins):
        return float(e[n])
    cand, kl = entropy_divergences(h[:n], num_quantized_bins)
    return float(e[int(cand[int(torch.argmin(kl))])])


def mse_range(
    hist: object,
    edges: object,
    fmt: QFormat | str = "int8",
    symmetric: bool = True,
    *,
    num_candidates: int = 512,
) -> tuple[float, float]:
    """The clipping range that minimises the expected quantization MSE.

    Each bin's values are taken as spread uniformly over the bin, and their
    squared error under the clamped quantizer is integrated exactly: rounding
    noise inside the range (which is ``step²/12`` only when bins hold many
    steps; a bulk of data inside one coarse step costs ``x²``, not ``step²/12``)
    plus clipping error ``(x − clamp(x))²`` outside. This holds for integer
    grids and for float formats' uneven grids alike.

    Args:
        hist, edges: counts and edges; signed values, or ``|x|`` for symmetric use.
        fmt: target format; its grid decides the rounding error.
        symmetric: search ``(−T, T)`` for ``T`` on ``num_candidates`` evenly
            spaced points in ``(0, max|x|]``. Otherwise search ``(lo, hi)``,
            each end shrinking towards 0 (the range always holds 0): a 32 × 32
            grid of ratios, then a finer 17 × 17 grid (steps of 1/256) around
            the best pair.
        num_candidates: thresholds tried by the symmetric search.

    Returns:
        ``(lo, hi)`` to pass to `qparams_from_minmax` with the same ``symmetric``.

    Example:
        >>> x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
        >>> lo, hi = mse_range(*torch.histogram(x, 2048), "int4")
        >>> hi < float(x.abs().max()) / 2
        True
    """
    fmt = get_format(fmt)
    h, e = _as_histogram(hist, edges)
    first, last = _occupied(h)
    # Only occupied bins carry error; drop the rest to keep the tables small.
    h, e = h[first : last + 1], e[first : last + 2]
    data_lo, data_hi = float(e[0]), float(e[-1])
    if symmetric:
        amax = max(abs(data_lo), abs(data_hi))
        steps = torch.arange(1, int(num_candidates) + 1, dtype=torch.float64)
        hi_c = amax * steps / int(num_candidates)
        lo_c = -hi_c
        best = int(torch.argmin(_expected_errors(h, e, lo_c, hi_c, fmt, True)))
        return float(lo_c[best]), float(hi_c[best])
    coarse = torch.arange(1, 33, dtype=torch.float64) / 32
    r_lo, r_hi = _best_pair(h, e, data_lo, data_hi, coarse, coarse, fmt)
    fine = torch.arange(-8, 9, dtype=torch.float64) / 256
    r_lo, r_hi = _best_pair(
        h,
        e,
        data_lo,
        data_hi,
        (r_lo + fine).clamp(1 / 256, 1),
        (r_hi + fine).clamp(1 / 256, 1),
        fmt,
    )
    return r_lo * min(data_lo, 0.0), r_hi * max(data_hi, 0.0)


def _best_pair(
    h: Tensor, e: Tensor, data_lo: float, data_hi: float, r_lo: Tensor, r_hi: Tensor, fmt: QFormat
) -> tuple[float, float]:
    """Best (lo ratio, hi ratio) of a grid; a side without data keeps ratio 1 (range end 0)."""
    if data_lo >= 0:
        r_lo = torch.ones(1, dtype=torch.float64)
    if data_hi <= 0:
        r_hi = torch.ones(1, dtype=torch.float64)
    a, b = (g.reshape(-1) for g in torch.meshgrid(r_lo, r_hi, indexing="ij"))
    lo_c, hi_c = a * min(data_lo, 0.0), b * max(data_hi, 0.0)
    best = int(torch.argmin(_expected_errors(h, e, lo_c, hi_c, fmt, False)))
    return float(a[best]), float(b[best])


def _expected_errors(
    h: Tensor, e: Tensor, lo_c: Tensor, hi_c: Tensor, fmt: QFormat, symmetric: bool
) -> Tensor:
    """Σ over bins of count × mean squared error of a uniform spread over the bin.

    With ``u = x/s + z`` in code units and ``E(u) = ∫ (u − q(u))² du`` (``q`` the
    nearest code, clamped), a bin ``[l, r]`` contributes
    ``count · s³ · (E(u(r)) − E(u(l))) / (r − l)``: only edges are evaluated.
    """
    scale, zero_point = qparams_from_minmax(lo_c, hi_c, fmt, symmetric=symmetric)
    s_all, z_all = scale.double(), zero_point.double()
    codes = _code_table(fmt)
    widths = (e[1:] - e[:-1])[None, :]
    rows = max(1, _TABLE_CHUNK // e.numel())
    out = []
    for start in range(0, s_all.numel(), rows):
        s = s_all[start : start + rows, None]
        u = e[None, :] / s + z_all[start : start + rows, None]
        integral = _error_integral(u, fmt, codes)
        per_bin = (integral[:, 1:] - integral[:, :-1]) / widths * s**3
        out.append((per_bin * h[None, :]).sum(1))
    return torch.cat(out)


def _code_table(fmt: QFormat) -> tuple[Tensor, Tensor, Tensor] | None:
    """For grids that are not consecutive integers: values, midpoints, E at each value."""
    if fmt.kind == "binary":
        values = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    elif fmt.kind == "float":
        values = representable_values(fmt).double()
    else:
        return None
    gaps = values[1:] - values[:-1]
    # between neighbours d apart the error integrates to 2·∫_0^{d/2} t² dt = d³/12
    at_values = torch.cat([values.new_zeros(1), (gaps**3 / 12).cumsum(0)])
    return values, (values[1:] + values[:-1]) / 2, at_values


def _error_integral(u: Tensor, fmt: QFormat, codes: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
    """``E(u) = E(q) + (u − q)³/3`` with ``q`` the nearest code: continuous, exact."""
    if codes is None:
        q = torch.round(u).clamp_(fmt.qmin, fmt.qmax)
        return (q - fmt.qmin) / 12 + (u - q) ** 3 / 3
    values, midpoints, at_values = codes
    k = torch.searchsorted(midpoints, u.contiguous())
    q = values[k]
    return at_values[k] + (u - q) ** 3 / 3

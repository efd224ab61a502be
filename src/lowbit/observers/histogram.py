"""`HistogramObserver`: one histogram per tensor, collected once; the range is chosen later.

Seed 001 (§2.4) names histogram truncation (直方图截断法) and TensorRT's
KL-divergence calibration over a 2048-bin histogram. The observer only
collects; :mod:`lowbit.observers.range_select` chooses the range (min-max,
percentile, entropy, MSE) from the counts, so one calibration pass serves
every method.

The bin grid (why it is power-of-two aligned)
---------------------------------------------
Bins are ``[(k + i)·2^e, (k + i + 1)·2^e)`` for ``i < bins``: the width is a
power of two and the edges are integer multiples of it. ``(e, k)`` is a pure
function of the data range seen so far: the smallest ``e`` whose aligned grid
holds ``[min, max]`` with ``max`` strictly below the top edge (so every bin is
half-open, like numpy's except numpy closes its last bin). Consequences:

- binning is exact in float32: ``floor(x · 2^-e) − k`` involves a power-of-two
  scaling, a floor and an integer subtraction, none of which round, so the
  counts equal ``numpy.histogram(data, bins=observer.bin_edges())`` exactly;
- when new data falls outside the grid, the width doubles as often as needed
  and every old edge is a new edge: each old bin lies inside exactly one new
  bin and moves there whole. Re-binning is exact (integer counts, total
  preserved, nothing redistributed or approximated);
- therefore the histogram depends only on the multiset of values observed, not
  on their order or batching, and ranks merge exactly (`sync`);
- the price: the data spans between about ``bins/2`` and ``bins`` bins (a
  fitted grid would always use all of them). Entropy calibration ignores
  empty trailing bins, so with the default 2048 bins it works on 1024–2048.

Bins are never finer than ``max|x| · 2^-40`` (and never below 2^-126), which
keeps bin indices exact integers in float32 and int64 arithmetic. No
activations are stored: the state is the counts, min, max and ``seen``.

With numba installed (``lowbit[fast]``), a float32 CPU batch is binned and its
range found in one multi-threaded pass (`lowbit.primitives.kernels`); the
counts are the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lowbit.errors import FormatError, ObserverError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.observers import shared_input
from lowbit.observers import sync as dist_sync
from lowbit.observers.base import SYNCED, UPDATED_AFTER_SYNC, Observer
from lowbit.observers.range_select import entropy_threshold, mse_range, percentile_range
from lowbit.observers.stamp import stamp, unchanged
from lowbit.primitives import kernels
from lowbit.primitives.qparams import QParams, qparams_from_minmax

METHODS = ("minmax", "percentile", "entropy", "mse")
# The buffers that hold a histogram observer's state.
_STATE = shared_input.STATE


class Known(NamedTuple):
    """A histogram observer's scalars, mirrored in Python (see `HistogramObserver._update`)."""

    stamp: tuple  # the buffers these describe (`lowbit.observers.stamp`)
    lo: float
    hi: float
    grid: tuple[int, int]
    sync_state: int
    seen: int
    input_shape: tuple[int, ...]

# Finest bin width 2**E_MIN; 2**-E_MIN must be a normal float32 for the binning multiply.
E_MIN = -126
# Bins at least max|x| * 2**-INDEX_BITS wide: bin indices stay below ~2**41.
INDEX_BITS = 40
# Elements per chunk when binning on CPU. Just below ATen's parallel grain (32768), so that
# every torch op on a chunk runs on the calling thread: handing tiny ops to a second thread
# costs more than the op, and on a busy machine a scheduler time slice per op. The chunk's
# temporaries (128 KiB) stay in L2. torch.floor splits work from 2048 elements on, so the
# floor is numpy's, which is single-threaded, on the same memory.
CHUNK = 32768 - 64


class HistogramObserver(Observer):
    """Per-tensor histogram of everything observed, for percentile / entropy / MSE ranges.

    Args:
        bins: number of bins (TensorRT uses 2048).
        absolute: histogram ``|x|`` (TensorRT style, for symmetric formats)
            instead of the signed values. The signed histogram serves both;
            ``|x|`` gives twice the resolution to magnitudes.
        method: default range choice for `compute_qparams`: ``"minmax"``,
            ``"percentile"``, ``"entropy"`` (TensorRT KL) or ``"mse"``.
        percentile: default percentile for ``method="percentile"``.
        num_quantized_bins: default for ``method="entropy"``; None derives it
            from the format (128 for int8, see `choose_range`).

    Buffers:
        ``counts`` (int64, ``bins``), ``min_val`` / ``max_val`` (float32 scalars,
        the observed extremes), plus ``seen`` and the base buffers.

    Example:
        >>> obs = HistogramObserver(bins=256)
        >>> _ = obs(torch.randn(10_000))
        >>> int(obs.counts.sum())
        10000
        >>> obs.compute_qparams("int8", method="percentile", percentile=99.9).scale.shape
        torch.Size([])
    """

    _additive_sync = True

    def __init__(
        self,
        bins: int = 2048,
        *,
        absolute: bool = False,
        method: str = "entropy",
        percentile: float = 99.99,
        num_quantized_bins: int | None = None,
    ) -> None:
        super().__init__("tensor")
        if not isinstance(bins, int) or bins < 2:
            raise ObserverError(f"bins must be an integer >= 2, got {bins!r} (TensorRT uses 2048)")
        _check_method(method)
        self.bins = bins
        self.absolute = bool(absolute)
        self.method = method
        self.percentile = float(percentile)
        self.num_quantized_bins = num_quantized_bins
        self.register_buffer("counts", torch.zeros(bins, dtype=torch.int64))
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self._pending(None)  # counts binned by _reduce, for _observe

    # --- the grid -------------------------------------------------------------------
    def grid(self) -> tuple[int, int]:
        """``(e, k)``: bins are ``[(k + i)·2^e, (k + i + 1)·2^e)`` for ``i < bins``."""
        self._require_data("grid")
        return self._grid_of(float(self.min_val), float(self.max_val))

    def _grid_of(self, lo: float, hi: float) -> tuple[int, int]:
        if self.absolute:
            return grid_for(0.0, max(abs(lo), abs(hi)), self.bins)
        return grid_for(lo, hi, self.bins)

    def bin_edges(self) -> Tensor:
        """The ``bins + 1`` edges of ``counts`` (float64, exact)."""
        e, k = self.grid()
        return (torch.arange(self.bins + 1, dtype=torch.float64) + k) * math.ldexp(1.0, e)

    def histogram(self) -> tuple[Tensor, Tensor]:
        """``(counts, edges)`` as numpy.histogram returns them (of |x| if ``absolute``)."""
        return self.counts.cpu().clone(), self.bin_edges()

    def abs_histogram(self) -> tuple[Tensor, Tensor]:
        """``(counts, edges)`` of ``|x|`` on a grid starting at 0.

        A signed histogram is folded: the bin ``[a, a + w)`` with ``a < 0``
        becomes ``(−a − w, −a]``, counted in ``[−a − w, −a)``; only values lying
        exactly on a negative edge move by one bin. The fold is then coarsened
        (exactly) if it needs more than ``bins`` bins (data far from zero).
        """
        e, k = self.grid()
        counts = self.counts.cpu()
        if self.absolute:
            return counts.clone(), self.bin_edges()
        cells = torch.arange(self.bins, dtype=torch.int64) + k
        mags = torch.where(cells >= 0, cells, -cells - 1)
        shift = 0
        while int(mags.max()) >> shift >= self.bins:
            shift += 1
        folded = torch.zeros(self.bins, dtype=torch.int64).index_add_(0, mags >> shift, counts)
        edges = torch.arange(self.bins + 1, dtype=torch.float64) * math.ldexp(1.0, e + shift)
        return folded, edges

    # --- observing ------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold one batch into the state (see `Observer.update`).

        When the same unchanged tensor was just observed by a histogram observer of
        this configuration in this state (the query, key and value inputs of a
        transformer block), its resulting state is copied instead of recomputed
        (`lowbit.observers.shared_input`).
        """
        shared_input.update(self, x, self._update)

    def _update(self, x: Tensor) -> None:
        """`Observer.update`, or its steps for the common case with less bookkeeping.

        Calibration calls this for every activation of every batch, and right after
        the model's own work has pushed the interpreter out of the CPU caches, where a
        few dozen small tensor operations cost a good part of a millisecond. So the
        scalars of the state are mirrored in Python (`Known`), valid while the buffers
        are the very tensors this method left, unwritten since (`stamp`).
        """
        known = self.known_state()
        if known is None or not isinstance(x, Tensor):
            Observer.update(self, x)
            self._remember()
            return
        found = self._bin_on_window(x, known.lo, known.hi, known.grid)
        if found is None:
            Observer.update(self, x)  # no kernel for x, or NaN / Inf: raised there
            self._remember()
            return
        fused, binned = found
        grid = self._fold(x, fused.lo, fused.hi, binned)
        self.seen.add_(1)
        sync_state = known.sync_state
        if sync_state == SYNCED:
            sync_state = UPDATED_AFTER_SYNC
            self.sync_state.fill_(sync_state)
        known = Known(stamp(self, _STATE), fused.lo, fused.hi, grid, sync_state, known.seen + 1,
                      known.input_shape)
        object.__setattr__(self, "_known", known)  # past nn.Module.__setattr__ (see _pending)

    def known_state(self) -> Known | None:
        """The state's scalars without reading a buffer; None if unknown (no data yet, or a
        buffer written or replaced since this observer's last update)."""
        known = self.__dict__.get("_known")
        if known is None or not unchanged(self, _STATE, known.stamp):
            return None
        return known

    def state_summary(self) -> tuple:
        """The state, exactly and cheaply: a copy of the counts, and the scalars."""
        known = self.known_state()
        if known is None:
            scalars = (float(self.min_val), float(self.max_val), int(self.seen),
                       tuple(self.input_shape.tolist()), int(self.sync_state))
        else:
            scalars = (known.lo, known.hi, known.seen, known.input_shape, known.sync_state)
        return (self.counts.clone(), *scalars)

    def __getstate__(self) -> dict:
        # The mirror and the pending counts describe this object's buffers only: a copy or
        # an unpickled observer starts without them (and takes the general path once).
        state = dict(super().__getstate__())
        state.pop("_known", None)
        state.pop("_binned", None)
        return state

    def _remember(self) -> None:
        known = None
        if self.has_data:
            lo, hi = float(self.min_val), float(self.max_val)
            known = Known(stamp(self, _STATE), lo, hi, self._grid_of(lo, hi), int(self.sync_state),
                          int(self.seen), tuple(self.input_shape.tolist()))
        object.__setattr__(self, "_known", known)

    def _reduce(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's range and, where the numba kernel runs, its counts: one pass.

        The batch is binned at the current bin width on a window three grids wide
        (the grid plus one grid's span either side) while its range is found. If
        every value lands in the window, the counts are final even if the range
        grew: a grown grid is coarser or shifted by whole bins, and each window cell
        lies inside one of its bins (`regrid`). Otherwise `_observe` bins the batch
        again on the new grid. NaN or Inf: the torch reduction runs, and its checks raise.
        """
        self._pending(None)
        if self.has_data:
            lo, hi = float(self.min_val), float(self.max_val)
            found = self._bin_on_window(x, lo, hi, self._grid_of(lo, hi))
            if found is not None:
                fused, binned = found
                self._pending(binned)
                return torch.tensor(fused.lo), torch.tensor(fused.hi)
        return super()._reduce(x)

    def _bin_on_window(self, x: Tensor, lo: float, hi: float, grid: tuple[int, int]) -> tuple | None:
        """The kernel's pass over ``x`` on the window around ``grid`` (state range ``[lo, hi]``):
        ``(Binned, binned)`` with ``binned`` as `_fold` takes it, or None where the kernel
        does not run or found NaN / Inf. The range found is that of batch and state together
        (the kernel starts from the state's); counts only if every value landed in the window.
        """
        window = (grid[0], grid[1] - self.bins)
        fused = kernels.histogram(x, *window, 3 * self.bins, self.absolute, lo, hi)
        if fused is None or fused.nan or not (math.isfinite(fused.lo) and math.isfinite(fused.hi)):
            return None
        return fused, (window, None if fused.outside else fused.counts, grid, lo, hi)

    def _pending(self, binned: tuple | None) -> None:
        # A plain attribute, set past nn.Module.__setattr__ (which checks for parameters,
        # buffers and modules on every assignment: ~15 us, per update).
        object.__setattr__(self, "_binned", binned)

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        binned = getattr(self, "_binned", None)
        self._pending(None)
        self._fold(x, float(lo), float(hi), binned)

    def _fold(self, x: Tensor, lo_f: float, hi_f: float, binned: tuple | None) -> tuple[int, int]:
        """Add ``x`` to the state, whose range grows to ``[lo_f, hi_f]``; returns the new grid.

        ``binned``: None, or what the kernel found on its window: ``(window, its counts
        or None if values fell off it, the grid before, the range before)``; the range
        given then already holds the state's.
        """
        if binned is not None or self.has_data:
            if binned is None:
                old = self.grid()
                lo_f = min(lo_f, float(self.min_val))
                hi_f = max(hi_f, float(self.max_val))
            else:
                old = binned[2]
            new = self._grid_of(lo_f, hi_f)
            if new != old:
                self.counts = regrid(self.counts, old, new)
        else:
            new = self._grid_of(lo_f, hi_f)
        if binned is None or binned[1] is None:
            batch = bin_counts(x, new, self.bins, absolute=self.absolute)
        elif binned[0][0] == new[0]:
            # The same width: the new grid is a slice of the window, and holds every value.
            start = new[1] - binned[0][1]
            batch = binned[1][start : start + self.bins]
        else:
            batch = regrid(binned[1], binned[0], new, self.bins)
        self.counts.add_(batch.to(self.counts.device))
        if binned is None or lo_f != binned[3]:
            self.min_val.fill_(lo_f)
        if binned is None or hi_f != binned[4]:
            self.max_val.fill_(hi_f)
        return new

    def _reset_state(self) -> None:
        self.counts.zero_()
        self.min_val.zero_()
        self.max_val.zero_()

    # --- choosing the range ---------------------------------------------------------
    def choose_range(
        self,
        fmt: QFormat | str = "int8",
        *,
        symmetric: bool = True,
        method: str | None = None,
        percentile: float | None = None,
        num_quantized_bins: int | None = None,
    ) -> tuple[float, float]:
        """The clipping range ``(lo, hi)`` that ``method`` picks for ``fmt``.

        Symmetric ranges are chosen on the ``|x|`` histogram (one-sided);
        asymmetric ones on the signed histogram (two-sided percentile, 2-D MSE
        search) where the observer has one. Entropy is always TensorRT's
        one-sided search on ``|x|`` and gives ``(−T, T)``. The result is then
        clamped into the observed ``[min_val, max_val]``, so a range never
        reaches past the data and a constant tensor keeps its exact value.

        Args:
            fmt: target format (entropy and MSE model its grid).
            symmetric: whether the quantizer will be symmetric.
            method, percentile, num_quantized_bins: override the defaults given
                at construction. ``num_quantized_bins`` defaults to the levels on
                one side of zero: ``qmax + 1`` for signed integers (128 for int8),
                ``levels // 2`` for unsigned ones, and all ``levels`` when the
                range is asymmetric and the data never went below zero.

        Returns:
            ``(lo, hi)`` as Python floats.
        """
        self._require_data("choose_range")
        fmt = get_format(fmt)
        method = self.method if method is None else method
        _check_method(method)
        lo_d, hi_d = float(self.min_val), float(self.max_val)
        if method == "minmax":
            return lo_d, hi_d
        # |x| and x coincide when nothing is negative; entropy always works on |x|.
        signed_view = method != "entropy" and not symmetric and (not self.absolute or lo_d >= 0)
        counts, edges = self.histogram() if signed_view else self.abs_histogram()
        if method == "percentile":
            p = self.percentile if percentile is None else percentile
            lo, hi = percentile_range(counts, edges, p, abs_hist=not signed_view)
        elif method == "mse":
            lo, hi = mse_range(counts, edges, fmt, symmetric=not signed_view)
        else:
            nq = self._quantized_bins(fmt, symmetric, lo_d, num_quantized_bins)
            t = entropy_threshold(counts, edges, nq)
            lo, hi = -t, t
        lo = min(max(lo, lo_d), hi_d)
        hi = min(max(hi, lo_d), hi_d)
        return lo, hi

    def _quantized_bins(self, fmt: QFormat, symmetric: bool, lo_d: float, given: int | None) -> int:
        given = self.num_quantized_bins if given is None else given
        if given is not None:
            return int(given)
        if fmt.kind == "float":
            raise FormatError(
                f"entropy calibration models a uniform integer grid, which {fmt.name} is not; "
                "use method='mse' (it models float steps) or pass num_quantized_bins"
            )
        if not symmetric and lo_d >= 0:
            return fmt.levels
        return int(fmt.qmax) + 1 if fmt.signed else fmt.levels // 2

    def compute_qparams(
        self,
        fmt: QFormat | str,
        *,
        symmetric: bool = True,
        method: str | None = None,
        percentile: float | None = None,
        num_quantized_bins: int | None = None,
    ) -> QParams:
        """Scale and zero point for the range `choose_range` picks (per-tensor).

        Example:
            >>> obs = HistogramObserver(absolute=True)
            >>> _ = obs(torch.distributions.Laplace(0.0, 1.0).sample((100_000,)))
            >>> p = obs.compute_qparams("int8", method="entropy")
            >>> float(p.scale) * 127 < float(obs.max_val.abs().max())
            True
        """
        fmt = get_format(fmt)
        lo, hi = self.choose_range(
            fmt,
            symmetric=symmetric,
            method=method,
            percentile=percentile,
            num_quantized_bins=num_quantized_bins,
        )
        scale, zero_point = qparams_from_minmax(torch.tensor(lo), torch.tensor(hi), fmt, symmetric=symmetric)
        return QParams(scale, zero_point, fmt, None, None)

    # --- distributed ----------------------------------------------------------------
    def _sync_signature(self) -> object:
        return (self.bins, self.absolute)

    def _sync(self, group: object | None, infos: list[dict]) -> None:
        old = self.grid() if self.has_data else None
        if old is None:
            self.counts.zero_()
            self.min_val.fill_(float("inf"))
            self.max_val.fill_(float("-inf"))
        dist_sync.all_reduce_(self.min_val, "min", group)
        dist_sync.all_reduce_(self.max_val, "max", group)
        new = self._grid_of(float(self.min_val), float(self.max_val))
        if old is not None and new != old:
            self.counts = regrid(self.counts, old, new)
        dist_sync.all_reduce_(self.counts, "sum", group)

    def extra_repr(self) -> str:
        text = f"bins={self.bins}, absolute={self.absolute}, method={self.method!r}"
        text += f", seen={int(self.seen)}"
        if self.has_data:
            e, _ = self.grid()
            text += (
                f", min={float(self.min_val):.6g}, max={float(self.max_val):.6g}, "
                f"bin_width=2**{e}, total={int(self.counts.sum())}"
            )
        return text


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ObserverError(f"unknown range method {method!r}; use one of {', '.join(METHODS)}")


def grid_for(lo: float, hi: float, bins: int) -> tuple[int, int]:
    """The aligned grid ``(e, k)`` for data in ``[lo, hi]``.

    The smallest ``e >= max(E_MIN, exponent(max|x|) − INDEX_BITS)`` such that
    ``k = floor(lo / 2^e)`` gives ``(k + bins)·2^e > hi``. Larger ranges never
    give a smaller ``e``, and every ``e`` above it works too, which is what
    makes re-binning a pure coarsening.

    Example:
        >>> grid_for(0.0, 1.0, 2048)  # 2**-11 * 2048 == 1.0 is not > 1.0
        (-10, 0)
    """
    mag = max(abs(lo), abs(hi))
    e = E_MIN
    if mag > 0:
        e = max(e, math.frexp(mag)[1] - INDEX_BITS)
    span = hi - lo
    if span > 0:
        e = max(e, math.floor(math.log2(span / bins)))  # bins·2^e >= span is necessary
    while True:
        width = math.ldexp(1.0, e)
        k = math.floor(lo / width)
        if (k + bins) * width > hi:
            return e, k
        e += 1


def bin_counts(x: Tensor, grid: tuple[int, int], bins: int, *, absolute: bool = False) -> Tensor:
    """Counts of ``x`` (or ``|x|``) on the aligned grid, as int64.

    Exact: ``x · 2^-e`` is a power-of-two scaling, ``floor`` and the
    subtraction of ``k`` act on integers that float32 holds exactly. The
    caller sizes the grid to the data, so every index lands in ``[0, bins)``.
    """
    e, k = grid
    fused = kernels.histogram(x, e, k, bins, absolute)  # one pass, when numba is installed
    if fused is not None:
        if fused.outside:
            raise ObserverError(f"internal: {fused.outside} values lie off the grid (2**{e}, {k})")
        return fused.counts
    flat = x.reshape(-1)
    if flat.device.type != "cpu":
        return _bin_counts_whole(flat, e, k, bins, absolute)
    work = torch.float64 if flat.dtype == torch.float64 else torch.float32
    inv, offset = math.ldexp(1.0, -e), float(k)
    size = min(CHUNK, flat.numel())
    buf = torch.empty(size, dtype=work)
    buf_np = buf.numpy()  # same memory; numpy's floor runs on this thread (see CHUNK)
    idx = torch.empty(size, dtype=torch.int32)
    counts = torch.zeros(bins, dtype=torch.int64)
    for part in flat.split(CHUNK):
        n = part.numel()
        b, b_np, i = (buf, buf_np, idx) if n == size else (buf[:n], buf_np[:n], idx[:n])
        if part.dtype == work:
            torch.mul(part, inv, out=b)
        else:
            b.copy_(part).mul_(inv)  # widen first: x · 2^-e could overflow float16
        if absolute:
            b.abs_()
        np.floor(b_np, out=b_np)
        if e > 0 and not absolute:
            _fix_underflow(b, part)
        b.sub_(offset)
        i.copy_(b)
        counts += torch.bincount(i, minlength=bins)
    return counts


def _fix_underflow(b: Tensor, part: Tensor) -> None:
    """Move tiny negatives whose scaled value underflowed to -0.0 down to floor -1.

    With bins wider than 1 (``e > 0``), ``x · 2^-e`` rounds a negative ``x`` above
    ``-2^(e-150)`` to -0.0, whose floor is 0, but ``x`` lies in the bin below 0.
    (An input -0.0 belongs to the bin of 0 and is left alone: it is not < 0.)
    """
    b.sub_(torch.logical_and(b == 0, part < 0).to(b.dtype))


def _bin_counts_whole(flat: Tensor, e: int, k: int, bins: int, absolute: bool) -> Tensor:
    """Accelerator path: one pass of whole-tensor ops (no per-chunk launches)."""
    work = torch.float64 if flat.dtype == torch.float64 else torch.float32
    b = flat.to(work) * math.ldexp(1.0, -e)
    if absolute:
        b.abs_()
    b.floor_()
    if e > 0 and not absolute:
        _fix_underflow(b, flat)
    return torch.bincount(b.sub_(float(k)).to(torch.int32), minlength=bins)


def regrid(counts: Tensor, old: tuple[int, int], new: tuple[int, int], bins: int | None = None) -> Tensor:
    """Move counts from grid ``old`` to the coarser aligned grid ``new``, exactly.

    Old bin ``i`` is the cell ``k0 + i`` of width ``2^e0``; in the new grid it
    lies wholly inside cell ``floor((k0 + i) / 2^(e1 − e0))``. Counts stay
    integers and the total is unchanged. ``bins`` is the new grid's length
    (default: as many bins as ``counts`` has).
    """
    (e0, k0), (e1, k1) = old, new
    if e1 < e0:
        raise ObserverError(f"internal: cannot re-bin to a finer grid (2**{e0} -> 2**{e1})")
    size = counts.numel() if bins is None else bins
    if e1 == e0:  # the same width: a shift by whole bins (cheaper than the general move)
        shift = k1 - k0
        lo, hi = max(shift, 0), min(shift + size, counts.numel())
        moved = torch.zeros(size, dtype=counts.dtype, device=counts.device)
        if hi > lo:
            moved[lo - shift : hi - shift] = counts[lo:hi]
        if int(moved.sum()) != int(counts.sum()):
            raise ObserverError("internal: re-binning would drop counts; the new grid must hold the data")
        return moved
    cells = torch.arange(counts.numel(), dtype=torch.int64, device=counts.device) + k0
    # |cells| < 2**42, so any shift of 62 or more leaves floor() at 0 or -1.
    target = torch.div(cells, 2 ** min(e1 - e0, 62), rounding_mode="floor") - k1
    outside = (target < 0) | (target >= size)
    if bool(counts[outside].any()):
        raise ObserverError("internal: re-binning would drop counts; the new grid must hold the data")
    return torch.zeros(size, dtype=counts.dtype, device=counts.device).index_add_(
        0, target.clamp_(0, size - 1), counts
    )

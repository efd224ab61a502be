"""Fused CPU kernels, used when numba is installed (``pip install lowbit[fast]``).

Each kernel does in one pass over memory what the torch code does in several
passes per chunk: `quantize_into` is ONNX QuantizeLinear for integer codes,
`histogram` is the aligned-grid binning of
:class:`lowbit.observers.HistogramObserver`. They compute exactly what the
torch paths compute, bit for bit (the tests hold them to it), so whether numba
is installed changes speed, never results.

Both return None where they do not apply (no numba, not CPU, not float32,
not contiguous, a layout they do not handle); the caller then runs its torch
code, which stays the reference and covers everything.

Why the numba settings below:

- ``fastmath`` stays off: it would license ``x * (1 / s)`` for ``x / s`` and
  drop the NaN checks, and both change results;
- the threading layer is numba's ``forksafe`` choice unless the user chose one
  with ``NUMBA_THREADING_LAYER``: TBB if installed (``pip install tbb``), else
  workqueue. Numba's default pick here, GNU OpenMP, aborts the process on
  ``fork()`` once it has run (DataLoader workers, multiprocessing). Workqueue
  is not safe to enter from two threads at once; the kernels hold the GIL (no
  ``nogil``) and a lock;
- the thread count follows ``torch.get_num_threads()`` on every call, so a
  user's ``torch.set_num_threads`` holds for these kernels too;
- each kernel is a serial function over a slice, run directly for small inputs
  and one slice per thread for large ones (`PARALLEL_FROM`): a parallel launch
  costs more than the work on small inputs.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

# False when numba is not installed, or failed to import; tests set it to False
# to exercise the torch paths.
AVAILABLE = importlib.util.find_spec("numba") is not None

# Bound to the numba module by _load() on first use: importing numba takes about half
# a second, which `import lowbit` should not pay. The kernels below name numba.prange,
# resolved when numba compiles them (after _load()).
numba = None
_jit: dict = {}
_lock = threading.Lock()

# Code containers the quantize kernel writes into directly.
_CODE_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.uint16)
# Inputs at least this large are split across threads, by threading layer. A launch
# costs microseconds with TBB, and 0.3-2 ms with workqueue, which wakes every worker
# twice (measured on a 2-core VM); below these sizes one thread is faster.
PARALLEL_FROM = {"tbb": 1 << 18, "workqueue": 1 << 22}


def quantize_into(
    x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: float, qmax: float, out: Tensor
) -> int | None:
    """``out = clamp(rint(x / scale) + zero_point, qmin, qmax)``, in one pass.

    Args:
        x: input; float32, contiguous, on CPU (else None is returned).
        scale: float32, 0-d (per-tensor) or ``x``'s rank with its non-1 dimensions
            one contiguous run equal to ``x``'s (per-axis, exactly tiled blocks).
        zero_point: float32 of ``scale``'s shape, or None for 0.
        qmin, qmax: the code range (integers, ``qmax - qmin < 2**22``).
        out: contiguous int8 / uint8 / int16 / uint16 of ``x``'s shape.

    Returns:
        The number of NaN inputs (their codes are left as ``qmin``), or None when
        the kernel does not handle these arguments and nothing was written.
    """
    if not _usable(x) or out.dtype not in _CODE_DTYPES or not out.is_contiguous():
        return None
    layout = _channel_layout(x.shape, scale)
    if layout is None or _load() is None:
        return None
    lo, hi = np.float32(qmin), np.float32(qmax)
    xs, os_ = x.detach().numpy(), out.numpy()
    with _lock:
        chunks = _chunks(x.numel())
        if layout == ():
            s, z = np.float32(float(scale)), np.float32(0.0 if zero_point is None else float(zero_point))
            xs, os_ = xs.reshape(-1), os_.reshape(-1)
            if chunks == 1:
                return int(_jit["flat"](xs, s, z, lo, hi, os_))
            return int(_jit["flat_parallel"](xs, s, z, lo, hi, os_, chunks))
        outer, channels, inner = layout
        s = scale.reshape(channels).numpy()
        z = np.zeros(channels, np.float32) if zero_point is None else zero_point.reshape(channels).numpy()
        shape = (outer * channels, inner)  # row r has channel r % channels
        xs, os_ = xs.reshape(shape), os_.reshape(shape)
        if chunks == 1:
            return int(_jit["rows"](xs, s, z, lo, hi, os_, 0))
        return int(_jit["rows_parallel"](xs, s, z, lo, hi, os_, chunks))


class Binned(NamedTuple):
    """What `histogram` returns: counts on the grid, how many values missed it, the range."""

    counts: Tensor  # int64, one per bin
    outside: int  # values off the grid, NaN included; the counts leave them out
    nan: int  # NaN values
    lo: float  # min(lo, x.min()) and max(hi, x.max()) over the values that are not NaN
    hi: float


def histogram(
    x: Tensor, e: int, k: int, bins: int, absolute: bool, lo: float = -math.inf, hi: float = math.inf
) -> Binned | None:
    """Counts of ``x`` (or ``|x|``) in the bins ``[(k + i)·2^e, (k + i + 1)·2^e)``, and its range.

    One pass: the cell ``floor(x · 2^-e) − k`` is `bin_counts`' arithmetic
    (lowbit.observers.histogram), exact in float32 (a power-of-two scaling, a
    floor, an integer subtraction; the same -0.0 fix for bins wider than 1).
    The range comes almost free: only blocks with values outside ``[lo, hi]``
    are searched for their extremes, so pass the range seen so far (or the
    default, to skip it).

    Returns:
        `Binned`, or None when the kernel does not handle ``x`` or this grid
        (then nothing was computed).
    """
    kf, inv = np.float32(k), np.float32(math.ldexp(1.0, -e))
    exact = float(kf) == k and float(inv) == math.ldexp(1.0, -e) and bins < 2**24
    if not exact or not _usable(x) or _load() is None:
        return None
    flat = x.detach().reshape(-1).numpy()
    args = (flat, inv, kf, bins, absolute, e > 0 and not absolute, np.float32(lo), np.float32(hi))
    with _lock:
        chunks = _chunks(flat.size)
        if chunks == 1:
            counts = np.zeros(bins, np.int64)
            outside, nan, lo, hi = _jit["count"](*args, counts)
        else:
            counts, outside, nan, lo, hi = _jit["count_parallel"](*args, chunks)
    return Binned(torch.from_numpy(counts), int(outside), int(nan), float(lo), float(hi))


def _usable(x: Tensor) -> bool:
    return (
        AVAILABLE
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous()
        and x.numel() > 0
        and type(x) in (Tensor, torch.nn.Parameter)  # not tracing / functorch wrappers
    )


def _channel_layout(shape: torch.Size, param: Tensor) -> tuple[int, ...] | None:
    """``()`` for one parameter; ``(outer, channels, inner)`` when the parameter varies
    along one run of ``x``'s dimensions, which it matches; None otherwise."""
    if param.numel() == 1:
        return ()
    if param.dim() != len(shape):
        return None
    varying = [d for d in range(len(shape)) if param.shape[d] != 1]
    a, b = varying[0], varying[-1] + 1
    if any(param.shape[d] != shape[d] for d in range(a, b)):
        return None
    return math.prod(shape[:a]), math.prod(shape[a:b]), math.prod(shape[b:])


def _chunks(n: int) -> int:
    """Slices to split ``n`` values into: one per thread that torch may use, or 1 when small."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel launch yet: assume the slower layer
        layer = "workqueue"
    if threads == 1 or n < PARALLEL_FROM.get(layer, PARALLEL_FROM["workqueue"]):
        return 1
    numba.set_num_threads(threads)
    return threads


def _load() -> dict | None:
    """Import numba and compile the kernels on first use; None (and AVAILABLE False) if it fails."""
    global AVAILABLE, numba
    if _jit or not AVAILABLE:
        return _jit or None
    with _lock:
        if _jit:
            return _jit
        try:
            import numba as nb
        except ImportError:  # installed but broken (e.g. built for another numpy)
            AVAILABLE = False
            return None
        if "NUMBA_THREADING_LAYER" not in os.environ:
            nb.config.THREADING_LAYER = "forksafe"  # TBB if installed, else workqueue
        numba = nb
        serial, parallel = nb.njit(cache=True), nb.njit(parallel=True, cache=True)
        # The parallel wrappers call the serial kernels, and these _code, as compiled functions.
        compiled = {"_code": nb.njit(inline="always", cache=True)(_code)}
        compiled.update({name: serial(globals()[name]) for name in ("_flat", "_rows", "_count")})
        globals().update(compiled)
        _jit.update(flat=_flat, rows=_rows, count=_count, flat_parallel=parallel(_flat_parallel),
                    rows_parallel=parallel(_rows_parallel), count_parallel=parallel(_count_parallel))
    return _jit


# --- the kernels (plain Python here; numba compiles them in _load) ------------------


def _code(v, s, z, qmin, qmax):
    """One code: true float32 division, round half to even, + z, saturate; NaN gives (qmin, 1)."""
    r = np.rint(v / s) + z
    if r != r:
        return qmin, 1
    return min(max(r, qmin), qmax), 0


def _flat(x, s, z, qmin, qmax, out):
    """Per-tensor codes of a 1-D slice; returns its NaN count."""
    nan = 0
    for i in range(x.size):
        code, bad = _code(x[i], s, z, qmin, qmax)
        out[i] = code
        nan += bad
    return nan


def _rows(x, s, z, qmin, qmax, out, first_row):
    """Codes of rows ``first_row, first_row + 1, ...`` of ``(rows, inner)``; row r uses
    channel ``r % channels`` (counted along, not divided, so short rows stay cheap)."""
    channels = s.size
    c = first_row % channels
    nan = 0
    for r in range(x.shape[0]):
        sc, zc = s[c], z[c]
        for j in range(x.shape[1]):
            code, bad = _code(x[r, j], sc, zc, qmin, qmax)
            out[r, j] = code
            nan += bad
        c = c + 1 if c + 1 < channels else 0
    return nan


def _flat_parallel(x, s, z, qmin, qmax, out, chunks):
    step = (x.size + chunks - 1) // chunks
    nan = 0
    for c in numba.prange(chunks):
        part = slice(c * step, min(x.size, (c + 1) * step))
        nan += _flat(x[part], s, z, qmin, qmax, out[part])
    return nan


def _rows_parallel(x, s, z, qmin, qmax, out, chunks):
    rows = x.shape[0]
    step = (rows + chunks - 1) // chunks
    nan = 0
    for c in numba.prange(chunks):
        first = min(rows, c * step)
        part = slice(first, min(rows, (c + 1) * step))
        nan += _rows(x[part], s, z, qmin, qmax, out[part], first)
    return nan


def _count(x, inv, kf, bins, absolute, fix_negative, lo, hi, counts):
    """Add the cells of a slice to ``counts``; returns (outside, nan, lo, hi).

    Block by block: the cells in a loop the compiler vectorises, then the counting,
    which is the slow part (a scattered increment per value). NaN is clamped to the
    cell below the grid before the integer conversion, so it is counted as outside.
    """
    below, above, size = np.float32(-1), np.float32(bins), np.uint32(bins)
    cells = np.empty(_BLOCK, np.uint32)  # unsigned: no negative-index wraparound code
    outside = nan = 0
    for start in range(0, x.size, _BLOCK):
        block = x[start : start + _BLOCK]
        beyond = bad = np.int32(0)  # 32-bit counters keep the loop 8 floats wide
        for j in range(block.size):
            v = block[j]
            beyond += np.int32((v < lo) | (v > hi))
            bad += np.int32(v != v)
            f = np.floor(abs(v * inv) if absolute else v * inv)
            # v · 2^-e underflowed to -0.0, but v lies below 0 (bin_counts' fix)
            f = below if fix_negative and (f == 0) & (v < 0) else f
            f = f - kf  # exact: integers, and exact on the grid (a result below 2**24)
            f = f if f > below else below
            f = f if f < above else above
            cells[j] = np.uint32(np.int32(f))  # -1 (below the grid, NaN) wraps to 2**32 - 1
        nan += bad
        if beyond:
            for j in range(block.size):
                lo = block[j] if block[j] < lo else lo
                hi = block[j] if block[j] > hi else hi
        for j in range(block.size):
            if cells[j] < size:
                counts[cells[j]] += 1
            else:
                outside += 1
    return outside, nan, lo, hi


def _count_parallel(x, inv, kf, bins, absolute, fix_negative, lo, hi, chunks):
    """One slice per thread, each with its own counts (no shared writes), summed at the end."""
    step = (x.size + chunks - 1) // chunks
    local = np.zeros((chunks, bins), np.int64)
    outside = np.zeros(chunks, np.int64)
    nan = np.zeros(chunks, np.int64)
    los = np.full(chunks, lo)
    his = np.full(chunks, hi)
    for c in numba.prange(chunks):
        part = x[c * step : min(x.size, (c + 1) * step)]
        outside[c], nan[c], los[c], his[c] = _count(part, inv, kf, bins, absolute, fix_negative, lo, hi,
                                                    local[c])
    return local.sum(axis=0), outside.sum(), nan.sum(), los.min(), his.max()


# Values per block: the cells of one block stay in L1.
_BLOCK = 512

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
- the kernels (`kernel_loops`) are serial functions over a slice, compiled
  ``nogil``. A large input is cut into one slice per thread that torch may
  use (``torch.get_num_threads()``, so a user's ``torch.set_num_threads``
  holds here too), and the slices run at once:
  - the histogram on torch's own OpenMP threads where torch runs on GNU
    OpenMP (Linux wheels): a C callback handed to ``GOMP_parallel`` (see
    `_team` for why; in a forked child, where that runtime hangs, the pool
    below instead);
  - quantize and fake_quantize on the calling thread and a small pool of
    Python threads. Handing a slice to a waiting thread costs tens of
    microseconds; the pool is made again in a forked child, whose copy has no
    threads behind it;
  - not numba's own threading layers: a launch of its fork-safe
    ``workqueue`` layer cost 0.3-2 ms on a 2-core VM (it wakes every worker
    twice), and its GNU OpenMP layer aborts forked processes (DataLoader
    workers) once it has run;
- inputs below `PARALLEL_FROM` (`PARALLEL_HISTOGRAM_FROM`) values run on the
  calling thread: a hand-off costs more than the work.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lowbit.primitives import kernel_loops as loops

# False when numba is not installed, or failed to import; tests set it to False
# to exercise the torch paths.
AVAILABLE = importlib.util.find_spec("numba") is not None

# Compiled on first use by _load(): importing numba takes about half a second, which
# `import lowbit` should not pay.
_jit: dict = {}
_callbacks: dict = {}  # the C callbacks in _jit, as ctypes functions
_lock = threading.Lock()
_per_thread = threading.local()  # prepared histogram tasks, see _histogram_task
# The threads that run all slices but the first, where OpenMP does not:
# (pool, its size, the process it belongs to).
_pool: tuple[ThreadPoolExecutor, int, int] | None = None
# GNU OpenMP's entry point (see _team), and the process that may use it.
_gomp_parallel = None
_gomp_pid = -1

# Code containers the quantize kernel writes into directly.
_CODE_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.uint16)
# Inputs at least this large are split across threads: a hand-off to the pool of Python
# threads costs 20-50 us, about the time to quantize 1e5 values on one thread; to OpenMP's
# threads less (measured on a 2-core VM).
PARALLEL_FROM = 1 << 18
PARALLEL_HISTOGRAM_FROM = 1 << 17


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
    if out.dtype not in _CODE_DTYPES:
        return None
    return _elementwise("", x, scale, zero_point, qmin, qmax, out)


def fake_quantize_into(
    x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: float, qmax: float, out: Tensor
) -> bool:
    """``out = (clamp(rint(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    `lowbit.primitives.fake_quantize`'s forward value for integer formats, in one
    pass and the same float32 steps (so the same bits). Arguments as in
    `quantize_into`, with ``out`` float32. Returns False, writing nothing, where the
    kernel does not apply.
    """
    if out.dtype != torch.float32:
        return False
    return _elementwise("fake_", x, scale, zero_point, qmin, qmax, out) is not None


def _elementwise(kind: str, x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: float, qmax: float,
                 out: Tensor) -> int | None:
    """Run the ``kind`` flat / rows kernels over ``x`` into ``out``: their sum, or None."""
    if not _usable(x) or not out.is_contiguous() or out.shape != x.shape:
        return None
    layout = _channel_layout(x.shape, scale)
    if layout is None or _load() is None:
        return None
    lo, hi = np.float32(qmin), np.float32(qmax)
    xs, os_ = x.detach().numpy(), out.numpy()
    if layout == ():
        s, z = np.float32(float(scale)), np.float32(0.0 if zero_point is None else float(zero_point))
        xs, os_ = xs.reshape(-1), os_.reshape(-1)
        slices = _slices(xs.size, PARALLEL_FROM)
        return sum(_run(_jit[kind + "flat"], [(xs[a:b], s, z, lo, hi, os_[a:b]) for a, b in slices]))
    outer, channels, inner = layout
    zp = torch.zeros(channels) if zero_point is None else zero_point.detach().reshape(channels)
    s, z = scale.detach().reshape(channels).numpy(), zp.numpy()
    shape = (outer * channels, inner)  # row r has channel r % channels
    xs, os_ = xs.reshape(shape), os_.reshape(shape)
    slices = _slices(shape[0], PARALLEL_FROM, per_item=inner)
    return sum(_run(_jit[kind + "rows"], [(xs[a:b], s, z, lo, hi, os_[a:b], a) for a, b in slices]))


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
    slices = _slices(flat.size, PARALLEL_HISTOGRAM_FROM, longest=loops.LONGEST_SLICE)
    n = len(slices)
    prepared = _histogram_task(n, bins)
    prepared.reals[:] = (inv, kf, lo, hi)
    task, records = prepared.task, prepared.records
    task[2], task[3], task[loops.NEXT] = absolute, e > 0 and not absolute, 0
    out = np.zeros((n, bins + 1), np.int64)  # per slice: its counts, then the values off the grid
    x_at, out_at = flat.ctypes.data, out.ctypes.data
    for i, (a, b) in enumerate(slices):
        records[i, 0], records[i, 1], records[i, 4] = x_at + 4 * a, b - a, out_at + out.strides[0] * i
    _team("team_count", task, min(n, max(1, torch.get_num_threads())))  # threads claim slices
    total = out[0]
    for i in range(1, n):
        total += out[i]
    found = prepared.found
    nan, lo, hi = found[0].tolist() if n == 1 else (found[:, 0].sum(), found[:, 1].min(), found[:, 2].max())
    return Binned(torch.from_numpy(total[:bins]), int(total[bins]), int(nan), float(lo), float(hi))


class _HistogramTask:
    """A histogram task for ``slices`` slices on ``bins`` bins, with its scratch memory:
    made once per shape and thread, then only the inputs change (fresh memory this size
    costs page faults, and a task built anew costs more Python than the small inputs'
    binning)."""

    def __init__(self, slices: int, bins: int) -> None:
        wide = bins >= 2**16
        self.counts = np.zeros((slices, 4, bins + 1), np.int32)  # zero between calls (count)
        self.cells = np.empty((slices, loops.BLOCK), np.int32 if wide else np.uint16)
        self.found = np.empty((slices, 3))  # per slice: NaN count, lo, hi
        self.reals = np.empty(4, np.float32)  # inv, kf, lo, hi
        self.task = np.zeros(loops.HEADER + loops.RECORD * slices, np.int64)
        self.task[: loops.HEADER] = (slices, bins, 0, 0, self.reals.ctypes.data, self.found.ctypes.data,
                                     wide, 0)
        self.records = self.task[loops.HEADER :].reshape(slices, loops.RECORD)
        self.records[:, 2] = self.counts.ctypes.data + self.counts.strides[0] * np.arange(slices)
        self.records[:, 3] = self.cells.ctypes.data + self.cells.strides[0] * np.arange(slices)


def _histogram_task(slices: int, bins: int) -> _HistogramTask:
    kept = getattr(_per_thread, "histogram_tasks", None)
    if kept is None or len(kept) > 8:  # a few shapes per thread, not one per grid ever seen
        kept = _per_thread.histogram_tasks = {}
    task = kept.get((slices, bins))
    if task is None:
        task = kept[slices, bins] = _HistogramTask(slices, bins)
    return task


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


def _slices(n: int, parallel_from: int, per_item: int = 1,
            longest: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` of the slices to cut ``n`` items (of ``per_item`` values each) into:
    one per thread that torch may use, or one when there are fewer than ``parallel_from``
    values; more where a slice would be longer than ``longest`` items."""
    threads = max(1, torch.get_num_threads())
    parts = 1 if threads == 1 or n * per_item < parallel_from else threads
    if longest is not None:
        parts = max(parts, -(-n // longest))
    step = -(-n // parts)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _run(kernel, jobs: list[tuple]) -> list:
    """``[kernel(*job) for job in jobs]``, the first on this thread, the others on the pool."""
    if len(jobs) == 1:
        return [kernel(*jobs[0])]
    pool = _threads(len(jobs) - 1)
    pending = [pool.submit(kernel, *job) for job in jobs[1:]]
    first = kernel(*jobs[0])
    return [first] + [job.result() for job in pending]


def _threads(workers: int) -> ThreadPoolExecutor:
    """The pool, with at least ``workers`` threads, made in this process."""
    global _pool
    with _lock:
        if _pool is None or _pool[1] < workers or _pool[2] != os.getpid():
            if _pool is not None and _pool[2] == os.getpid():
                _pool[0].shutdown(wait=False)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="lowbit-kernel")
            _pool = (pool, workers, os.getpid())
        return _pool[0]


def _team(name: str, task: np.ndarray, threads: int) -> None:
    """Have ``threads`` threads call the C callback ``name`` on ``task`` at once (each claims slices until
    none is left): torch's own OpenMP threads where torch runs on GNU OpenMP, else this
    thread and the pool. Only the task's memory is shared; the call returns when all are done.

    Why torch's threads: after each parallel torch op they spin, waiting for work, for
    up to milliseconds. A thread of ours started then shares a core with a spinning one
    and runs at half speed, which made the parallel histogram no faster than one thread
    right after a model's forward pass. Handed to OpenMP, the spinning threads do the work.
    """
    address, callback = task.ctypes.data, _callbacks[name]
    if threads > 1 and _gomp_parallel is not None and _gomp_pid == os.getpid():
        _gomp_parallel(ctypes.cast(callback, ctypes.c_void_p), address, threads, 0)
    else:
        _run(callback, [(address,)] * threads)  # ctypes releases the GIL for each call


def _openmp_entry() -> object | None:
    """``GOMP_parallel`` of the GNU OpenMP runtime that torch runs on, or None.

    Only a runtime already loaded (by torch) is taken: RTLD_NOLOAD, so nothing new is
    loaded and no second OpenMP runtime competes for the cores.
    """
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        runtime = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        entry = runtime.GOMP_parallel
    except (OSError, AttributeError):  # another OpenMP (macOS, Windows) or none
        return None
    entry.restype = None
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    return entry


def _load() -> dict | None:
    """Import numba and compile the kernels on first use; None (and AVAILABLE False) if it fails."""
    global AVAILABLE, _gomp_parallel, _gomp_pid
    if _jit or not AVAILABLE:
        return _jit or None
    with _lock:
        if _jit:
            return _jit
        try:
            compiled = loops.compile_all()
        except ImportError:  # installed but broken (e.g. built for another numpy)
            AVAILABLE = False
            return None
        # GNU OpenMP hangs in a forked child whose parent ran a parallel region: a child
        # (DataLoader worker) uses the pool of Python threads instead.
        _gomp_parallel, _gomp_pid = _openmp_entry(), os.getpid()
        callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        _callbacks.update({name: callback(entry.address) for name, entry in compiled.items()
                           if name.startswith("team_")})
        _jit.update(compiled)  # holds the callbacks' code too
    return _jit

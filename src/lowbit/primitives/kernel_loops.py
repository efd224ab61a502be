"""The loops of lowbit's numba kernels, as plain Python that numba compiles.

`lowbit.primitives.kernels` compiles these on first use (numba is imported
only then) and calls them; read its docstring first. Each loop works on one
slice and is compiled ``nogil``, so slices run in parallel. `team_count` is
the histogram kernel as a C callback that the threads of an OpenMP team (or
a pool of Python threads) call at once: each takes the next unclaimed slice
of a task until none is left.

Names bound by `compile_all` when it runs: ``pointer(address, dtype)``, a
typed pointer from an integer address; ``claim(task)``, an atomic
fetch-and-add on the task's slice counter; ``carray``, numba's array view of
a pointer.
"""

from __future__ import annotations

import numpy as np

# Values per block: the cells of one block stay in L1.
BLOCK = 512

# Layout of a histogram task (an int64 array): a header, then one record per slice.
HEADER = 8  # slices, bins, absolute, fix_negative, reals, found, cells_int32, next slice
RECORD = 5  # addresses of x, values, addresses of scratch counts, of cells, of the output
NEXT = 7  # the header slot `claim` increments
# Values per slice at most: int32 counts cannot overflow.
LONGEST_SLICE = 2**31 - 1

pointer = claim = carray = None  # bound by compile_all


def compile_all() -> dict:
    """Compile the loops (numba is imported here); returns the entry points by name."""
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def pointer_(typingctx, address, dtype):
        kind = types.CPointer(dtype.dtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(kind))

        return kind(address, dtype), codegen

    @intrinsic
    def claim_(typingctx, task):
        def codegen(context, builder, signature, args):
            slot = builder.gep(args[0], [context.get_constant(types.intp, NEXT)])
            return builder.atomic_rmw("add", slot, context.get_constant(types.int64, 1), "monotonic")

        return types.int64(task), codegen

    globals().update(pointer=pointer_, claim=claim_, carray=numba.carray)
    inline = numba.njit(inline="always", nogil=True, cache=True)
    globals().update({name: inline(globals()[name])
                      for name in ("quantize_one", "fake_one", "position", "cells_signed", "cells_absolute")})
    serial = numba.njit(nogil=True, cache=True)
    globals().update({name: serial(globals()[name])
                      for name in ("flat", "rows", "fake_flat", "fake_rows", "count")})
    team = numba.cfunc(types.void(types.CPointer(types.int64)), nogil=True, cache=True)(team_count)
    return {"flat": flat, "rows": rows, "fake_flat": fake_flat, "fake_rows": fake_rows, "count": count,
            "team_count": team}


def team_count(task_address):
    """Run `count` on the slices of a histogram task until none is left (see HEADER, RECORD)."""
    head = carray(task_address, HEADER)
    slices, bins = head[0], head[1]
    task = carray(task_address, HEADER + RECORD * slices)
    reals = carray(pointer(task[4], np.float32), 4)  # inv, kf, lo, hi
    found = carray(pointer(task[5], np.float64), 3 * slices)  # nan, lo, hi per slice
    while True:
        s = claim(task_address)
        if s >= slices:
            return
        at = HEADER + RECORD * s
        x = carray(pointer(task[at], np.float32), task[at + 1])
        counts = carray(pointer(task[at + 2], np.int32), (4, bins + 1))
        out = carray(pointer(task[at + 4], np.int64), bins + 1)
        if task[6]:
            cells = carray(pointer(task[at + 3], np.int32), BLOCK)
            nan, lo, hi = count(x, reals[0], reals[1], bins, task[2] != 0, task[3] != 0, reals[2],
                                reals[3], counts, cells, out)
        else:
            cells = carray(pointer(task[at + 3], np.uint16), BLOCK)
            nan, lo, hi = count(x, reals[0], reals[1], bins, task[2] != 0, task[3] != 0, reals[2],
                                reals[3], counts, cells, out)
        found[3 * s], found[3 * s + 1], found[3 * s + 2] = nan, lo, hi


def quantize_one(v, s, z, qmin, qmax):
    """One code: true float32 division, round half to even, + z, saturate; NaN gives (qmin, 1)."""
    r = np.rint(v / s) + z
    if r != r:
        return qmin, 1
    return min(max(r, qmin), qmax), 0


def fake_one(v, s, z, qmin, qmax):
    """One fake-quantized value, in `fake_quantize`'s float32 steps: x / s, round half to
    even, + z, clamp, - z, * s (each rounded as torch rounds it; NaN stays NaN)."""
    r = np.rint(v / s) + z
    if r != r:
        return r
    return (min(max(r, qmin), qmax) - z) * s


def fake_flat(x, s, z, qmin, qmax, out):
    """Per-tensor fake quantization of a 1-D slice into ``out`` (float32)."""
    for i in range(x.size):
        out[i] = fake_one(x[i], s, z, qmin, qmax)
    return 0


def fake_rows(x, s, z, qmin, qmax, out, first_row):
    """Fake quantization of rows ``first_row, ...`` of ``(rows, inner)`` (see `rows`)."""
    channels = s.size
    c = first_row % channels
    for r in range(x.shape[0]):
        sc, zc = s[c], z[c]
        for j in range(x.shape[1]):
            out[r, j] = fake_one(x[r, j], sc, zc, qmin, qmax)
        c = c + 1 if c + 1 < channels else 0
    return 0


def flat(x, s, z, qmin, qmax, out):
    """Per-tensor codes of a 1-D slice; returns its NaN count."""
    nan = 0
    for i in range(x.size):
        code, bad = quantize_one(x[i], s, z, qmin, qmax)
        out[i] = code
        nan += bad
    return nan


def rows(x, s, z, qmin, qmax, out, first_row):
    """Codes of rows ``first_row, first_row + 1, ...`` of ``(rows, inner)``; row r uses
    channel ``r % channels`` (counted along, not divided, so short rows stay cheap)."""
    channels = s.size
    c = first_row % channels
    nan = 0
    for r in range(x.shape[0]):
        sc, zc = s[c], z[c]
        for j in range(x.shape[1]):
            code, bad = quantize_one(x[r, j], sc, zc, qmin, qmax)
            out[r, j] = code
            nan += bad
        c = c + 1 if c + 1 < channels else 0
    return nan


def count(x, inv, kf, bins, absolute, fix_negative, lo, hi, counts, cells, out):
    """Adds the counts of a slice's cells to ``out[:bins]`` (int64), and of the values off
    the grid (NaN included) to ``out[bins]``; returns (nan, lo, hi).

    ``counts`` is int32 scratch of four rows, zero on entry and left zero: only the
    cells the slice touched are summed into ``out`` and cleared, so a small slice
    costs no pass over all the bins. int32: fewer than 2**31 values per slice (the
    caller's job), and the rows that the data touches stay in L1. ``cells`` is
    scratch for one block (uint16 where the cells fit: the kernel runs faster on it).

    Block by block: the cells in a loop the compiler vectorises, then the counting,
    which is the slow part (a scattered increment per value). A block that may hold
    a value outside ``[lo, hi]``, or NaN, is searched again for its extremes and NaN
    count. On the signed grid that test is the block's smallest and largest cell
    against the cells of ``lo`` and ``hi`` (cells are monotonic in the value, so a
    value in a cell strictly between them lies inside), two integer min/max in the
    vectorised loop; ``|x|`` cells say nothing of the sign, so there the values are
    compared.
    """
    off = np.float32(bins)
    clo = position(lo, inv, kf, fix_negative)
    chi = min(position(hi, inv, kf, fix_negative), off)  # off the grid: always searched
    nan = 0
    first, last = bins, 0  # the cells touched
    for start in range(0, x.size, BLOCK):
        block = x[start : start + BLOCK]
        # One loop per case, each with its constants folded in (the loop stays vectorised).
        if absolute:
            unusual, low, high = cells_absolute(block, cells, inv, kf, off, lo, hi)
        elif fix_negative:
            unusual, low, high = cells_signed(block, cells, inv, kf, off, clo, chi, True)
        else:
            unusual, low, high = cells_signed(block, cells, inv, kf, off, clo, chi, False)
        first, last = min(first, low), max(last, high)
        if unusual:
            for j in range(block.size):
                v = block[j]
                lo = v if v < lo else lo
                hi = v if v > hi else hi
                nan += v != v
        # Four partial histograms in turn: a run of equal cells (the zeros after a ReLU)
        # then updates four counters, not one whose every increment waits for the last.
        quads = block.size - block.size % 4
        for j in range(0, quads, 4):
            counts[0, cells[j]] += 1
            counts[1, cells[j + 1]] += 1
            counts[2, cells[j + 2]] += 1
            counts[3, cells[j + 3]] += 1
        for j in range(quads, block.size):
            counts[0, cells[j]] += 1
    for i in range(first, last + 1):
        out[i] += counts[0, i] + counts[1, i] + counts[2, i] + counts[3, i]
        counts[0, i] = counts[1, i] = counts[2, i] = counts[3, i] = 0
    return nan, lo, hi


def position(v, inv, kf, fix_negative):
    """The cell of ``v`` on the window, as a float: unclamped, NaN for NaN."""
    f = np.floor(v * inv)
    if fix_negative and (f == 0) & (v < 0):  # v · 2^-e underflowed to -0.0, but v < 0
        f = np.float32(-1)
    return f - kf  # exact: integers, and exact on the grid (a result below 2**24)


def cells_signed(block, cells, inv, kf, off, clo, chi, fix_negative):
    """Cells of a block (``off`` where off the grid or NaN); whether it may leave ``[lo, hi]``,
    and its smallest and largest cell."""
    low, high = np.int32(off), np.int32(0)
    for j in range(block.size):
        f = position(block[j], inv, kf, fix_negative)
        cell = np.int32(f if (f >= 0) & (f < off) else off)  # NaN fails both tests
        low = min(low, cell)
        high = max(high, cell)
        cells[j] = cell
    return (low <= clo) | (high >= chi), low, high


def cells_absolute(block, cells, inv, kf, off, lo, hi):
    """Cells of ``|x|`` in a block; whether it holds NaN or a value outside ``[lo, hi]``,
    and its smallest and largest cell."""
    unusual, low, high = np.int32(0), np.int32(off), np.int32(0)
    for j in range(block.size):
        v = block[j]
        unusual |= np.int32((v < lo) | (v > hi) | (v != v))
        f = np.floor(abs(v * inv)) - kf
        cell = np.int32(f if (f >= 0) & (f < off) else off)
        low = min(low, cell)
        high = max(high, cell)
        cells[j] = cell
    return unusual != 0, low, high



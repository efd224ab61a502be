"""The fused numba kernels equal the torch paths and a slow NumPy reference, bit for bit.

Every case runs twice: with the kernels (when numba is installed) and with
``kernels.AVAILABLE`` switched off, which is what a user without numba gets.
"""

from __future__ import annotations

import faulthandler
import importlib
import itertools
import math
import multiprocessing

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit.errors import InputError, ObserverError
from lowbit.formats import get_format
from lowbit.observers import HistogramObserver
from lowbit.observers.histogram import bin_counts, grid_for
from lowbit.primitives import dequantize, fake_quantize, kernels, quantize

quantize_module = importlib.import_module("lowbit.primitives.quantize")

needs_numba = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")

# Every integer format quantize's half-even path handles (byte containers up to 16 bits).
FORMATS = ["int8", "uint8", "int16", "uint16", "int4", "uint4", "int2", "uint2", "int3", "uint5",
           "int8_narrow", "ternary"]


def numpy_quantize(x: torch.Tensor, scale, zp, fmt, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear: float32 division, np.rint (half to even), + zero point, saturate."""
    fmt = get_format(fmt)
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = np.asarray(scale, dtype=np.float32).reshape(shape if axis is not None else ())
    z = np.asarray(zp, dtype=np.float64).reshape(shape if axis is not None else ())
    with np.errstate(over="ignore"):  # 3e38 / 0.05 is inf, as in float32 arithmetic
        r = np.rint(x.numpy().astype(np.float32) / s).astype(np.float64) + z
    assert not np.isnan(r).any()
    return np.clip(r, fmt.qmin, fmt.qmax)


def both_paths(fn):
    """``fn()`` with the kernels on (if installed), then with the torch fallback."""
    fused = fn()
    saved, kernels.AVAILABLE = kernels.AVAILABLE, False
    try:
        fallback = fn()
    finally:
        kernels.AVAILABLE = saved
    return fused, fallback


@pytest.fixture(autouse=True, params=["serial", "parallel"])
def kernel_mode(request, monkeypatch):
    """Every test twice: on the calling thread only (small inputs), and split into one slice
    per thread, which the parallel mode does to even these small inputs. The suite runs
    on one thread (conftest); a split needs two."""
    size = 1 << 40 if request.param == "serial" else 16
    monkeypatch.setattr(kernels, "PARALLEL_FROM", size)
    monkeypatch.setattr(kernels, "PARALLEL_HISTOGRAM_FROM", size)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield request.param
    torch.set_num_threads(before)


def tricky(n: int, scale: float, seed: int = 0) -> torch.Tensor:
    """Exact ties (k + 0.5)·s, their float neighbours, values near and past ±2**22·s, ±inf."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 50 * scale
    q = n // 4
    x[:q] = (torch.randint(-40000, 40000, (q,), generator=gen) + 0.5) * scale
    x[q : 2 * q] = torch.nextafter(x[:q], torch.full((q,), float("inf")))
    special = torch.tensor([2.0**22 - 1.5, 2.0**22 - 0.5, 2.0**22, 2.0**22 + 0.5, 2.0**22 + 1, 2.0**23 - 0.5,
                            2.0**23, 2.0**24 + 2, 2.0**30, 3e38, float("inf"), 0.5, 1.5, 2.5, -0.0, 1e-45])
    special = special[: (n - 2 * q) // 2]
    x[2 * q : 2 * q + special.numel()] = special * scale
    x[2 * q + special.numel() : 2 * q + 2 * special.numel()] = -special * scale
    return x


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("scale", [0.25, 0.05, 3e-5])  # 0.25 keeps the ties exact after division
def test_per_tensor_equals_fallback_and_numpy(name, scale):
    fmt = get_format(name)
    x = tricky(20_011, scale)
    zp = int(fmt.qmin + fmt.qmax) // 2 + (1 if fmt.kind == "int" else 0)
    fused, fallback = both_paths(lambda: quantize(x, scale, zp, fmt))
    assert fused.dtype == fallback.dtype == fmt.storage_dtype
    assert torch.equal(fused, fallback)
    np.testing.assert_array_equal(fused.numpy().astype(np.float64), numpy_quantize(x, scale, zp, fmt))


@pytest.mark.parametrize("shape,axis", [((6, 5000), 0), ((6, 5000), 1), ((3, 7, 11, 13), 1),
                                        ((3, 7, 11, 13), 3), ((2, 3, 4), 0), ((1, 9), 1), ((9,), 0)])
def test_per_axis_equals_fallback_and_numpy(shape, axis):
    gen = torch.Generator().manual_seed(axis)
    x = tricky(math.prod(shape), 0.1, seed=1)[torch.randperm(math.prod(shape), generator=gen)].reshape(shape)
    channels = shape[axis]
    scale = torch.rand(channels, generator=gen) * 0.2 + 0.01
    scale[0] = 0.25
    zp = torch.randint(-100, 100, (channels,), generator=gen)
    fused, fallback = both_paths(lambda: quantize(x, scale, zp, "int8", axis=axis))
    assert torch.equal(fused, fallback)
    want = numpy_quantize(x, scale, zp, "int8", axis)
    np.testing.assert_array_equal(fused.numpy().astype(np.float64), want)


@pytest.mark.parametrize("shape,axis,block", [((8, 512), 1, 128), ((8, 576), 1, 128), ((256, 6), 0, 32),
                                              ((4, 64, 3), 1, 16)])
def test_blocked_equals_fallback(shape, axis, block):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen)
    n_blocks = -(-shape[axis] // block)
    sshape = list(shape)
    sshape[axis] = n_blocks
    scale = torch.rand(sshape, generator=gen) * 0.1 + 0.01
    zp = torch.randint(0, 15, sshape, generator=gen)
    fused, fallback = both_paths(
        lambda: quantize(x, scale, zp, "uint4", axis=axis, block_size=block)
    )
    assert torch.equal(fused, fallback)


@pytest.mark.parametrize("layout", ["tensor", "axis"])
def test_nan_in_a_late_element_is_an_error_on_both_paths(monkeypatch, layout):
    x = torch.randn(300_000)
    x[-3] = float("nan")
    per_axis = (torch.full((1000,), 0.1), torch.zeros(1000, dtype=torch.int64))
    args = (0.1, 0) if layout == "tensor" else per_axis
    x = x if layout == "tensor" else x.reshape(1000, 300)
    kw = {} if layout == "tensor" else {"axis": 0}
    for available in (kernels.AVAILABLE, False):
        monkeypatch.setattr(kernels, "AVAILABLE", available)
        with pytest.raises(InputError, match="1 NaN"):
            quantize(x, *args, "int8", **kw)


def test_preallocated_out_is_written_in_place():
    x = tricky(10_000, 0.05)
    out = torch.empty(x.shape, dtype=torch.uint8)
    assert quantize(x, 0.05, 3, "uint8", out=out).data_ptr() == out.data_ptr()
    np.testing.assert_array_equal(out.numpy().astype(np.float64), numpy_quantize(x, 0.05, 3, "uint8"))


@needs_numba
def test_kernel_declines_what_it_does_not_cover():
    out = torch.empty(6, 4, dtype=torch.int8)
    s, lo, hi = torch.tensor(0.1), -128, 127
    x = torch.randn(4, 6)
    assert kernels.quantize_into(x.t(), s, None, lo, hi, out) is None  # not contiguous
    assert kernels.quantize_into(x.t().contiguous().half(), s, None, lo, hi, out) is None  # float16
    assert kernels.quantize_into(x.t().contiguous(), s, None, lo, hi, out.int()) is None  # int32 codes
    blocked = torch.full((2, 4, 1, 2), 0.1)  # scale varies along two separated runs of dimensions
    assert kernels.quantize_into(torch.randn(2, 4, 3, 2), blocked, None, lo, hi,
                                 torch.empty(2, 4, 3, 2, dtype=torch.int8)) is None
    assert kernels.quantize_into(x.t().contiguous(), s, None, lo, hi, out) == 0
    # histogram: float16, not contiguous, a grid offset float32 cannot hold exactly
    assert kernels.histogram(x.half(), 0, -4, 8, False) is None
    assert kernels.histogram(x.t(), 0, -4, 8, False) is None
    assert kernels.histogram(x, 0, 2**25 + 1, 8, False) is None
    assert kernels.histogram(x, 0, -4, 8, False) is not None


def test_fallback_is_used_and_correct_without_the_kernel(monkeypatch):
    calls = []
    torch_path = quantize_module._quantize_half_even
    monkeypatch.setattr(quantize_module, "_quantize_half_even", lambda *a: calls.append(1) or torch_path(*a))
    x = tricky(5000, 0.25)
    with_numba = kernels.AVAILABLE
    quantize(x, 0.25, 0, "int8")
    assert len(calls) == (0 if with_numba else 1)  # the kernel, when there is one
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    got = quantize(x, 0.25, 0, "int8")
    assert len(calls) == (1 if with_numba else 2)  # now the torch path
    np.testing.assert_array_equal(got.numpy().astype(np.float64), numpy_quantize(x, 0.25, 0, "int8"))
    out = torch.empty(5000, dtype=torch.int8)
    assert kernels.quantize_into(x, torch.tensor(0.25), None, -128, 127, out) is None
    assert kernels.histogram(x, 0, 0, 10, False) is None


@needs_numba
def test_thread_count_follows_torch(kernel_mode, monkeypatch):
    x = tricky(50_000, 0.05)
    threads_seen = []
    run = kernels._run

    def counted(kernel, jobs):
        threads_seen.append(len(jobs))
        return run(kernel, jobs)

    monkeypatch.setattr(kernels, "_run", counted)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        got = quantize(x, 0.05, 0, "int8")
        np.testing.assert_array_equal(got.numpy().astype(np.float64), numpy_quantize(x, 0.05, 0, "int8"))
    # one thread, or a small input: the calling thread alone
    assert threads_seen == ([1, 1, 1] if kernel_mode == "serial" else [1, 2, 3])


@needs_numba
def test_slices_cover_the_input_once(kernel_mode):
    threshold = 1000
    torch.set_num_threads(3)
    for n in (1, 2, 3, 4, 10, 1001):
        for per_item, longest in ((1, None), (threshold, None), (1, 3)):
            slices = kernels._slices(n, threshold, per_item, longest=longest)
            assert slices[0][0] == 0 and slices[-1][1] == n
            assert all(a < b for a, b in slices)
            assert all(b == c for (_, b), (c, _) in itertools.pairwise(slices))
            if longest is not None:  # as many as it takes
                assert all(b - a <= longest for a, b in slices)
            elif n * per_item < threshold:
                assert slices == [(0, n)]
            else:  # at most one per thread, balanced
                assert 1 < len(slices) <= 3 or n == 1
                assert all(b - a <= -(-n // 3) for a, b in slices)


@needs_numba
def test_histogram_with_more_slices_than_threads_equals_numpy(monkeypatch):
    # Threads claim slices until none is left; scratch counts must be clean for every call.
    gen = torch.Generator().manual_seed(4)
    for longest in (997, 50_000, 7):
        monkeypatch.setattr(kernels.loops, "LONGEST_SLICE", longest)
        x = torch.randn(100_003, generator=gen) * 3
        grid = grid_for(float(x.min()), float(x.max()), 512)
        edges = (torch.arange(513, dtype=torch.float64) + grid[1]) * math.ldexp(1.0, grid[0])
        np.testing.assert_array_equal(bin_counts(x, grid, 512).numpy(), numpy_counts([x], edges, False))


code_values = arrays(np.float32, st.integers(1, 300),
                     elements=st.floats(width=32, allow_nan=False) | st.sampled_from([0.5, -2.5, 1e-40]))


@settings(max_examples=150, deadline=None)
@given(values=code_values, scale=st.floats(2.0**-20, 1024.0, width=32), name=st.sampled_from(FORMATS),
       zp_frac=st.floats(0, 1), threads=st.sampled_from([1, 2]))
def test_property_any_input_equals_numpy(values, scale, name, zp_frac, threads):
    fmt = get_format(name)
    zp = int(fmt.qmin + (fmt.qmax - fmt.qmin) * zp_frac) if fmt.kind == "int" else 0
    x = torch.from_numpy(values)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused, fallback = both_paths(lambda: quantize(x, scale, zp, fmt))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(fused, fallback)
    np.testing.assert_array_equal(fused.numpy().astype(np.float64), numpy_quantize(x, scale, zp, fmt))


# --- histogram binning ----------------------------------------------------------------


def numpy_counts(xs: list[torch.Tensor], edges: torch.Tensor, absolute: bool) -> np.ndarray:
    values = np.concatenate([x.double().numpy().reshape(-1) for x in xs])
    return np.histogram(np.abs(values) if absolute else values, bins=edges.numpy())[0]


def growing_stream(n: int, batches: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=gen) * (1 + i / 4) + i / 8 for i in range(batches)]


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("bins", [2048, 333])
def test_growing_stream_equals_numpy_and_fallback(absolute, bins):
    stream = growing_stream(60_001, 12)

    def observe():
        obs = HistogramObserver(bins=bins, absolute=absolute)
        for x in stream:
            obs(x)
        return obs

    fused, fallback = both_paths(observe)
    assert torch.equal(fused.counts, fallback.counts) and fused.grid() == fallback.grid()
    np.testing.assert_array_equal(fused.counts.numpy(), numpy_counts(stream, fused.bin_edges(), absolute))


@pytest.mark.parametrize("absolute", [False, True])
def test_tiny_negatives_in_wide_bins_on_both_paths(absolute):
    # x * 2**-e underflows to -0.0 for tiny negative x: it still belongs below 0 (the -0.0 fix).
    x = torch.tensor([-1e-45, -1e-40, -2.0**-140, -0.0, 0.0, 1e-45, -5e3, 5e3, -1.0, 3.0] * 1000)
    grid = grid_for(0.0 if absolute else float(x.min()), float(x.abs().max() if absolute else x.max()), 64)
    assert grid[0] > 0
    fused, fallback = both_paths(lambda: bin_counts(x, grid, 64, absolute=absolute))
    edges = (torch.arange(65, dtype=torch.float64) + grid[1]) * math.ldexp(1.0, grid[0])
    assert torch.equal(fused, fallback)
    np.testing.assert_array_equal(fused.numpy(), numpy_counts([x], edges, absolute))


@needs_numba
def test_histogram_kernel_reports_values_off_the_grid_and_the_range():
    x = torch.tensor([0.5, 7.0, float("nan"), -3.0, 2.5, float("inf")] * 50)
    got = kernels.histogram(x, 0, 0, 4, False, lo=0.0, hi=1.0)
    assert got.outside == 200 and got.nan == 50  # 7, NaN, -3 and inf are off [0, 4)
    assert got.counts.tolist() == [50, 0, 50, 0]
    assert (got.lo, got.hi) == (-3.0, math.inf)  # NaN does not enter the range
    with pytest.raises(ObserverError, match="off the grid"):
        bin_counts(x, (0, 0), 4)


def test_observer_state_equals_fallback_with_nan_inf_and_big_jumps():
    gen = torch.Generator().manual_seed(5)
    shapes = [(1, 0), (0.1, 0), (50, 3), (1, -200), (1e-3, 0)]  # the last two jump far off the grid
    stream = [torch.randn(3000, generator=gen) * s + m for s, m in shapes]

    def observe():
        obs = HistogramObserver(bins=256)
        for x in stream:
            obs(x)
            for bad in (float("nan"), float("inf")):
                with pytest.raises(InputError):  # rejected, state untouched
                    obs(torch.cat([x, torch.tensor([bad])]))
        return obs

    fused, fallback = both_paths(observe)
    assert fused.grid() == fallback.grid() and torch.equal(fused.counts, fallback.counts)
    assert float(fused.min_val) == float(fallback.min_val) and float(fused.max_val) == float(fallback.max_val)
    np.testing.assert_array_equal(fused.counts.numpy(), numpy_counts(stream, fused.bin_edges(), False))


@settings(max_examples=80, deadline=None)
@given(values=arrays(np.float32, st.integers(1, 20_000), elements=st.floats(-(2.0**100), 2.0**100, width=32)),
       bins=st.integers(2, 3000), absolute=st.booleans())
def test_property_counts_equal_numpy(values, bins, absolute):
    x = torch.from_numpy(values)
    lo, hi = (0.0, float(x.abs().max())) if absolute else (float(x.min()), float(x.max()))
    grid = grid_for(lo, hi, bins)
    fused, fallback = both_paths(lambda: bin_counts(x, grid, bins, absolute=absolute))
    edges = (torch.arange(bins + 1, dtype=torch.float64) + grid[1]) * math.ldexp(1.0, grid[0])
    assert torch.equal(fused, fallback)
    np.testing.assert_array_equal(fused.numpy(), numpy_counts([x], edges, absolute))


# --- processes ------------------------------------------------------------------------


def _quantize_and_observe(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    obs = HistogramObserver()
    obs(x.clamp(-1e4, 1e4))  # observers reject ±inf
    return quantize(x, 0.05, 0, "int8"), obs.counts


def _forked_kernels(x: torch.Tensor, clamped: torch.Tensor, want: torch.Tensor, counts: torch.Tensor,
                    grid: tuple[int, int]) -> None:
    # Two threads, and no large torch op here: torch's own GNU OpenMP pool hangs in a
    # forked child that runs a parallel region (why DataLoader workers run on one thread).
    torch.set_num_threads(2)
    faulthandler.dump_traceback_later(100, exit=True)
    assert np.array_equal(quantize(x, 0.05, 0, "int8").numpy(), want.numpy())
    assert np.array_equal(bin_counts(clamped, grid, 2048).numpy(), counts.numpy())


fork_only = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()")


@fork_only
def test_kernels_work_in_forked_dataloader_workers():
    # The kernels have run in this process already (on two threads); forked workers must
    # neither hang nor abort (GNU OpenMP, numba's default layer here, aborts on fork after use).
    data = [tricky(100_000, 0.05, seed=i) for i in range(4)]
    parent = [_quantize_and_observe(x) for x in data]
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, timeout=120,
                                         collate_fn=_quantize_and_observe, multiprocessing_context="fork")
    for (codes, counts), (want_codes, want_counts) in zip(loader, parent, strict=True):
        assert torch.equal(codes, want_codes) and torch.equal(counts, want_counts)


@fork_only
def test_kernels_use_two_threads_in_a_forked_child():
    x = tricky(200_000, 0.05, seed=9)
    want = quantize(x, 0.05, 0, "int8")
    clamped = x.clamp(-1e4, 1e4)
    grid = grid_for(float(clamped.min()), float(clamped.max()), 2048)
    counts = bin_counts(clamped, grid, 2048)
    args = (x, clamped, want, counts, grid)
    child = multiprocessing.get_context("fork").Process(target=_forked_kernels, args=args)
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the kernels hung in a forked child")
    assert child.exitcode == 0
    np.testing.assert_array_equal(want.numpy().astype(np.float64), numpy_quantize(x, 0.05, 0, "int8"))


# --- fake quantization ------------------------------------------------------------------


def assert_same_floats(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bit for bit, NaN where NaN (and -0.0 apart from 0.0)."""
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(a.view(torch.int32)[~torch.isnan(a)], b.view(torch.int32)[~torch.isnan(b)])


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("scale", [0.25, 0.05, 3e-5])
def test_fake_quantize_per_tensor_equals_fallback(name, scale):
    fmt = get_format(name)
    x = tricky(20_011, scale)
    x[7], x[8] = float("nan"), -float("inf")
    zp = int(fmt.qmin + fmt.qmax) // 2 + (1 if fmt.kind == "int" else 0)
    fused, fallback = both_paths(lambda: fake_quantize(x, scale, zp, fmt))
    assert_same_floats(fused, fallback)
    finite = torch.isfinite(x)
    codes = quantize(x[finite], scale, zp, fmt)
    assert_same_floats(fused[finite], dequantize(codes, scale, zp, fmt))  # = dequantize(quantize(x))


@pytest.mark.parametrize("shape,axis,block", [((6, 5000), 0, None), ((3, 7, 11, 13), 1, None),
                                              ((3, 7, 11, 13), 3, None), ((8, 576), 1, 128),
                                              ((256, 6), 0, 32)])
def test_fake_quantize_per_axis_and_blocked_equal_fallback(shape, axis, block):
    gen = torch.Generator().manual_seed(axis)
    x = tricky(math.prod(shape), 0.1, seed=2).reshape(shape)
    n = shape[axis] if block is None else -(-shape[axis] // block)
    sshape = (n,) if block is None else (*shape[:axis], n, *shape[axis + 1 :])
    scale = torch.rand(sshape, generator=gen) * 0.2 + 0.01
    zp = torch.randint(-100, 100, sshape, generator=gen)
    fused, fallback = both_paths(lambda: fake_quantize(x, scale, zp, "int8", axis=axis, block_size=block))
    assert_same_floats(fused, fallback)


def test_fake_quantize_kernel_keeps_the_gradients():
    x = tricky(5000, 0.05).requires_grad_()
    scale = torch.tensor(0.05, requires_grad=True)

    def grads():
        x.grad = scale.grad = None
        fake_quantize(x, scale, 3, "int8", grad_scale=0.5).square().sum().backward()
        return x.grad.clone(), scale.grad.clone()

    (gx, gs), (gx_ref, gs_ref) = both_paths(grads)
    assert torch.equal(gx, gx_ref) and torch.equal(gs, gs_ref)


@settings(max_examples=100, deadline=None)
@given(values=code_values, scale=st.floats(2.0**-20, 1024.0, width=32), name=st.sampled_from(FORMATS),
       zp_frac=st.floats(0, 1))
def test_property_fake_quantize_equals_fallback(values, scale, name, zp_frac):
    fmt = get_format(name)
    zp = int(fmt.qmin + (fmt.qmax - fmt.qmin) * zp_frac) if fmt.kind == "int" else 0
    x = torch.from_numpy(values)
    fused, fallback = both_paths(lambda: fake_quantize(x, scale, zp, fmt))
    assert_same_floats(fused, fallback)


@needs_numba
def test_histogram_runs_no_more_threads_than_torch_may_use(monkeypatch):
    monkeypatch.setattr(kernels.loops, "LONGEST_SLICE", 100)
    monkeypatch.setattr(kernels, "PARALLEL_HISTOGRAM_FROM", 16)
    teams = []
    team = kernels._team

    def counted(name, task, threads):
        teams.append(threads)
        team(name, task, threads)

    monkeypatch.setattr(kernels, "_team", counted)
    x = torch.randn(10_000)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        grid = grid_for(float(x.min()), float(x.max()), 64)
        bin_counts(x, grid, 64)
    assert teams == [1, 2]  # 100 slices each time

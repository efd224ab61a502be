"""HistogramObserver: exact counts, exact re-binning, bounded state, range choice."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError, ObserverError
from lowbit.formats import INT8, UINT8
from lowbit.observers import HistogramObserver
from lowbit.observers import histogram as histogram_module
from lowbit.observers.histogram import bin_counts, grid_for, regrid
from lowbit.primitives import kernels
from lowbit.primitives.quantize import dequantize, quantize


def data(seed: int, n: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * scale + shift


def numpy_counts(xs: list[torch.Tensor], edges: torch.Tensor, absolute: bool = False) -> np.ndarray:
    values = np.concatenate([x.double().numpy().reshape(-1) for x in xs])
    if absolute:
        values = np.abs(values)
    counts, _ = np.histogram(values, bins=edges.numpy())
    return counts


def test_equals_numpy_when_range_never_grows():
    first = data(0, 50_000, 2.0)
    xs = [first, data(1, 20_000).clamp(-1, 1), data(2, 20_000).clamp(-1.5, 1.5)]
    obs = HistogramObserver(bins=2048)
    for x in xs:
        obs(x)
    counts, edges = obs.histogram()
    assert obs.grid() == grid_for(float(first.min()), float(first.max()), 2048)
    np.testing.assert_array_equal(counts.numpy(), numpy_counts(xs, edges))


@pytest.mark.parametrize("absolute", [False, True])
def test_equals_numpy_after_growth_and_keeps_totals(absolute):
    xs = [data(3, 1000, 0.01), data(4, 5000, 1.0, 3.0), data(5, 3000, 40.0), data(6, 10, 1e-3)]
    obs = HistogramObserver(bins=512, absolute=absolute)
    total = 0
    for x in xs:
        obs(x)
        total += x.numel()
        assert int(obs.counts.sum()) == total  # exact at every step
    counts, edges = obs.histogram()
    np.testing.assert_array_equal(counts.numpy(), numpy_counts(xs, edges, absolute))


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.integers(0, 2**31 - 1),  # seed
            st.integers(1, 300),  # size
            st.floats(1e-6, 1e4),  # scale
            st.floats(-100, 100),  # shift
        ),
        min_size=1,
        max_size=5,
    ),
    bins=st.integers(2, 600),
    absolute=st.booleans(),
)
def test_property_exact_counts_for_any_batches(batches, bins, absolute):
    xs = [data(seed, n, scale, shift) for seed, n, scale, shift in batches]
    obs = HistogramObserver(bins=bins, absolute=absolute)
    for x in xs:
        obs(x)
    counts, edges = obs.histogram()
    assert int(counts.sum()) == sum(x.numel() for x in xs)
    np.testing.assert_array_equal(counts.numpy(), numpy_counts(xs, edges, absolute))
    if not absolute:  # the data spans at least about half the bins
        width = float(edges[1] - edges[0])
        span = float(obs.max_val - obs.min_val)
        assert span == 0 or span / width >= bins / 2 - 2 or width == 2.0**-126


def test_counts_do_not_depend_on_order_or_batching():
    xs = [data(7, 3000, 0.5), data(8, 3000, 5.0, -2.0), data(9, 3000, 0.1, 1.0)]
    a, b, c = HistogramObserver(bins=300), HistogramObserver(bins=300), HistogramObserver(bins=300)
    for x in xs:
        a(x)
    for x in reversed(xs):
        b(x)
    c(torch.cat(xs))
    assert torch.equal(a.counts, b.counts) and torch.equal(a.counts, c.counts)
    assert a.grid() == b.grid() == c.grid()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_binned_exactly(dtype):
    xs = [data(10, 4000, 3.0).to(dtype), data(11, 4000, 9.0).to(dtype)]
    if dtype == torch.float64:  # values float32 cannot hold: the range is rounded outwards
        xs = [x + 1e-9 for x in xs]
    obs = HistogramObserver(bins=1024)
    for x in xs:
        obs(x)
    counts, edges = obs.histogram()
    np.testing.assert_array_equal(counts.numpy(), numpy_counts(xs, edges))


def test_grid_for_is_aligned_minimal_and_strict():
    assert grid_for(0.0, 1.0, 2048) == (-10, 0)  # 1.0 on the top edge needs the next width
    assert grid_for(0.0, 0.999, 2048) == (-11, 0)
    for lo, hi, bins in [(-3.7, 5.2, 2048), (1000.0, 1000.5, 256), (-1e-30, 2e-30, 64)]:
        e, k = grid_for(lo, hi, bins)
        w = math.ldexp(1.0, e)
        assert k * w <= lo and (k + bins) * w > hi
        assert (hi - lo) / w >= bins / 2 - 2  # the data spans at least about half the bins
        k_finer = math.floor(lo / (w / 2))
        assert (k_finer + bins) * (w / 2) <= hi  # a finer grid would not hold the data


def test_constant_data_gets_a_fine_grid_that_coarsens_exactly():
    obs = HistogramObserver(bins=128)
    obs(torch.full((100,), 0.7))
    obs(torch.full((50,), 0.7))
    assert int(obs.counts.sum()) == 150 and int((obs.counts > 0).sum()) == 1
    obs(data(12, 1000))
    counts, edges = obs.histogram()
    xs = [torch.full((150,), 0.7), data(12, 1000)]
    np.testing.assert_array_equal(counts.numpy(), numpy_counts(xs, edges))


def test_regrid_moves_whole_bins():
    counts = torch.tensor([3, 0, 5, 7, 1, 0, 0, 2], dtype=torch.int64)
    # cells -3..4 at width 1 -> width 4 starting at cell -1 (i.e. -4)
    out = regrid(counts, (0, -3), (2, -1))
    assert out.tolist() == [3 + 0 + 5, 7 + 1 + 0 + 0, 2, 0, 0, 0, 0, 0]
    with pytest.raises(ObserverError):
        regrid(counts, (2, 0), (0, 0))
    # the same width: a shift by whole bins, onto a grid of another length
    assert regrid(counts, (0, -3), (0, -4), bins=10).tolist() == [0, 3, 0, 5, 7, 1, 0, 0, 2, 0]
    assert regrid(counts, (0, -3), (0, -3), bins=8).tolist() == counts.tolist()
    with pytest.raises(ObserverError, match="drop"):
        regrid(counts, (0, -3), (0, -2))  # the first bin's 3 would fall off


def test_bin_counts_matches_numpy_on_grid_edges():
    # values exactly on edges land in the bin they start
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9999, -0.25, -0.5])
    counts = bin_counts(x, (-2, -4), 8)  # width 0.25, cells -4..3
    edges = (torch.arange(9, dtype=torch.float64) - 4) * 0.25
    np.testing.assert_array_equal(counts.numpy(), np.histogram(x.numpy(), edges.numpy())[0])


def test_state_is_bounded_and_holds_no_data():
    obs = HistogramObserver(bins=256)
    sizes = set()
    for i in range(5):
        obs(data(13 + i, 10_000 * (i + 1), 1 + i))
        sizes.add(sum(t.numel() for t in obs.state_dict().values()))
    assert len(sizes) == 1 and sizes.pop() < 256 + 16


def test_abs_histogram_folds_signed_counts():
    x = data(14, 20_000, 2.0, 0.5)
    obs = HistogramObserver(bins=512)
    obs(x)
    folded, edges = obs.abs_histogram()
    assert float(edges[0]) == 0.0 and int(folded.sum()) == x.numel()
    expect = numpy_counts([x], edges, absolute=True)
    # only values lying exactly on a negative edge may move one bin; here there are none
    np.testing.assert_array_equal(folded.numpy(), expect)


def test_state_dict_round_trip():
    obs = HistogramObserver(bins=512, absolute=True)
    for i in range(3):
        obs(data(15 + i, 5000, 1 + 2 * i))
    buffer = io.BytesIO()
    torch.save(obs.state_dict(), buffer)
    buffer.seek(0)
    fresh = HistogramObserver(bins=512, absolute=True)
    fresh.load_state_dict(torch.load(buffer))
    for method in ("minmax", "percentile", "entropy", "mse"):
        a = obs.compute_qparams("int8", method=method)
        b = fresh.compute_qparams("int8", method=method)
        assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)


METHODS = ("minmax", "percentile", "entropy", "mse")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("value", [0.0, 0.7, -3.25, 1e-20])
def test_constant_inputs_give_exact_qparams(method, absolute, symmetric, value):
    obs = HistogramObserver(bins=128, absolute=absolute)
    x = torch.full((64,), value)
    obs(x)
    obs(x)
    fmt = "int8" if symmetric else "uint8"
    p = obs.compute_qparams(fmt, symmetric=symmetric, method=method)
    assert math.isfinite(float(p.scale)) and float(p.scale) > 0
    back = dequantize(quantize(x, p.scale, p.zero_point, fmt), p.scale, p.zero_point, fmt)
    assert torch.equal(back, x)


def test_entropy_clips_laplace_outliers_far_below_max():
    torch.manual_seed(16)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    x[:20] = torch.linspace(30, 60, 20)  # a few far outliers
    obs = HistogramObserver(absolute=True)
    obs(x)
    lo, hi = obs.choose_range("int8", method="entropy")
    assert hi < 0.35 * float(x.abs().max()) and lo == -hi
    # and the clipped range is still wide enough for the bulk of the data
    assert hi > float(x.abs().quantile(0.999))


def test_percentile_matches_numpy_within_one_bin():
    x = data(17, 100_000, 1.5, 0.3)
    obs = HistogramObserver(bins=2048)
    obs(x)
    width = float(obs.bin_edges()[1] - obs.bin_edges()[0])
    lo, hi = obs.choose_range(method="percentile", percentile=99.9, symmetric=False)
    v = x.numpy()
    assert abs(hi - np.percentile(v, 99.9, method="inverted_cdf")) <= width
    assert abs(lo - np.percentile(v, 0.1, method="inverted_cdf")) <= width
    lo_s, hi_s = obs.choose_range(method="percentile", percentile=99.9, symmetric=True)
    abs_width = float(obs.abs_histogram()[1][1])
    assert abs(hi_s - np.percentile(np.abs(v), 99.9, method="inverted_cdf")) <= abs_width
    assert lo_s == -hi_s


def test_asymmetric_entropy_on_relu_data_uses_all_levels():
    x = data(18, 50_000).relu()
    obs = HistogramObserver()
    obs(x)
    lo, hi = obs.choose_range("uint8", symmetric=False, method="entropy")
    assert lo == 0.0 and 0 < hi <= float(x.max())
    assert obs._quantized_bins(UINT8, False, 0.0, None) == 256
    assert obs._quantized_bins(INT8, True, 0.0, None) == 128


def test_entropy_needs_an_integer_format_or_explicit_bins():
    obs = HistogramObserver()
    obs(data(19, 1000))
    with pytest.raises(FormatError, match="method='mse'"):
        obs.compute_qparams("fp8_e4m3fn", method="entropy")
    p = obs.compute_qparams("fp8_e4m3fn", method="entropy", num_quantized_bins=128)
    assert float(p.scale) > 0
    assert float(obs.compute_qparams("fp8_e4m3fn", method="mse").scale) > 0


def test_bad_configuration_is_rejected():
    with pytest.raises(ObserverError, match="bins"):
        HistogramObserver(bins=1)
    with pytest.raises(ObserverError, match="unknown range method"):
        HistogramObserver(method="kl")


def test_repr_names_the_grid():
    obs = HistogramObserver(bins=64)
    assert "seen=0" in repr(obs)
    obs(torch.tensor([0.0, 1.0]))
    assert "bin_width=2**-5" in repr(obs) and "total=2" in repr(obs)


def test_constructor_defaults_drive_compute_qparams():
    x = data(20, 20_000, 2.0)
    obs = HistogramObserver(method="percentile", percentile=99.0)
    obs(x)
    p = obs.compute_qparams("int8")
    q = obs.compute_qparams("int8", method="percentile", percentile=99.0)
    assert torch.equal(p.scale, q.scale)
    lo, hi = obs.choose_range("int8")
    assert hi == pytest.approx(
        float(x.abs().quantile(0.99)), abs=float(obs.bin_edges()[1] - obs.bin_edges()[0]) * 2
    )
    assert lo == -hi


def test_wide_bins_put_tiny_negatives_below_zero_like_numpy():
    # Bins wider than 1 (e > 0): x * 2**-e underflows to -0.0 for tiny negative x, which
    # still belongs to the bin below 0; an input -0.0 belongs to the bin of 0.
    x = torch.tensor([-1e-45, -1e-40, -2.0**-140, -0.0, 0.0, 1e-45, -5e3, 5e3, -1.0, 3.0])
    for absolute in (False, True):
        obs = HistogramObserver(bins=64, absolute=absolute)
        obs(x)
        assert obs.grid()[0] > 0
        counts, edges = obs.histogram()
        np.testing.assert_array_equal(counts.numpy(), numpy_counts([x], edges, absolute))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_many_chunks_equal_numpy(monkeypatch, dtype):
    # Several CPU chunks of the torch path (the numba kernel is tested in
    # tests/primitives/test_kernels.py) and a short last one, in every input dtype.
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    n = 3 * histogram_module.CHUNK + 123
    x = (data(11, n, 3.0, 0.5)).to(dtype)
    obs = HistogramObserver()
    obs(x)
    counts, edges = obs.histogram()
    assert int(counts.sum()) == n
    np.testing.assert_array_equal(counts.numpy(), numpy_counts([x], edges))

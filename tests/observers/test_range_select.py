"""Range choice from histograms: TensorRT entropy vs a slow reference, percentile, MSE."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.observers import entropy_divergences, entropy_threshold, mse_range, percentile_range
from lowbit.primitives.qparams import qparams_from_minmax
from lowbit.primitives.quantize import dequantize, quantize


def slow_tensorrt_kl(hist: np.ndarray, nq: int) -> tuple[list[int], list[float]]:
    """The GTC 2017 slides, line by line, with loops (bins past the last non-empty one dropped)."""
    hist = [float(v) for v in hist]
    while hist and hist[-1] == 0:
        hist.pop()
    n = len(hist)
    candidates, divergences = [], []
    for i in range(nq, n + 1):
        # reference distribution P: the first i bins, outliers added to the last one
        p = hist[:i]
        p[i - 1] += sum(hist[i:])
        # candidate Q: quantize bins [0, i) into nq levels, expand over non-empty bins
        q = [0.0] * i
        per_level = i // nq
        for j in range(nq):
            start = j * per_level
            stop = i if j == nq - 1 else start + per_level
            level_sum = sum(hist[start:stop])
            nonempty = [k for k in range(start, stop) if hist[k] != 0]
            for k in nonempty:
                q[k] = level_sum / len(nonempty)
        p_total, q_total = sum(p), sum(q)
        kl = 0.0
        for k in range(i):
            if p[k] == 0:
                continue
            pk, qk = p[k] / p_total, q[k] / q_total
            if qk == 0:
                kl = math.inf
                break
            kl += pk * math.log(pk / qk)
        candidates.append(i)
        divergences.append(kl)
    return candidates, divergences


def fixed_histograms() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    gauss = np.abs(np.concatenate([rng.normal(0, 1, 100_000), rng.uniform(6, 12, 40)]))
    laplace = np.abs(rng.laplace(0, 1, 100_000))
    relu = np.maximum(rng.normal(0.3, 1, 100_000), 0)  # a spike of zeros in bin 0
    gaps = np.concatenate([rng.uniform(0, 1, 5000), rng.uniform(3, 3.2, 30)])  # empty stretch
    out = {}
    for name, values, bins, nq in [
        ("gauss_outliers", gauss, 512, 32),
        ("laplace", laplace, 1024, 64),
        ("relu", relu, 512, 32),
        ("gaps", gaps, 512, 32),
    ]:
        counts, _ = np.histogram(values, bins=bins, range=(0, values.max()))
        out[name] = (counts, nq)
    return out


@pytest.mark.parametrize("name", ["gauss_outliers", "laplace", "relu", "gaps"])
def test_entropy_matches_slow_reference(name):
    counts, nq = fixed_histograms()[name]
    ref_i, ref_kl = slow_tensorrt_kl(counts, nq)
    n = len(ref_i) + nq - 1
    cand, kl = entropy_divergences(counts[:n], nq)
    assert cand.tolist() == ref_i
    ref = torch.tensor(ref_kl, dtype=torch.float64)
    assert torch.equal(torch.isinf(kl), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(kl[finite], ref[finite], rtol=1e-9, atol=1e-12)
    edges = np.linspace(0, 1, len(counts) + 1)
    best = ref_i[int(np.argmin(ref_kl))]
    assert entropy_threshold(counts, edges, nq) == pytest.approx(edges[best], abs=0)
    if name == "gaps":
        assert torch.isinf(kl).any()  # thresholds inside the gap fold outliers into empty bins


@pytest.mark.slow
def test_entropy_matches_slow_reference_at_tensorrt_size():
    rng = np.random.default_rng(1)
    values = np.abs(np.concatenate([rng.laplace(0, 1, 200_000), rng.uniform(15, 40, 50)]))
    counts, edges = np.histogram(values, bins=2048, range=(0, values.max()))
    ref_i, ref_kl = slow_tensorrt_kl(counts, 128)
    best = ref_i[int(np.argmin(ref_kl))]
    start = time.perf_counter()
    threshold = entropy_threshold(counts, edges, 128)
    elapsed = time.perf_counter() - start
    print(f"\nentropy_threshold, 2048 bins / 128 levels: {elapsed * 1e3:.2f} ms")
    assert threshold == edges[best]
    assert threshold < 0.3 * values.max()


def test_entropy_search_time_2048_bins(capsys):
    counts, edges = np.histogram(np.abs(np.random.default_rng(2).laplace(0, 1, 100_000)), 2048)
    entropy_threshold(counts, edges)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        entropy_threshold(counts, edges)
        runs.append(time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nentropy_threshold 2048 bins: best of 5 {min(runs) * 1e3:.2f} ms")


def test_entropy_small_histograms_do_not_clip():
    counts = np.array([5, 3, 0, 2, 0, 0])
    edges = np.arange(7, dtype=float)
    assert entropy_threshold(counts, edges, 128) == 4.0  # top of the last non-empty bin
    cand, kl = entropy_divergences(np.ones(8), 16)
    assert cand.numel() == 0 and kl.numel() == 0


def test_entropy_of_a_flat_histogram_keeps_everything():
    cand, kl = entropy_divergences(np.ones(256), 128)
    assert int(cand[torch.argmin(kl)]) == 256
    assert float(kl[-1]) == pytest.approx(0.0, abs=1e-12)


def test_percentile_range_matches_numpy_within_one_bin():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, 200_000)
    counts, edges = np.histogram(x, bins=2048)
    width = edges[1] - edges[0]
    for p in (99.0, 99.9, 99.99, 100.0):
        lo, hi = percentile_range(counts, edges, p)
        assert abs(hi - np.percentile(x, p, method="inverted_cdf")) <= width
        assert abs(lo - np.percentile(x, 100 - p, method="inverted_cdf")) <= width
    a_counts, a_edges = np.histogram(np.abs(x), bins=2048, range=(0, np.abs(x).max()))
    lo, hi = percentile_range(a_counts, a_edges, 99.9, abs_hist=True)
    assert lo == -hi
    assert abs(hi - np.percentile(np.abs(x), 99.9, method="inverted_cdf")) <= a_edges[1]
    # the default (linear) numpy percentile is also close where data is dense
    lo, hi = percentile_range(counts, edges, 99.0)
    assert abs(hi - np.percentile(x, 99.0)) <= 2 * width


def test_percentile_rejects_bad_arguments():
    with pytest.raises(InputError, match="percentile"):
        percentile_range([1, 2], [0.0, 1.0, 2.0], 0.0)
    with pytest.raises(InputError, match="edges"):
        percentile_range([1, 2], [0.0, 1.0], 50.0)
    with pytest.raises(InputError, match="empty"):
        percentile_range([0, 0], [0.0, 1.0, 2.0], 50.0)
    with pytest.raises(InputError, match="increase"):
        percentile_range([1, 1], [0.0, 1.0, 1.0], 50.0)


def quant_mse(x: torch.Tensor, lo: float, hi: float, fmt: str, symmetric: bool) -> float:
    s, z = qparams_from_minmax(torch.tensor(lo), torch.tensor(hi), fmt, symmetric=symmetric)
    back = dequantize(quantize(x, s, z, fmt), s, z, fmt)
    return float(((x - back) ** 2).mean())


@pytest.mark.parametrize(
    ("fmt", "symmetric"),
    [("int8", True), ("int4", True), ("uint8", False), ("uint4", False), ("int3", True)],
)
@pytest.mark.parametrize("dist", ["laplace", "student_t4"])
def test_mse_range_beats_minmax_on_heavy_tails(fmt, symmetric, dist):
    torch.manual_seed(4)
    if dist == "laplace":
        x = torch.distributions.Laplace(0.3, 1.0).sample((200_000,))
    else:
        x = torch.distributions.StudentT(4.0).sample((200_000,))
    counts, edges = torch.histogram(x.double(), bins=2048)
    lo, hi = mse_range(counts, edges, fmt, symmetric)
    mm_lo, mm_hi = float(x.min()), float(x.max())
    assert quant_mse(x, lo, hi, fmt, symmetric) < quant_mse(x, mm_lo, mm_hi, fmt, symmetric)
    assert mm_lo - 1e-6 <= lo <= 0 <= hi <= mm_hi + 1e-6


def test_mse_range_keeps_the_range_when_outliers_dominate():
    # infinite-variance tails: clipping the few huge values costs more than rounding saves
    torch.manual_seed(5)
    x = torch.distributions.StudentT(1.0).sample((200_000,))
    counts, edges = torch.histogram(x.double(), bins=2048)
    lo, hi = mse_range(counts, edges, "int8", True)
    amax = float(x.abs().max())
    assert quant_mse(x, lo, hi, "int8", True) <= 1.01 * quant_mse(x, -amax, amax, "int8", True)


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "fp8_e4m3fn", "ternary", "binary"])
def test_mse_range_models_other_grids(fmt):
    torch.manual_seed(6)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    counts, edges = torch.histogram(x.abs().double(), bins=2048)
    lo, hi = mse_range(counts, edges, fmt)
    amax = float(x.abs().max())
    assert lo == -hi and 0 < hi <= amax
    assert quant_mse(x, lo, hi, fmt, True) <= quant_mse(x, -amax, amax, fmt, True)


@pytest.mark.parametrize("fmt", ["int4", "int8", "fp4_e2m1"])
def test_mse_range_model_agrees_with_measured_error(fmt):
    torch.manual_seed(7)
    x = torch.distributions.StudentT(3.0).sample((50_000,))
    counts, edges = torch.histogram(x.double(), bins=2048)
    lo, hi = mse_range(counts, edges, fmt, True, num_candidates=128)
    # a direct search on the data, over the same candidates, picks (nearly) the same error
    amax = float(x.abs().max())
    measured = {t: quant_mse(x, -t, t, fmt, True) for t in (amax * torch.arange(1, 129) / 128).tolist()}
    best = min(measured.values())
    assert quant_mse(x, lo, hi, fmt, True) <= 1.02 * best

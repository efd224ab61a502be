"""lowbit.formats.codebook against slow plain-Python references."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError, GranularityError, InputError
from lowbit.formats.codebook import (
    Codebook,
    binarize,
    dequantize_codebook,
    kmeans_codebook,
    log2_codebook,
    quantize_to_codebook,
    ternarize,
)


def ref_nearest(v: float, levels: tuple[float, ...]) -> int:
    """Smallest index among the levels at minimal distance (exact rational arithmetic)."""
    if abs(v) == float("inf"):  # every distance is infinite: the extreme level on that side
        return 0 if v < 0 else len(levels) - 1
    dist = [abs(Fraction(v) - Fraction(level)) for level in levels]
    return dist.index(min(dist))


def ref_lloyd(values: np.ndarray, centers: list[float], iters: int) -> list[float]:
    """Textbook Lloyd iterations in float64 with explicit per-value assignment."""
    c = sorted(centers)
    for _ in range(iters):
        groups: list[list[float]] = [[] for _ in c]
        for v in values.tolist():
            groups[ref_nearest(v, tuple(c))].append(v)
        new = sorted(float(np.mean(g)) if g else c[i] for i, g in enumerate(groups))
        if new == c:
            break
        c = new
    return c


def test_codebook_normalises_and_validates():
    cb = Codebook((0.5, -1.0, 0.1), name="x")
    assert cb.levels == (-1.0, float(np.float32(0.1)), 0.5)
    assert (cb.n_levels, len(cb), cb.bits, cb.index_dtype) == (3, 3, 2, torch.uint8)
    assert Codebook((1.0,)).bits == 1
    assert Codebook(tuple(range(257))).index_dtype == torch.int16
    assert Codebook((-0.0, 1.0)).levels == (0.0, 1.0)
    assert cb.values().dtype == torch.float32
    for bad in ((), (1.0, 1.0), (0.0, float("nan")), (1e39,), ("a",), tuple(range(40000))):
        with pytest.raises(FormatError):
            Codebook(bad)
    with pytest.raises(FormatError, match="distinct"):
        Codebook((0.1, 0.1 + 1e-12))  # equal after rounding to float32


def test_quantize_matches_nearest_reference_including_ties():
    cb = Codebook((-2.0, -0.5, 0.0, 0.25, 1.0, 3.0))
    lv = np.array(cb.levels)
    mids = (lv[:-1] + lv[1:]) / 2
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(-4, 4, 3000),
            lv,
            mids,  # exact ties: the lower index wins
            np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
            [-np.inf, np.inf, -0.0],
        ]
    ).astype(np.float32)
    idx = quantize_to_codebook(torch.from_numpy(x), cb)
    assert idx.dtype == torch.uint8
    assert idx.tolist() == [ref_nearest(float(v), cb.levels) for v in x]
    back = dequantize_codebook(idx, cb)
    assert back.tolist() == [cb.levels[i] for i in idx.tolist()]
    assert quantize_to_codebook(torch.tensor([[0.125]]), cb).tolist() == [[2]]  # tie -> lower


def test_quantize_and_dequantize_errors():
    cb = Codebook((0.0, 1.0))
    with pytest.raises(InputError, match="NaN"):
        quantize_to_codebook(torch.tensor([float("nan")]), cb)
    with pytest.raises(FormatError):
        quantize_to_codebook(torch.ones(2), (0.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        dequantize_codebook(torch.tensor([2]), cb)
    with pytest.raises(InputError, match="integer"):
        dequantize_codebook(torch.tensor([1.0]), cb)
    assert dequantize_codebook(torch.empty(0, dtype=torch.long), cb).shape == (0,)


def test_log2_codebook():
    assert log2_codebook(3).levels == (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
    assert log2_codebook(2, max_exponent=3).levels == (-8.0, 0.0, 8.0)
    assert log2_codebook(2, signed=False).levels == (0.0, 0.25, 0.5, 1.0)
    assert log2_codebook(1, signed=False).levels == (0.0, 1.0)
    cb = log2_codebook(4, max_exponent=-1)
    assert cb.n_levels == 15 and cb.bits == 4 and max(cb.levels) == 0.5
    assert all(abs(v) == 2.0 ** round(np.log2(abs(v))) for v in cb.levels if v)
    # boundaries are arithmetic midpoints: 1.5 * 2**k ties to the lower level
    assert quantize_to_codebook(torch.tensor([0.375, 0.376]), log2_codebook(3)).tolist() == [4, 5]
    for bad in (1, 9, 0):
        with pytest.raises(FormatError, match="bits"):
            log2_codebook(bad)
    with pytest.raises(FormatError, match="float32"):
        log2_codebook(8, max_exponent=-100)
    with pytest.raises(FormatError, match="float32"):
        log2_codebook(2, max_exponent=128)


def test_kmeans_matches_textbook_lloyd():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 0.5, 300), rng.normal(1, 0.2, 200), rng.normal(4, 1, 100)])
    x = x.astype(np.float32)
    got = kmeans_codebook(torch.from_numpy(x), 5, iters=100)
    v = np.sort(x.astype(np.float64))
    init = sorted(set(v[min(int((i + 0.5) * v.size / 5), v.size - 1)] for i in range(5)))
    ref = ref_lloyd(x.astype(np.float64), init, 100)
    assert got.levels == tuple(float(np.float32(c)) for c in ref)
    assert got.name == "kmeans_5"


def test_kmeans_beats_uniform_on_a_gaussian():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    for n in (4, 8, 16):
        cb = kmeans_codebook(x, n)
        assert cb.n_levels == n
        mse_km = float(((dequantize_codebook(quantize_to_codebook(x, cb), cb) - x) ** 2).mean())
        lo, hi = float(x.min()), float(x.max())
        uniform = Codebook(tuple(np.linspace(lo, hi, n).tolist()))
        deq = dequantize_codebook(quantize_to_codebook(x, uniform), uniform)
        mse_uniform = float(((deq - x) ** 2).mean())
        assert mse_km < 0.8 * mse_uniform, (n, mse_km, mse_uniform)


def test_kmeans_is_deterministic_and_subsamples():
    x = torch.randn(300_000, generator=torch.Generator().manual_seed(1))
    a = kmeans_codebook(x, 8, max_samples=50_000)
    b = kmeans_codebook(x, 8, max_samples=50_000)
    c = kmeans_codebook(x, 8, max_samples=50_000, seed=1)
    assert a == b and a != c
    assert a.n_levels == 8


def test_kmeans_degenerate_inputs():
    assert kmeans_codebook(torch.full((100,), 0.3), 16).levels == (float(np.float32(0.3)),)
    assert kmeans_codebook(torch.tensor([1.0, 2.0, 2.0]), 8).levels == (1.0, 2.0)
    assert kmeans_codebook(torch.tensor(7.0), 2).levels == (7.0,)
    three = kmeans_codebook(torch.tensor([0.0, 0.0, 5.0, 5.0, 9.0]), 3)
    assert three.levels == (0.0, 5.0, 9.0)  # exact: each cluster is one value
    with pytest.raises(InputError, match="empty"):
        kmeans_codebook(torch.empty(0), 4)
    with pytest.raises(InputError, match="NaN or Inf"):
        kmeans_codebook(torch.tensor([1.0, float("inf")]), 4)
    bad_args = ({"n_levels": 0}, {"n_levels": 4, "iters": -1}, {"n_levels": 4, "max_samples": 0})
    for kwargs in bad_args:
        with pytest.raises(FormatError):
            kmeans_codebook(torch.ones(4), **kwargs)


def ref_binarize(rows: list[list[float]]) -> tuple[list[list[int]], list[float]]:
    signs = [[1 if v >= 0 else -1 for v in r] for r in rows]
    return signs, [sum(abs(v) for v in r) / len(r) for r in rows]


def test_binarize_matches_reference():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    w[0, 0] = 0.0
    w[1, 1] = -0.0
    signs, scale = binarize(torch.from_numpy(w), dim=0)
    ref_signs, ref_scale = ref_binarize(w.astype(np.float64).tolist())
    assert signs.dtype == torch.int8 and signs.tolist() == ref_signs
    assert scale.shape == (6, 1) and scale.dtype == torch.float32
    assert scale.flatten().tolist() == [float(np.float32(s)) for s in ref_scale]
    cols_signs, cols_scale = binarize(torch.from_numpy(w), dim=1)
    assert cols_scale.shape == (1, 10)
    assert torch.equal(cols_signs, signs)
    s_all, a_all = binarize(torch.from_numpy(w))
    assert torch.equal(s_all, signs)
    assert a_all.shape == ()
    assert a_all.item() == float(np.float32(np.abs(w.astype(np.float64)).mean()))
    assert binarize(torch.from_numpy(w), dim=-2)[1].shape == (6, 1)


def ref_ternarize(row: list[float], factor: float) -> tuple[list[int], float]:
    delta = factor * sum(abs(v) for v in row) / len(row)
    codes = [(1 if v > 0 else -1) if abs(v) > delta else 0 for v in row]
    kept = [abs(v) for v in row if abs(v) > delta]
    return codes, (sum(kept) / len(kept) if kept else 0.0)


@pytest.mark.parametrize("factor", [0.7, 0.0, 0.5, 1.3])
def test_ternarize_matches_reference(factor):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 5)).astype(np.float32)
    codes, scale = ternarize(torch.from_numpy(w), dim=1, delta_factor=factor)
    assert codes.dtype == torch.int8 and scale.shape == (1, 3, 1)
    for c in range(3):
        row = w[:, c, :].astype(np.float64).ravel().tolist()
        ref_codes, ref_scale = ref_ternarize(row, factor)
        assert codes[:, c, :].flatten().tolist() == ref_codes
        assert scale[0, c, 0].item() == pytest.approx(ref_scale, rel=1e-6)
    whole_codes, whole_scale = ternarize(torch.from_numpy(w), delta_factor=factor)
    ref_codes, ref_scale = ref_ternarize(w.astype(np.float64).ravel().tolist(), factor)
    assert whole_codes.flatten().tolist() == ref_codes
    assert whole_scale.item() == pytest.approx(ref_scale, rel=1e-6)


def test_constant_and_zero_tensors_are_exact():
    for c in (0.3, -2.75, 1e-30):
        x = torch.full((7, 9), c)
        signs, scale = binarize(x, dim=0)
        assert torch.equal(signs * scale, x)
        codes, tscale = ternarize(x)
        assert torch.equal(codes * tscale, x)
    z = torch.zeros(3, 4)
    assert torch.equal(binarize(z)[0] * binarize(z)[1], z)
    codes, scale = ternarize(z, dim=1)
    assert (codes == 0).all() and (scale == 0).all()


def test_binary_ternary_errors():
    for fn in (binarize, ternarize):
        with pytest.raises(InputError, match="empty"):
            fn(torch.empty(0))
        with pytest.raises(InputError, match="NaN or Inf"):
            fn(torch.tensor([1.0, float("nan")]))
        with pytest.raises(GranularityError, match="dim"):
            fn(torch.ones(2, 2), dim=2)
        with pytest.raises(InputError):
            fn([1.0])
    for bad in (-0.1, float("nan"), float("inf"), "0.7"):
        with pytest.raises(FormatError, match="delta_factor"):
            ternarize(torch.ones(3), delta_factor=bad)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=8, unique=True),
    st.lists(st.floats(-1000, 1000, width=32), min_size=1, max_size=30),
)
def test_codebook_quantization_is_nearest_and_idempotent(levels, values):
    cb = Codebook(tuple(levels))
    x = torch.tensor(values, dtype=torch.float32)
    idx = quantize_to_codebook(x, cb)
    assert idx.tolist() == [ref_nearest(v, cb.levels) for v in x.tolist()]
    y = dequantize_codebook(idx, cb)
    assert torch.equal(quantize_to_codebook(y, cb), idx)


def test_docstring_examples_run():
    import doctest

    import lowbit.formats.codebook as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0

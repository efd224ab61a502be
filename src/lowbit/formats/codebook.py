"""Non-uniform quantization: codebooks (log2, k-means) and binary / ternary weights.

A :class:`Codebook` is a sorted tuple of float32 levels; a value is stored as
the index of its nearest level. Nearest means smallest ``|x - level|``, so the
decision boundaries are the midpoints between neighbouring levels and a value
exactly on a midpoint goes to the **lower** index. For a log2 codebook this
puts the boundary between ``2**k`` and ``2**(k+1)`` at ``1.5 · 2**k`` (least
squared error), not at ``√2 · 2**k`` (nearest in the log domain).

Binary and ternary quantization keep a real scale next to the codes:
XNOR-Net ``x ≈ α · sign(x)`` with ``α = mean|x|``, and TWN ``x ≈ α · t`` with
``t ∈ {-1, 0, 1}``, threshold ``Δ = 0.7 · mean|x|`` and ``α`` the mean of the
``|x| > Δ``. Means are accumulated in float64, so a constant tensor comes back
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lowbit.errors import FormatError, GranularityError, InputError

__all__ = [
    "MAX_LEVELS",
    "Codebook",
    "binarize",
    "dequantize_codebook",
    "kmeans_codebook",
    "log2_codebook",
    "quantize_to_codebook",
    "ternarize",
]

MAX_LEVELS = 1 << 15  # indices are stored in int16 above 256 levels


@dataclass(frozen=True)
class Codebook:
    """Sorted, distinct float32 levels; codes are indices into them.

    Args:
        levels: the level values, in any order; they are rounded to float32
            and sorted. Must be finite and distinct after rounding, 1 to 32768 of them.
        name: a label for reports.

    Example:
        >>> cb = Codebook((0.5, -1.0, 0.0))
        >>> cb.levels, cb.bits, cb.index_dtype
        ((-1.0, 0.0, 0.5), 2, torch.uint8)
    """

    levels: tuple[float, ...]
    name: str = "codebook"

    def __post_init__(self) -> None:
        try:
            values = np.asarray([float(v) for v in self.levels], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise FormatError(f"codebook levels must be numbers, got {self.levels!r}") from err
        if not 1 <= values.size <= MAX_LEVELS:
            raise FormatError(f"a codebook has 1 to {MAX_LEVELS} levels, got {values.size}")
        if not np.isfinite(values).all():
            raise FormatError(f"codebook levels must be finite, got {self.levels!r}")
        with np.errstate(over="ignore"):
            as32 = values.astype(np.float32)
        if not np.isfinite(as32).all():
            raise FormatError("codebook levels must fit in float32")
        as32 = np.sort(as32 + np.float32(0.0))  # + 0 folds -0 into 0
        if (np.diff(as32) == 0).any():
            raise FormatError(
                "codebook levels must be distinct (after rounding to float32); "
                "drop the duplicates, e.g. with sorted(set(levels))"
            )
        object.__setattr__(self, "levels", tuple(float(v) for v in as32))

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def bits(self) -> int:
        """Bits per index: ``ceil(log2(n_levels))`` (at least 1)."""
        return max(1, math.ceil(math.log2(self.n_levels)))

    @property
    def index_dtype(self) -> torch.dtype:
        """``torch.uint8`` up to 256 levels, else ``torch.int16``."""
        return torch.uint8 if self.n_levels <= 256 else torch.int16

    def values(self) -> Tensor:
        """The levels as a float32 tensor."""
        return torch.tensor(self.levels, dtype=torch.float32)

    def __len__(self) -> int:
        return self.n_levels


def _real(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.is_complex() or x.dtype == torch.bool:
        raise InputError(f"{what} expects a real torch.Tensor")
    return x.detach().to(torch.float32)


def _check_finite(x: Tensor, what: str) -> None:
    if x.numel() == 0:
        raise InputError(f"{what}: the tensor is empty; there is nothing to fit")
    if not bool(torch.isfinite(x).all()):
        raise InputError(
            f"{what}: the tensor holds NaN or Inf; clean it first (torch.nan_to_num) "
            "or exclude those values"
        )


def _midpoints(levels: Tensor) -> Tensor:
    # float64 midpoints of float32 levels are exact, so boundary ties are decided exactly
    lv = levels.to(torch.float64)
    return (lv[:-1] + lv[1:]) / 2


def quantize_to_codebook(x: Tensor, codebook: Codebook) -> Tensor:
    """Index of the nearest level for every value (ties go to the lower index).

    Args:
        x: real tensor; ±Inf maps to the extreme levels.
        codebook: the :class:`Codebook`.

    Returns:
        Indices in ``codebook.index_dtype``, same shape as ``x``.

    Raises:
        InputError: NaN in ``x``.

    Example:
        >>> import torch
        >>> cb = Codebook((-1.0, 0.0, 0.5))
        >>> quantize_to_codebook(torch.tensor([-0.5, 0.25, 0.3, 9.0]), cb).tolist()
        [0, 1, 2, 2]
    """
    if not isinstance(codebook, Codebook):
        raise FormatError(f"expected a Codebook, got {codebook!r}")
    x = _real(x, "quantize_to_codebook")
    if bool(torch.isnan(x).any()):
        raise InputError("cannot map NaN to a codebook level; clean the tensor first")
    mids = _midpoints(codebook.values())
    # searchsorted (left) counts the midpoints strictly below x: a value on a midpoint
    # stays with the lower level
    idx = torch.searchsorted(mids, x.to(torch.float64).contiguous())
    return idx.to(codebook.index_dtype)


def dequantize_codebook(idx: Tensor, codebook: Codebook) -> Tensor:
    """Level values for indices.

    Args:
        idx: integer tensor of indices in ``[0, n_levels)``.
        codebook: the :class:`Codebook`.

    Returns:
        float32 tensor, same shape as ``idx``.

    Example:
        >>> import torch
        >>> dequantize_codebook(torch.tensor([0, 2]), Codebook((-1.0, 0.0, 0.5))).tolist()
        [-1.0, 0.5]
    """
    if not isinstance(idx, Tensor) or idx.dtype.is_floating_point or idx.dtype.is_complex:
        raise InputError("codebook indices must be an integer torch.Tensor")
    i = idx.to(torch.int64)
    if i.numel() and (int(i.min()) < 0 or int(i.max()) >= codebook.n_levels):
        raise InputError(
            f"indices must lie in [0, {codebook.n_levels - 1}] for codebook {codebook.name!r}, "
            f"got [{int(i.min())}, {int(i.max())}]"
        )
    return codebook.values()[i]


def log2_codebook(bits: int, max_exponent: int = 0, signed: bool = True) -> Codebook:
    """Logarithmic levels: 0 and ±2**k for the top exponents (对数量化).

    Signed: 0 and ±2**k for ``2**(bits-1) - 1`` consecutive exponents ending at
    ``max_exponent`` (symmetric, so one code of the ``2**bits`` stays unused).
    Unsigned: 0 and ``2**bits - 1`` powers of two.

    Args:
        bits: bits per index, 2..8 signed, 1..8 unsigned.
        max_exponent: exponent of the largest level (``2**max_exponent``).
        signed: include negative levels.

    Returns:
        A :class:`Codebook`.

    Example:
        >>> log2_codebook(3).levels
        (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
    """
    low = 2 if signed else 1
    if not isinstance(bits, int) or not low <= bits <= 8:
        raise FormatError(f"log2 codebooks have {low} to 8 bits (signed={signed}), got {bits!r}")
    n = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    exps = range(max_exponent - n + 1, max_exponent + 1)
    if exps[0] < -149 or exps[-1] > 127:
        raise FormatError(
            f"exponents {exps[0]}..{exps[-1]} leave float32's range; choose max_exponent in "
            f"[{n - 150}, 127]"
        )
    powers = [math.ldexp(1.0, k) for k in exps]
    levels = [0.0, *powers] + ([-p for p in powers] if signed else [])
    return Codebook(tuple(levels), name=f"log2_{'s' if signed else 'u'}{bits}")


def kmeans_codebook(
    x: Tensor,
    n_levels: int,
    iters: int = 50,
    seed: int = 0,
    max_samples: int = 1 << 18,
) -> Codebook:
    """1-D k-means (Lloyd) levels fitted to the values of ``x`` (聚类量化).

    Deterministic: the initial levels are the data's quantiles at
    ``(i + 0.5) / n_levels``; tensors larger than ``max_samples`` are
    subsampled with a ``torch.Generator`` seeded by ``seed``. Each iteration
    assigns values to the nearest level (intervals between midpoints, on the
    sorted data) and moves each level to its interval's mean (float64
    cumulative sums); an empty interval keeps its level. Stops when the levels
    no longer move or after ``iters`` iterations.

    Args:
        x: real tensor with finite values.
        n_levels: wanted number of levels, 1..32768.
        iters: maximum Lloyd iterations.
        seed: seed of the subsampling.
        max_samples: largest number of values fitted directly.

    Returns:
        A :class:`Codebook` with at most ``n_levels`` levels (fewer when the
        data has fewer distinct values; a constant tensor gets exactly its value).

    Raises:
        InputError: empty input or NaN/Inf.
        FormatError: ``n_levels``, ``iters`` or ``max_samples`` out of range.

    Example:
        >>> import torch
        >>> kmeans_codebook(torch.tensor([0.0, 0.1, 0.2, 5.0, 5.2]), 2).levels
        (0.10000000149011612, 5.099999904632568)
    """
    if not isinstance(n_levels, int) or not 1 <= n_levels <= MAX_LEVELS:
        raise FormatError(f"n_levels must be an int in [1, {MAX_LEVELS}], got {n_levels!r}")
    if not isinstance(iters, int) or iters < 0:
        raise FormatError(f"iters must be a non-negative int, got {iters!r}")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise FormatError(f"max_samples must be a positive int, got {max_samples!r}")
    flat = _real(x, "kmeans_codebook").reshape(-1)
    _check_finite(flat, "kmeans_codebook")
    if flat.numel() > max_samples:
        gen = torch.Generator().manual_seed(seed)
        flat = flat[torch.randint(flat.numel(), (max_samples,), generator=gen)]
    v = torch.sort(flat.to(torch.float64)).values
    count = v.numel()
    csum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(v, 0)])
    q = ((torch.arange(n_levels, dtype=torch.float64) + 0.5) * count / n_levels).long()
    centers = torch.unique(v[q.clamp_(max=count - 1)])  # sorted; duplicates merged
    for _ in range(iters):
        # level i owns the sorted values in (mid[i-1], mid[i]]: ties go to the lower level,
        # as in quantize_to_codebook
        bounds = torch.searchsorted(v, _midpoints(centers), right=True)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), bounds])
        ends = torch.cat([bounds, torch.full((1,), count, dtype=torch.long)])
        sizes = (ends - starts).to(torch.float64)
        means = (csum[ends] - csum[starts]) / sizes.clamp(min=1)
        new = torch.sort(torch.where(sizes > 0, means, centers)).values
        if torch.equal(new, centers):
            break
        centers = new
    levels = torch.unique(centers.to(torch.float32))
    return Codebook(tuple(levels.tolist()), name=f"kmeans_{n_levels}")


def _scale_dims(x: Tensor, dim: int | None) -> tuple[int, ...]:
    """Dims reduced for one scale per slice along ``dim`` (all dims when None)."""
    if dim is None:
        return tuple(range(x.dim()))
    if not isinstance(dim, int) or not -x.dim() <= dim < max(x.dim(), 1):
        raise GranularityError(
            f"dim {dim!r} is out of range for a tensor of shape {tuple(x.shape)}; "
            "use None for one scale per tensor or a valid axis for one scale per slice"
        )
    d = dim % max(x.dim(), 1)
    return tuple(i for i in range(x.dim()) if i != d)


def _mean_abs(a: Tensor, dims: tuple[int, ...], dim: int | None) -> Tensor:
    """mean of a over dims in float64 (exact for constants), keepdim when dim is given."""
    if not dims:
        return a.clone()
    return a.mean(dim=dims, keepdim=dim is not None)


def binarize(x: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """XNOR-Net binarization: ``x ≈ scale · signs`` with ``scale = mean|x|``.

    Args:
        x: real tensor with finite values.
        dim: ``None`` for one scale per tensor, or the axis that keeps its own
            scale (e.g. 0 for one scale per output channel of a weight).

    Returns:
        ``(signs, scale)``: ``signs`` int8 in {-1, +1} with ``sign(0) = +1``;
        ``scale`` float32, a 0-d tensor, or shaped to broadcast against ``x``
        (size 1 except along ``dim``).

    Raises:
        InputError: empty input or NaN/Inf.
        GranularityError: ``dim`` out of range.

    Example:
        >>> import torch
        >>> signs, scale = binarize(torch.tensor([[1.0, -3.0], [0.0, 2.0]]), dim=0)
        >>> signs.tolist(), scale.tolist()
        ([[1, -1], [1, 1]], [[2.0], [1.0]])
    """
    x = _real(x, "binarize")
    _check_finite(x, "binarize")
    dims = _scale_dims(x, dim)
    scale = _mean_abs(x.abs().to(torch.float64), dims, dim)
    signs = torch.where(x >= 0, 1, -1).to(torch.int8)  # -0.0 >= 0 too: sign(0) = +1
    return signs, scale.to(torch.float32)


def ternarize(
    x: Tensor, dim: int | None = None, delta_factor: float = 0.7
) -> tuple[Tensor, Tensor]:
    """Ternary weight networks (TWN): ``x ≈ scale · codes`` with codes in {-1, 0, +1}.

    ``Δ = delta_factor · mean|x|``; ``codes = sign(x)`` where ``|x| > Δ``, else 0;
    ``scale`` is the mean of ``|x|`` over the kept values (0 where none is kept,
    i.e. an all-zero slice, which is then represented exactly).

    Args:
        x: real tensor with finite values.
        dim: ``None`` for one scale per tensor, or the axis that keeps its own scale.
        delta_factor: the threshold factor, finite and ≥ 0 (0.7 in the TWN paper).

    Returns:
        ``(codes, scale)``: int8 codes shaped like ``x``; float32 scale, 0-d or
        broadcastable against ``x``.

    Raises:
        InputError: empty input or NaN/Inf.
        FormatError: a bad ``delta_factor``.
        GranularityError: ``dim`` out of range.

    Example:
        >>> import torch
        >>> codes, scale = ternarize(torch.tensor([1.0, -2.0, 0.1, 0.3]))
        >>> codes.tolist(), scale.item()
        ([1, -1, 0, 0], 1.5)
    """
    if not isinstance(delta_factor, (int, float)) or not (
        math.isfinite(delta_factor) and delta_factor >= 0
    ):
        raise FormatError(f"delta_factor must be a finite number >= 0, got {delta_factor!r}")
    x = _real(x, "ternarize")
    _check_finite(x, "ternarize")
    dims = _scale_dims(x, dim)
    a = x.abs().to(torch.float64)
    delta = delta_factor * _mean_abs(a, dims, dim)
    keep = a > delta
    kept = torch.where(keep, a, torch.zeros_like(a))
    if dims:
        total = kept.sum(dim=dims, keepdim=dim is not None)
        n = keep.sum(dim=dims, keepdim=dim is not None).to(torch.float64)
    else:
        total, n = kept, keep.to(torch.float64)
    scale = torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))
    codes = (torch.sign(x) * keep).to(torch.int8)
    return codes, scale.to(torch.float32)

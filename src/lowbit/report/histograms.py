"""Activation histograms with the chosen clipping range: the pictures of seeds 000 and 001.

Seed 001 (TensorRT int8) explains saturating quantization: activations are
unevenly spread, so mapping ``±max|x|`` onto int8 wastes most levels on a few
outliers; instead a threshold ``T`` is chosen and everything beyond it is
clipped. Whether a layer's ``T`` is right is visible at a glance on the
histogram of its input with ``T`` drawn on it: this module collects those
histograms on the float model (a `HistogramObserver` per input, so memory is
bounded by the bins and no activation is stored) and pairs each with the range
the quantized model chose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lowbit.errors import InputError
from lowbit.flows.prepare import quantizer_modules
from lowbit.observers.histogram import HistogramObserver
from lowbit.report.errors import ReportError
from lowbit.report.metrics import flatten_outputs
from lowbit.report.running import call_model, check_pair, evaluating, take_batches

DEFAULT_BINS = 2048


@dataclass
class HistogramData:
    """The float model's input histogram of one quantized layer and the range chosen for it.

    Attributes:
        name: layer name.
        counts: int64 counts (trimmed to the occupied bins).
        edges: float64 bin edges, ``len(counts) + 1``.
        min, max: the smallest and largest value seen.
        total: number of values seen (``counts.sum()``).
        chosen_range: ``(lo, hi)`` the quantized model clips to; None when the
            input quantizer is dynamic, per-channel, or off.
        format: the input format and granularity (``"uint8 per-tensor asym mse"``).
        levels: distinct codes of the input format (256 for 8-bit integers), None for float formats.
    """

    name: str
    counts: Tensor
    edges: Tensor
    min: float
    max: float
    total: int
    chosen_range: tuple[float, float] | None = None
    format: str = ""
    levels: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cdf(self, x: float) -> float:
        """Fraction of values below ``x`` (linear within a bin)."""
        cum = np.concatenate([[0.0], np.cumsum(self.counts.numpy().astype(np.float64))])
        return float(np.interp(x, self.edges.numpy(), cum) / max(self.total, 1))

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of the data lies (linear within a bin)."""
        cum = np.concatenate([[0.0], np.cumsum(self.counts.numpy().astype(np.float64))])
        return float(np.interp(q * self.total, cum, self.edges.numpy()))

    def clipped_fraction(self) -> float | None:
        """Fraction of the values outside ``chosen_range`` (clipped by the quantizer)."""
        if self.chosen_range is None or self.total == 0:
            return None
        lo, hi = self.chosen_range
        return max(0.0, self.cdf(lo)) + max(0.0, 1.0 - self.cdf(hi))

    def levels_used(self, mass: float = 0.999) -> float | None:
        """How many quantization levels the central ``mass`` of the data spans.

        Few levels (say under 1/8 of them) mean a handful of outliers set the
        range and the bulk of the data is quantized coarsely.
        """
        if self.chosen_range is None or self.levels is None or self.levels < 2:
            return None
        lo, hi = self.chosen_range
        if hi <= lo:
            return None
        tail = (1.0 - mass) / 2
        span = self.quantile(1.0 - tail) - self.quantile(tail)
        return min(float(self.levels), span / ((hi - lo) / (self.levels - 1)) + 1)

    def to_dict(self) -> dict[str, Any]:
        clipped = self.clipped_fraction()
        return {
            "name": self.name, "counts": self.counts.tolist(), "edges": self.edges.tolist(),
            "min": self.min, "max": self.max, "total": self.total,
            "chosen_range": list(self.chosen_range) if self.chosen_range else None,
            "format": self.format, "levels": self.levels, "clipped_fraction": clipped,
        }


def _trim(counts: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    nonzero = torch.nonzero(counts).flatten()
    if nonzero.numel() == 0:
        return counts[:1].clone(), edges[:2].clone()
    first, last = int(nonzero[0]), int(nonzero[-1])
    return counts[first:last + 1].clone(), edges[first:last + 2].clone()


def _input_quantizers(qmodel: nn.Module) -> dict[str, Any]:
    # Dynamic inputs get a new range every batch: there is no chosen threshold to show.
    return {name: quantizer for name, role, quantizer in quantizer_modules(qmodel)
            if role == "input" and not quantizer.spec.dynamic}


def collect_activation_histograms(
    float_model: nn.Module,
    qmodel: nn.Module,
    data: Iterable[Any],
    max_batches: int | None = 8,
    *,
    bins: int = DEFAULT_BINS,
) -> dict[str, HistogramData]:
    """Histogram the float model's input to every layer whose input the quantized model quantizes.

    Forward pre-hooks on the float model feed a signed `HistogramObserver`
    per layer; nothing else is kept, so memory does not grow with the data.
    Layers of ``qmodel`` with no match in ``float_model`` are skipped.

    Args:
        float_model: the untouched float model.
        qmodel: its quantized version (names the layers and holds the chosen ranges).
        data: iterable of input batches.
        max_batches: batches to use (None: all).
        bins: histogram bins (2048, as TensorRT's calibrator).

    Returns:
        ``{layer name: HistogramData}`` in the quantized model's layer order; empty
        when no input has a calibrated range (weight-only and dynamic recipes).

    Raises:
        ReportError: no data, the float model is the quantized one, a model
            fails on the data, or an input holds NaN / Inf.

    Example:
        >>> hists = collect_activation_histograms(model, qmodel, batches)   # doctest: +SKIP
        >>> hists["fc"].clipped_fraction()                                    # doctest: +SKIP
        0.0004
    """
    check_pair(float_model, qmodel)
    quantizers = _input_quantizers(qmodel)
    modules = dict(float_model.named_modules())
    observers = {name: HistogramObserver(bins, absolute=False) for name in quantizers if name in modules}
    if not observers:
        return {}
    batches = take_batches(data, max_batches)
    failure: list[str] = []

    def make_hook(name: str):
        def hook(_module, args):
            flat = flatten_outputs(args)
            if not flat or not flat[0].is_floating_point():
                return
            try:
                observers[name].update(flat[0])
            except InputError as err:
                failure.append(f"{name}: {err}")
        return hook

    handles = [modules[name].register_forward_pre_hook(make_hook(name)) for name in observers]
    try:
        with evaluating(float_model):
            for batch in batches:
                call_model(float_model, batch, "float")
    finally:
        for handle in handles:
            handle.remove()
    if failure:
        raise ReportError(f"the float model's activations hold NaN / Inf at {failure[0]}; a report "
                          "needs a finite float reference")
    result: dict[str, HistogramData] = {}
    for name, observer in observers.items():
        if not observer.has_data:
            continue
        counts, edges = _trim(*observer.histogram())
        quantizer = quantizers[name]
        fmt = quantizer.fmt
        result[name] = HistogramData(
            name=name, counts=counts, edges=edges,
            min=float(observer.min_val), max=float(observer.max_val), total=int(counts.sum()),
            chosen_range=quantizer.chosen_range() if quantizer.mode != "off" else None,
            format=str(quantizer.spec),
            levels=int(fmt.levels) if fmt.kind == "int" else None,
        )
    return result


def coarsen(counts: Tensor, edges: Tensor, max_bins: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins (exactly: counts add) until at most ``max_bins`` remain, for plotting.

    Example:
        >>> c, e = coarsen(torch.ones(10, dtype=torch.int64), torch.arange(11.0), 5)
        >>> c.tolist(), e.tolist()
        ([2.0, 2.0, 2.0, 2.0, 2.0], [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    """
    c = counts.numpy().astype(np.float64)
    e = edges.numpy().astype(np.float64)
    if max_bins < 1:
        raise ReportError(f"max_bins must be >= 1, got {max_bins}")
    factor = -(-len(c) // max_bins)
    if factor <= 1:
        return c, e
    pad = (-len(c)) % factor
    width = e[1] - e[0]
    c = np.concatenate([c, np.zeros(pad)])
    e = np.concatenate([e, e[-1] + width * np.arange(1, pad + 1)])
    return c.reshape(-1, factor).sum(1), e[::factor]

"""Activation histograms: counts, chosen ranges, clipped fraction, no stored activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit.flows as flows
from lowbit.report import HistogramData, collect_activation_histograms
from lowbit.report.histograms import coarsen


def _inputs(model, batches, name):
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for x in batches:
            model(x)
    handle.remove()
    return torch.cat([t.reshape(-1) for t in seen])


def test_histograms_count_every_element_with_the_chosen_range(cnn, qcnn, batches):
    hists = collect_activation_histograms(cnn, qcnn, batches)
    assert list(hists) == ["features.0", "features.3", "fc", "head"]
    ranges = {n: q.chosen_range() for n, r, q in flows.quantizer_modules(qcnn) if r == "input"}
    for name, hist in hists.items():
        values = _inputs(cnn, batches, name)
        assert hist.total == int(hist.counts.sum()) == values.numel()
        assert hist.min == pytest.approx(float(values.min()))
        assert hist.max == pytest.approx(float(values.max()))
        assert len(hist.edges) == len(hist.counts) + 1
        assert hist.chosen_range == ranges[name]
        assert hist.levels == 256 and hist.format.startswith("uint8")
        lo, hi = hist.chosen_range
        exact = float(((values < lo) | (values > hi)).double().mean())
        width = float(hist.edges[1] - hist.edges[0])
        near_edges = ((values - lo).abs() < width) | ((values - hi).abs() < width)
        near = float(near_edges.double().mean())
        assert abs(hist.clipped_fraction() - exact) <= near + 1e-12


def test_max_batches_and_weight_only(cnn, qcnn, batches):
    hists = collect_activation_histograms(cnn, qcnn, batches, max_batches=1)
    assert hists["fc"].total == batches[0].shape[0] * 16
    w8 = flows.quantize(cnn, "w8", progress=False)
    assert collect_activation_histograms(cnn, w8, batches) == {}


def test_histogram_data_statistics():
    counts = torch.tensor([10, 0, 80, 10], dtype=torch.int64)
    hist = HistogramData("x", counts, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64),
                         0.0, 4.0, 100, chosen_range=(0.5, 3.0), levels=256)
    assert hist.cdf(0.5) == pytest.approx(0.05) and hist.quantile(0.5) == pytest.approx(2.5)
    assert hist.clipped_fraction() == pytest.approx(0.05 + 0.10)
    assert 0 < hist.levels_used() <= 256
    assert HistogramData("y", counts, hist.edges, 0, 4, 100).clipped_fraction() is None


def test_coarsen_keeps_the_total():
    counts = torch.arange(1000, dtype=torch.int64)
    edges = torch.linspace(0, 1000, 1001, dtype=torch.float64)
    c, e = coarsen(counts, edges, 96)
    assert len(c) <= 96 and len(e) == len(c) + 1 and c.sum() == counts.sum()
    assert np.all(np.diff(e) > 0) and e[0] == 0

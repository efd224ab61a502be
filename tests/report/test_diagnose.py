"""The reasons a report gives: each rule fires on the numbers it reads, and only then."""

from __future__ import annotations

import math

import torch

from lowbit.report import HistogramData, LayerRow, culprits, hints
from lowbit.report.diagnose import added_noise, all_healthy, sqnr_class


def _hist(values: torch.Tensor, chosen: tuple[float, float]) -> HistogramData:
    counts, edges = torch.histogram(values.double(), bins=256)
    return HistogramData("x", counts.long(), edges, float(values.min()), float(values.max()),
                         values.numel(), chosen_range=chosen, levels=256)


def test_sqnr_classes():
    assert [sqnr_class(v) for v in (None, 10.0, 20.0, 30.0, math.inf)] == ["", "bad", "warn", "good", "good"]


def test_weight_and_input_rules():
    assert "weight error" in hints(LayerRow("a", "Linear", weight_sqnr_db=18.0))[0]
    assert hints(LayerRow("a", "Linear", weight_sqnr_db=40.0)) == []
    late = LayerRow("a", "Linear", weight_sqnr_db=40.0, input_sqnr_db=12.0, output_sqnr_db=11.0)
    assert "arrives with the input" in hints(late)[0]


def test_range_rules():
    values = torch.linspace(-1, 1, 10_001)
    troubled = LayerRow("a", "Linear", input_sqnr_db=40.0, output_sqnr_db=12.0)
    assert "wider than these inputs" in hints(troubled, _hist(values, (-1.0, 50.0)))[0]
    spiky = torch.cat([torch.zeros(100_000) + torch.linspace(-0.01, 0.01, 100_000), torch.tensor([1.0])])
    assert "levels" in hints(troubled, _hist(spiky, (-0.01, 1.0)))[0]
    assert "clips" in hints(troubled, _hist(values, (-0.5, 0.5)))[0]
    relu = torch.linspace(0, 1, 10_001)
    assert "never negative" in hints(troubled, _hist(relu, (-1.0, 1.0)))[-1]
    healthy = LayerRow("a", "Linear", input_sqnr_db=45.0, output_sqnr_db=40.0)
    assert hints(healthy, _hist(values, (-0.5, 0.5))) == []  # a healthy layer's range is its business


def test_culprits_rank_by_added_noise():
    rows = [LayerRow("first", "Linear", input_sqnr_db=math.inf, output_sqnr_db=12.0),
            LayerRow("second", "Linear", input_sqnr_db=12.0, output_sqnr_db=11.5),
            LayerRow("third", "Linear", input_sqnr_db=11.5, output_sqnr_db=9.0),
            LayerRow("ln", "LayerNorm", status="unsupported", input_sqnr_db=9.0, output_sqnr_db=5.0)]
    names = [r.name for r, _, _ in culprits(rows)]
    assert names == ["first", "third", "second"]  # output SQNR alone would blame "third"
    assert added_noise(rows[0]) == 10 ** -1.2
    assert not all_healthy(rows) and all_healthy([LayerRow("a", "Linear", output_sqnr_db=30.0)])
    broken = LayerRow("nan", "Linear", input_sqnr_db=30.0, output_sqnr_db=-math.inf)
    assert culprits([*rows, broken])[0][0].name == "nan"

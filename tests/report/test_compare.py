"""compare() end to end: size, fidelity, the user's metric, rows, histograms, renderings."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch

import lowbit.flows as flows
from lowbit.report import Report, ReportError, accuracy, compare


def _eval_fn(batches):
    labels = [torch.arange(x.shape[0]) % 10 for x in batches]

    def top1(model):
        return sum(accuracy(model(x), y) for x, y in zip(batches, labels, strict=True)) / len(batches)
    return top1


def test_compare_end_to_end(cnn, qcnn, batches):
    before = copy.deepcopy(cnn.state_dict())
    report = compare(cnn, qcnn, _eval_fn(batches), batches)
    assert isinstance(report, Report)
    assert report.model == "SmallCNN" and report.recipe == "x86"
    assert 2.5 < report.ratio < 4.0  # int8 weights plus scales, zero points and float biases
    name, (b, a) = next(iter(report.metrics.items()))
    assert name == "top1" and 0 <= b <= 1 and 0 <= a <= 1
    assert report.fidelity.sqnr_db > 20 and report.fidelity.top1_agreement > 0.8
    assert {r.name for r in report.rows} >= {"features.0", "features.3", "fc", "head", "norm"}
    assert set(report.histograms) == {"features.0", "features.3", "fc", "head"}
    assert all(r.clipped_fraction is not None for r in report.rows if r.name in report.histograms)
    assert any("folded" in n for n in report.notes) and any("LayerNorm" in n for n in report.notes)
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())

    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["size_before"] == report.size_before and len(data["layers"]) == len(report.rows)
    assert "histograms" not in report.to_dict(histograms=False)

    md = report.to_markdown()
    assert "| Layer |" in md and "top1" in md and "→" in md

    out = io.StringIO()
    report.print(file=out)
    assert "features.3" in out.getvalue() and "size" in out.getvalue()


def test_compare_html_with_other_recipes(tmp_path, cnn, qcnn, batches):
    pytest.importorskip("matplotlib")
    w4 = flows.quantize(cnn, "w4-g32", progress=False)
    reports = [compare(cnn, q, _eval_fn(batches), batches) for q in (qcnn, w4)]
    assert reports[1].histograms == {} and any("weight-only" in n for n in reports[1].notes)
    row = reports[1].comparison_row()
    assert row["recipe"] == "w4-g32" and "top1" in row and row["size_bytes"] == reports[1].size_after
    path = reports[0].write_html(tmp_path / "r.html", compare_with=reports[1:], worst=0)
    text = path.read_text()
    assert "Recipes side by side" in text and "w4-g32" in text and "data:image/png;base64," in text
    assert "Activation histograms" not in text


def test_compare_without_data_and_with_dict_metrics(cnn, qcnn):
    report = compare(cnn, qcnn, lambda m: {"acc": 0.5, "loss": torch.tensor(1.25), "ppl": math.inf})
    assert report.fidelity is None and report.histograms == {}
    assert report.metrics == {"acc": (0.5, 0.5), "loss": (1.25, 1.25), "ppl": (math.inf, math.inf)}
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["metrics"]["ppl"]["after"] == "inf"
    assert all(r.output_sqnr_db is None for r in report.rows)
    assert all(r.weight_sqnr_db > 35 for r in report.rows if r.status == "quantized")
    assert math.isfinite(report.ratio)


def test_compare_bad_input(cnn, qcnn, batches):
    with pytest.raises(ReportError, match="number"):
        compare(cnn, qcnn, lambda m: "good")
    with pytest.raises(ReportError, match="inplace"):
        compare(qcnn, qcnn)
    with pytest.raises(ReportError, match="inputs only"):
        compare(cnn, qcnn, data=[(x, torch.zeros(8)) for x in batches])

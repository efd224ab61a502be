"""write_html_report: one self-contained file with inline plots, escaped names, no network."""

from __future__ import annotations

import base64
import re

import pytest

from lowbit.report import LayerRow, collect_activation_histograms, layer_table, write_html_report

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_file_is_self_contained(tmp_path, cnn, qcnn, batches):
    rows = layer_table(qcnn, cnn, batches)
    hists = collect_activation_histograms(cnn, qcnn, batches)
    summary = {
        "model": "SmallCNN", "recipe": "x86", "description": "int8 <fast> & small",
        "size_before": 4000, "size_after": 1000,
        "metrics": {"accuracy": {"before": 0.91, "after": 0.9}},
        "fidelity": {"sqnr_db": 31.0, "cosine_mean": 0.999, "cosine_min": 0.99,
                     "top1_agreement": 0.98, "max_abs_error": 0.1, "batches": 4},
        "notes": ["<script>alert(1)</script>"],
    }
    comparisons = [{"recipe": "x86", "accuracy": 0.9, "size_bytes": 1000, "output_sqnr_db": 31.0},
                   {"recipe": "w4-g32", "accuracy": 0.7, "size_bytes": 600, "output_sqnr_db": 12.0}]
    path = write_html_report(tmp_path / "sub" / "r.html", title="SmallCNN <int8>", summary=summary,
                             rows=rows, histograms=hists, comparisons=comparisons, worst=2)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    images = _images(text)
    assert len(images) == 1 + 2  # the SQNR chart and the 2 worst histograms
    assert all(img.startswith(PNG_MAGIC) for img in images)
    for name in ("features.0", "features.3", "fc", "head", "norm"):
        assert f">{name}" in text
    assert "<table>" in text and "Layers, worst first" in text and "Recipes side by side" in text
    assert "w4-g32" in text and "90.00%" in text and "4.00×" in text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("data:image/png", ""))
    assert "<script" not in text and "&lt;script&gt;" in text and "SmallCNN &lt;int8&gt;" in text
    assert "<link" not in text and "@import" not in text


def test_cells_are_coloured_by_sqnr(tmp_path):
    rows = [LayerRow("a", "Linear", output_sqnr_db=10.0, weight_sqnr_db=40.0, input_sqnr_db=40.0),
            LayerRow("b", "Linear", output_sqnr_db=20.0), LayerRow("c", "Linear", output_sqnr_db=40.0)]
    text = write_html_report(tmp_path / "r.html", title="t", summary={}, rows=rows,
                             histograms={}).read_text()
    assert 'class="num bad">10.0' in text and 'class="num warn">20.0' in text
    assert 'class="num good">40.0' in text
    assert text.index(">a</td>") < text.index(">b</td>") < text.index(">c</td>")  # worst first
    assert "No static activation" in text

"""Reports: how a quantized model compares with its float original, and where it loses.

- `compare` → `Report`: size before / after, output fidelity, the user's metric
  before / after, a per-layer table and activation histograms; rendered with
  ``to_markdown()``, ``to_dict()``, ``print()`` or ``write_html(path)`` (one
  self-contained file, plots inline, opens from ``file://``).
- the parts, usable alone: metrics (`sqnr_db`, `cosine_similarity`,
  `top1_agreement`, `accuracy`, `model_size_bytes`, `compare_outputs`), the
  per-layer table (`layer_table`, `format_table`, `print_table`), histograms
  (`collect_activation_histograms`) and `write_html_report`.

The report layer reads models and never changes them. Plots need matplotlib
(``pip install 'lowbit[report]'``); everything else needs nothing extra.

Example:
    >>> qmodel = lowbit.quantize(model, "x86", calibrate=batches)              # doctest: +SKIP
    >>> report = lowbit.report.compare(model, qmodel, eval_fn, data=batches)   # doctest: +SKIP
    >>> report.write_html("model.int8.html")                                   # doctest: +SKIP
"""

from __future__ import annotations

from lowbit.report.compare import Report, compare
from lowbit.report.diagnose import culprits, hints
from lowbit.report.errors import ReportError
from lowbit.report.histograms import HistogramData, collect_activation_histograms
from lowbit.report.html import write_html_report
from lowbit.report.layers import LayerRow, layer_table
from lowbit.report.metrics import (
    OutputFidelity,
    accuracy,
    compare_outputs,
    cosine_similarity,
    flatten_outputs,
    model_size_bytes,
    sqnr_db,
    top1_agreement,
)
from lowbit.report.tables import format_plain, format_table, print_table

__all__ = [
    "HistogramData",
    "LayerRow",
    "OutputFidelity",
    "Report",
    "ReportError",
    "accuracy",
    "collect_activation_histograms",
    "compare",
    "compare_outputs",
    "cosine_similarity",
    "culprits",
    "flatten_outputs",
    "format_plain",
    "format_table",
    "hints",
    "layer_table",
    "model_size_bytes",
    "print_table",
    "sqnr_db",
    "top1_agreement",
    "write_html_report",
]

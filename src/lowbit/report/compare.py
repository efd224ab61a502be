"""`compare`: the whole report in one call, ``report = lowbit.report.compare(model, qmodel, eval_fn)``.

A `Report` bundles size before / after, output fidelity on sample batches,
the user's own metric before / after, the per-layer table and the activation
histograms, and renders them as Markdown, a dict (JSON), a terminal table or
one self-contained HTML file. Neither model is changed: every pass runs in
eval mode without gradients and restores the training flags afterwards.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from lowbit.report.diagnose import added_db_text, all_healthy, culprits
from lowbit.report.errors import ReportError
from lowbit.report.histograms import HistogramData, collect_activation_histograms
from lowbit.report.layers import LayerRow, json_float, layer_table
from lowbit.report.metrics import OutputFidelity, compare_outputs, model_size_bytes
from lowbit.report.running import check_pair, evaluating, take_batches
from lowbit.report.tables import (
    fmt_bytes,
    fmt_db,
    fmt_metric,
    format_table,
    metric_delta,
    print_table,
)


@dataclass
class Report:
    """Everything lowbit knows about how a quantized model compares with its float original.

    Attributes:
        model: the float model's class name.
        recipe: the recipe name (from ``qmodel.lowbit_state``).
        description: the recipe's description.
        size_before, size_after: bytes (`model_size_bytes`).
        fidelity: output closeness on the sample batches, None without data.
        metrics: ``{name: (float value, quantized value)}`` from ``eval_fn``.
        rows: the per-layer table (`layer_table`).
        histograms: input histograms by layer name.
        notes: what quantization did that a reader should know (fusion, graph, disabled layers).
    """

    model: str
    recipe: str
    description: str
    size_before: int
    size_after: int
    fidelity: OutputFidelity | None = None
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    rows: list[LayerRow] = field(default_factory=list)
    histograms: dict[str, HistogramData] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """How many times smaller the quantized model is."""
        return self.size_before / self.size_after if self.size_after else math.inf

    def summary(self) -> dict[str, Any]:
        """The header facts, in the form `write_html_report` takes."""
        return {
            "model": self.model, "recipe": self.recipe, "description": self.description,
            "size_before": self.size_before, "size_after": self.size_after,
            "metrics": {k: {"before": b, "after": a} for k, (b, a) in self.metrics.items()},
            "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None,
            "notes": list(self.notes),
        }

    def comparison_row(self) -> dict[str, Any]:
        """One line of a recipes-side-by-side table: metric(s), size, ratio, SQNR, worst layer.

        Example:
            >>> rows = [compare(model, q, eval_fn, data).comparison_row() for q in qmodels]  # doctest: +SKIP
        """
        row: dict[str, Any] = {"recipe": self.recipe}
        for name, (before, after) in self.metrics.items():
            row[f"{name} (float)"] = before
            row[name] = after
        row["size_bytes"] = self.size_after
        row["ratio"] = self.ratio
        if self.fidelity is not None:
            row["output_sqnr_db"] = self.fidelity.sqnr_db
            if self.fidelity.top1_agreement is not None:
                row["top1_agreement"] = self.fidelity.top1_agreement
        worst = culprits(self.rows, self.histograms, n=1)
        row["worst layer"] = worst[0][0].name if worst else None
        return row

    def to_markdown(self) -> str:
        """The report as Markdown: summary bullets, the layers that add most error, the table."""
        lines = [f"# lowbit report: {self.model} · {self.recipe}", ""]
        if self.description:
            lines += [self.description, ""]
        lines.append(f"- size: {fmt_bytes(self.size_before)} → {fmt_bytes(self.size_after)} "
                     f"({self.ratio:.2f}× smaller)")
        for name, (before, after) in self.metrics.items():
            lines.append(f"- {name}: {fmt_metric(name, before)} → {fmt_metric(name, after)} "
                         f"({metric_delta(name, before, after)})")
        if self.fidelity is not None:
            f = self.fidelity
            agree = f", top-1 agreement {f.top1_agreement:.2%}" if f.top1_agreement is not None else ""
            lines.append(f"- output SQNR {fmt_db(f.sqnr_db)} dB, cosine {f.cosine_mean:.5f} "
                         f"(min {f.cosine_min:.4f}){agree}, max |error| {f.max_abs_error:.3g}")
        worst = culprits(self.rows, self.histograms, n=3)
        if worst:
            lines += ["", "## Where the error comes from", ""]
            if all_healthy(self.rows):
                lines += ["Every quantized layer keeps its output above 25 dB SQNR.", ""]
            for row, _, why in worst:
                lines.append(f"1. `{row.name}` ({row.module_type}) {added_db_text(row)}"
                             + (f": {'; '.join(why)}" if why else ""))
        lines += ["", "## Layers, worst first", "", format_table(self.rows, self.histograms)]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self, *, histograms: bool = True) -> dict[str, Any]:
        """JSON-serialisable (strictly: ``json.dumps(..., allow_nan=False)`` works).

        Non-finite floats become ``"inf"`` / ``"-inf"`` / ``"nan"``.

        Args:
            histograms: include the histogram counts (the bulk of the size).
        """
        data = self.summary()
        data["ratio"] = self.ratio
        data["layers"] = [row.to_dict() for row in self.rows]
        if histograms:
            data["histograms"] = {name: h.to_dict() for name, h in self.histograms.items()}
        return json_float(data)

    def write_html(self, path: str | Path, *, compare_with: Iterable[Report] = (),
                   title: str | None = None, worst: int = 12) -> Path:
        """Write the self-contained HTML report (needs matplotlib: ``lowbit[report]``).

        Args:
            path: the ``.html`` file to write.
            compare_with: other reports of the same float model (other recipes),
                shown side by side with this one.
            title: page title (default: model and recipe).
            worst: histograms of this many worst layers (0: none).

        Returns:
            The path written.
        """
        others = list(compare_with)
        comparisons = [self.comparison_row()] + [r.comparison_row() for r in others] if others else None
        from lowbit.report.html import write_html_report

        return write_html_report(
            path, title=title or f"lowbit report: {self.model} · {self.recipe}",
            summary=self.summary(), rows=self.rows, histograms=self.histograms,
            comparisons=comparisons, worst=worst,
        )

    def print(self, file: TextIO | None = None) -> None:
        """Print the summary and the per-layer table (coloured when ``rich`` is installed)."""
        file = file or sys.stdout
        head = self.to_markdown().split("\n## Layers, worst first")[0]
        print(head.rstrip() + "\n", file=file)
        print_table(self.rows, self.histograms, file=file)


def _metric_values(name: str, value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): _as_float(f"{name}[{k!r}]", v) for k, v in value.items()}
    return {name: _as_float(name, value)}


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ReportError(f"eval_fn must return a number (or a dict of numbers); {name} is "
                          f"{type(value).__name__}") from err


def _evaluate(eval_fn: Callable[[nn.Module], Any], model: nn.Module) -> Any:
    with evaluating(model):
        return eval_fn(model)


def _notes(qmodel: nn.Module) -> list[str]:
    state = getattr(qmodel, "lowbit_state", None)
    if state is None:
        return ["the quantized model has no lowbit_state: status rows (kept / excluded / unsupported) "
                "are missing"]
    notes = []
    if state.fused:
        notes.append("BatchNorm folded into the preceding layer: " + ", ".join(
            f"{p.norm} → {p.layer}" for p in state.fused) + " (weight SQNR compares folded weights)")
    if state.graph_note:
        notes.append(state.graph_note)
    if state.functional:
        kinds = sorted(set(state.functional.values()))
        notes.append(f"{len(state.functional)} functional ops quantized from the traced graph "
                     f"({', '.join(kinds)})")
    if state.bias_corrected:
        notes.append(f"bias correction applied to {len(state.bias_corrected)} layers")
    for name, why in state.disabled.items():
        notes.append(f"{name}: {why}")
    if state.unsupported:
        notes.append("not quantized (no quantized version): " + ", ".join(
            f"{n} ({t})" for n, t in state.unsupported.items()))
    if state.recipe.mode == "weight_only":
        notes.append("weight-only recipe: activations stay float, so there are no clipping ranges")
    return notes


def compare(
    float_model: nn.Module,
    qmodel: nn.Module,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    data: Iterable[Any] | None = None,
    *,
    max_batches: int | None = 8,
    sensitivity: dict[str, float] | None = None,
    histograms: bool = True,
) -> Report:
    """Compare a quantized model with its float original: size, fidelity, metric, layers, histograms.

    Args:
        float_model: the untouched float model.
        qmodel: what ``lowbit.quantize`` returned for it.
        eval_fn: ``eval_fn(model) -> float`` (or a dict of floats), e.g. accuracy
            on a validation set; run on both models, in eval mode without gradients.
        data: iterable of input batches (inputs only, as ``quantize``'s
            ``calibrate`` takes them) for output fidelity, per-layer input /
            output SQNR and histograms. Without it the report has sizes, the
            metric and weight SQNR only.
        max_batches: batches of ``data`` to use.
        sensitivity: optional ``{layer: score}`` shown in the table.
        histograms: collect activation histograms (one extra float pass).

    Returns:
        A `Report`.

    Raises:
        ReportError: the float model is the quantized one, the data does not
            fit the models, or ``eval_fn`` returns something that is not a number.

    Example:
        >>> qmodel = lowbit.quantize(model, "x86", calibrate=batches)        # doctest: +SKIP
        >>> report = lowbit.report.compare(model, qmodel, eval_fn, batches)  # doctest: +SKIP
        >>> report.write_html("report.html")                                 # doctest: +SKIP
    """
    check_pair(float_model, qmodel)
    batches = take_batches(data, max_batches) if data is not None else None
    state = getattr(qmodel, "lowbit_state", None)
    metrics: dict[str, tuple[float, float]] = {}
    if eval_fn is not None:
        name = getattr(eval_fn, "__name__", "metric")
        name = "metric" if name.startswith("<") else name
        before = _metric_values(name, _evaluate(eval_fn, float_model))
        after = _metric_values(name, _evaluate(eval_fn, qmodel))
        metrics = {k: (before[k], after[k]) for k in before if k in after}
    rows = layer_table(qmodel, float_model, batches, max_batches=None, sensitivity=sensitivity)
    hists: dict[str, HistogramData] = {}
    fidelity = None
    if batches is not None:
        fidelity = compare_outputs(float_model, qmodel, batches, max_batches=None)
        if histograms:
            hists = collect_activation_histograms(float_model, qmodel, batches, max_batches=None)
    for row in rows:
        if row.name in hists:
            row.clipped_fraction = hists[row.name].clipped_fraction()
    return Report(
        model=type(float_model).__name__,
        recipe=state.recipe.name if state is not None else "?",
        description=state.recipe.description if state is not None else "",
        size_before=model_size_bytes(float_model),
        size_after=model_size_bytes(qmodel),
        fidelity=fidelity, metrics=metrics, rows=rows, histograms=hists, notes=_notes(qmodel),
    )

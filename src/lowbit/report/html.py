"""`write_html_report`: one self-contained HTML file a person would rather look at than read.

Everything is inline: CSS in a ``<style>`` block, plots as base64 PNG
``data:`` URIs. No JavaScript, no external URL, no server: the file opens
from ``file://`` and can be mailed or attached to an issue. Every name that
comes from a model is escaped with `html.escape`.

Order of the page, from verdict to evidence: summary cards (size, metric,
fidelity), the layers that add the most error and why, recipes side by side,
the per-layer SQNR chart, the per-layer table (worst first), the activation
histograms with the chosen clipping range of the worst layers, and notes.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowbit.report.diagnose import added_db_text, all_healthy, culprits, hints, sqnr_class
from lowbit.report.errors import ReportError
from lowbit.report.histograms import HistogramData
from lowbit.report.layers import LayerRow
from lowbit.report.plots import histogram_panel, sqnr_chart
from lowbit.report.tables import (
    COLUMNS,
    fmt_bytes,
    fmt_db,
    fmt_fraction,
    fmt_metric,
    fmt_range,
    metric_delta,
    row_cells,
    sort_worst_first,
)

CSS = """
:root { --bad:#d62728; --warn:#f0a202; --good:#2ca02c; --ink:#1d2330; --mute:#667085;
        --line:#e4e7ec; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--ink); background: var(--bg); margin: 0; padding: 24px 32px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 0 0 10px; }
.sub { color: var(--mute); margin: 0 0 20px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
          padding: 18px 20px; margin: 0 0 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 14px;
         background: none; border: 0; padding: 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px;
        border-top: 5px solid var(--mute); }
.card.good { border-top-color: var(--good); } .card.warn { border-top-color: var(--warn); }
.card.bad { border-top-color: var(--bad); }
.card h3 { margin: 0 0 6px; font-size: 12px; text-transform: uppercase; letter-spacing: .05em;
           color: var(--mute); }
.big { font-size: 22px; font-weight: 650; } .small { color: var(--mute); font-size: 12.5px; }
.arrow { color: var(--mute); font-weight: 400; margin: 0 6px; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: #f2f4f7; position: sticky; top: 0; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.bad { background: #fde2e1; color: #8a1c1c; font-weight: 600; }
td.warn { background: #fff1cc; color: #7a5300; } td.good { color: #1e6b1e; }
tr.dim td { color: var(--mute); } td.name { font-family: ui-monospace, Menlo, Consolas, monospace; }
td.why { color: #444; max-width: 420px; }
.scroll { overflow-x: auto; max-height: 720px; overflow-y: auto; }
ol.culprits li { margin: 6px 0; } ol.culprits .why { color: #444; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 6px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: var(--mute); padding: 4px 4px 0; }
img.chart { max-width: 100%; height: auto; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 99px; font-size: 12px;
        background: #eef2f6; color: var(--ink); margin-right: 4px; }
footer { color: var(--mute); font-size: 12px; text-align: center; }
"""

_NUMERIC = {"W SQNR", "In SQNR", "Out SQNR", "Sensitivity", "Clipped"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _delta_class(name: str, before: float, after: float) -> str:
    if not fmt_metric(name, before).endswith("%"):
        return ""
    drop = before - after
    return "good" if drop < 0.005 else ("warn" if drop < 0.02 else "bad")


def _cards(summary: Mapping[str, Any]) -> str:
    cards = []
    before, after = summary.get("size_before"), summary.get("size_after")
    if before and after:
        ratio = before / after
        cards.append(
            f'<div class="card good"><h3>Model size</h3><div class="big">{fmt_bytes(before)}'
            f'<span class="arrow">→</span>{fmt_bytes(after)}</div>'
            f'<div class="small">{ratio:.2f}× smaller ({after / before:.1%} of float)</div></div>')
    for name, pair in (summary.get("metrics") or {}).items():
        b, a = pair.get("before"), pair.get("after")
        both = b is not None and a is not None
        delta = metric_delta(name, b, a) if both else ""
        cls = _delta_class(name, b, a) if both else ""
        cards.append(
            f'<div class="card {cls}"><h3>{_e(name)}</h3><div class="big">{fmt_metric(name, b)}'
            f'<span class="arrow">→</span>{fmt_metric(name, a)}</div>'
            f'<div class="small">float → quantized: {_e(delta)}</div></div>')
    fid = summary.get("fidelity")
    if fid:
        sqnr = fid.get("sqnr_db")
        parts = [f"cosine {fid['cosine_mean']:.5f} (worst sample {fid['cosine_min']:.4f})"]
        if fid.get("top1_agreement") is not None:
            parts.append(f"top-1 agreement {fid['top1_agreement']:.2%}")
        parts.append(f"max |error| {fid['max_abs_error']:.3g} over {fid['batches']} batches")
        cards.append(
            f'<div class="card {sqnr_class(sqnr)}"><h3>Output fidelity</h3>'
            f'<div class="big">{fmt_db(sqnr)} dB <span class="small">SQNR</span></div>'
            f'<div class="small">{_e(" · ".join(parts))}</div></div>')
    if not cards:
        return ""
    return f'<section class="cards">{"".join(cards)}</section>'


def _culprits(rows: list[LayerRow], histograms: dict[str, HistogramData]) -> str:
    found = culprits(rows, histograms, n=5)
    if not found:
        return ""
    items = []
    for row, _, why in found:
        reasons = "; ".join(why)
        items.append(
            f'<li><b class="mono">{_e(row.name)}</b> <span class="pill">{_e(row.module_type)}</span> '
            f'{_e(added_db_text(row))} (output {fmt_db(row.output_sqnr_db)} dB, input '
            f'{fmt_db(row.input_sqnr_db)} dB, weight {fmt_db(row.weight_sqnr_db)} dB)'
            + (f'<div class="why">{_e(reasons)}</div>' if reasons else "") + "</li>")
    lead = ("Every quantized layer keeps its output above 25 dB SQNR; nothing needs attention. "
            if all_healthy(rows) else "")
    return ('<section><h2>Where the error comes from</h2><p class="small">' + lead + "Layers ranked "
            "by the noise they add (noise at their output minus noise arriving at their input).</p>"
            f'<ol class="culprits">{"".join(items)}</ol></section>')


_COLUMN_NAMES = {"size_bytes": "size", "ratio": "× smaller", "output_sqnr_db": "output SQNR (dB)",
                 "top1_agreement": "top-1 agreement"}


def _comparison_cell(key: str, value: Any) -> tuple[str, str]:
    """``(css class, text)`` of one cell of the side-by-side table."""
    if isinstance(value, float) and "sqnr" in key.lower():
        return f"num {sqnr_class(value)}", fmt_db(value)
    if isinstance(value, (int, float)) and "byte" in key.lower():
        return "num", fmt_bytes(value)
    if isinstance(value, float) and key == "ratio":
        return "num", f"{value:.2f}×"
    if isinstance(value, (int, float)):
        return "num", fmt_metric(key, float(value))
    return "", "–" if value is None else str(value)


def _comparison(comparisons: list[dict] | None) -> str:
    if not comparisons:
        return ""
    keys: list[str] = []
    for entry in comparisons:
        keys.extend(k for k in entry if k not in keys)
    # Float-model columns repeat one value down the table: say it once above it.
    constant = [k for k in keys if k.endswith(" (float)")
                and len({repr(e.get(k)) for e in comparisons}) == 1]
    keys = [k for k in keys if k not in constant]
    caption = "; ".join(f"{k[: -len(' (float)')]} of the float model: "
                        f"{_comparison_cell(k, comparisons[0].get(k))[1]}" for k in constant)
    head = "".join(f"<th>{_e(_COLUMN_NAMES.get(k, k))}</th>" for k in keys)
    body = []
    for entry in comparisons:
        cells = [_comparison_cell(key, entry.get(key)) for key in keys]
        body.append("<tr>" + "".join(f'<td class="{cls}">{_e(text)}</td>' for cls, text in cells)
                    + "</tr>")
    note = f'<p class="small">{_e(caption)}</p>' if caption else ""
    return (f'<section><h2>Recipes side by side</h2>{note}<div class="scroll"><table><thead><tr>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div></section>')


def _table(rows: list[LayerRow], histograms: dict[str, HistogramData]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in COLUMNS)
    body = []
    for row in sort_worst_first(rows):
        cells = row_cells(row, histograms.get(row.name))
        classes = {
            "W SQNR": sqnr_class(row.weight_sqnr_db), "In SQNR": sqnr_class(row.input_sqnr_db),
            "Out SQNR": sqnr_class(row.output_sqnr_db),
        }
        tds = []
        for column, text in zip(COLUMNS, cells, strict=True):
            cls = ["num"] if column in _NUMERIC else []
            if classes.get(column):
                cls.append(classes[column])
            if column == "Layer":
                cls.append("name")
            if column == "Why":
                cls.append("why")
            tds.append(f'<td class="{" ".join(cls)}">{_e(text)}</td>')
        dim = ' class="dim"' if row.status in ("excluded", "unsupported", "kept") else ""
        body.append(f"<tr{dim}>{''.join(tds)}</tr>")
    return (
        '<section><h2>Layers, worst first</h2><p class="small">SQNR cells: red under 15 dB, amber under '
        "25 dB. <b>W</b>: weight vs quantized weight. <b>In</b> / <b>Out</b>: the layer's input / output "
        "in the quantized model vs the float model on the same data; a large drop from In to Out "
        "means this layer adds the error. Range: the activation clipping range the quantizer chose. "
        "Clipped: fraction of float inputs outside it.</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        "</table></div></section>")


def _histograms(rows: list[LayerRow], histograms: dict[str, HistogramData], worst: int) -> str:
    if worst <= 0:
        return ""
    if not histograms:
        return ('<section><h2>Activation histograms</h2><p class="small">No static activation '
                "quantizer to show (weight-only or dynamic recipe, or no data given).</p></section>")
    by_name = {row.name: row for row in rows}

    def badness(name: str) -> float:
        row = by_name.get(name)
        value = row.output_sqnr_db if row is not None else None
        return math.inf if value is None else value

    chosen = sorted(histograms, key=badness)[:worst]
    figures = []
    for name in chosen:
        hist = histograms[name]
        row = by_name.get(name)
        png = histogram_panel(hist, output_sqnr_db=row.output_sqnr_db if row else None)
        why = "; ".join(hints(row, hist)) if row is not None else ""
        caption = f"{hist.format} · range {fmt_range(hist.chosen_range)} · data [{hist.min:.4g}, " \
                  f"{hist.max:.4g}] · clipped {fmt_fraction(hist.clipped_fraction())}"
        figures.append(
            f"<figure>{_img(png, f'input histogram of {name}')}<figcaption>{_e(caption)}"
            f"{'<br><b>' + _e(why) + '</b>' if why else ''}</figcaption></figure>")
    shown = f"the {len(chosen)} worst layers by output SQNR" if len(chosen) < len(histograms) \
        else "every layer with a quantized input"
    return (
        '<section><h2>Activation histograms and chosen clipping range</h2><p class="small">'
        f"Float-model inputs of {shown}, counts on a log scale. Dashed red lines: the range the "
        "quantizer maps onto its integer grid (the saturation threshold T); values in the shaded "
        "tails are clipped. A range far wider than the bulk of the data wastes levels on outliers; "
        f'a range that cuts into the bulk clips too much.</p><div class="grid">{"".join(figures)}'
        "</div></section>")


def _notes(summary: Mapping[str, Any]) -> str:
    notes = summary.get("notes") or []
    known = {"model", "recipe", "description", "size_before", "size_after", "metrics", "fidelity",
             "notes", "title"}
    extra = [(k, v) for k, v in summary.items() if k not in known]
    if not notes and not extra:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    items += "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in extra)
    return f"<section><h2>Notes</h2><ul>{items}</ul></section>"


def write_html_report(
    path: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    rows: list[LayerRow],
    histograms: dict[str, HistogramData],
    comparisons: list[dict] | None = None,
    threshold_db: float = 20.0,
    worst: int = 12,
) -> Path:
    """Write the report as one self-contained HTML file.

    Args:
        path: where to write (parent folders are created).
        title: page title.
        summary: ``model``, ``recipe``, ``description`` (strings); ``size_before`` /
            ``size_after`` (bytes); ``metrics`` (``{name: {"before": x, "after": y}}``);
            ``fidelity`` (`OutputFidelity.to_dict()`); ``notes`` (list of strings).
            Other keys are listed under Notes.
        rows: the layer table.
        histograms: input histograms by layer name.
        comparisons: one dict per recipe for the side-by-side table (e.g.
            `Report.comparison_row()`); keys become columns.
        threshold_db: the line drawn on the SQNR chart.
        worst: how many histograms to show (the worst layers by output SQNR; 0 for none).

    Returns:
        The path written.

    Raises:
        ReportError: matplotlib is not installed, or the file cannot be written.

    Example:
        >>> write_html_report("report.html", title="resnet18 int8", summary={}, rows=rows,
        ...                   histograms={})                                   # doctest: +SKIP
    """
    path = Path(path)
    chart = sqnr_chart(rows, threshold_db=threshold_db)
    subtitle = " · ".join(_e(summary[k]) for k in ("model", "recipe") if summary.get(k))
    if summary.get("description"):
        subtitle += f" — {_e(summary['description'])}"
    chart_html = (f'<section><h2>Per-layer output SQNR</h2>{_img(chart, "per-layer SQNR", "chart")}'
                  "</section>") if chart is not None else ""
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="sub">{subtitle}</p>'
        f"{_cards(summary)}{_culprits(rows, histograms)}{_comparison(comparisons)}{chart_html}"
        f"{_table(rows, histograms)}{_histograms(rows, histograms, worst)}{_notes(summary)}"
        "<footer>lowbit report · self-contained file, no scripts, no network</footer></body></html>\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document, encoding="utf-8")
    except OSError as err:
        raise ReportError(f"cannot write the report to {path}: {err}; choose a writable path") from err
    return path

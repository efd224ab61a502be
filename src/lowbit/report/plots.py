"""The report's pictures as PNG bytes: per-layer SQNR bars and activation histograms with T marked.

matplotlib is an optional extra (``pip install lowbit[report]``); it is
imported here, lazily, with the non-interactive Agg canvas and without
pyplot, so plotting never opens a window, never touches pyplot's global
state and works on servers without a display.
"""

from __future__ import annotations

import io
import math
from typing import Any

from lowbit.report.diagnose import SQNR_AMBER, SQNR_RED, culprits, sqnr_class
from lowbit.report.errors import ReportError
from lowbit.report.histograms import HistogramData, coarsen
from lowbit.report.layers import LayerRow

COLOURS = {"bad": "#d62728", "warn": "#f0a202", "good": "#2ca02c", "": "#9e9e9e"}
CLIP_COLOUR = "#c0392b"
HIST_COLOUR = "#4c72b0"
MAX_BARS = 80


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ReportError(
            "plots need matplotlib, an optional extra of lowbit: pip install 'lowbit[report]' "
            "(or use Report.to_markdown() / print(), which need nothing)"
        ) from err
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _short(name: str, limit: int = 38) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def sqnr_chart(rows: list[LayerRow], *, threshold_db: float = 20.0, worst: int = 3) -> bytes | None:
    """Horizontal bars of each layer's output SQNR, in model order, with the threshold drawn.

    Bars are red under 15 dB, amber under 25 dB, green above; the ``worst``
    layers that add the most noise (`culprits`) get a dark outline and a bold
    label; diamonds mark weight SQNR, so a layer whose weight is fine but whose
    output is not points at its activations.

    Args:
        rows: the layer table (rows without output SQNR are left out).
        threshold_db: where to draw the dashed "acceptable" line.
        worst: how many layers to highlight.

    Returns:
        PNG bytes, or None when no row has an output SQNR (no data was given).
    """
    measured = [r for r in rows if r.output_sqnr_db is not None and r.status not in ("excluded",)]
    if not measured:
        return None
    if len(measured) > MAX_BARS:
        measured = sorted(measured, key=lambda r: r.output_sqnr_db)[:MAX_BARS]
    finite = [v for r in measured for v in (r.output_sqnr_db, r.weight_sqnr_db)
              if v is not None and math.isfinite(v)]
    top = max([*finite, threshold_db, SQNR_AMBER]) * 1.1 + 2
    worst_names = {row.name for row, _, _ in culprits(measured, n=worst)}
    fig = _figure(8.6, 1.6 + 0.3 * len(measured))
    ax = fig.add_subplot()
    ys = list(range(len(measured)))[::-1]
    for y, row in zip(ys, measured, strict=True):
        value = row.output_sqnr_db
        shown = top if value == math.inf else max(0.0, value) if math.isfinite(value) else 0.0
        highlight = row.name in worst_names
        ax.barh(y, shown, height=0.7, color=COLOURS[sqnr_class(value)],
                edgecolor="#222222" if highlight else "none", linewidth=1.4)
        label = "∞" if value == math.inf else ("NaN" if not math.isfinite(value) else f"{value:.1f}")
        inside = shown > top * 0.12
        ax.text(shown - top * 0.01 if inside else shown + top * 0.01, y, label, va="center",
                ha="right" if inside else "left", fontsize=8, color="white" if inside else "#222222",
                fontweight="bold")
        w = row.weight_sqnr_db
        if w is not None:
            ax.plot(min(w, top) if w != -math.inf else 0.0, y, marker="D", color="#222222",
                    markeredgecolor="white", markersize=6, linestyle="none")
    ax.set_yticks(ys, [_short(r.name) + ("" if r.status == "quantized" else f" [{r.status}]")
                       for r in measured], fontsize=8.5)
    for tick, row in zip(ax.get_yticklabels(), measured, strict=True):
        if row.name in worst_names:
            tick.set_fontweight("bold")
            tick.set_color(COLOURS["bad"] if row.output_sqnr_db < SQNR_RED else "#000000")
    ax.axvline(threshold_db, color="#444444", linestyle="--", linewidth=1.2)
    ax.set_xlim(0, top * 1.08)
    ax.set_ylim(-0.7, len(measured) - 0.3)
    ax.set_xlabel("SQNR of the layer's output, quantized vs float (dB, higher is better)")
    ax.set_title("Per-layer output SQNR (model order, first layer at the top)", fontsize=11, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig.legend(handles=[
        Patch(color=COLOURS["bad"], label=f"< {SQNR_RED:g} dB"),
        Patch(color=COLOURS["warn"], label=f"< {SQNR_AMBER:g} dB"),
        Patch(color=COLOURS["good"], label=f"≥ {SQNR_AMBER:g} dB"),
        Line2D([], [], marker="D", color="#222222", linestyle="none", markersize=4.5,
               label="weight SQNR"),
        Line2D([], [], color="#444444", linestyle="--", label=f"{threshold_db:g} dB threshold"),
    ], loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    return _png(fig)


def histogram_panel(hist: HistogramData, *, output_sqnr_db: float | None = None) -> bytes:
    """One layer's float input histogram (log counts) with the chosen clipping range drawn.

    The range ends are dashed red lines labelled with their values (the
    threshold T of seeds 000 / 001), the clipped tails are shaded, and the
    title gives the fraction of values clipped.

    Args:
        hist: from `collect_activation_histograms`.
        output_sqnr_db: the layer's output SQNR, shown in the title when given.

    Returns:
        PNG bytes.
    """
    counts, edges = coarsen(hist.counts, hist.edges, 96)
    fig = _figure(4.4, 2.9)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color=HIST_COLOUR, alpha=0.85, baseline=0.5)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(float(counts.max()), 1.0) * 3)
    lo_x, hi_x = float(edges[0]), float(edges[-1])
    if hist.chosen_range is not None:
        lo, hi = hist.chosen_range
        pad = 0.04 * (max(hi_x, hi) - min(lo_x, lo) or 1.0)
        left, right = min(lo_x, lo) - pad, max(hi_x, hi) + pad
        ax.axvspan(left, lo, color=CLIP_COLOUR, alpha=0.10, linewidth=0)
        ax.axvspan(hi, right, color=CLIP_COLOUR, alpha=0.10, linewidth=0)
        for x, side in ((lo, "left"), (hi, "right")):
            ax.axvline(x, color=CLIP_COLOUR, linestyle="--", linewidth=1.5)
            ax.text(x, 0.97, f" {x:.3g} ", transform=ax.get_xaxis_transform(), ha=side, va="top",
                    fontsize=8, color=CLIP_COLOUR, fontweight="bold",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
        ax.set_xlim(left, right)
        clipped = hist.clipped_fraction()
        detail = f"clipped {_percent(clipped)}"
        used = hist.levels_used()
        if used is not None and hist.levels and used < hist.levels / 2:
            detail += f" · 99.9% in {used:.0f}/{hist.levels} levels"
    else:
        detail = "no static range (dynamic / off)"
    if output_sqnr_db is not None and math.isfinite(output_sqnr_db):
        detail += f" · out {output_sqnr_db:.1f} dB"
    ax.set_title(f"{_short(hist.name, 44)}\n{detail}", fontsize=9.5, loc="left")
    ax.set_xlabel(f"input value ({hist.format.split(' ')[0] or 'float'})", fontsize=8)
    ax.set_ylabel("count (log)", fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.25)
    return _png(fig)


def _percent(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0%"
    return f"{value:.2%}" if value >= 5e-5 else "<0.01%"

"""The per-layer table as text: Markdown for files and issues, and a terminal rendering.

Rows are shown worst first: layers with a measured output SQNR from lowest
to highest, then layers without one, then layers lowbit left in float.
"""

from __future__ import annotations

import math
import re
import sys
from typing import TextIO

from lowbit.report.diagnose import hints
from lowbit.report.histograms import HistogramData
from lowbit.report.layers import LayerRow

COLUMNS = ("Layer", "Type", "Status", "Weight", "Activation", "Range", "W SQNR", "In SQNR",
           "Out SQNR", "Sensitivity", "Clipped", "Why")
_TAIL = ("excluded", "unsupported")


def fmt_db(value: float | None) -> str:
    """``"31.2"``, ``"∞"`` (identical), ``"NaN"`` (non-finite output) or ``"–"`` (not measured)."""
    if value is None:
        return "–"
    if value == math.inf:
        return "∞"
    if value == -math.inf or math.isnan(value):
        return "NaN"
    return f"{value:.1f}"


def fmt_range(value: tuple[float, float] | None) -> str:
    """``"[-1.2, 3.4]"`` or ``"–"``."""
    return "–" if value is None else f"[{value[0]:.4g}, {value[1]:.4g}]"


def fmt_fraction(value: float | None) -> str:
    """A fraction as a percentage with enough digits to tell 0.01 % from 0."""
    if value is None:
        return "–"
    if value == 0:
        return "0"
    return f"{value:.2%}" if value >= 5e-5 else "<0.01%"


def fmt_bytes(n: int | float) -> str:
    """``1536 -> "1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def _is_fraction_metric(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in ("acc", "top", "agree", "precision", "recall", "f1"))


def fmt_metric(name: str, value: float | None) -> str:
    """Accuracy-like metrics (by name) in [0, 1] as percentages, others with 4 significant digits.

    Example:
        >>> fmt_metric("accuracy", 0.9123), fmt_metric("loss", 0.9123)
        ('91.23%', '0.9123')
    """
    if value is None:
        return "–"
    if _is_fraction_metric(name) and 0.0 <= value <= 1.0:
        return f"{value:.2%}"
    return f"{value:.4g}"


def metric_delta(name: str, before: float, after: float) -> str:
    """``"-0.40 points"`` for accuracy-like metrics, ``"+0.012 (+3.1%)"`` otherwise."""
    delta = after - before
    if not math.isfinite(delta):
        return "–"
    if _is_fraction_metric(name) and 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0:
        return f"{delta * 100:+.2f} points"
    relative = f" ({delta / abs(before):+.1%})" if before else ""
    return f"{delta:+.4g}{relative}"


def short_spec(text: str | None) -> str:
    """A spec string for narrow terminals: ``"int8 per-channel(axis=0) sym"`` -> ``"int8 channel sym"``."""
    if not text:
        return "float"
    text = re.sub(r"per-(\w+)\(axis=-?\d+\)", r"\1", text)
    text = re.sub(r"per-group\((\d+)[^)]*\)", r"g\1", text)
    return text.replace("per-group", "group").replace("per-", "")


def sort_worst_first(rows: list[LayerRow]) -> list[LayerRow]:
    """Measured rows by output SQNR ascending, then unmeasured ones, then excluded / unsupported.

    Example:
        >>> rows = [LayerRow("a", "Linear", output_sqnr_db=40.0), LayerRow("b", "Linear", output_sqnr_db=9.0)]
        >>> [r.name for r in sort_worst_first(rows)]
        ['b', 'a']
    """
    def key(item: tuple[int, LayerRow]):
        index, row = item
        if row.status in _TAIL:
            return (2, 0.0, index)
        if row.output_sqnr_db is None:
            return (1, 0.0, index)
        return (0, row.output_sqnr_db, index)
    return [row for _, row in sorted(enumerate(rows), key=key)]


def row_cells(row: LayerRow, hist: HistogramData | None = None) -> list[str]:
    """One row as the strings of `COLUMNS`."""
    sens = "–" if row.sensitivity is None else f"{row.sensitivity:.4g}"
    clipped = row.clipped_fraction
    if clipped is None and hist is not None:
        clipped = hist.clipped_fraction()
    name = row.name + (f" (+{row.fused_with})" if row.fused_with else "")
    return [
        name, row.module_type, row.status, row.weight or "float", row.activation or "float",
        fmt_range(row.act_range), fmt_db(row.weight_sqnr_db), fmt_db(row.input_sqnr_db),
        fmt_db(row.output_sqnr_db), sens, fmt_fraction(clipped), "; ".join(hints(row, hist)),
    ]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(rows: list[LayerRow], histograms: dict[str, HistogramData] | None = None, *,
                 worst_first: bool = True) -> str:
    """The per-layer table as Markdown.

    Args:
        rows: from `layer_table`.
        histograms: input histograms by layer name (adds the clipped fraction and reasons).
        worst_first: sort with `sort_worst_first`; False keeps the model's order.

    Returns:
        A Markdown table (GitHub flavour).

    Example:
        >>> format_table([LayerRow("fc", "Linear", output_sqnr_db=31.0)]).splitlines()[2][:27]
        '| fc | Linear | quantized |'
    """
    histograms = histograms or {}
    ordered = sort_worst_first(rows) if worst_first else list(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in ordered:
        cells = row_cells(row, histograms.get(row.name))
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def format_plain(rows: list[LayerRow], histograms: dict[str, HistogramData] | None = None, *,
                 worst_first: bool = True, max_why: int = 60) -> str:
    """The per-layer table as aligned plain text (for terminals without ``rich``).

    Example:
        >>> format_plain([LayerRow("fc", "Linear", output_sqnr_db=31.0)]).split()[0]
        'Layer'
    """
    histograms = histograms or {}
    ordered = sort_worst_first(rows) if worst_first else list(rows)
    table = [list(COLUMNS)]
    for row in ordered:
        cells = row_cells(row, histograms.get(row.name))
        if len(cells[-1]) > max_why:
            cells[-1] = cells[-1][: max_why - 1] + "…"
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


_RICH_STYLE = {"bad": "bold red", "warn": "yellow", "good": "green", "": ""}
TERMINAL_COLUMNS = ("Layer", "Weight", "Activation", "Range", "W SQNR", "In SQNR", "Out SQNR",
                    "Sensitivity", "Clipped", "Why")


def print_table(rows: list[LayerRow], histograms: dict[str, HistogramData] | None = None, *,
                file: TextIO | None = None, title: str = "lowbit: per-layer error (worst first)") -> None:
    """Print the table to a terminal: coloured with ``rich`` when it is installed, plain otherwise.

    The terminal view drops the Type and Status columns (the status shows in
    Why) and shortens the specs; `format_table` has everything.

    Example:
        >>> print_table(layer_table(qmodel, model, batches))  # doctest: +SKIP
    """
    from lowbit.report.diagnose import sqnr_class

    histograms = histograms or {}
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        print(format_plain(rows, histograms), file=file)
        return
    console = Console(file=file)
    if not console.is_terminal:
        console = Console(file=file, width=160)
    show_sens = any(r.sensitivity is not None for r in rows)
    columns = [c for c in TERMINAL_COLUMNS if show_sens or c != "Sensitivity"]
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        wrap = column in ("Why",)
        table.add_column(column, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis",
                         justify="right" if "SQNR" in column or column == "Clipped" else "left",
                         min_width=24 if wrap else None)
    for row in sort_worst_first(rows):
        cells = dict(zip(COLUMNS, row_cells(row, histograms.get(row.name)), strict=True))
        cells["Weight"], cells["Activation"] = short_spec(row.weight), short_spec(row.activation)
        styles = {
            "W SQNR": _RICH_STYLE[sqnr_class(row.weight_sqnr_db)],
            "In SQNR": _RICH_STYLE[sqnr_class(row.input_sqnr_db)],
            "Out SQNR": _RICH_STYLE[sqnr_class(row.output_sqnr_db)],
        }
        dim = row.status in (*_TAIL, "kept")
        rendered = []
        for column in columns:
            style = "dim" if dim and column not in styles else styles.get(column, "")
            text = escape(cells[column])
            rendered.append(f"[{style}]{text}[/]" if style else text)
        table.add_row(*rendered)
    console.print(table)

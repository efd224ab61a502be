"""Turning per-layer numbers into reasons: which layer loses accuracy, and why.

A user whose accuracy dropped needs a sentence, not a column of decibels.
Each rule below reads numbers the table already has:

- weight SQNR low → the weight format / granularity is too coarse for this layer;
- many inputs outside the chosen range → the range clips (saturates) too much;
- the bulk of the inputs uses few levels → outliers stretched the range
  (the non-saturated case of seeds 000 / 001: a threshold T would help);
- output SQNR about equal to input SQNR → the error arrived from earlier layers.

Layers are ranked by the noise they *add* (relative noise power at their
output minus at their input), not by their output SQNR, which only ever falls
along the network and would always blame the last layer.
"""

from __future__ import annotations

import math

from lowbit.report.histograms import HistogramData
from lowbit.report.layers import LayerRow

SQNR_RED = 15.0  # dB: below this a tensor is mostly noise
SQNR_AMBER = 25.0  # dB: below this int8 is not doing its usual job (30–45 dB)
CLIP_WARN = 1e-3  # fraction of inputs clipped worth a mention
LEVELS_WARN = 1 / 8  # fraction of the format's levels the central 99.9 % should at least span


def sqnr_class(value: float | None) -> str:
    """``"bad"`` under 15 dB, ``"warn"`` under 25 dB, ``"good"`` otherwise, ``""`` for None."""
    if value is None:
        return ""
    if value < SQNR_RED:
        return "bad"
    return "warn" if value < SQNR_AMBER else "good"


def noise_ratio(sqnr: float | None) -> float | None:
    """Relative noise power ``10^(−SQNR/10)`` (0 for +inf, +inf for −inf)."""
    if sqnr is None:
        return None
    if sqnr == math.inf:
        return 0.0
    if sqnr == -math.inf:
        return math.inf
    return 10.0 ** (-sqnr / 10.0)


def added_noise(row: LayerRow) -> float | None:
    """Relative noise power this layer adds: at its output minus at its input."""
    out, inp = noise_ratio(row.output_sqnr_db), noise_ratio(row.input_sqnr_db)
    if out is None:
        return None
    if out == math.inf:
        return math.inf
    return out - (inp or 0.0)


WIDE_RANGE = 4.0  # a chosen range this many times wider than the data seen points at calibration


def _range_hints(hist: HistogramData) -> list[str]:
    """What the histogram says about the chosen range: too wide (outliers) or too narrow (clipping)."""
    if hist.chosen_range is None:
        return []
    lo, hi = hist.chosen_range
    span = hist.max - hist.min
    if span > 0 and hi - lo > WIDE_RANGE * span:
        return [f"the range [{lo:.3g}, {hi:.3g}] is {(hi - lo) / span:.0f}× wider than these inputs "
                f"[{hist.min:.3g}, {hist.max:.3g}]: the calibration data held outliers or differs from "
                "this data; calibrate on representative data, or clip with a percentile or entropy range"]
    used = hist.levels_used()
    if used is not None and hist.levels and used < hist.levels * LEVELS_WARN:
        return [f"99.9% of the inputs fall in {used:.0f} of {hist.levels} levels: outliers set the "
                "range; choose a threshold T (entropy, MSE or percentile calibration)"]
    found = []
    clipped = hist.clipped_fraction()
    if clipped is not None and clipped > CLIP_WARN:
        found.append(f"range clips {clipped:.2%} of the inputs: the threshold cuts into the data; "
                     "widen it (a higher percentile, or min-max calibration)")
    if hist.min >= 0 and lo < 0 and abs(lo + hi) <= 1e-6 * hi:
        found.append("the inputs are never negative but the range is symmetric: half of the levels "
                     "go unused; an unsigned or asymmetric format doubles the resolution")
    return found


def _weight_advice(spec_text: str) -> str:
    if "per-tensor" in spec_text:
        return "use per-channel scales or more bits"
    if "per-channel" in spec_text:
        return "use groups (e.g. 128 or 32) or more bits"
    if "group" in spec_text:
        return "use smaller groups or more bits, or keep this layer at int8 / fp16"
    return "use more bits or keep this layer in float"


def hints(row: LayerRow, hist: HistogramData | None = None) -> list[str]:
    """Short reasons for one layer's error, most specific first.

    Args:
        row: the layer's table row.
        hist: its input histogram with the chosen range, if collected.

    Returns:
        Sentences (possibly none) a person can act on.

    Example:
        >>> hints(LayerRow("fc", "Linear", weight="int8 per-tensor sym", weight_sqnr_db=12.0))[0]
        'weight error 12 dB: use per-channel scales or more bits'
    """
    if row.status in ("kept", "excluded", "unsupported", "functional"):
        return [row.reason] if row.reason else []
    found = [row.reason] if row.status == "disabled" and row.reason else []
    if row.nonfinite:
        found.append("NaN / Inf in the quantized output: a scale overflowed or the range is empty")
    weight = row.weight_sqnr_db
    if weight is not None and weight < SQNR_AMBER:
        found.append(f"weight error {weight:.0f} dB: {_weight_advice(row.weight or '')}")
    inp, out = row.input_sqnr_db, row.output_sqnr_db
    if (inp is not None and out is not None and math.isfinite(out) and out < SQNR_AMBER
            and math.isfinite(inp) and inp - out < 3.0):
        # The main reason comes first: this layer adds little of its own.
        found.insert(0, f"the error arrives with the input ({inp:.0f} dB): look at earlier layers")
    # Range advice only where the layer is in trouble: a healthy layer's MSE range
    # clips a little on purpose.
    if hist is not None and (out is None or out < SQNR_AMBER):
        found += _range_hints(hist)
    return found


def culprits(rows: list[LayerRow], histograms: dict[str, HistogramData] | None = None,
             n: int = 3, min_share: float = 0.01) -> list[tuple[LayerRow, float, list[str]]]:
    """The ``n`` layers that add the most noise, with their reasons.

    Args:
        rows: the layer table (with input / output SQNR measured).
        histograms: input histograms by layer name, if collected.
        n: how many to return at most.
        min_share: leave out layers adding less than this fraction of the
            worst layer's noise (a 45 dB layer next to a 9 dB one is not news).

    Returns:
        ``(row, added noise ratio, hints)``, worst first; only layers that add noise.

    Example:
        >>> rows = [LayerRow("a", "Linear", input_sqnr_db=math.inf, output_sqnr_db=30.0),
        ...         LayerRow("b", "Linear", input_sqnr_db=30.0, output_sqnr_db=12.0)]
        >>> [r.name for r, _, _ in culprits(rows)]
        ['b', 'a']
    """
    histograms = histograms or {}
    scored = []
    for row in rows:
        if row.status not in ("quantized", "disabled", "kept"):
            continue
        added = added_noise(row)
        if added is not None and added > 0:
            scored.append((row, added, hints(row, histograms.get(row.name))))
    scored.sort(key=lambda item: -item[1])
    if scored and math.isfinite(scored[0][1]):
        scored = [item for item in scored if item[1] >= min_share * scored[0][1]]
    return scored[:n]


def all_healthy(rows: list[LayerRow]) -> bool:
    """Every measured quantized layer keeps its output SQNR at or above 25 dB."""
    measured = [r.output_sqnr_db for r in rows
                if r.status in ("quantized", "disabled", "kept") and r.output_sqnr_db is not None]
    return bool(measured) and min(measured) >= SQNR_AMBER


def added_db_text(row: LayerRow) -> str:
    """``"adds noise at 18.2 dB"``: the added noise expressed as an SQNR, for prose."""
    added = added_noise(row)
    if added is None:
        return ""
    if added == math.inf:
        return "produces NaN / Inf"
    if added <= 0:
        return "adds no noise"
    return f"adds noise at {-10.0 * math.log10(added):.1f} dB"

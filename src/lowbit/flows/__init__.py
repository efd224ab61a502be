"""The only code that walks a model: fuse, prepare, calibrate, convert, and the analyses on top."""

from __future__ import annotations

from lowbit.flows.api import quantize
from lowbit.flows.bias_correction import correct_bias
from lowbit.flows.calibrate import CalibrationError, calibrate, feed, run_batch
from lowbit.flows.convert import convert
from lowbit.flows.fuse import fuse
from lowbit.flows.prepare import LowbitWarning, QuantState, prepare, quantizer_modules

__all__ = [
    "CalibrationError",
    "LowbitWarning",
    "QuantState",
    "calibrate",
    "convert",
    "correct_bias",
    "feed",
    "fuse",
    "prepare",
    "quantize",
    "quantizer_modules",
    "run_batch",
]

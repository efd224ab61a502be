"""The only code that walks a model: fuse, prepare, calibrate, convert, and the analyses on top."""

from __future__ import annotations

from lowbit.flows.api import quantize
from lowbit.flows.bias_correction import correct_bias
from lowbit.flows.calibrate import CalibrationError, calibrate, feed, run_batch
from lowbit.flows.convert import convert
from lowbit.flows.fuse import fuse
from lowbit.flows.integer import to_integer
from lowbit.flows.mixed_precision import MixedPrecisionError, MixedPrecisionResult, auto_mixed_precision
from lowbit.flows.prepare import LowbitWarning, QuantState, prepare, quantizer_modules
from lowbit.flows.qat import prepare_qat, qat_recipe
from lowbit.flows.qat_tools import load_qat_checkpoint, rounding_mismatch, save_qat_checkpoint
from lowbit.flows.sensitivity import (
    LayerSensitivity,
    SensitivityError,
    SensitivityResult,
    analyze_sensitivity,
)
from lowbit.flows.smooth import smooth, smoothing_factors

__all__ = [
    "CalibrationError",
    "LayerSensitivity",
    "LowbitWarning",
    "MixedPrecisionError",
    "MixedPrecisionResult",
    "QuantState",
    "SensitivityError",
    "SensitivityResult",
    "analyze_sensitivity",
    "auto_mixed_precision",
    "calibrate",
    "convert",
    "correct_bias",
    "feed",
    "fuse",
    "load_qat_checkpoint",
    "prepare",
    "prepare_qat",
    "qat_recipe",
    "quantize",
    "quantizer_modules",
    "rounding_mismatch",
    "run_batch",
    "save_qat_checkpoint",
    "smooth",
    "smoothing_factors",
    "to_integer",
]

"""Errors raised by lowbit.

Every error says what was wrong and what to do about it. Catch
:class:`LowbitError` to handle all of them.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class FormatError(LowbitError, ValueError):
    """A numeric format was asked for that does not exist or is out of range."""


class QParamsError(LowbitError, ValueError):
    """Scales or zero points are invalid (non-positive, non-finite, wrong shape)."""


class InputError(LowbitError, ValueError):
    """A tensor given to lowbit cannot be quantized as it is (NaN/Inf, empty, wrong shape)."""


class GranularityError(LowbitError, ValueError):
    """An axis, group size or block shape does not fit the tensor."""


class ObserverError(LowbitError, RuntimeError):
    """An observer was used before it saw data, or with incompatible state."""


class CalibrationError(LowbitError, RuntimeError):
    """Calibration could not produce ranges (no data, or data the model cannot take)."""


class DistributedError(LowbitError, RuntimeError):
    """Observer state could not be synchronised across processes."""

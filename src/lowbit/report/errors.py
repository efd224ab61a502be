"""`ReportError`: the report could not be computed from what it was given."""

from __future__ import annotations

from lowbit.errors import LowbitError


class ReportError(LowbitError, ValueError):
    """A report input is unusable (no data, mismatched outputs, NaN in a reference, a missing extra).

    The message says what was wrong and what to pass instead.
    """

"""Errors raised by `lowbit.zoo`.

Every message names the file or package involved and the exact command that
fixes it (a ``pip install`` or an ``apt-get install``).
"""

from __future__ import annotations

from lowbit.errors import LowbitError


class ZooError(LowbitError, RuntimeError):
    """Base class of every error `lowbit.zoo` raises on purpose."""


class MissingResourceError(ZooError, ImportError):
    """A Python package, model file or data set the zoo needs is not installed."""


class CorruptDataError(ZooError, ValueError):
    """A data or model file exists but its contents are not what the format says."""

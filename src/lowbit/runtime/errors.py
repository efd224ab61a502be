"""Errors of the runtime layer."""

from __future__ import annotations

from lowbit.errors import LowbitError


class RuntimeLayerError(LowbitError, RuntimeError):
    """An exported model cannot be loaded or run (missing ONNX Runtime, bad file, wrong inputs)."""

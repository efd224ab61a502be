"""Errors of the export layer."""

from __future__ import annotations

from lowbit.errors import LowbitError


class ExportError(LowbitError, ValueError):
    """A model cannot be written to ONNX as asked (uncalibrated, unsupported format or layer)."""

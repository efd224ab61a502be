"""lowbit: turn a trained FP32 PyTorch model into a low-bit one and prove it still works.

Layers (each imports only from those above it): ``formats`` → ``primitives`` →
``observers``. See ``shared/DESIGN.md`` for the whole picture.
"""

from __future__ import annotations

from lowbit import formats, observers, primitives
from lowbit.errors import LowbitError

__version__ = "0.1.0"

__all__ = [
    "LowbitError",
    "__version__",
    "formats",
    "observers",
    "primitives",
]

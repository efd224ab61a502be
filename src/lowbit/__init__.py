"""lowbit: turn a trained FP32 PyTorch model into a low-bit one and prove it still works.

    import lowbit
    qmodel = lowbit.quantize(model, "x86", calibrate=[x for x, _ in loader])

Layers (each imports only from those above it): ``formats`` → ``primitives`` →
``observers`` → ``recipes`` → ``nn`` → ``flows`` → ``report``. See
``shared/DESIGN.md`` for the whole picture.
"""

from __future__ import annotations

from lowbit import export, flows, formats, nn, observers, primitives, recipes, report, runtime
from lowbit.errors import LowbitError
from lowbit.flows import (
    analyze_sensitivity,
    auto_mixed_precision,
    calibrate,
    convert,
    fuse,
    prepare,
    prepare_qat,
    qat_recipe,
    quantize,
    to_integer,
)
from lowbit.recipes import QuantSpec, Recipe, Rule, list_presets, preset

__version__ = "0.1.0"

__all__ = [
    "LowbitError",
    "QuantSpec",
    "Recipe",
    "Rule",
    "__version__",
    "analyze_sensitivity",
    "auto_mixed_precision",
    "calibrate",
    "convert",
    "export",
    "flows",
    "formats",
    "fuse",
    "list_presets",
    "nn",
    "observers",
    "prepare",
    "prepare_qat",
    "preset",
    "primitives",
    "qat_recipe",
    "quantize",
    "recipes",
    "report",
    "runtime",
    "to_integer",
]

"""Quantized modules: the `Quantizer` and quantized Linear / Conv / Embedding / matmul.

Nothing here walks a model; `lowbit.flows` does that.
"""

from __future__ import annotations

from lowbit.nn.float_cast import FloatKept
from lowbit.nn.functional import QuantAdd, QuantCat, QuantMatmul, QuantPool
from lowbit.nn.modules import (
    QUANTIZED_MODULES,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantLinear,
    QuantMixin,
    quantized_version,
)
from lowbit.nn.quantizer import QUANTIZER_MODES, Quantizer, build_observer

__all__ = [
    "QUANTIZED_MODULES",
    "QUANTIZER_MODES",
    "FloatKept",
    "QuantAdd",
    "QuantCat",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantMatmul",
    "QuantMixin",
    "QuantPool",
    "Quantizer",
    "build_observer",
    "quantized_version",
]

"""Pure tensor functions of quantization: parameters, the affine map, rounding, STE.

Nothing here keeps state. See DESIGN.md, "The core equations".
"""

from __future__ import annotations

from lowbit.primitives.dynamic import dynamic_quantize
from lowbit.primitives.fake_quantize import fake_quantize, lsq_grad_scale
from lowbit.primitives.fixed_point import (
    REQUANT_MODES,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from lowbit.primitives.granularity import (
    Granularity,
    as_granularity,
    per_channel,
    per_group,
    per_tensor,
    per_token,
)
from lowbit.primitives.qparams import (
    MIN_SCALE,
    QParams,
    check_finite,
    choose_qparams,
    qparams_from_minmax,
)
from lowbit.primitives.quantize import dequantize, quantize
from lowbit.primitives.rounding import ROUNDING_MODES, round_tensor

__all__ = [
    "MIN_SCALE",
    "REQUANT_MODES",
    "ROUNDING_MODES",
    "Granularity",
    "QParams",
    "as_granularity",
    "check_finite",
    "choose_qparams",
    "dequantize",
    "dynamic_quantize",
    "fake_quantize",
    "lsq_grad_scale",
    "multiply_by_quantized_multiplier",
    "per_channel",
    "per_group",
    "per_tensor",
    "per_token",
    "qparams_from_minmax",
    "quantize",
    "quantize_multiplier",
    "requantize",
    "round_tensor",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]

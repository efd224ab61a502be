"""Dynamic quantization: parameters computed from the tensor itself at run time.

`dynamic_quantize` with its defaults is ONNX DynamicQuantizeLinear (uint8,
per-tensor, asymmetric, float32 arithmetic exactly as the operator defines
it). Other formats and per-token granularity serve dynamic activation
quantization of LLM-style layers (one scale per token row).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.errors import InputError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives.granularity import Granularity, as_granularity, onnx_layout, reduce_minmax
from lowbit.primitives.qparams import QParams, check_finite, qparams_from_minmax
from lowbit.primitives.quantize import quantize


def dynamic_quantize(
    x: Tensor,
    fmt: QFormat | str = "uint8",
    granularity: Granularity | str = "tensor",
    *,
    symmetric: bool = False,
) -> tuple[Tensor, QParams]:
    """Quantize ``x`` with parameters derived from ``x`` itself.

    Args:
        x: float tensor, finite and non-empty.
        fmt: target format; ``"uint8"`` with ``symmetric=False`` and per-tensor
            granularity reproduces ONNX DynamicQuantizeLinear bit for bit.
        granularity: ``"tensor"`` or ``"token"`` (one scale per row of the last
            dimension), or any `Granularity`.
        symmetric: zero point fixed at 0 (signed formats).

    Returns:
        ``(codes, qparams)``.

    Example:
        >>> q, p = dynamic_quantize(torch.tensor([-1.0, 0.0, 2.0]))
        >>> q.tolist(), int(p.zero_point)
        ([0, 85, 255], 85)
    """
    fmt = get_format(fmt)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError("dynamic_quantize needs a float tensor")
    if x.numel() == 0:
        raise InputError("cannot quantize an empty tensor dynamically: there is no range")
    gran = as_granularity(granularity)
    axis, block = onnx_layout(x.shape, gran)
    lo, hi = reduce_minmax(x.detach().float(), axis, block)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        check_finite(x)
    if fmt.kind == "int" and not fmt.signed and not symmetric:
        scale, zero_point = _onnx_dynamic_qparams(lo, hi, fmt)
    else:
        scale, zero_point = qparams_from_minmax(lo, hi, fmt, symmetric=symmetric)
    params = QParams(scale, zero_point, fmt, axis, block)
    codes = quantize(x, scale, zero_point, fmt, axis=axis, block_size=block)
    return codes, params


def _onnx_dynamic_qparams(lo: Tensor, hi: Tensor, fmt: QFormat) -> tuple[Tensor, Tensor]:
    """DynamicQuantizeLinear's parameter formulas, in float32 as the operator computes them."""
    qmin, qmax = float(fmt.qmin), float(fmt.qmax)
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    span = hi - lo
    # ONNX Runtime uses scale 1 for an all-zero input instead of dividing by zero.
    scale = torch.where(span == 0, torch.ones_like(span), span / (qmax - qmin))
    initial = qmin - lo / scale
    zero_point = torch.round(torch.clamp(initial, qmin, qmax)).to(torch.int32)
    return scale, zero_point

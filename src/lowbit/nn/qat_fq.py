"""`qat_fake_quantize`: the training-speed twin of `lowbit.primitives.fake_quantize`.

Forward values are computed with the same operations in the same order as
`fake_quantize` (``x / s``, round, ``+ z``, clamp, ``− z``, ``· s`` in float32),
so they are bit-identical to it and to ``dequantize(quantize(x))``: a trained
model converts without changing a single output. The backward pass is cheaper:

- the forward keeps a one-byte "inside the range" mask instead of recomputing
  rounding and saturation;
- with ``out = s · (q − z)`` the LSQ scale gradient per element is
  ``(q − z) − v · inside`` (``v = x / s``) = ``(out − x · inside) / s``, so the
  sum runs over ``grad · (out − x · inside)`` and is divided by ``s`` once per scale;
- the LSQ+ offset gradient ``−s`` on saturated elements is
  ``−s · (Σ grad − Σ grad · inside)``: two reductions, no new tensor.

``out`` and ``x`` are usually kept alive by the neighbouring layers anyway, so
QAT memory grows only by the mask. A bf16 / fp16 output (autocast) is itself
rounded, so for those the backward pass recomputes the float32 values before
forming the scale gradient. Integer formats only; float formats use
`fake_quantize`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.formats.qformat import QFormat
from lowbit.primitives.fake_quantize import fake_quantize
from lowbit.primitives.granularity import expand_to, reduce_to
from lowbit.primitives.rounding import round_tensor


def qat_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, fmt: QFormat, *,
                      axis: int | None = None, block_size: int | None = None,
                      rounding: str = "half_even", grad_scale: float = 1.0) -> Tensor:
    """Fake quantization with STE / LSQ / LSQ+ gradients (values as `fake_quantize`).

    Args:
        x: float tensor.
        scale: positive finite scale(s) in ONNX layout (the caller guarantees validity).
        zero_point: zero point(s) like ``scale``; float (LSQ+, rounded here) or integer.
        fmt: an integer `QFormat`.
        axis, block_size: the layout of ``scale``.
        rounding: the backend's rounding mode.
        grad_scale: factor on the scale / zero-point gradients (LSQ's 1/sqrt(N·qmax)).

    Returns:
        A tensor like ``x`` holding representable values.

    Example:
        >>> from lowbit.formats import get_format
        >>> qat_fake_quantize(torch.tensor([0.26, 5.0]), torch.tensor(0.5), torch.tensor(0),
        ...                   get_format("int4"))
        tensor([0.0000, 3.5000])
    """
    if fmt.kind != "int":
        return fake_quantize(x, scale, zero_point, fmt, axis=axis, block_size=block_size,
                             rounding=rounding, grad_scale=grad_scale)
    return _QATFakeQuantize.apply(x, scale, zero_point, fmt, axis, block_size, rounding,
                                  float(grad_scale))


def _forward_values(x: Tensor, scale: Tensor, zero_point: Tensor, fmt: QFormat,
                    axis: int | None, block_size: int | None, rounding: str) -> tuple[Tensor, Tensor]:
    """float32 ``s · (clamp(round(x / s) + z) − z)`` and the "inside the range" mask."""
    s = expand_to(scale.detach().float(), x.shape, axis, block_size)
    zq = torch.round(zero_point.detach().float()).clamp(float(fmt.qmin), float(fmt.qmax))
    z = expand_to(zq, x.shape, axis, block_size)
    code = torch.div(x.float(), s)
    code = code.round_() if rounding == "half_even" else round_tensor(code, rounding)
    code = code.add_(z)
    inside = (code >= fmt.qmin) & (code <= fmt.qmax)
    return code.clamp_(float(fmt.qmin), float(fmt.qmax)).sub_(z).mul_(s), inside


class _QATFakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, fmt, axis, block_size, rounding, grad_scale):
        out, inside = _forward_values(x, scale, zero_point, fmt, axis, block_size, rounding)
        out = out.to(x.dtype)
        ctx.save_for_backward(x, out, inside, scale, zero_point)
        ctx.meta = (fmt, axis, block_size, rounding, grad_scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out, inside, scale, zero_point = ctx.saved_tensors
        fmt, axis, block_size, rounding, grad_scale = ctx.meta
        if out.dtype != torch.float32 and ctx.needs_input_grad[1]:
            # A bf16 / fp16 output is itself rounded; the scale gradient needs the exact one.
            out, _ = _forward_values(x, scale, zero_point, fmt, axis, block_size, rounding)
        grad_x = grad_s = grad_z = None
        grad_inside = grad.float() * inside
        if ctx.needs_input_grad[0]:
            grad_x = grad_inside.to(x.dtype)
        if ctx.needs_input_grad[1]:
            outside_part = torch.where(inside, out.float() - x.float(), out.float())
            total = reduce_to(grad.float() * outside_part, tuple(scale.shape), axis, block_size)
            grad_s = (total / scale.detach().float() * grad_scale).to(scale.dtype)
        if ctx.needs_input_grad[2]:
            saturated = reduce_to(grad.float(), tuple(zero_point.shape), axis, block_size) - \
                reduce_to(grad_inside, tuple(zero_point.shape), axis, block_size)
            grad_z = (-scale.detach().float() * saturated * grad_scale).to(zero_point.dtype)
        return grad_x, grad_s, grad_z, None, None, None, None, None

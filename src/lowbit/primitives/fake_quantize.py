"""`fake_quantize`: quantize then dequantize in float, differentiable.

Gradients:

- input: the straight-through estimator, passed where the code is inside
  [qmin, qmax] and zero where it saturates;
- scale: LSQ (Esser et al. 2020): ``round(x/s) − x/s`` inside the range,
  ``qmin − z`` / ``qmax − z`` where it saturates, times ``grad_scale``
  (LSQ uses 1 / sqrt(N · qmax));
- zero point: LSQ+ (Bhalgat et al. 2020): 0 inside, ``−s`` where it saturates.

The forward value equals ``dequantize(quantize(x))`` bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lowbit.errors import FormatError, QParamsError
from lowbit.formats import floats
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives import kernels
from lowbit.primitives.granularity import expand_to, normalize_axis, reduce_to, scale_shape
from lowbit.primitives.quantize import chunks
from lowbit.primitives.rounding import check_rounding, round_tensor


def lsq_grad_scale(numel_per_scale: int, fmt: QFormat | str) -> float:
    """LSQ's gradient scale 1 / sqrt(N · qmax) for N elements sharing one scale."""
    fmt = get_format(fmt)
    return 1.0 / math.sqrt(max(numel_per_scale, 1) * max(float(fmt.qmax), 1.0))


def fake_quantize(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | float | None = None,
    fmt: QFormat | str = "int8",
    *,
    axis: int | None = None,
    block_size: int | None = None,
    rounding: str = "half_even",
    grad_scale: float = 1.0,
) -> Tensor:
    """Simulate quantization in float with STE / LSQ / LSQ+ gradients.

    Args:
        x: float tensor.
        scale: positive scale(s) in the layout of :func:`quantize`; may require grad.
        zero_point: zero point(s) shaped like ``scale``; may be a float tensor
            that requires grad (LSQ+), rounded and clamped in the forward pass.
        fmt: target format.
        axis, block_size: per-axis / blocked layout as in :func:`quantize`.
        rounding: rounding mode of the deployment backend.
        grad_scale: factor on the scale and zero-point gradients (see `lsq_grad_scale`).

    Returns:
        Tensor like ``x`` holding representable values.

    Example:
        >>> x = torch.tensor([0.26, 5.0], requires_grad=True)
        >>> fake_quantize(x, 0.5, 0, "int4")
        tensor([0.0000, 3.5000], grad_fn=<_FakeQuantizeBackward>)
    """
    fmt = get_format(fmt)
    check_rounding(rounding)
    if fmt.kind == "binary":
        raise FormatError("fake_quantize covers uniform and float formats; use codebook.binarize")
    if fmt.kind == "float" and rounding != "half_even":
        raise FormatError(f"{fmt.name} casts round half to even; use rounding='half_even'")
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if zero_point is None:
        zero_point = torch.zeros_like(scale)
    zero_point = torch.as_tensor(zero_point, device=x.device).to(torch.float32)
    if axis is not None:
        axis = normalize_axis(axis, x.dim())
        expected = scale_shape(x.shape, axis, block_size)
        if tuple(scale.shape) != expected or tuple(zero_point.shape) != expected:
            raise QParamsError(
                f"scale {tuple(scale.shape)} / zero_point {tuple(zero_point.shape)} do not fit "
                f"axis={axis}, block_size={block_size} on input {tuple(x.shape)}; need {expected}"
            )
    elif scale.numel() != 1 or zero_point.numel() != 1:
        raise QParamsError("per-tensor fake_quantize takes one scale and one zero point; pass axis=")
    if not bool(torch.isfinite(scale.detach()).all()) or bool((scale.detach() <= 0).any()):
        raise QParamsError(
            "scale must stay positive and finite; a learned scale collapsed or exploded. "
            "Lower the learning rate of the quantizer parameters or clamp them after each step"
        )
    return _FakeQuantize.apply(x, scale, zero_point, fmt, axis, block_size, rounding, grad_scale)


def _forward_chunk(x, s, z, fmt, rounding, out):
    value = torch.div(x.float(), s)
    if fmt.kind == "float":
        out.copy_(floats.round_to_format(value, fmt, saturate=True).mul_(s))
        return
    code = round_tensor(value, rounding).add_(z).clamp_(float(fmt.qmin), float(fmt.qmax))
    out.copy_(code.sub_(z).mul_(s))


def _local_terms(x, s, z, fmt, rounding):
    """Per element: value x/s, rounded value, and the saturation masks."""
    value = x.float() / s
    if fmt.kind == "float":
        rounded = floats.round_to_format(value, fmt, saturate=True)
        return value, rounded, value < -fmt.max_finite, value > fmt.max_finite
    rounded = round_tensor(value, rounding)
    code = rounded + z
    return value, rounded, code < fmt.qmin, code > fmt.qmax


class _FakeQuantize(torch.autograd.Function):
    # Only the input and parameters are saved; the backward pass recomputes the
    # masks, so QAT memory stays that of the float model.
    @staticmethod
    def forward(ctx, x, scale, zero_point, fmt, axis, block_size, rounding, grad_scale):
        s = expand_to(scale, x.shape, axis, block_size)
        z = torch.zeros((), device=x.device)
        if fmt.kind != "float":
            zq = torch.round(zero_point).clamp(float(fmt.qmin), float(fmt.qmax))
            z = expand_to(zq, x.shape, axis, block_size)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        # One fused pass when numba is installed and covers the layout (the same float32
        # steps, so the same bits); the torch chunks otherwise.
        fused = fmt.kind != "float" and rounding == "half_even" and kernels.fake_quantize_into(
            x, s, z, fmt.qmin, fmt.qmax, out)
        if not fused:
            for xs, ss, zs, os in chunks(x, s, z, out):
                _forward_chunk(xs, ss, zs, fmt, rounding, os)
        ctx.save_for_backward(x, scale, zero_point)
        ctx.meta = (fmt, axis, block_size, rounding, float(grad_scale))
        return out

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point = ctx.saved_tensors
        fmt, axis, block_size, rounding, grad_scale = ctx.meta
        s = expand_to(scale, x.shape, axis, block_size)
        if fmt.kind == "float":
            z = torch.zeros((), device=x.device)
            low, high = -fmt.max_finite, fmt.max_finite
        else:
            zq = torch.round(zero_point).clamp(float(fmt.qmin), float(fmt.qmax))
            z = expand_to(zq, x.shape, axis, block_size)
            # Saturated codes contribute (qmin - z) or (qmax - z) steps of size s.
            low, high = fmt.qmin - z, fmt.qmax - z
        value, rounded, below, above = _local_terms(x, s, z, fmt, rounding)
        grad = grad.float()
        inside = ~(below | above)
        grad_x = grad_scale_out = grad_zp = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad * inside).to(x.dtype)
        if ctx.needs_input_grad[1]:
            low = torch.as_tensor(low, device=x.device, dtype=torch.float32)
            high = torch.as_tensor(high, device=x.device, dtype=torch.float32)
            local = torch.where(below, low, torch.where(above, high, rounded - value))
            grad_scale_out = reduce_to(grad * local, tuple(scale.shape), axis, block_size)
            grad_scale_out = grad_scale_out * grad_scale
        if ctx.needs_input_grad[2]:
            local = torch.where(inside, torch.zeros_like(value), -s.expand_as(value))
            grad_zp = reduce_to(grad * local, tuple(zero_point.shape), axis, block_size)
            grad_zp = grad_zp * grad_scale
        return grad_x, grad_scale_out, grad_zp, None, None, None, None, None

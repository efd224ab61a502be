"""Accumulator overflow: int32 sums and the int16 pair sums of AVX2 ``vpmaddubsw``.

Two limits decide whether an integer kernel computes what the model means:

- the int32 accumulator. ``Σ_k (qx − zx)(qw − zw)`` over K products can pass
  2**31 − 1 for long reductions or 16-bit inputs. `accumulator_bounds` gives
  the worst case from the actual weight codes and the input's code range.
- the int16 pair sums of AVX2 without VNNI (seed 003 §3.1). ``vpmaddubsw``
  multiplies unsigned 8-bit activations by signed 8-bit weights and adds
  *adjacent pairs* into int16 with saturation: ``a0·w0 + a1·w1`` clips at
  ±32767 when both weights share a sign and the activations are large.
  With 8-bit activations (≤ 255) a pair of weights (127, 127) reaches 64770.
  With 7-bit activations (≤ 127) the extreme is ``127 · (128 + 128) = 32512``,
  inside int16 for every int8 weight: this is why PyTorch's ``reduce_range``
  and lowbit's ``x86-novnni`` preset use 7-bit activations. AVX512-VNNI's
  ``vpdpbusd`` accumulates in int32 directly and needs no such care.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lowbit.formats.qformat import get_format
from lowbit.nn.integer import CodeParams, IntAccumulating, IntegerError, quantize_bias, weight_params
from lowbit.primitives.fixed_point import INT32_MAX

INT16_MAX = (1 << 15) - 1
INT16_MIN = -(1 << 15)


@dataclass(frozen=True)
class AccumulatorBounds:
    """Worst-case accumulator magnitudes of one layer.

    Attributes:
        layer: the layer's name.
        reduction: products summed per output (K = in/groups · kernel size).
        input_range: the input codes' ``(qmin, qmax)``; ``input_zero_point`` its zero point.
        worst_sum: max over channels and inputs of ``|Σ (qx − zx)(qw − zw)|``.
        worst_with_bias: the same plus the int32 bias: what the accumulator must hold.
        worst_raw: ``max |Σ qx · qw|``, the sum before zero-point corrections (in
            two's complement its overflow cancels once the corrections are added;
            in saturating arithmetic it does not).
        limit: 2**31 − 1.
    """

    layer: str
    reduction: int
    input_range: tuple[int, int]
    input_zero_point: int
    worst_sum: int
    worst_with_bias: int
    worst_raw: int
    limit: int = INT32_MAX

    @property
    def overflows(self) -> bool:
        """True when some input could push the accumulator past int32."""
        return self.worst_with_bias > self.limit

    @property
    def bits(self) -> int:
        """Signed bits the worst-case accumulator needs."""
        return self.worst_with_bias.bit_length() + 1

    def __str__(self) -> str:
        verdict = "OVERFLOWS int32" if self.overflows else "fits int32"
        return (f"{self.layer}: K={self.reduction}, inputs in {list(self.input_range)}, "
                f"worst |acc| = {self.worst_with_bias} ({self.bits} bits): {verdict}")


def _worst_sum(d: Tensor, low: int, high: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``max |Σ_k d_k · u_k|`` over ``u_k`` in ``[low, high]``: reached at the ends."""
    positive = d.clamp(min=0).sum(1)
    negative = (-d).clamp(min=0).sum(1)
    top = high * positive - low * negative  # u = high where d > 0, u = low where d < 0
    bottom = low * positive - high * negative
    return torch.maximum(top.abs(), bottom.abs()), top, bottom


def accumulator_bounds(layer: nn.Module, *, input_format: str | None = None,
                       input_zero_point: int | None = None, name: str = "") -> AccumulatorBounds:
    """Worst-case int32 accumulator of a Conv / Linear, from its weight codes and input range.

    Args:
        layer: an `IntConv` / `IntLinear`, or a converted lowbit ``QuantConv*d`` /
            ``QuantLinear`` with a static input quantizer.
        input_format: ask "what if the input were this format" (e.g. ``"int16"``);
            default: the layer's own input format.
        input_zero_point: zero point for ``input_format`` (default: the layer's, or 0).
        name: the layer's name in the result.

    Returns:
        `AccumulatorBounds`; ``.overflows`` flags a possible int32 overflow.

    Raises:
        IntegerError: the layer has no integer weights or input parameters.

    Example:
        >>> from lowbit.nn.integer import IntLinear
        >>> w = torch.full((1, 4096), 127, dtype=torch.int8)
        >>> lin = IntLinear(w, torch.ones(1), torch.zeros(1), CodeParams(1.0, 0, "int16"))
        >>> accumulator_bounds(lin).overflows, accumulator_bounds(lin, input_format="int8").overflows
        (True, False)
    """
    where = name or getattr(layer, "layer_name", "") or type(layer).__name__
    if isinstance(layer, IntAccumulating):
        params = layer.input_params
        codes, zw, bias = layer.weight_codes, layer.weight_zero_point, layer.bias_codes
        reduction = layer.reduction
    else:
        params = CodeParams.from_quantizer(getattr(layer, "input_quantizer", None), f"{where} input")
        codes, scale, zw = weight_params(layer, where)
        bias = getattr(layer, "bias", None)
        if bias is None:
            bias = torch.zeros(codes.shape[0])
        else:
            bias = quantize_bias(bias, params.scale, scale, where)
        reduction = codes[0].numel()
    low, high, zx = params.qmin, params.qmax, params.zero_point
    if input_format is not None:
        fmt = get_format(input_format)
        if fmt.kind != "int":
            raise IntegerError(f"input_format must be an integer format, got {fmt.name}")
        low, high = int(fmt.qmin), int(fmt.qmax)
        zx = 0 if input_zero_point is None else int(input_zero_point)
    elif input_zero_point is not None:
        zx = int(input_zero_point)
    w = codes.to(torch.int64).reshape(codes.shape[0], -1)
    d = w - zw.to(torch.int64).reshape(-1, 1)
    worst, top, bottom = _worst_sum(d, low - zx, high - zx)
    b = bias.to(torch.int64).reshape(-1)
    with_bias = torch.maximum((top + b).abs(), (bottom + b).abs())
    raw, _, _ = _worst_sum(w, low, high)
    return AccumulatorBounds(
        layer=where, reduction=int(reduction), input_range=(low, high), input_zero_point=zx,
        worst_sum=int(worst.max()), worst_with_bias=int(with_bias.max()), worst_raw=int(raw.max()),
    )


@dataclass(frozen=True)
class SaturationReport:
    """Where AVX2's int16 pair sums (``vpmaddubsw``) can saturate for a weight tensor.

    Attributes:
        act_bits: unsigned activation bits assumed (8 for uint8, 7 for ``reduce_range``).
        pairs: weight pairs checked (``out_channels · ceil(K / 2)``).
        saturating: pairs whose sum can leave int16 for some activations.
        worst_sum: the largest ``|a0·w0 + a1·w1|`` any activations can produce.
        examples: up to 10 ``(channel, k, w0, w1)`` of saturating pairs (``k`` indexes
            the first weight of the pair in the channels-last reduction order).
    """

    act_bits: int
    pairs: int
    saturating: int
    worst_sum: int
    examples: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def saturates(self) -> bool:
        return self.saturating > 0

    def __str__(self) -> str:
        return (f"{self.saturating} of {self.pairs} weight pairs can saturate int16 with "
                f"{self.act_bits}-bit activations (worst pair sum {self.worst_sum})")


def _reduction_rows(weight_codes: Tensor) -> Tensor:
    """``(out, K)`` in the order x86 kernels reduce: channels last (kh, kw, in) for convs."""
    w = weight_codes.to(torch.int64)
    if w.dim() > 2:
        w = w.movedim(1, -1)
    return w.reshape(w.shape[0], -1)


def avx2_u8s8_saturation(weight_codes: Tensor, act_bits: int = 8) -> SaturationReport:
    """Find adjacent weight pairs whose u8 × s8 pair sums can saturate int16 on AVX2.

    For a pair ``(w0, w1)`` and activations in ``[0, A]`` (``A = 2**act_bits − 1``)
    the pair sum ranges over ``[−A·(w0⁻ + w1⁻), A·(w0⁺ + w1⁺)]`` (``w⁺`` / ``w⁻``
    the positive / negative parts): only same-sign pairs can saturate. Pairs
    are adjacent along the reduction in channels-last order (input channels
    innermost), as fbgemm / oneDNN pack them; an odd K pads with 0.

    Args:
        weight_codes: int8 weights ``(out, in)`` or ``(out, in, *kernel)``.
        act_bits: unsigned activation bits (8: uint8; 7: ``reduce_range``).

    Returns:
        `SaturationReport`.

    Example:
        >>> w = torch.tensor([[127, 127, -3, 5]], dtype=torch.int8)
        >>> avx2_u8s8_saturation(w, 8).saturating, avx2_u8s8_saturation(w, 7).saturating
        (1, 0)
    """
    if weight_codes.is_floating_point() or weight_codes.dim() < 2:
        raise IntegerError(
            "avx2_u8s8_saturation takes integer weight codes (out, in, ...), e.g. a converted "
            f"layer's weight_codes; got {weight_codes.dtype} of shape {tuple(weight_codes.shape)}"
        )
    if not isinstance(act_bits, int) or not 1 <= act_bits <= 8:
        raise IntegerError(f"act_bits must be 1..8 (unsigned 8-bit lanes), got {act_bits!r}")
    w = _reduction_rows(weight_codes)
    if w.shape[1] % 2:
        w = torch.cat([w, torch.zeros(w.shape[0], 1, dtype=w.dtype)], 1)
    w0, w1 = w[:, 0::2], w[:, 1::2]
    a = (1 << act_bits) - 1
    top = a * (w0.clamp(min=0) + w1.clamp(min=0))
    bottom = -a * ((-w0).clamp(min=0) + (-w1).clamp(min=0))
    bad = (top > INT16_MAX) | (bottom < INT16_MIN)
    channels, pair = torch.nonzero(bad, as_tuple=True)
    examples = [(int(c), 2 * int(p), int(w0[c, p]), int(w1[c, p]))
                for c, p in zip(channels[:10].tolist(), pair[:10].tolist(), strict=True)]
    worst = int(torch.maximum(top, -bottom).max()) if w0.numel() else 0
    return SaturationReport(act_bits, int(w0.numel()), int(bad.sum()), worst, examples)


def avx2_u8s8_dot(activations: Tensor, weights: Tensor) -> Tensor:
    """Emulate AVX2's ``vpmaddubsw`` + ``vpmaddwd`` dot product: pair sums saturate at int16.

    Args:
        activations: unsigned codes ``(..., K)`` in [0, 255].
        weights: signed int8 codes ``(K,)``.

    Returns:
        int64 dot products as the AVX2 kernel computes them; they differ from
        the exact ``activations @ weights`` wherever a pair sum saturated.

    Example:
        >>> avx2_u8s8_dot(torch.tensor([255, 255]), torch.tensor([127, 127])).item()
        32767
    """
    a = activations.to(torch.int64)
    w = weights.to(torch.int64).reshape(-1)
    if a.shape[-1] % 2:
        a = torch.cat([a, torch.zeros_like(a[..., :1])], -1)
        w = torch.cat([w, w.new_zeros(1)])
    products = a * w
    pairs = (products[..., 0::2] + products[..., 1::2]).clamp(INT16_MIN, INT16_MAX)
    return pairs.sum(-1)

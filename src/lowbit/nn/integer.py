"""Integer-only Conv / Linear: int8 × int8 → int32 accumulation, then requantization.

Seed 002 (Jacob et al.) writes one quantized matmul as

    q3 = z3 + M · Σ_k (q1 − z1)(q2 − z2),    M = s1 · s2 / s3,

and seed 004 expands the sum for a convolution window of K products:

    Σ (qx − zx)(qw − zw) = Σ qx·qw − zw·Σ qx − zx·Σ qw + K·zx·zw.

Only ``Σ qx·qw`` (and ``zw·Σ qx`` when a weight zero point is not 0) depends
on the input; ``zx·Σ qw`` and ``K·zx·zw`` are per-channel constants, folded
once at construction together with the bias quantized to int32 with scale
``s_x · s_w`` (``offset`` below). The accumulator is then requantized to the
*consumer's* input codes with :func:`lowbit.primitives.fixed_point.requantize`
in one of its named modes: ``"fixed_point"`` (gemmlowp / TFLite) or
``"float"`` (ONNX Runtime). A following ReLU / ReLU6 is a clamp of those codes.

Exactness: the sums are computed by ``F.conv*d`` / ``matmul`` on
integer-valued float tensors. Every product and every partial sum is an
integer of magnitude at most ``K · max|qx| · max|qw|``; while that bound stays
below 2**24 (float32) or 2**53 (float64) the float type holds each of them
exactly, whatever the summation order, so the result is the exact integer sum
(for direct and GEMM kernels, which PyTorch's CPU convolutions are; the tests
check it at the bound). Each layer splits its input channels into chunks whose bound stays below
2**24 and adds the chunk sums in float64 (fast float32 kernels, exact result);
where one chunk cannot stay below 2**24 it computes in float64, and it refuses
bounds of 2**53 and more when it is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.nn.quantizer import Quantizer
from lowbit.primitives.fixed_point import INT32_MAX, INT32_MIN, REQUANT_MODES, requantize
from lowbit.primitives.quantize import dequantize, quantize

# float32 / float64 represent every integer below 2**24 / 2**53: the bounds for exact sums.
FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
# most float32 passes per layer before one float64 pass is the faster exact choice
MAX_CHUNKS = 8


class IntegerError(LowbitError, ValueError):
    """A layer or tensor cannot run in integer-only arithmetic as it is."""


class AccumulatorOverflowError(IntegerError, OverflowError):
    """An int32 accumulator (or an int32 bias) would overflow."""


def codes_dtype(fmt: QFormat) -> torch.dtype:
    """The dtype integer codes travel in between layers (int8 / uint8 for 8-bit formats)."""
    if fmt.bits <= 8:
        return torch.int8 if fmt.signed else torch.uint8
    return torch.int16 if fmt.signed else torch.int32


def check_mode(mode: str) -> str:
    if mode not in REQUANT_MODES:
        raise IntegerError(
            f"unknown requantization mode {mode!r}; use 'fixed_point' (gemmlowp / TFLite) "
            "or 'float' (ONNX Runtime)"
        )
    return mode


@dataclass(frozen=True)
class CodeParams:
    """How a per-tensor integer tensor maps to real values: ``r = scale · (q − zero_point)``.

    Args:
        scale: the float32 scale (held as the exact Python float of it).
        zero_point: integer zero point inside the format's range.
        fmt: integer format name (``"int8"``, ``"uint8"``, ``"uint7"``, ...).
        rounding: rounding of the quantizer that produced these codes from floats.

    Example:
        >>> CodeParams(0.5, 3, "uint8").activation_bounds(0.0, 6.0)
        (3, 15)
    """

    scale: float
    zero_point: int
    fmt: str = "int8"
    rounding: str = "half_even"

    @property
    def format(self) -> QFormat:
        return get_format(self.fmt)

    @property
    def qmin(self) -> int:
        return int(self.format.qmin)

    @property
    def qmax(self) -> int:
        return int(self.format.qmax)

    @property
    def dtype(self) -> torch.dtype:
        return codes_dtype(self.format)

    @classmethod
    def from_quantizer(cls, quantizer: Quantizer | None, where: str = "") -> CodeParams:
        """The frozen per-tensor integer parameters of an activation quantizer.

        Raises:
            IntegerError: the quantizer is missing, dynamic, not frozen, not per-tensor,
                or not an integer format (the message says which).
        """
        place = where or "tensor"
        if quantizer is None:
            raise IntegerError(f"{place} has no activation quantizer (weight-only recipe)")
        spec = quantizer.spec
        if spec.dynamic:
            raise IntegerError(f"{place} is quantized dynamically; integer-only needs static ranges")
        if not bool(quantizer.frozen):
            raise IntegerError(f"{place} has no frozen range; calibrate the model first")
        fmt = quantizer.fmt
        if fmt.kind != "int":
            raise IntegerError(f"{place} uses {fmt.name}, not an integer format")
        if quantizer.scale.numel() != 1 or quantizer.axis is not None:
            raise IntegerError(f"{place} is not quantized per tensor")
        return cls(float(quantizer.scale.float()), int(quantizer.zero_point), fmt.name, spec.rounding)

    def quantize(self, x: Tensor) -> Tensor:
        """Float → codes exactly as the fake quantizer does (ONNX QuantizeLinear)."""
        codes = quantize(x.float(), torch.tensor(self.scale), torch.tensor(self.zero_point),
                         self.format, rounding=self.rounding)
        return codes.to(self.dtype)

    def dequantize(self, q: Tensor) -> Tensor:
        """Codes → float32 ``(q − z) · s`` (ONNX DequantizeLinear)."""
        return dequantize(q.to(torch.int32), torch.tensor(self.scale),
                          torch.tensor(self.zero_point), self.format)

    def activation_bounds(self, low: float, high: float) -> tuple[int, int]:
        """Code range of ``clamp(r, low, high)``: a fused ReLU (0, inf) or ReLU6 (0, 6).

        ``quantize`` is monotone, so ``quantize(clamp(r)) == clamp(quantize(r),
        quantize(low), quantize(high))``: the clamp on codes equals the float one.
        """
        lo, hi = self.qmin, self.qmax
        if low != -math.inf:
            lo = max(lo, int(self.quantize(torch.tensor([low]))[0]))
        if high != math.inf:
            hi = min(hi, int(self.quantize(torch.tensor([high]))[0]))
        return lo, hi


@dataclass(frozen=True)
class AccScale:
    """Scale of an int32 accumulator: ``input_scale · weight_scale[c] / divisor``.

    Args:
        input_scale: the input codes' scale.
        weight_scale: one weight scale, or one per channel along ``axis``.
        axis: channel axis of the accumulator (1 for conv, -1 for linear), or None.
        divisor: element count of a sum that stands for a mean (global average pooling).
    """

    input_scale: float
    weight_scale: tuple[float, ...] = (1.0,)
    axis: int | None = None
    divisor: int = 1

    def real(self) -> Tensor:
        """The real scale per channel, float64."""
        w = torch.tensor(self.weight_scale, dtype=torch.float64)
        return self.input_scale * w / self.divisor

    def multiplier(self, out_scale: float, mode: str) -> Tensor:
        """``M = s_in · s_w / (s_out · divisor)`` as each runtime computes it.

        ``"float"``: float32 arithmetic, ``(X_scale * W_scale) / Y_scale`` as ONNX
        Runtime's QLinearConv / QLinearMatMul compute their output scales.
        ``"fixed_point"``: float64, as TFLite's ``PopulateConvolutionQuantizationParams``.
        """
        dtype = torch.float32 if mode == "float" else torch.float64
        w = torch.tensor(self.weight_scale, dtype=dtype)
        num = torch.tensor(self.input_scale, dtype=dtype) * w
        return num / (torch.tensor(out_scale, dtype=dtype) * self.divisor)

    def clamp_bounds(self, low: float, high: float) -> tuple[Tensor, Tensor]:
        """Accumulator bounds (int64 per channel) of a real clamp ``[low, high]``."""
        real = self.real()
        lo = torch.full_like(real, float(INT32_MIN)) if low == -math.inf else torch.ceil(low / real)
        hi = torch.full_like(real, float(INT32_MAX)) if high == math.inf else torch.floor(high / real)
        return lo.clamp(INT32_MIN, INT32_MAX).to(torch.int64), hi.clamp(INT32_MIN, INT32_MAX).to(torch.int64)


@dataclass(frozen=True)
class OutputStage:
    """Where an accumulator goes: the consumer's codes, clamped to ``[act_min, act_max]``."""

    codes: CodeParams
    act_min: int
    act_max: int

    @classmethod
    def plain(cls, codes: CodeParams, low: float = -math.inf, high: float = math.inf) -> OutputStage:
        lo, hi = codes.activation_bounds(low, high)
        return cls(codes, lo, hi)

    def narrowed(self, lo: int, hi: int) -> OutputStage:
        return OutputStage(self.codes, max(self.act_min, lo), min(self.act_max, hi))


def along(t: Tensor, axis: int | None, ndim: int) -> Tensor:
    """Shape a per-channel vector to broadcast along ``axis`` of an ``ndim`` tensor."""
    if axis is None or t.numel() == 1:
        return t.reshape(())
    axis %= ndim
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def requantize_acc(acc: Tensor, scale: AccScale, stage: OutputStage, mode: str) -> Tensor:
    """int32 accumulators (scale ``scale``) → clamped codes of ``stage``.

    Example:
        >>> stage = OutputStage.plain(CodeParams(0.1, 0, "int8"))
        >>> requantize_acc(torch.tensor([5, -7]), AccScale(0.02), stage, "float").tolist()
        [1, -1]
    """
    out = stage.codes
    m = scale.multiplier(out.scale, mode)
    axis = None if m.numel() == 1 else scale.axis % acc.dim()
    q = requantize(acc, m if m.numel() > 1 else m.reshape(()), out.zero_point, out.qmin,
                   out.qmax, mode=mode, per_channel_axis=axis)
    return q.clamp(stage.act_min, stage.act_max).to(out.dtype)


def check_int32(acc: Tensor, where: str) -> Tensor:
    """``acc`` (int64) as int32, or an `AccumulatorOverflowError` naming the layer."""
    if acc.numel():
        lo, hi = int(acc.min()), int(acc.max())
        if lo < INT32_MIN or hi > INT32_MAX:
            raise AccumulatorOverflowError(
                f"{where}: the int32 accumulator overflows (values in [{lo}, {hi}]); an int32 "
                "kernel would wrap around. Use 8-bit activations, fewer input channels per "
                "output, or larger scales; accumulator_bounds() gives the worst case"
            )
    return acc.to(torch.int32)


def check_codes(x: Tensor, params: CodeParams, where: str) -> None:
    """Refuse float tensors and codes outside the format's range."""
    if x.is_floating_point() or x.dtype == torch.bool:
        raise IntegerError(
            f"{where} takes integer codes, got {x.dtype}; quantize the input first "
            "(QuantizeInput, or run the whole IntegerModel)"
        )
    if x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < params.qmin or hi > params.qmax:
            raise IntegerError(
                f"{where} expects {params.fmt} codes in [{params.qmin}, {params.qmax}], got "
                f"values in [{lo}, {hi}]; requantize them to this layer's input parameters"
            )


def quantize_bias(bias: Tensor, input_scale: float, weight_scale: Tensor, where: str = "") -> Tensor:
    """Bias → int32 codes with scale ``s_x · s_w`` (round half to even); zero point 0.

    The scale is the float32 product ``s_x · s_w`` that the exported graph stores
    as the bias scale; the quotient ``b / scale`` is taken in float64, so each code
    is the integer nearest the real quotient (a float32 quotient can land on the
    wrong side of a half for large codes). ONNX export writes these same codes,
    which is what keeps the integer model equal to ONNX Runtime's QLinearConv.

    Raises:
        AccumulatorOverflowError: a code does not fit int32.

    Example:
        >>> quantize_bias(torch.tensor([0.3, -1.0]), 0.1, torch.tensor([0.5, 0.01])).tolist()
        [6, -1000]
    """
    bias_scale = torch.tensor(input_scale, dtype=torch.float32) * weight_scale.float()
    q = torch.round(bias.detach().double() / bias_scale.double())
    if q.numel() and (not bool(torch.isfinite(q).all()) or float(q.abs().max()) > INT32_MAX):
        raise AccumulatorOverflowError(
            f"{where or 'layer'}: the bias does not fit int32 with scale s_in * s_w (largest "
            f"|bias / scale| = {float(q.abs().max()):.3g}); a weight or input scale is tiny "
            "compared with the bias. Exclude the layer or recalibrate with a wider range"
        )
    return q.to(torch.int32)


def weight_params(layer: nn.Module, where: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(codes, scale, zero_point)`` of a lowbit layer's weight, per tensor or per output channel."""
    quantizer = getattr(layer, "weight_quantizer", None)
    if quantizer is None or not bool(quantizer.frozen):
        raise IntegerError(f"{where} has no quantized weight; quantize it with a static recipe")
    if quantizer.fmt.kind != "int":
        raise IntegerError(f"{where} weights use {quantizer.fmt.name}, not an integer format")
    if quantizer.block_size is not None or quantizer.axis not in (None, 0):
        raise IntegerError(
            f"{where} weights are quantized per group; integer kernels take one scale per "
            "tensor or per output channel (use granularity='channel')"
        )
    codes = getattr(layer, "weight_codes", None)
    if codes is None:
        p = quantizer.qparams()
        codes = quantize(layer.weight.detach().float(), p.scale, p.zero_point, p.fmt,
                         axis=p.axis, rounding=quantizer.spec.rounding)
    channels = codes.shape[0]
    scale = quantizer.scale.detach().float().reshape(-1).expand(channels).clone()
    zero_point = quantizer.zero_point.detach().to(torch.int64).reshape(-1).expand(channels).clone()
    return codes.detach().clone(), scale, zero_point


class IntAccumulating(nn.Module):
    """What IntConv and IntLinear share: bias, zero-point terms, overflow check, requantization.

    Buffers: ``weight_codes`` (the layer's integer weights), ``weight_scale`` and
    ``weight_zero_point`` (one per output channel), ``bias_codes`` (int32, scale
    ``s_x · s_w``), ``offset`` (int64: ``bias − zx·Σ_k qw + K·zx·zw`` per channel).
    """

    channel_axis = 1

    def _setup(self, weight_codes: Tensor, weight_scale: Tensor, weight_zero_point: Tensor,
               input_params: CodeParams, bias: Tensor | None, output: OutputStage | None,
               mode: str, name: str) -> None:
        self.layer_name = name
        self.mode = check_mode(mode)
        self.input_params = input_params
        self.output = output
        channels = weight_codes.shape[0]
        self.register_buffer("weight_codes", weight_codes)
        self.register_buffer("weight_scale", weight_scale.float().reshape(channels))
        self.register_buffer("weight_zero_point", weight_zero_point.to(torch.int64).reshape(channels))
        w = weight_codes.to(torch.int64).reshape(channels, -1)
        self.reduction = w.shape[1]
        if bias is None:
            bias_codes = torch.zeros(channels, dtype=torch.int32)
        else:
            bias_codes = quantize_bias(bias, input_params.scale, self.weight_scale, name)
        self.register_buffer("bias_codes", bias_codes)
        zx, zw = input_params.zero_point, self.weight_zero_point
        offset = bias_codes.to(torch.int64) - zx * w.sum(1) + self.reduction * zx * zw
        self.register_buffer("offset", offset)
        self._prepare()
        self.register_load_state_dict_post_hook(lambda module, _: module._prepare())

    def _prepare(self) -> None:
        """Plan the exact sums and build the compute copies of the weights (again after loading)."""
        w = self.weight_codes.to(torch.int64).reshape(self.weight_codes.shape[0], -1)
        self._check_exact(w)
        self.has_weight_zero_point = bool((self.weight_zero_point != 0).any())
        self.compute_dtype = torch.float32 if self.chunk_inputs else torch.float64
        weight_float = self.weight_codes.to(self.compute_dtype)
        self.register_buffer("weight_float", weight_float, persistent=False)
        ones = torch.ones_like(weight_float) if self.has_weight_zero_point else None
        self.register_buffer("ones", ones, persistent=False)
        scales = tuple(self.weight_scale.tolist())
        self._acc_scale = AccScale(self.input_params.scale, scales, self.channel_axis)

    def _check_exact(self, w: Tensor) -> None:
        """Refuse sums float64 cannot hold; plan input-channel chunks exact in float32."""
        x_max = max(abs(self.input_params.qmin), abs(self.input_params.qmax))
        w_max = max(int(w.abs().max()) if w.numel() else 0, 1)
        if self.reduction * x_max * w_max >= FLOAT64_EXACT:
            raise IntegerError(
                f"{self.layer_name}: {self.reduction} products of up to {x_max} x {w_max} can "
                "reach 2**53, beyond exact float64 sums; use at most 16-bit codes"
            )
        per_input = self.reduction // self.inputs_per_group  # products per input channel
        fit = (FLOAT32_EXACT - 1) // (x_max * w_max * per_input)
        # grouped convs sum over a whole group in one call; many tiny chunks cost more than
        # one float64 pass (16-bit inputs), so float32 is used for at most MAX_CHUNKS chunks
        need = self.inputs_per_group if self.groups > 1 else -(-self.inputs_per_group // MAX_CHUNKS)
        self.chunk_inputs = fit if fit >= max(need, 1) else 0

    @property
    def acc_scale(self) -> AccScale:
        """Scale of this layer's accumulator (``s_x · s_w[c]`` along the channel axis)."""
        return self._acc_scale

    def _exact_sum(self, x: Tensor, weight: Tensor) -> Tensor:
        """The exact integer sum as float64: float32 chunks below 2**24 each, or one float64 pass."""
        if self.compute_dtype == torch.float64 or self.groups > 1:
            return self._product(x, weight, slice(None)).double()
        step = self.chunk_inputs
        total = self._product(x, weight, slice(0, step)).double()
        for start in range(step, self.inputs_per_group, step):
            total += self._product(x, weight, slice(start, start + step)).double()
        return total

    def set_output(self, output: OutputStage | None) -> None:
        """Requantize to ``output`` (the consumer's codes), or return the int32 accumulator (None)."""
        self.output = output

    def _finish(self, raw: Tensor, x_sum: Tensor | None) -> Tensor:
        """Add the zero-point terms and the bias; check int32; requantize if an output is set."""
        acc = raw.to(torch.int64)
        if x_sum is not None:
            acc = acc - along(self.weight_zero_point, self.channel_axis, acc.dim()) * x_sum.to(torch.int64)
        acc = acc + along(self.offset, self.channel_axis, acc.dim())
        acc32 = check_int32(acc, self.layer_name or type(self).__name__)
        if self.output is None:
            return acc32
        return requantize_acc(acc32, self.acc_scale, self.output, self.mode)

    def describe(self) -> str:
        x, stage = self.input_params, self.output
        out = "int32 accumulator"
        if stage is not None:
            o = stage.codes
            out = f"{o.fmt} (s={o.scale:.4g}, z={o.zero_point}) clamp [{stage.act_min}, {stage.act_max}]"
        bits = self.weight_codes.element_size() * 8
        return f"{x.fmt} (s={x.scale:.4g}, z={x.zero_point}) x int{bits} weights, K={self.reduction} -> {out}"


class IntConv(IntAccumulating):
    """Conv1d / Conv2d / Conv3d in integers: input codes → output codes (or int32 accumulators).

    Padding is applied to the codes with the input zero point (the code of real
    0), as ONNX QLinearConv and TFLite do.

    Args:
        weight_codes: ``(out, in / groups, *kernel)`` integer weights.
        weight_scale, weight_zero_point: one per output channel (or one value).
        input_params: the input codes' `CodeParams`.
        bias: float bias (quantized here to int32 with scale ``s_x · s_w``), or None.
        stride, dilation, groups: as for ``F.conv2d``.
        padding: ``F.pad`` amounts (last dimension first), e.g. a conv's
            ``_reversed_padding_repeated_twice``.
        output: the consumer's codes and clamp, or None for int32 accumulators.
        mode: ``"fixed_point"`` or ``"float"`` requantization.

    Example:
        >>> w = torch.ones(2, 1, 3, 3, dtype=torch.int8)
        >>> conv = IntConv(w, torch.full((2,), 0.1), torch.zeros(2), CodeParams(0.5, 0),
        ...                output=OutputStage.plain(CodeParams(1.0, 0)), padding=[1, 1, 1, 1])
        >>> conv(torch.ones(1, 1, 4, 4, dtype=torch.int8))[0, 0, 0].tolist()
        [0, 0, 0, 0]
    """

    def __init__(self, weight_codes: Tensor, weight_scale: Tensor, weight_zero_point: Tensor,
                 input_params: CodeParams, bias: Tensor | None = None, *, stride=1,
                 padding: list[int] | tuple[int, ...] = (), dilation=1, groups: int = 1,
                 output: OutputStage | None = None, mode: str = "fixed_point", name: str = "") -> None:
        super().__init__()
        dims = weight_codes.dim() - 2
        if dims not in (1, 2, 3):
            raise IntegerError(f"conv weights must have 3 to 5 dimensions, got {tuple(weight_codes.shape)}")
        self.dims = dims
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.inputs_per_group = weight_codes.shape[1]
        self.padding = [int(p) for p in padding]
        self._setup(weight_codes, weight_scale, weight_zero_point, input_params, bias, output, mode, name)

    @classmethod
    def from_quantized(cls, layer: nn.Module, output: OutputStage | None = None, *,
                       mode: str = "fixed_point", name: str = "") -> IntConv:
        """Build from a lowbit ``QuantConv1d/2d/3d`` (static input quantizer, integer weights).

        Raises:
            IntegerError: the layer cannot run in integers (the message says why).
        """
        where = name or getattr(layer, "layer_name", "") or "conv"
        if getattr(layer, "padding_mode", "zeros") != "zeros":
            raise IntegerError(f"{where} pads with mode {layer.padding_mode!r}; only zero padding is integer")
        params = CodeParams.from_quantizer(getattr(layer, "input_quantizer", None), f"{where} input")
        codes, scale, zp = weight_params(layer, where)
        return cls(codes, scale, zp, params, layer.bias, stride=layer.stride,
                   padding=layer._reversed_padding_repeated_twice, dilation=layer.dilation,
                   groups=layer.groups, output=output, mode=mode, name=where)

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return conv(x, weight, None, self.stride, 0, self.dilation, self.groups)

    def _product(self, x: Tensor, weight: Tensor, part: slice) -> Tensor:
        return self._conv(x[:, part], weight[:, part])

    def forward(self, x: Tensor) -> Tensor:
        """Codes ``(N, C, *spatial)`` → output codes, or int32 accumulators when ``output`` is None."""
        check_codes(x, self.input_params, self.layer_name or "IntConv")
        xf = x.to(self.compute_dtype)
        if any(self.padding):
            xf = F.pad(xf, self.padding, value=float(self.input_params.zero_point))
        raw = self._exact_sum(xf, self.weight_float)
        x_sum = self._exact_sum(xf, self.ones) if self.has_weight_zero_point else None
        return self._finish(raw, x_sum)


class IntConv1d(IntConv):
    """`IntConv` for ``Conv1d`` layers."""


class IntConv2d(IntConv):
    """`IntConv` for ``Conv2d`` layers."""


class IntConv3d(IntConv):
    """`IntConv` for ``Conv3d`` layers."""


class IntLinear(IntAccumulating):
    """Linear in integers: codes ``(..., in)`` → codes ``(..., out)`` (or int32 accumulators).

    Args: as `IntConv`, with ``weight_codes`` of shape ``(out, in)``.

    Example:
        >>> lin = IntLinear(torch.tensor([[1, -1]], dtype=torch.int8), torch.tensor([0.5]),
        ...                 torch.zeros(1), CodeParams(1.0, 0))
        >>> lin(torch.tensor([[5, 2]], dtype=torch.int8)).tolist()
        [[3]]
    """

    channel_axis = -1

    def __init__(self, weight_codes: Tensor, weight_scale: Tensor, weight_zero_point: Tensor,
                 input_params: CodeParams, bias: Tensor | None = None, *,
                 output: OutputStage | None = None, mode: str = "fixed_point", name: str = "") -> None:
        super().__init__()
        if weight_codes.dim() != 2:
            raise IntegerError(f"linear weights must be 2-D, got {tuple(weight_codes.shape)}")
        self.groups, self.inputs_per_group = 1, weight_codes.shape[1]
        self._setup(weight_codes, weight_scale, weight_zero_point, input_params, bias, output, mode, name)

    @classmethod
    def from_quantized(cls, layer: nn.Module, output: OutputStage | None = None, *,
                       mode: str = "fixed_point", name: str = "") -> IntLinear:
        """Build from a lowbit ``QuantLinear`` (static input quantizer, integer weights)."""
        where = name or getattr(layer, "layer_name", "") or "linear"
        params = CodeParams.from_quantizer(getattr(layer, "input_quantizer", None), f"{where} input")
        codes, scale, zp = weight_params(layer, where)
        return cls(codes, scale, zp, params, layer.bias, output=output, mode=mode, name=where)

    def forward(self, x: Tensor) -> Tensor:
        """Codes ``(..., in)`` → output codes, or int32 accumulators when ``output`` is None."""
        check_codes(x, self.input_params, self.layer_name or "IntLinear")
        xf = x.to(self.compute_dtype)
        raw = self._exact_sum(xf, self.weight_float)
        x_sum = x.to(torch.int64).sum(-1, keepdim=True) if self.has_weight_zero_point else None
        return self._finish(raw, x_sum)

    def _product(self, x: Tensor, weight: Tensor, part: slice) -> Tensor:
        return x[..., part] @ weight[:, part].T

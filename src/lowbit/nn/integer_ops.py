"""Integer-only glue between Conv / Linear layers: quantize, requantize, clamp, add, pool.

Tensors between integer ops are either *codes* (a per-tensor integer tensor
described by `CodeParams`, int8 / uint8 for 8-bit formats) or *int32
accumulators* (described by `AccScale`, one scale per channel). Every op
here takes one of the two and says which it returns.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lowbit.nn.integer import (
    AccScale,
    CodeParams,
    IntegerError,
    OutputStage,
    along,
    check_codes,
    check_int32,
    check_mode,
    requantize_acc,
)
from lowbit.primitives.fixed_point import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)

Source = CodeParams | AccScale

# TFLite's Add shifts int8 inputs left by 20 bits before rescaling them (add.cc).
ADD_LEFT_SHIFT = 20


def _acc_of(x: Tensor, source: Source, where: str) -> Tensor:
    """int64 accumulator-like values of ``x``: ``q − z`` for codes, the value itself for accumulators."""
    if isinstance(source, CodeParams):
        check_codes(x, source, where)
        return x.to(torch.int64) - source.zero_point
    if x.is_floating_point():
        raise IntegerError(f"{where} takes int32 accumulators, got {x.dtype}")
    return x.to(torch.int64)


def _fma_f32(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """float32 ``x · y + z`` with one rounding, as an FMA instruction computes it.

    ``x`` holds codes (at most 16 bits) and ``y`` a float32, so ``x · y`` is exact
    in float64, and so is the sum at the magnitudes an add sees: the only
    rounding is the final cast.
    """
    return (x.to(torch.float64) * y.to(torch.float64) + z.to(torch.float64)).to(torch.float32)


def mlas_qlinear_add(a: Tensor, pa: CodeParams, b: Tensor, pb: CodeParams, out: CodeParams) -> Tensor:
    """ONNX Runtime's QLinearAdd as its x86 AVX2 kernel computes it, bit for bit.

    MLAS (``MlasQLinearAddKernelAvx2Helper``) folds the zero points into one
    float32 constant and adds the scaled codes with two FMAs::

        r_ac = s_a / s_c,  r_bc = s_b / s_c                      (float32)
        fixed = float(z_c) − fma(r_ac, z_a, r_bc · z_b)
        c = saturate(round_half_even(fma(a, r_ac, fma(b, r_bc, fixed))))

    The compiler contracts ``r_ac · z_a + r_bc · z_b`` into that FMA; the
    exhaustive test over all 65,536 code pairs tells it from the uncontracted
    form. The textbook ``round(((a − z_a)·s_a + (b − z_b)·s_b) / s_c) + z_c``
    differs from it in about ten codes per million, at near-ties.

    On x86, ONNX Runtime runs int8 QDQ graphs as uint8 (its S8→U8 rewrite adds 128
    to codes and zero points). Exact integer kernels do not notice; this formula
    does (``fixed`` moves), so int8 codes are shifted the same way here.

    Returns:
        int64 codes in ``out``'s range.

    Example:
        >>> p = CodeParams(0.5, 10, "uint8")
        >>> mlas_qlinear_add(torch.tensor([14]), p, torch.tensor([12]), p, p).tolist()
        [16]
    """
    shift = 128 if (pa.qmin, pb.qmin, out.qmin) == (-128, -128, -128) else 0
    if shift:
        a, b = a.to(torch.int64) + shift, b.to(torch.int64) + shift
    f32 = torch.float32
    r_ac = torch.tensor(pa.scale, dtype=f32) / torch.tensor(out.scale, dtype=f32)
    r_bc = torch.tensor(pb.scale, dtype=f32) / torch.tensor(out.scale, dtype=f32)
    zb_term = r_bc * torch.tensor(float(pb.zero_point + shift), dtype=f32)
    inner = _fma_f32(torch.tensor(float(pa.zero_point + shift)), r_ac, zb_term)
    fixed = torch.tensor(float(out.zero_point + shift), dtype=f32) - inner
    total = _fma_f32(a, r_ac, _fma_f32(b, r_bc, fixed))
    return torch.round(total).to(torch.int64).clamp(out.qmin + shift, out.qmax + shift) - shift


def _as_acc_scale(source: Source) -> AccScale:
    if isinstance(source, CodeParams):
        return AccScale(source.scale)
    return source


class QuantizeInput(nn.Module):
    """Float → codes at the graph input (ONNX QuantizeLinear with the consumer's parameters).

    Example:
        >>> QuantizeInput(CodeParams(0.5, 0))(torch.tensor([1.0, -0.7])).tolist()
        [2, -1]
    """

    def __init__(self, params: CodeParams) -> None:
        super().__init__()
        self.params = params

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            raise IntegerError(f"QuantizeInput takes a float tensor, got {x.dtype}")
        return self.params.quantize(x)

    def describe(self) -> str:
        p = self.params
        return f"float -> {p.fmt} (s={p.scale:.4g}, z={p.zero_point})"


class Dequantize(nn.Module):
    """Codes or int32 accumulators → float32, where the next op is float (or at an output).

    Example:
        >>> Dequantize(AccScale(0.5, (1.0, 2.0), axis=1))(torch.tensor([[3, 3]])).tolist()
        [[1.5, 3.0]]
    """

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.source, CodeParams):
            check_codes(x, self.source, "Dequantize")
            return self.source.dequantize(x)
        real = along(self.source.real(), self.source.axis, x.dim())
        return (x.to(torch.float64) * real).to(torch.float32)

    def describe(self) -> str:
        kind = self.source.fmt if isinstance(self.source, CodeParams) else "int32 accumulator"
        return f"{kind} -> float"


class Requantize(nn.Module):
    """Codes or int32 accumulators → the consumer's codes (a fused ReLU / ReLU6 is the clamp).

    Example:
        >>> op = Requantize(CodeParams(0.5, 0), OutputStage.plain(CodeParams(1.0, 10, "uint8")), "float")
        >>> op(torch.tensor([-3, 4], dtype=torch.int8)).tolist()
        [8, 12]
    """

    def __init__(self, source: Source, output: OutputStage, mode: str = "fixed_point") -> None:
        super().__init__()
        self.source = source
        self.output = output
        self.mode = check_mode(mode)

    def forward(self, x: Tensor) -> Tensor:
        acc = check_int32(_acc_of(x, self.source, "Requantize"), "Requantize")
        return requantize_acc(acc, _as_acc_scale(self.source), self.output, self.mode)

    def describe(self) -> str:
        o = self.output
        kind = self.source.fmt if isinstance(self.source, CodeParams) else "int32 accumulator"
        return (f"{kind} -> {o.codes.fmt} (s={o.codes.scale:.4g}, z={o.codes.zero_point}) "
                f"clamp [{o.act_min}, {o.act_max}]")


class IntClamp(nn.Module):
    """ReLU / ReLU6 in integers: a clamp of codes (scalar bounds) or accumulators (per channel).

    For codes ``[quantize(low), quantize(high)]`` is exact. For accumulators the
    bounds are ``ceil(low / s)`` and ``floor(high / s)`` per channel: exact for
    ReLU (``low = 0``); for ReLU6 the value moves by less than one accumulator step.

    Example:
        >>> IntClamp.for_codes(CodeParams(0.1, -5), 0.0, 6.0)(torch.tensor([-9, 0, 90])).tolist()
        [-5, 0, 55]
    """

    def __init__(self, low: Tensor, high: Tensor, axis: int | None = None, *,
                 on_codes: bool = False, describe: str = "") -> None:
        super().__init__()
        self.register_buffer("low", low.to(torch.int64))
        self.register_buffer("high", high.to(torch.int64))
        self.axis = axis
        self.on_codes = on_codes
        self._what = describe

    @classmethod
    def for_codes(cls, params: CodeParams, low: float, high: float) -> IntClamp:
        lo, hi = params.activation_bounds(low, high)
        return cls(torch.tensor(lo), torch.tensor(hi), None, on_codes=True,
                   describe=f"{params.fmt} codes to [{lo}, {hi}]")

    @classmethod
    def for_acc(cls, scale: AccScale, low: float, high: float) -> IntClamp:
        lo, hi = scale.clamp_bounds(low, high)
        return cls(lo, hi, scale.axis, describe=f"int32 accumulator to [{low}, {high}] (real)")

    def forward(self, x: Tensor) -> Tensor:
        low = along(self.low, self.axis, x.dim())
        high = along(self.high, self.axis, x.dim())
        return torch.minimum(torch.maximum(x.to(torch.int64), low), high).to(x.dtype)

    def describe(self) -> str:
        return f"clamp {self._what}"


class IntAdd(nn.Module):
    """A residual join in integers, with its own requantization of both inputs.

    Each input is codes or an int32 accumulator (a conv output whose only
    float use in the simulated model is this add: the add is then fused into
    the conv's output stage, as oneDNN's and fbgemm's conv+sum kernels do).

    ``"fixed_point"`` follows TFLite's int8 Add: codes are shifted left by 20
    bits, each input is rescaled by ``s_i / (2 · s_max)`` with a fixed-point
    multiplier, the sum is rescaled by ``2 · s_max / (2**20 · s_out)``.
    Accumulator inputs skip the shift and take ``s_i · 2**20 / (2 · s_max)``
    instead (``s_max`` then also covers ``s_out``, so the terms stay far inside
    int32).

    ``"float"`` with two code inputs is ONNX Runtime's QLinearAdd as its x86
    AVX2 kernel computes it (`mlas_qlinear_add`), bit for bit. With an
    accumulator input (no ORT counterpart) it is
    ``round(Σ float32(acc_i) · float32(s_i / s_out)) + z_out``.

    Example:
        >>> add = IntAdd(CodeParams(0.5, 0), CodeParams(0.25, 0), OutputStage.plain(CodeParams(0.5, 0)))
        >>> add(torch.tensor([4], dtype=torch.int8), torch.tensor([-2], dtype=torch.int8)).tolist()
        [3]
    """

    def __init__(self, a: Source, b: Source, output: OutputStage, mode: str = "fixed_point") -> None:
        super().__init__()
        self.sources = (a, b)
        self.output = output
        self.mode = check_mode(mode)
        out = output.codes.scale
        code_scales = [s.scale for s in self.sources if isinstance(s, CodeParams)]
        has_acc = len(code_scales) < 2
        self.twice_max = 2.0 * max(code_scales + ([out] if has_acc else []))
        self.left_shifts = tuple(ADD_LEFT_SHIFT if isinstance(s, CodeParams) else 0 for s in self.sources)
        self.real_output = self.twice_max / ((1 << ADD_LEFT_SHIFT) * out)

    def _axis(self, i: int) -> int | None:
        source = self.sources[i]
        return source.axis if isinstance(source, AccScale) else None

    def _real_input(self, i: int) -> Tensor:
        scale = _as_acc_scale(self.sources[i])
        shift_back = 1 << (ADD_LEFT_SHIFT - self.left_shifts[i])
        if self.mode == "float":
            return scale.multiplier(self.output.codes.scale, "float")
        return scale.real() * shift_back / self.twice_max

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        accs = [_acc_of(x, s, "IntAdd") for x, s in zip((a, b), self.sources, strict=True)]
        ndim = max(x.dim() for x in accs)
        out = self.output.codes
        if self.mode == "float" and all(isinstance(s, CodeParams) for s in self.sources):
            q = mlas_qlinear_add(a, self.sources[0], b, self.sources[1], out)
        elif self.mode == "float":
            total = sum(x.to(torch.float32) * along(self._real_input(i), self._axis(i), ndim)
                        for i, x in enumerate(accs))
            total = total.clamp(out.qmin - out.zero_point, out.qmax - out.zero_point)
            q = torch.round(total).to(torch.int64) + out.zero_point
        else:
            total = 0
            for i, x in enumerate(accs):
                axis = self._axis(i)
                m, shift = quantize_multiplier(self._real_input(i))
                shifted = (x << self.left_shifts[i]).clamp(INT32_MIN, INT32_MAX)
                total = total + multiply_by_quantized_multiplier(
                    shifted, along(m, axis, ndim), along(shift, axis, ndim)).to(torch.int64)
            m, shift = quantize_multiplier(self.real_output)
            raw = multiply_by_quantized_multiplier(total.clamp(INT32_MIN, INT32_MAX), m, shift)
            q = raw.to(torch.int64) + out.zero_point
        return q.clamp(self.output.act_min, self.output.act_max).to(out.dtype)

    def describe(self) -> str:
        kinds = [s.fmt if isinstance(s, CodeParams) else "int32 accumulator" for s in self.sources]
        o = self.output
        return (f"{kinds[0]} + {kinds[1]} -> {o.codes.fmt} (s={o.codes.scale:.4g}, "
                f"z={o.codes.zero_point}) clamp [{o.act_min}, {o.act_max}]")


class IntGlobalAvgPool(nn.Module):
    """Global average pooling in integers: an exact int32 sum whose scale carries ``1 / (H·W)``.

    The division by the element count joins the next requantization's multiplier
    (TFLite's Mean does the same), so no rounding happens here.

    Args:
        source: the input's codes or accumulator scale.
        spatial: the pooled element count ``H·W`` the model was converted for.
        keepdim: keep the pooled dimensions as size 1 (``adaptive_avg_pool2d(x, 1)``).

    Example:
        >>> pool = IntGlobalAvgPool(CodeParams(0.5, 1), 4)
        >>> pool(torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.int8)).flatten().tolist()
        [6]
    """

    def __init__(self, source: Source, spatial: int, keepdim: bool = True) -> None:
        super().__init__()
        self.source = source
        self.spatial = spatial
        self.keepdim = keepdim
        base = _as_acc_scale(source)
        axis = 1 if isinstance(source, CodeParams) else base.axis
        self.out_scale = AccScale(base.input_scale, base.weight_scale, axis, base.divisor * spatial)

    def forward(self, x: Tensor) -> Tensor:
        count = math.prod(x.shape[2:])
        if count != self.spatial:
            raise IntegerError(
                f"IntGlobalAvgPool was built for {self.spatial} positions but got {count} "
                f"(input {tuple(x.shape)}); convert again with an example input of this size"
            )
        acc = _acc_of(x, self.source, "IntGlobalAvgPool")
        total = acc.sum(dim=tuple(range(2, x.dim())), keepdim=self.keepdim)
        return check_int32(total, "IntGlobalAvgPool")

    def describe(self) -> str:
        kind = self.source.fmt if isinstance(self.source, CodeParams) else "int32 accumulator"
        return f"{kind} summed over {self.spatial} positions -> int32 (scale / {self.spatial})"

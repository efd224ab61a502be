"""`quantize` / `dequantize`: the affine map, as ONNX QuantizeLinear / DequantizeLinear define it.

For every format ONNX defines (int8, uint8, int16, uint16, int4, uint4, int2,
uint2, float8e4m3fn, float8e5m2, float4e2m1) and every layout (per-tensor,
per-axis, blocked), the results equal ONNX's (opset 21+) bit for bit:

    QuantizeLinear:   y = saturate(round_half_even(x / y_scale) + y_zero_point)
    DequantizeLinear: y = (x − x_zero_point) · x_scale

``x / y_scale`` is a true float32 division (not a multiply by 1/scale, which
PyTorch's own kernels use and which differs at ties).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.errors import FormatError, GranularityError, InputError, QParamsError
from lowbit.formats import floats
from lowbit.formats.qformat import QFormat, get_format
from lowbit.primitives import kernels
from lowbit.primitives.granularity import expand_to, normalize_axis, scale_shape
from lowbit.primitives.rounding import check_rounding, round_tensor


def quantize(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | int | None = None,
    fmt: QFormat | str = "int8",
    *,
    axis: int | None = None,
    block_size: int | None = None,
    rounding: str = "half_even",
    saturate: bool = True,
    generator: torch.Generator | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Quantize a float tensor to codes of ``fmt`` (ONNX QuantizeLinear).

    Args:
        x: float tensor (computed in float32).
        scale: positive finite scale(s): a scalar (per-tensor), a 1-D tensor of
            length ``x.shape[axis]`` (per-axis), or a tensor of ``x``'s rank whose
            ``axis`` dimension is ``ceil(x.shape[axis] / block_size)`` (blocked).
        zero_point: integer zero point(s) shaped like ``scale`` (None means 0).
            Float formats take no zero point.
        fmt: target format (`QFormat` or name).
        axis: quantization axis for per-axis and blocked layouts.
        block_size: block length along ``axis`` (blocked layout); the last block
            may be shorter.
        rounding: one of `ROUNDING_MODES`; ``"half_even"`` is ONNX's. Float
            formats always round half to even.
        saturate: float formats only: clamp overflow to the largest finite value
            (ONNX ``saturate=1``) instead of Inf/NaN. Integer codes always saturate.
        generator: random source for ``rounding="stochastic"``.
        out: optional preallocated result (``x``'s shape, ``fmt.storage_dtype``,
            contiguous); reusing one avoids page-faulting fresh memory each call.

    Returns:
        Codes in ``fmt.storage_dtype`` (one code per element; sub-byte formats
        use a byte container).

    Raises:
        InputError: ``x`` is not a float tensor or contains NaN (integer formats).
        QParamsError: a scale is not positive and finite, or a zero point is off-range.
        GranularityError: ``scale`` does not match ``axis`` / ``block_size``.

    Example:
        >>> quantize(torch.tensor([0.0, 0.5, 1.5, 300.0]), 1.0, 0, "int8")
        tensor([  0,   0,   2, 127], dtype=torch.int8)
    """
    fmt = get_format(fmt)
    check_rounding(rounding)
    _check_input(x, "x")
    work, scale_b, zp_b = _layout(x, scale, zero_point, fmt, axis, block_size)

    if fmt.kind == "float":
        if rounding != "half_even":
            raise FormatError(f"{fmt.name} casts round half to even; use rounding='half_even'")
        if saturate and fmt.storage_dtype in TORCH_CASTS and out is None:
            codes = _quantize_torch_cast(work, scale_b, fmt)
            if codes is not None:
                return codes.reshape(x.shape)
        return floats.encode(work.float() / scale_b, fmt, saturate=saturate).reshape(x.shape)
    if fmt.kind == "binary":
        # sign(0) is +1 so that every code is one of the two levels.
        return torch.where(x >= 0, 1, -1).to(torch.int8)

    out = _output(out, x, work, fmt.storage_dtype)
    if rounding == "half_even" and fmt.qmax - fmt.qmin < 2**22:
        # One fused pass when numba is installed and covers the layout; torch otherwise.
        nan = kernels.quantize_into(work, scale_b, zp_b, fmt.qmin, fmt.qmax, out)
        if nan is None:
            _quantize_half_even(work, scale_b, zp_b, fmt, out)
        else:
            _check_nan(nan > 0, x)
    else:
        for xs, ss, zs, os in chunks(work, scale_b, zp_b, out):
            value = round_tensor(torch.div(xs.float(), ss), rounding, generator)
            if zs is not None:
                value.add_(zs)
            _check_nan(bool(torch.isnan(value).any()), x)
            os.copy_(value.clamp_(fmt.qmin, fmt.qmax))
    return out.reshape(x.shape)


# Adding 1.5 * 2**23 to a float32 |v| <= 2**22 lands in [2**23, 2**24), where floats are
# exactly the integers: the addition itself rounds v half to even, like torch.round. It is
# done with addcdiv (M + x / s: a true division, then one rounding add) so one op does the
# division and the rounding; torch.round would be a second pass, and it splits work across
# threads from 2048 elements on, a hand-off that costs more than the rounding on a busy machine.
MAGIC = 1.5 * 2**23


def _quantize_half_even(
    work: Tensor, scale_b: Tensor, zp_b: Tensor | None, fmt: QFormat, out: Tensor
) -> None:
    """``clamp(round_half_even(x / s) + z)`` into ``out``, chunk by chunk in one reused buffer.

    Per chunk: ``b = M + x / s`` (rounds), ``b -= M - z`` (exact: integers below 2**24),
    clamp, copy into the codes. Values beyond 2**22 (and ±inf) are rounded coarsely but
    monotonically, so they still saturate to the right end. NaN survives every step; one
    sum per chunk (of values clamped to the code range, so finite unless NaN) detects it
    without a second pass over memory.
    """
    magic = torch.tensor(MAGIC, dtype=torch.float32, device=work.device)
    shift = MAGIC if zp_b is None else MAGIC - zp_b  # exact: zero points are integers < 2**16
    buf = None
    sums = []
    for xs, ss, sh, os in chunks(work, scale_b, shift if isinstance(shift, Tensor) else None, out):
        if buf is None:
            buf = torch.empty(xs.numel(), dtype=torch.float32, device=work.device)
        b = buf[: xs.numel()].view(xs.shape)
        torch.addcdiv(magic, xs if xs.dtype == torch.float32 else xs.float(), ss, out=b)
        b.sub_(shift if sh is None else sh).clamp_(fmt.qmin, fmt.qmax)
        sums.append(b.sum())
        os.copy_(b)
    _check_nan(bool(torch.stack(sums).isnan().any()), work)


# Float formats whose torch cast from float32 rounds half to even exactly as ONNX Cast
# does (checked bit for bit on every tie region of float32 in tests/primitives).
TORCH_CASTS = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16)


def _quantize_torch_cast(work: Tensor, scale_b: Tensor, fmt: QFormat) -> Tensor | None:
    """Saturating float codes by torch's own cast, chunk by chunk: ``x / s``, clamp to
    ±max_finite (saturation, Inf included), cast. None when ``x / s`` has NaN: its code
    (sign and payload) is `floats.encode`'s to define, so the caller runs that instead."""
    out = torch.empty(work.shape, dtype=fmt.storage_dtype, device=work.device)
    limit = fmt.max_finite
    buf = None
    sums = []
    for xs, ss, os in chunks(work, scale_b, out):
        if buf is None:
            buf = torch.empty(xs.numel(), dtype=torch.float32, device=work.device)
        b = buf[: xs.numel()].view(xs.shape)
        torch.div(xs if xs.dtype == torch.float32 else xs.float(), ss, out=b)
        b.clamp_(-limit, limit)
        # NaN iff a NaN came in, but for bfloat16's huge range, where +inf - inf can make
        # one too: then the caller's exact path runs, no harm done
        sums.append(b.sum())
        os.copy_(b)
    return None if bool(torch.stack(sums).isnan().any()) else out


def _check_nan(has_nan: bool, x: Tensor) -> None:
    if has_nan:
        raise InputError(
            f"x has {int(torch.isnan(x).sum())} NaN values; integer codes cannot hold NaN. "
            "Find where they come from, or clean the tensor with torch.nan_to_num."
        )


def dequantize(
    q: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | int | None = None,
    fmt: QFormat | str = "int8",
    *,
    axis: int | None = None,
    block_size: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Turn codes back into real values (ONNX DequantizeLinear): ``(q − z) · s``.

    Args:
        q: codes as returned by :func:`quantize` (any integer dtype for integer
            formats; the storage dtype for float formats).
        scale, zero_point, fmt, axis, block_size: as for :func:`quantize`.
        out: optional preallocated float32 result of ``q``'s shape (contiguous).

    Returns:
        float32 tensor (the subtraction is exact in int32, then one float32 multiply).

    Example:
        >>> dequantize(torch.tensor([0, 2, 127], dtype=torch.int8), 0.5)
        tensor([ 0.0000,  1.0000, 63.5000])
    """
    fmt = get_format(fmt)
    if not isinstance(q, Tensor):
        raise InputError(f"dequantize needs a tensor of codes, got {type(q).__name__}")
    work, scale_b, zp_b = _layout(q, scale, zero_point, fmt, axis, block_size)
    if fmt.kind == "float":
        return (floats.decode(work, fmt) * scale_b).reshape(q.shape)
    if q.is_floating_point():
        raise InputError(
            f"{fmt.name} codes must be an integer tensor, got {q.dtype}; pass quantize()'s output"
        )
    out = _output(out, q, work, torch.float32)
    for qs, ss, zs, os in chunks(work, scale_b, zp_b, out):
        # int32 subtraction is exact; as float32 it stays exact for |q - z| < 2**24,
        # which covers every format up to 16 bits, so one rounding remains: the multiply.
        os.copy_(qs)
        if zs is not None:
            os.sub_(zs)
        os.mul_(ss)
    return out.reshape(q.shape)


# Elements per chunk: large enough to amortise dispatch, small enough that the
# temporaries of one chunk stay in cache, so each element crosses memory once.
CHUNK = 1 << 18


def chunks(x: Tensor, *params: Tensor | None):
    """Yield matching slices of ``x`` and of tensors that broadcast against it.

    Per-tensor parameters (0-d) pass whole; parameters with ``x``'s rank are
    sliced along dimension 0 when they vary along it.
    """
    if x.numel() <= CHUNK or x.dim() == 0:
        yield (x, *params)
        return
    if x.is_contiguous() and all(_flat_ok(p, x) for p in params):
        views = [x.view(-1), *(p if p is None or p.dim() == 0 else p.view(-1) for p in params)]
        for start in range(0, x.numel(), CHUNK):
            stop = start + CHUNK
            yield tuple(v if v is None or v.dim() == 0 else v[start:stop] for v in views)
        return
    rows = x.shape[0]
    step = max(1, CHUNK * rows // x.numel())
    for start in range(0, rows, step):
        part = slice(start, start + step)
        yield (x[part], *(_rows(p, part, x.dim()) for p in params))


def _flat_ok(p: Tensor | None, x: Tensor) -> bool:
    return p is None or p.dim() == 0 or (p.shape == x.shape and p.is_contiguous())


def _rows(p: Tensor | None, part: slice, ndim: int) -> Tensor | None:
    if p is None or p.dim() < ndim or p.shape[0] == 1:
        return p
    return p[part]


def _output(out: Tensor | None, x: Tensor, work: Tensor, dtype: torch.dtype) -> Tensor:
    if out is None:
        return torch.empty(work.shape, dtype=dtype, device=x.device)
    if out.shape != x.shape or out.dtype != dtype or not out.is_contiguous():
        raise InputError(
            f"out must be a contiguous {dtype} tensor of shape {tuple(x.shape)}, got "
            f"{out.dtype} {tuple(out.shape)}"
        )
    return out.view(work.shape)


def _check_input(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError(
            f"{name} must be a float tensor, got "
            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}"
        )


def _layout(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | int | None,
    fmt: QFormat,
    axis: int | None,
    block_size: int | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate scale / zero point against ONNX's layout rules and broadcast them to ``x``.

    Returns ``(x_work, scale, zero_point)``: blocks that tile their axis exactly are
    handled by viewing ``x`` as ``(..., n_blocks, block_size, ...)`` so that the
    parameters broadcast instead of being repeated to ``x``'s full size.
    """
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if axis is not None:
        axis = normalize_axis(axis, x.dim())
    if block_size is not None:
        if axis is None:
            raise GranularityError("block_size needs an axis; pass axis= for blocked quantization")
        if not isinstance(block_size, int) or block_size < 1:
            raise GranularityError(f"block_size must be a positive integer, got {block_size!r}")
    if axis is None:
        if scale.numel() != 1:
            raise GranularityError(
                f"per-tensor quantization takes one scale, got shape {tuple(scale.shape)}; "
                "pass axis= for per-channel or axis= and block_size= for blocked"
            )
        scale = scale.reshape(())
    else:
        expected = scale_shape(x.shape, axis, block_size)
        if tuple(scale.shape) != expected:
            raise GranularityError(
                f"scale has shape {tuple(scale.shape)} but axis={axis}, block_size={block_size} "
                f"on an input of shape {tuple(x.shape)} needs {expected}"
            )
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise QParamsError(
            "scales must be positive and finite; got min "
            f"{float(scale.min()):g}, max {float(scale.max()):g}. Use choose_qparams or an "
            "observer to derive them"
        )
    zp = None
    if zero_point is not None:
        zp = torch.as_tensor(zero_point)
        if zp.numel() == 1 and scale.numel() == 1:
            zp = zp.reshape(())
        if tuple(zp.shape) != tuple(scale.shape):
            raise QParamsError(
                f"zero_point shape {tuple(zp.shape)} must equal scale shape {tuple(scale.shape)}"
            )
        zp = _check_zero_point(zp, fmt)
    if block_size is not None and x.shape[axis] % block_size == 0 and x.numel() > 0:
        n_blocks = x.shape[axis] // block_size
        work = x.reshape(*x.shape[:axis], n_blocks, block_size, *x.shape[axis + 1 :])
        return work, scale.unsqueeze(axis + 1), None if zp is None else zp.unsqueeze(axis + 1)
    scale_b = expand_to(scale, x.shape, axis, block_size)
    zp_b = None if zp is None else expand_to(zp, x.shape, axis, block_size)
    return x, scale_b, zp_b


def _check_zero_point(zp: Tensor, fmt: QFormat) -> Tensor | None:
    if zp.is_floating_point() and not bool((zp == torch.round(zp)).all()):
        raise QParamsError("zero points must be integers")
    if fmt.kind in ("float", "binary", "ternary"):
        if bool((zp != 0).any()):
            raise QParamsError(f"{fmt.name} has no zero point; pass zero_point=None or 0")
        return None
    zp32 = zp.to(torch.float32)
    if bool((zp32 < fmt.qmin).any()) or bool((zp32 > fmt.qmax).any()):
        raise QParamsError(
            f"zero points must lie in [{fmt.qmin}, {fmt.qmax}] for {fmt.name}; got "
            f"[{int(zp32.min())}, {int(zp32.max())}]"
        )
    if not bool(zp.any()):
        return None
    return zp32

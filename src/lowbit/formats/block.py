"""Shared-exponent block formats: OCP Microscaling (MX) and MSFP-style block floating point.

A block of ``block_size`` consecutive values along one axis shares one
power-of-two scale ``X = 2**e``; each value keeps only a narrow element:

    x_i ≈ X · P_i,   e = clamp(floor(log2(max_i |x_i|)) - emax_elem, -emax_scale, emax_scale)

- ``kind="mx"`` follows the OCP Microscaling Formats (MX) v1.0 spec: an E8M0
  scale (``e`` in [-127, 127], code 0xFF is NaN), elements in FP8/FP6/FP4
  cast with round-to-nearest-even and saturation to the element's max normal,
  or INT8 with an implicit scale of 2**-6 (two's complement, values in [-2, 2)
  by steps of 1/64). ``emax_elem`` is the exponent of the element's largest
  normal (8 for E4M3, 15 for E5M2, 2 for E2M3 and E2M1, 4 for E3M2, 0 for INT8).
  A block holding NaN or ±Inf gets the NaN scale, and all its values decode to
  NaN, which is what the spec says of a NaN scale (and what Microsoft's
  ``microxcaling`` reference produces).
- ``kind="bfp"`` is block floating point as in Microsoft's MSFP (Brainwave):
  the shared exponent is the block's largest exponent and each element is a
  sign plus ``m`` magnitude bits, i.e. an integer in [-(2**m - 1), 2**m - 1]
  scaled by ``2**(e - (m - 1))`` (round half to even, then clamp). MSFP12 is an
  8-bit exponent over 16 values with 3 magnitude bits. These formats have no
  NaN: a NaN/Inf input raises :class:`~lowbit.errors.InputError`.
  ``block_size=0`` shares one exponent over the whole tensor (Flexpoint-like
  ``FLEX16_5``: 16-bit two's complement mantissas, a 5-bit exponent).

Blocks too small to reach the element's range simply use the smallest scale:
an all-zero block gets ``e = -emax_scale`` (its values are 0 whatever the
scale). The last block along the axis is padded with zeros when ``block_size``
does not divide the length; padding never changes a scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lowbit.errors import FormatError, GranularityError, InputError
from lowbit.formats.floats import check_float_format, decode, encode
from lowbit.formats.qformat import (
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3FN,
    FP8_E5M2,
    INT8,
    INT16,
    QFormat,
    int_format,
)

__all__ = [
    "BLOCK_FORMATS",
    "FLEX16_5",
    "MSFP12",
    "MSFP13",
    "MSFP14",
    "MSFP15",
    "MSFP16",
    "MXFP4",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXINT8",
    "NAN_EXPONENT",
    "BlockFormat",
    "BlockQuantized",
    "block_dequantize",
    "block_fake_quantize",
    "block_quantize",
]

BlockKind = Literal["mx", "bfp"]

# Shared-exponent value marking a NaN scale: E8M0 code 0xFF is 255 - 127.
NAN_EXPONENT = 128


@dataclass(frozen=True)
class BlockFormat:
    """A shared-exponent block format.

    Args:
        name: e.g. ``"mxfp8_e4m3"``, ``"msfp12"``.
        element: per-value format: a float ``QFormat`` (MX FP elements) or a
            signed int ``QFormat`` whose codes carry an implicit scale of
            ``2**-(bits - 2)``, so that they span [-2, 2).
        block_size: values sharing one exponent; 0 means the whole tensor.
        scale_bits: bits of the shared exponent (8 for E8M0); the exponent
            lies in [-(2**(scale_bits-1) - 1), 2**(scale_bits-1) - 1].
        kind: ``"mx"`` (OCP MX: NaN/Inf blocks get a NaN scale) or ``"bfp"``
            (no NaN: NaN/Inf input is an error).

    Example:
        >>> MXFP4.bits_per_element
        4.25
    """

    name: str
    element: QFormat
    block_size: int
    scale_bits: int = 8
    kind: BlockKind = "mx"

    def __post_init__(self) -> None:
        if self.kind not in ("mx", "bfp"):
            raise FormatError(f"{self.name}: kind must be 'mx' or 'bfp', got {self.kind!r}")
        if not isinstance(self.block_size, int) or self.block_size < 0:
            raise FormatError(
                f"{self.name}: block_size must be a non-negative int (0 = whole tensor), "
                f"got {self.block_size!r}"
            )
        if not isinstance(self.scale_bits, int) or not 2 <= self.scale_bits <= 8:
            raise FormatError(
                f"{self.name}: scale_bits must be 2..8 (8 is E8M0), got {self.scale_bits!r}"
            )
        if self.kind == "mx" and self.scale_bits != 8:
            raise FormatError(f"{self.name}: MX formats use an 8-bit E8M0 scale; use kind='bfp'")
        el = self.element
        if el.kind == "float":
            check_float_format(el)
        elif el.kind != "int" or not el.signed:
            raise FormatError(
                f"{self.name}: the element must be a float or a signed int QFormat, got {el!r}"
            )
        # every value X * P must be a float32 value: the smallest one is X_min * P_min
        smallest = el.min_subnormal if el.kind == "float" else 2.0 ** -(el.bits - 2)
        if smallest * 2.0**-self.scale_emax < 2.0**-149:
            raise FormatError(
                f"{self.name}: element {el.name} at the smallest scale 2**-{self.scale_emax} "
                "falls below float32's range; use a narrower element or fewer scale bits"
            )

    @property
    def scale_emax(self) -> int:
        """Largest shared exponent (127 for E8M0); the smallest is its negative."""
        return (1 << (self.scale_bits - 1)) - 1

    @property
    def emax_elem(self) -> int:
        """Exponent of the element's largest normal value (0 for int elements)."""
        return self.element.max_exponent if self.element.kind == "float" else 0

    @property
    def bits_per_element(self) -> float:
        """Storage bits per value including the amortised shared exponent (for size reports).

        ``block_size=0`` (one exponent per tensor) counts the element bits only.
        """
        if self.block_size == 0:
            return float(self.element.bits)
        return self.element.bits + self.scale_bits / self.block_size

    def __repr__(self) -> str:
        return f"BlockFormat({self.name})"


MXFP8_E4M3 = BlockFormat("mxfp8_e4m3", FP8_E4M3FN, 32)
MXFP8_E5M2 = BlockFormat("mxfp8_e5m2", FP8_E5M2, 32)
MXFP6_E2M3 = BlockFormat("mxfp6_e2m3", FP6_E2M3, 32)
MXFP6_E3M2 = BlockFormat("mxfp6_e3m2", FP6_E3M2, 32)
MXFP4 = BlockFormat("mxfp4", FP4_E2M1, 32)
MXINT8 = BlockFormat("mxint8", INT8, 32)
# MSFP<n>: 1 sign + (n - 9) magnitude bits per value, an 8-bit exponent per 16 values
MSFP12 = BlockFormat("msfp12", int_format(4, narrow_range=True), 16, kind="bfp")
MSFP13 = BlockFormat("msfp13", int_format(5, narrow_range=True), 16, kind="bfp")
MSFP14 = BlockFormat("msfp14", int_format(6, narrow_range=True), 16, kind="bfp")
MSFP15 = BlockFormat("msfp15", int_format(7, narrow_range=True), 16, kind="bfp")
MSFP16 = BlockFormat("msfp16", int_format(8, narrow_range=True), 16, kind="bfp")
FLEX16_5 = BlockFormat("flex16+5", INT16, 0, scale_bits=5, kind="bfp")

BLOCK_FORMATS: dict[str, BlockFormat] = {
    f.name: f
    for f in (
        MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4, MXINT8,
        MSFP12, MSFP13, MSFP14, MSFP15, MSFP16, FLEX16_5,
    )
}  # fmt: skip


@dataclass(frozen=True)
class BlockQuantized:
    """Codes and shared exponents of a block-quantized tensor.

    Attributes:
        codes: element codes, shape ``(*rest, n_blocks, block_size)`` where
            ``rest`` is the input shape without ``axis``; in the element's
            ``storage_dtype`` (e.g. ``torch.float8_e4m3fn``, ``uint8`` bit
            patterns for fp4/fp6, ``int8`` for int elements). Padding is zeros.
        exponents: int32 shared exponents, shape ``(*rest, n_blocks)``; the
            scale of a block is ``2**exponent``; :data:`NAN_EXPONENT` marks a
            NaN scale (MX only).
        shape: the input shape.
        axis: the (non-negative) axis the blocks run along.
        fmt: the block format.
    """

    codes: Tensor
    exponents: Tensor
    shape: torch.Size
    axis: int
    fmt: BlockFormat

    def scale_codes(self) -> Tensor:
        """The shared exponents as E8M0 codes (uint8, ``exponent + 127``, 0xFF = NaN).

        Only for 8-bit scales.
        """
        if self.fmt.scale_bits != 8:
            raise FormatError(f"{self.fmt.name} has a {self.fmt.scale_bits}-bit exponent, not E8M0")
        return (self.exponents + 127).to(torch.uint8)


def _exp2(e: Tensor) -> Tensor:
    """2.0**e as float32 for integer exponents in [-149, 127], exactly (bit construction)."""
    e = e.to(torch.int32)
    normal = ((e.clamp(-126, 127) + 127) << 23).view(torch.float32)
    sub = (torch.ones_like(e) << (e + 149).clamp(0, 22)).view(torch.float32)
    return torch.where(e >= -126, normal, sub)


def _to_blocks(x: Tensor, fmt: BlockFormat, axis: int) -> tuple[Tensor, int, int]:
    """(blocks of shape (*rest, n_blocks, bs), axis, length) with zero padding."""
    if fmt.block_size == 0:
        return x.reshape(1, -1), 0, x.numel()
    nd = x.dim()
    if not -nd <= axis < nd:
        raise GranularityError(
            f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}; "
            f"use an axis in [{-nd}, {nd - 1}]"
        )
    axis %= nd
    moved = x.movedim(axis, -1)
    length = moved.shape[-1]
    bs = fmt.block_size
    pad = (-length) % bs
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    return moved.reshape(*moved.shape[:-1], -1, bs), axis, length


def block_quantize(x: Tensor, fmt: BlockFormat, axis: int = -1) -> BlockQuantized:
    """Quantize a tensor to a block format with shared exponents along ``axis``.

    Args:
        x: real tensor (computed on float32 values), at least one element.
        fmt: a :class:`BlockFormat` (``MXFP8_E4M3``, ``MXFP4``, ``MSFP12``, ...).
        axis: the axis the blocks run along (ignored when ``fmt.block_size == 0``).
            A length that ``block_size`` does not divide is zero-padded.

    Returns:
        A :class:`BlockQuantized`.

    Raises:
        InputError: empty input; NaN/Inf with a ``bfp`` format.
        GranularityError: ``axis`` out of range.

    Example:
        >>> import torch
        >>> fmt = BlockFormat("b", FP4_E2M1, 4)
        >>> bq = block_quantize(torch.tensor([[0.5, -1.0, 3.0, 6.5]]), fmt)
        >>> bq.exponents.tolist(), block_dequantize(bq).tolist()
        ([[0]], [[0.5, -1.0, 3.0, 6.0]])
    """
    if not isinstance(fmt, BlockFormat):
        raise FormatError(f"expected a BlockFormat, got {fmt!r}; use e.g. MXFP8_E4M3 or MSFP12")
    if not isinstance(x, Tensor) or x.is_complex() or x.dtype == torch.bool:
        raise InputError("block_quantize expects a real torch.Tensor")
    if x.numel() == 0:
        raise InputError(f"cannot block-quantize an empty tensor (shape {tuple(x.shape)})")
    shape = x.shape
    x = x.detach().to(torch.float32)
    x = x.reshape(1) if x.dim() == 0 else x
    blocks, axis, _ = _to_blocks(x, fmt, axis)
    finite = torch.isfinite(blocks)
    bad = None
    if not bool(finite.all()):
        if fmt.kind == "bfp":
            raise InputError(
                f"{fmt.name} has no NaN or Inf; the input holds {int((~finite).sum())} of them. "
                "Clean the tensor (torch.nan_to_num) or use an MX format"
            )
        bad = ~finite.all(dim=-1)
        blocks = torch.where(bad.unsqueeze(-1), torch.zeros_like(blocks), blocks)

    amax = blocks.abs().amax(dim=-1)
    _, e = torch.frexp(amax)  # amax = mant * 2**e with mant in [0.5, 1): floor(log2) = e - 1
    exps = (e - 1 - fmt.emax_elem).clamp(-fmt.scale_emax, fmt.scale_emax)
    exps = torch.where(amax == 0, -fmt.scale_emax, exps)
    scaled = blocks * _exp2(-exps).unsqueeze(-1)  # exact: a power of two in float32 range

    el = fmt.element
    if el.kind == "float":
        codes = encode(scaled, el, saturate=True)
    else:
        ints = torch.round(scaled * 2.0 ** (el.bits - 2)).clamp_(el.qmin, el.qmax)
        codes = ints.to(el.storage_dtype)
    if bad is not None:
        exps = torch.where(bad, NAN_EXPONENT, exps)
    return BlockQuantized(codes, exps.to(torch.int32), shape, axis, fmt)


def _element_values(codes: Tensor, el: QFormat) -> Tensor:
    if el.kind == "float":
        return decode(codes, el)
    return codes.to(torch.float32) * 2.0 ** -(el.bits - 2)


def block_dequantize(bq: BlockQuantized) -> Tensor:
    """Values of a :class:`BlockQuantized` as float32, in the original shape.

    Args:
        bq: the result of :func:`block_quantize`.

    Returns:
        float32 tensor ``X · P`` (exact); blocks with a NaN scale are all NaN.

    Example:
        >>> import torch
        >>> x = torch.linspace(-1, 1, 64)
        >>> bool((block_dequantize(block_quantize(x, MXFP8_E4M3)) - x).abs().max() < 0.04)
        True
    """
    fmt = bq.fmt
    vals = _element_values(bq.codes, fmt.element)
    nan = bq.exponents == NAN_EXPONENT
    scale = _exp2(torch.where(nan, 0, bq.exponents))
    scale = torch.where(nan, torch.full_like(scale, float("nan")), scale)
    out = vals * scale.unsqueeze(-1)
    if fmt.block_size == 0:
        return out.reshape(bq.shape)
    out = out.reshape(*out.shape[:-2], -1)
    length = bq.shape[bq.axis] if len(bq.shape) else 1
    out = out[..., :length]
    if len(bq.shape) == 0:
        return out.reshape(())
    return out.movedim(-1, bq.axis)


def block_fake_quantize(x: Tensor, fmt: BlockFormat, axis: int = -1) -> Tensor:
    """Round a tensor through a block format and back (float32 out, same shape).

    Args:
        x: real tensor.
        fmt: a :class:`BlockFormat`.
        axis: the axis the blocks run along.

    Returns:
        float32 tensor of the values the block format represents.

    Example:
        >>> import torch
        >>> block_fake_quantize(torch.tensor([1.0, 0.3, -0.26, 0.0]), BlockFormat("b", FP4_E2M1, 4))
        tensor([ 1.0000,  0.2500, -0.2500,  0.0000])
    """
    return block_dequantize(block_quantize(x, fmt, axis))

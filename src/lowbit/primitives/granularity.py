"""Granularity: which elements share one scale and zero point.

Every granularity maps onto ONNX's QuantizeLinear layout, so that what lowbit
simulates is what a runtime computes:

- per-tensor: scalar scale;
- per-channel (axis): 1-D scale of length ``x.shape[axis]`` (ONNX ``axis``);
- per-token: one scale per row of the last dimension, i.e. ONNX blocked
  quantization along the last axis with ``block_size = x.shape[-1]``;
- per-group: ONNX blocked quantization, blocks of ``group_size`` along ``axis``;
  a length the group size does not divide gets a shorter last group (ONNX
  semantics, equivalent to padding that group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lowbit.errors import GranularityError

GranularityKind = Literal["tensor", "channel", "token", "group"]


@dataclass(frozen=True)
class Granularity:
    """Which elements share quantization parameters.

    Args:
        kind: ``"tensor"``, ``"channel"``, ``"token"`` or ``"group"``.
        axis: channel axis (``"channel"``) or the axis groups run along (``"group"``).
        group_size: elements per group (``"group"`` only).

    Example:
        >>> per_group(128).group_size
        128
    """

    kind: GranularityKind = "tensor"
    axis: int | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tensor", "channel", "token", "group"):
            raise GranularityError(
                f"unknown granularity {self.kind!r}; use tensor, channel, token or group"
            )
        if self.kind == "group" and (
            not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise GranularityError(
                f"per-group granularity needs a positive integer group_size, got {self.group_size!r}"
            )
        if self.kind == "channel" and not isinstance(self.axis, int):
            raise GranularityError("per-channel granularity needs an integer axis (0 for weights)")

    def __str__(self) -> str:
        if self.kind == "channel":
            return f"per-channel(axis={self.axis})"
        if self.kind == "group":
            return f"per-group({self.group_size}, axis={self.axis})"
        return f"per-{self.kind}"


def per_tensor() -> Granularity:
    return Granularity("tensor")


def per_channel(axis: int = 0) -> Granularity:
    return Granularity("channel", axis=axis)


def per_token() -> Granularity:
    return Granularity("token", axis=-1)


def per_group(group_size: int, axis: int = -1) -> Granularity:
    return Granularity("group", axis=axis, group_size=group_size)


def as_granularity(
    granularity: Granularity | str, *, axis: int | None = None, group_size: int | None = None
) -> Granularity:
    """Accept a `Granularity` or its kind name plus ``axis`` / ``group_size``."""
    if isinstance(granularity, Granularity):
        return granularity
    if granularity in ("tensor", "per_tensor"):
        return per_tensor()
    if granularity in ("channel", "per_channel"):
        return per_channel(0 if axis is None else axis)
    if granularity in ("token", "per_token"):
        return per_token()
    if granularity in ("group", "per_group"):
        return Granularity("group", axis=-1 if axis is None else axis, group_size=group_size)
    raise GranularityError(
        f"unknown granularity {granularity!r}; use 'tensor', 'channel', 'token' or 'group'"
    )


def normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise GranularityError(
            f"axis {axis} is out of range for a tensor with {ndim} dimensions; "
            f"use an axis in [{-ndim}, {ndim - 1}]"
        )
    return axis % ndim


def onnx_layout(shape: torch.Size, granularity: Granularity) -> tuple[int | None, int | None]:
    """The ONNX (axis, block_size) pair that expresses ``granularity`` for ``shape``."""
    ndim = len(shape)
    if granularity.kind == "tensor":
        return None, None
    if ndim == 0:
        raise GranularityError(
            f"{granularity} needs a tensor with at least one dimension; use per-tensor for scalars"
        )
    if granularity.kind == "channel":
        return normalize_axis(granularity.axis, ndim), None
    if granularity.kind == "token":
        return ndim - 1, max(int(shape[-1]), 1)
    axis = normalize_axis(granularity.axis, ndim)
    return axis, granularity.group_size


def scale_shape(shape: torch.Size, axis: int | None, block_size: int | None) -> tuple[int, ...]:
    """Shape of the scale tensor ONNX expects for this layout."""
    if axis is None:
        return ()
    if block_size is None:
        return (int(shape[axis]),)
    out = list(shape)
    out[axis] = -(-int(shape[axis]) // block_size)
    return tuple(out)


def reduce_minmax(
    x: Tensor, axis: int | None, block_size: int | None
) -> tuple[Tensor, Tensor]:
    """Min and max of ``x`` over each group of elements that shares parameters.

    Returns tensors of :func:`scale_shape`. Padding of a short last block
    repeats that block's own elements (edge padding), so it never changes the
    block's range.
    """
    if x.numel() == 0:
        raise GranularityError("cannot reduce an empty tensor; quantize tensors with elements")
    if axis is None:
        lo, hi = torch.aminmax(x)
        return lo, hi
    if block_size is None:
        moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        return torch.aminmax(moved, dim=1)
    blocks = _to_blocks(x, axis, block_size)
    lo, hi = torch.aminmax(blocks, dim=-1)
    return lo.movedim(-1, axis), hi.movedim(-1, axis)


def _to_blocks(x: Tensor, axis: int, block_size: int) -> Tensor:
    """View ``x`` as (..., n_blocks, block_size) along ``axis`` (moved last)."""
    moved = x.movedim(axis, -1)
    length = moved.shape[-1]
    n_blocks = -(-length // block_size)
    pad = n_blocks * block_size - length
    if pad:
        edge = moved[..., -1:].expand(*moved.shape[:-1], pad)
        moved = torch.cat([moved, edge], dim=-1)
    return moved.reshape(*moved.shape[:-1], n_blocks, block_size)


def expand_to(param: Tensor, shape: torch.Size, axis: int | None, block_size: int | None) -> Tensor:
    """Broadcast a scale / zero point laid out as ONNX expects against ``shape``."""
    if axis is None:
        return param
    ndim = len(shape)
    if block_size is None:
        view = [1] * ndim
        view[axis] = -1
        return param.reshape(view)
    full = param.repeat_interleave(block_size, dim=axis)
    return full.narrow(axis, 0, int(shape[axis]))


def reduce_to(full: Tensor, param_shape: tuple[int, ...], axis: int | None, block_size: int | None) -> Tensor:
    """Sum an input-shaped tensor back onto the parameter layout (the adjoint of `expand_to`)."""
    if axis is None:
        return full.sum().reshape(param_shape)
    if block_size is None:
        dims = [d for d in range(full.dim()) if d != axis]
        return full.sum(dim=dims) if dims else full
    moved = full.movedim(axis, -1)
    length = moved.shape[-1]
    n_blocks = -(-length // block_size)
    pad = n_blocks * block_size - length
    if pad:
        # Zero padding adds nothing to a sum, unlike the edge padding of reduce_minmax.
        moved = torch.nn.functional.pad(moved, (0, pad))
    summed = moved.reshape(*moved.shape[:-1], n_blocks, block_size).sum(-1)
    return summed.movedim(-1, axis)

"""Collectives for merging observer state across `torch.distributed` ranks.

Each observer decides how its state merges (see ``Observer.sync``):

- min / max: ``all_reduce`` MIN / MAX — exactly what one observer that saw
  every rank's data would hold;
- moving average of batch ranges: the sums of batch minima / maxima and the
  batch counts are added, so the mean is over every batch of every rank
  (exact, like a single observer);
- EMA: the ranks' EMAs are averaged (ranks without data left out). An EMA
  depends on the order of batches, which has no single answer across ranks;
  the mean is the order-free choice;
- histograms: every rank re-bins onto the grid of the union range (exact:
  grids are power-of-two aligned, see `histogram`) and the counts are added.

Everything here is a no-op-friendly thin layer: ``world_size`` is 1 when
``torch.distributed`` is unavailable or not initialised.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lowbit.errors import DistributedError


def world_size(group: Any | None = None) -> int:
    """Ranks in ``group``, or 1 when torch.distributed is unavailable or not initialised."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def all_gather_object(obj: Any, group: Any | None = None) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    out: list[Any] = [None] * world_size(group)
    try:
        torch.distributed.all_gather_object(out, obj, group=group)
    except RuntimeError as err:
        raise DistributedError(f"gathering observer metadata across ranks failed: {err}") from err
    return out


def all_reduce_(tensor: Tensor, op: str, group: Any | None = None) -> Tensor:
    """In-place all-reduce of ``tensor`` with ``op`` in ``"sum"``, ``"min"``, ``"max"``.

    Moves the tensor to where the backend needs it (gloo: CPU, nccl: the
    current CUDA device) and back.
    """
    dist = torch.distributed
    reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    backend = str(dist.get_backend(group))
    if backend == "nccl" and not tensor.is_cuda:
        device = torch.device("cuda", torch.cuda.current_device())
    elif backend == "gloo" and tensor.device.type != "cpu":
        device = torch.device("cpu")
    else:
        device = tensor.device
    work = tensor.to(device).contiguous()
    try:
        dist.all_reduce(work, op=reduce_op, group=group)
    except RuntimeError as err:
        raise DistributedError(f"all_reduce({op}) of observer state failed: {err}") from err
    if work is not tensor:
        tensor.copy_(work)
    return tensor

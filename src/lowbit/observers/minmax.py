"""Min-max observers: the running extremes, their moving average, and their EMA.

Seed 001 (§2.4) names the ways to turn calibration batches into a range; the
three here are the cheap ones that keep one range per parameter group:

- `MinMaxObserver`: the smallest min and largest max ever seen;
- `MovingAverageMinMaxObserver`: the mean of the per-batch minima / maxima;
- `EMAMinMaxObserver`: exponential smoothing (指数平滑法) of the per-batch
  minima / maxima; the first batch initialises the average.

All three work at any granularity (per-tensor, per-channel, per-token,
per-group); see `lowbit.observers.base` for the shared rules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.errors import ObserverError
from lowbit.observers import sync as dist_sync
from lowbit.observers.base import Observer
from lowbit.primitives.granularity import Granularity, onnx_layout, scale_shape


class MinMaxObserver(Observer):
    """Running min and max of everything observed.

    Args:
        granularity: `Granularity` or name (``"tensor"``, ``"channel"``, ``"token"``, ``"group"``).
        axis, group_size: used when ``granularity`` is given by name.

    Buffers:
        ``min_val`` / ``max_val``: float32, one entry per parameter group
        (shape of the ONNX scale), empty until the first update.

    Example:
        >>> obs = MinMaxObserver("channel", axis=0)
        >>> obs(torch.tensor([[1.0, -2.0], [0.5, 3.0]])).shape
        torch.Size([2, 2])
        >>> obs.min_val, obs.max_val
        (tensor([-2.0000,  0.5000]), tensor([1., 3.]))
    """

    _lazy_buffers = ("input_shape", "min_val", "max_val")

    def __init__(
        self,
        granularity: Granularity | str = "tensor",
        *,
        axis: int | None = None,
        group_size: int | None = None,
    ) -> None:
        super().__init__(granularity, axis=axis, group_size=group_size)
        self.register_buffer("min_val", torch.zeros(0))
        self.register_buffer("max_val", torch.zeros(0))

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        if not self.has_data:
            self.min_val = lo.to(self.seen.device).clone()
            self.max_val = hi.to(self.seen.device).clone()
            return
        torch.minimum(self.min_val, lo, out=self.min_val)
        torch.maximum(self.max_val, hi, out=self.max_val)

    def _reset_state(self) -> None:
        self.min_val = self.min_val.new_zeros(0)
        self.max_val = self.max_val.new_zeros(0)

    def _sync(self, group: object | None, infos: list[dict]) -> None:
        if not self.has_data:
            # Neutral elements of MIN / MAX, shaped like the ranks that saw data.
            shape = _range_shape(self, infos)
            self.min_val = torch.full(shape, float("inf"), device=self.seen.device)
            self.max_val = torch.full(shape, float("-inf"), device=self.seen.device)
        dist_sync.all_reduce_(self.min_val, "min", group)
        dist_sync.all_reduce_(self.max_val, "max", group)


class MovingAverageMinMaxObserver(Observer):
    """Mean of the per-batch minima and maxima.

    One outlier batch moves the range by 1/n of its excess instead of all of
    it. The state is the float64 sums of batch minima / maxima and ``seen``,
    so the mean is exact and merges exactly across ranks.

    Args:
        granularity, axis, group_size: as for `MinMaxObserver`.

    Example:
        >>> obs = MovingAverageMinMaxObserver()
        >>> _ = obs(torch.tensor([0.0, 1.0])); _ = obs(torch.tensor([0.0, 3.0]))
        >>> float(obs.max_val)
        2.0
    """

    _lazy_buffers = ("input_shape", "min_sum", "max_sum")
    _additive_sync = True

    def __init__(
        self,
        granularity: Granularity | str = "tensor",
        *,
        axis: int | None = None,
        group_size: int | None = None,
    ) -> None:
        super().__init__(granularity, axis=axis, group_size=group_size)
        self.register_buffer("min_sum", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("max_sum", torch.zeros(0, dtype=torch.float64))

    @property
    def min_val(self) -> Tensor:
        """Mean of the batch minima (float32)."""
        return self._mean(self.min_sum)

    @property
    def max_val(self) -> Tensor:
        """Mean of the batch maxima (float32)."""
        return self._mean(self.max_sum)

    def _mean(self, total: Tensor) -> Tensor:
        if not self.has_data:
            return total.float()
        return (total / int(self.seen)).float()

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        if not self.has_data:
            self.min_sum = lo.to(self.seen.device, torch.float64)
            self.max_sum = hi.to(self.seen.device, torch.float64)
            return
        self.min_sum += lo.double()
        self.max_sum += hi.double()

    def _reset_state(self) -> None:
        self.min_sum = self.min_sum.new_zeros(0)
        self.max_sum = self.max_sum.new_zeros(0)

    def _sync(self, group: object | None, infos: list[dict]) -> None:
        if not self.has_data:
            shape = _range_shape(self, infos)
            self.min_sum = torch.zeros(shape, dtype=torch.float64, device=self.seen.device)
            self.max_sum = torch.zeros(shape, dtype=torch.float64, device=self.seen.device)
        dist_sync.all_reduce_(self.min_sum, "sum", group)
        dist_sync.all_reduce_(self.max_sum, "sum", group)


class EMAMinMaxObserver(Observer):
    """Exponential moving average of the per-batch minima and maxima.

    ``v ← momentum · v + (1 − momentum) · batch``; the first batch sets ``v``.
    A momentum of 0.9 weighs the last ~10 batches most.

    Args:
        momentum: weight of the history, in [0, 1). 0 keeps only the last batch.
        granularity, axis, group_size: as for `MinMaxObserver`.

    Example:
        >>> obs = EMAMinMaxObserver(momentum=0.5)
        >>> _ = obs(torch.tensor([0.0, 1.0])); _ = obs(torch.tensor([0.0, 3.0]))
        >>> float(obs.max_val)
        2.0
    """

    _lazy_buffers = ("input_shape", "min_val", "max_val")

    def __init__(
        self,
        momentum: float = 0.9,
        granularity: Granularity | str = "tensor",
        *,
        axis: int | None = None,
        group_size: int | None = None,
    ) -> None:
        super().__init__(granularity, axis=axis, group_size=group_size)
        if not 0.0 <= float(momentum) < 1.0:
            raise ObserverError(f"EMA momentum must lie in [0, 1), got {momentum!r}; 0.9 keeps ~10 batches")
        self.momentum = float(momentum)
        self.register_buffer("min_val", torch.zeros(0))
        self.register_buffer("max_val", torch.zeros(0))

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        if not self.has_data:
            self.min_val = lo.to(self.seen.device).clone()
            self.max_val = hi.to(self.seen.device).clone()
            return
        m = self.momentum
        self.min_val.mul_(m).add_(lo, alpha=1.0 - m)
        self.max_val.mul_(m).add_(hi, alpha=1.0 - m)

    def _reset_state(self) -> None:
        self.min_val = self.min_val.new_zeros(0)
        self.max_val = self.max_val.new_zeros(0)

    def _sync(self, group: object | None, infos: list[dict]) -> None:
        # Mean over the ranks that saw data; the others contribute zero weight.
        weight = 1.0 if self.has_data else 0.0
        if not self.has_data:
            shape = _range_shape(self, infos)
            self.min_val = torch.zeros(shape, device=self.seen.device)
            self.max_val = torch.zeros(shape, device=self.seen.device)
        ranks_with_data = sum(1 for info in infos if info["seen"] > 0)
        for buf in (self.min_val, self.max_val):
            total = buf.double() * weight
            dist_sync.all_reduce_(total, "sum", group)
            buf.copy_(total / ranks_with_data)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, " + super().extra_repr()


def _range_shape(obs: Observer, infos: list[dict]) -> tuple[int, ...]:
    """Shape of the per-group ranges, for a rank that saw no data (from one that did)."""
    first = next(info["shape"] for info in infos if info["seen"] > 0)
    axis, block = onnx_layout(torch.Size(first), obs.granularity)
    return scale_shape(torch.Size(first), axis, block)

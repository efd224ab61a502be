"""`Observer`: what every range estimator shares.

An observer watches tensors go by (``update`` / ``forward``) and remembers
just enough to choose a range later (``compute_qparams``). Its whole state is
registered buffers, so ``state_dict()`` / ``load_state_dict()`` round-trip,
also into a freshly constructed observer: buffers whose shape depends on the
data (per-channel ranges, the input shape) are resized on load.

Conventions every observer follows:

- empty tensors are skipped: no state change, ``seen`` does not move (a
  calibration loop may legitimately produce an empty batch);
- NaN / Inf raise `InputError` before any state changes; detection is cheap,
  from the min / max the observer computes anyway (a NaN or Inf makes them
  non-finite);
- per-channel ranges need the same channel count every update; per-token and
  per-group ranges need the same input shape every update (they are meant for
  weights and dynamic use, not for activations across batches);
- ``seen`` counts the batches observed (summed over ranks after `sync`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lowbit.errors import DistributedError, InputError, ObserverError
from lowbit.formats.qformat import QFormat, get_format
from lowbit.observers import sync as dist_sync
from lowbit.primitives.granularity import (
    Granularity,
    as_granularity,
    normalize_axis,
    onnx_layout,
    reduce_minmax,
)
from lowbit.primitives.qparams import QParams, check_finite, qparams_from_minmax

# sync_state values. A sum-type merge (histogram counts, sums of batch ranges)
# must happen once: syncing again after more updates would count the data that
# was already merged once per rank.
LOCAL = 0
SYNCED = 1
UPDATED_AFTER_SYNC = 2


class Observer(nn.Module):
    """Base class of lowbit's observers (range estimators).

    Subclasses implement ``_observe(x, lo, hi)`` (fold one batch's reduced
    min / max into the state), ``_reset_state()``, ``min_val`` / ``max_val`` and
    ``_sync(group, infos)``.

    Args:
        granularity: `Granularity` or ``"tensor"``, ``"channel"``, ``"token"``, ``"group"``.
        axis, group_size: used when ``granularity`` is given by name.
    """

    # Buffers whose shape is only known once data arrives; resized by load_state_dict.
    _lazy_buffers: tuple[str, ...] = ("input_shape",)
    # True where sync() adds the ranks' states (so it must not happen twice).
    _additive_sync: bool = False

    def __init__(
        self,
        granularity: Granularity | str = "tensor",
        *,
        axis: int | None = None,
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        self.granularity = as_granularity(granularity, axis=axis, group_size=group_size)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("sync_state", torch.zeros((), dtype=torch.int64))
        # Shape of the first batch: fixes the ONNX layout (axis, block_size) of the qparams.
        self.register_buffer("input_shape", torch.zeros(0, dtype=torch.int64))

    # --- observing ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Observe ``x`` and return it unchanged, so the observer can sit in a model."""
        self.update(x)
        return x

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold one batch into the state.

        Args:
            x: float tensor. Empty tensors are skipped without any state change.

        Raises:
            InputError: ``x`` is not a float tensor, or holds NaN / Inf (state unchanged).
            ObserverError: the channel count (per-channel) or the shape (per-token,
                per-group) differs from earlier updates.
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"{type(self).__name__} observes float tensors, got {got}")
        if x.numel() == 0:
            return
        x = x.detach()
        self._check_shape(x)
        lo, hi = self._reduce(x)
        if not _all_finite(lo, hi):
            check_finite(x, f"{type(self).__name__} input")
        wide = lo.dtype == torch.float64  # only float64 can round outwards past float32's range
        lo, hi = _float32_outward(lo, hi)
        if wide and not _all_finite(lo, hi):
            raise InputError(
                f"{type(self).__name__} input has values beyond float32's range "
                f"(min {float(lo.min()):g}, max {float(hi.max()):g}); scale the tensor down first"
            )
        if not self.has_data:
            self.input_shape = torch.tensor(tuple(x.shape), dtype=torch.int64, device=self.seen.device)
        self._observe(x, lo, hi)
        self.seen.add_(1)  # in place: `+=` would also go through nn.Module.__setattr__
        if int(self.sync_state) == SYNCED:
            self.sync_state.fill_(UPDATED_AFTER_SYNC)

    def reset(self) -> None:
        """Forget everything observed (the configuration stays)."""
        self.seen.zero_()
        self.sync_state.zero_()
        self.input_shape = self.input_shape.new_zeros(0)
        self._reset_state()

    @property
    def has_data(self) -> bool:
        return int(self.seen) > 0

    def _check_shape(self, x: Tensor) -> None:
        if self.granularity.kind == "tensor" or not self.has_data:
            return
        first = tuple(int(d) for d in self.input_shape.tolist())
        if self.granularity.kind == "channel":
            old = first[normalize_axis(self.granularity.axis, len(first))]
            new = x.shape[normalize_axis(self.granularity.axis, x.dim())]
            if old != new:
                raise ObserverError(
                    f"{type(self).__name__} ({self.granularity}) saw {old} channels before and "
                    f"{new} now (input shape {tuple(x.shape)}, first {first}); feed one tensor "
                    "per observer, or call reset() first"
                )
            return
        if tuple(x.shape) != first:
            raise ObserverError(
                f"{type(self).__name__} ({self.granularity}) keeps one range per "
                f"{self.granularity.kind}, so every update needs the first input's shape "
                f"{first}; got {tuple(x.shape)}. Per-token and per-group ranges are for weights "
                "and dynamic quantization; use per-tensor or per-channel for activations "
                "across batches, or call reset() first"
            )

    # --- results --------------------------------------------------------------------
    def layout(self) -> tuple[int | None, int | None]:
        """ONNX ``(axis, block_size)`` of the qparams, from the first input's shape."""
        self._require_data("layout")
        shape = torch.Size(int(d) for d in self.input_shape.tolist())
        return onnx_layout(shape, self.granularity)

    def compute_qparams(self, fmt: QFormat | str, *, symmetric: bool = True) -> QParams:
        """Scale and zero point covering ``[min_val, max_val]``, in ONNX layout.

        Args:
            fmt: target format (`QFormat` or name).
            symmetric: see :func:`lowbit.primitives.qparams.qparams_from_minmax`.

        Returns:
            `QParams` ready for :func:`lowbit.primitives.quantize`.

        Raises:
            ObserverError: no data was observed yet.

        Example:
            >>> from lowbit.observers import MinMaxObserver
            >>> obs = MinMaxObserver()
            >>> obs(torch.tensor([-1.0, 2.0]))
            tensor([-1.,  2.])
            >>> float(obs.compute_qparams("int8").scale)
            0.015748031437397003
        """
        fmt = get_format(fmt)
        self._require_data("compute_qparams")
        scale, zero_point = qparams_from_minmax(self.min_val, self.max_val, fmt, symmetric=symmetric)
        axis, block = self.layout()
        return QParams(scale, zero_point, fmt, axis, block)

    def _require_data(self, what: str) -> None:
        if not self.has_data:
            raise ObserverError(
                f"{type(self).__name__}.{what}() was called before the observer saw any data; "
                "run calibration batches through it (observer(x) or observer.update(x)) first"
            )

    # --- distributed ----------------------------------------------------------------
    def sync(self, group: object | None = None) -> None:
        """Merge the state across the ranks of ``group`` (all ranks must call it).

        A no-op when ``torch.distributed`` is not initialised or the group has
        one rank, and when every rank is already synced and unchanged since.
        Ranks that saw no data take part and receive the merged state.

        Raises:
            DistributedError: ranks observed incompatible shapes, or an additive
                state (histogram, moving average) was synced, updated and is
                synced again (the first merge would be counted once per rank).
        """
        if dist_sync.world_size(group) <= 1:
            return
        mine = {
            "seen": int(self.seen),
            "state": int(self.sync_state),
            "shape": tuple(int(d) for d in self.input_shape.tolist()),
            "extra": self._sync_signature(),
        }
        infos = dist_sync.all_gather_object(mine, group)
        if all(info["state"] == SYNCED for info in infos):
            return
        if self._additive_sync and any(info["state"] == UPDATED_AFTER_SYNC for info in infos):
            raise DistributedError(
                f"{type(self).__name__} was synced, updated and synced again: its state already "
                "holds every rank's earlier data, which a second merge would count once per "
                "rank. Sync once after calibration, or reset() before observing again"
            )
        with_data = [info for info in infos if info["seen"] > 0]
        if not with_data:
            return
        signatures = {(info["extra"], self._shape_key(info["shape"])) for info in with_data}
        if len(signatures) > 1:
            raise DistributedError(
                f"{type(self).__name__} ranks observed incompatible tensors "
                f"({sorted(str(s) for s in signatures)}); every rank must observe the same "
                "tensor with the same channel count / shape"
            )
        if not self.has_data:
            first = with_data[0]["shape"]
            self.input_shape = torch.tensor(first, dtype=torch.int64, device=self.seen.device)
        self._sync(group, infos)
        total = torch.tensor(sum(info["seen"] for info in infos), dtype=torch.int64)
        self.seen.copy_(total)
        self.sync_state.fill_(SYNCED)

    def _shape_key(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """What must agree across ranks: the channel count, or the whole shape."""
        kind = self.granularity.kind
        if kind == "tensor" or not shape:
            return ()
        if kind == "channel":
            return (shape[normalize_axis(self.granularity.axis, len(shape))],)
        return shape

    def _sync_signature(self) -> object:
        """Extra configuration that must agree across ranks (e.g. the number of bins)."""
        return None

    # --- subclass hooks -------------------------------------------------------------
    def _reduce(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Min and max of ``x`` per group of elements that share parameters."""
        axis, block = onnx_layout(x.shape, self.granularity)
        return reduce_minmax(x, axis, block)

    def _observe(self, x: Tensor, lo: Tensor, hi: Tensor) -> None:
        raise NotImplementedError

    def _reset_state(self) -> None:
        raise NotImplementedError

    def _sync(self, group: object | None, infos: list[dict]) -> None:
        raise NotImplementedError

    # --- state_dict -----------------------------------------------------------------
    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # A fresh observer has empty lazily-sized buffers; give them the saved
        # shape (keeping our dtype and device) so the default copy succeeds.
        for name in self._lazy_buffers:
            key = prefix + name
            if key in state_dict and isinstance(state_dict[key], Tensor):
                current = self._buffers[name]
                if current is not None and current.shape != state_dict[key].shape:
                    self._buffers[name] = current.new_empty(state_dict[key].shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        text = f"{self.granularity}, seen={int(self.seen)}"
        if self.has_data and self.granularity.kind == "tensor":
            text += f", min={float(self.min_val):.6g}, max={float(self.max_val):.6g}"
        elif self.has_data:
            text += f", ranges={tuple(self.min_val.shape)}"
        if int(self.sync_state) != LOCAL:
            text += ", synced" if int(self.sync_state) == SYNCED else ", updated after sync"
        return text


def _all_finite(*tensors: Tensor) -> bool:
    # .item() for one value: a fraction of isfinite().all()'s cost, paid on every update
    return all(math.isfinite(t.item()) if t.numel() == 1 else bool(torch.isfinite(t).all()) for t in tensors)


def _float32_outward(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """float32 copies of a range, rounded outwards so they still contain the data.

    Only float64 input needs this: float16 / bfloat16 / float32 convert exactly.
    """
    lo32, hi32 = lo.float(), hi.float()
    if lo.dtype == torch.float64:
        inf = torch.tensor(float("inf"), dtype=torch.float32, device=lo.device)
        lo32 = torch.where(lo32.double() > lo, torch.nextafter(lo32, -inf), lo32)
        hi32 = torch.where(hi32.double() < hi, torch.nextafter(hi32, inf), hi32)
    return lo32, hi32

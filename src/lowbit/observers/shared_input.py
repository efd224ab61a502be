"""Observe a tensor once when several histogram observers see it in a row.

In a transformer block the query, key and value projections read one tensor,
so their input observers receive the same tensor object one after the other,
in the same state (they have seen the same batches), and would compute the
same new state three times. The first computes it; the others copy it.

The copy is exact because an update is a deterministic function of the
observer's configuration, its state and the tensor, and all three are
checked: the same live tensor object (held by a weak reference, so a freed
tensor whose memory is reused never matches), unchanged since (torch's
version counter counts in-place writes), an observer of the same
configuration, and equal state buffers.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor

# Below this many elements an update costs less than the bookkeeping.
MIN_ELEMENTS = 1 << 15
# The buffers that make up a histogram observer's state.
STATE = ("counts", "min_val", "max_val", "seen", "input_shape", "sync_state")

_last = threading.local()  # .entry: what the last observed tensor did to its observer


class _Entry:
    __slots__ = ("after", "before", "config", "source", "version")

    def __init__(self, source: Tensor, config: tuple, before: dict[str, Tensor]) -> None:
        self.source = weakref.ref(source)
        self.version = source._version
        self.config = config
        self.before = before
        self.after: dict[str, Tensor] | None = None


def update(observer: torch.nn.Module, x: Tensor, compute) -> None:
    """``compute(x)`` (the observer's own update), or the state it produced for the same
    tensor on an observer in the same state, copied."""
    if not isinstance(x, Tensor) or x.numel() < MIN_ELEMENTS:
        compute(x)
        return
    config = (type(observer), observer.bins, observer.absolute)
    entry = getattr(_last, "entry", None)
    if (entry is not None and entry.after is not None and entry.source() is x
            and entry.version == x._version and entry.config == config
            and _equal(entry.before, observer)):
        for name, value in entry.after.items():
            setattr(observer, name, value.clone())
        return
    entry = _Entry(x, config, _state(observer))
    _last.entry = None  # an update that raises leaves nothing to copy
    compute(x)
    entry.after = _state(observer)
    _last.entry = entry


def _state(observer: torch.nn.Module) -> dict[str, Tensor]:
    return {name: getattr(observer, name).clone() for name in STATE}


def _equal(state: dict[str, Tensor], observer: torch.nn.Module) -> bool:
    for name, value in state.items():
        mine = getattr(observer, name)
        if mine.shape != value.shape or mine.device != value.device or not torch.equal(mine, value):
            return False
    return True

"""One rank of the two-process observer sync test (run by test_sync.py).

Usage: python dist_worker.py RANK WORLD PORT OUTDIR. Loopback gloo only.
Writes OUTDIR/rank{RANK}.pt with every observer's state after sync().
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from lowbit.errors import DistributedError
from lowbit.observers import (
    EMAMinMaxObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
)


def make_batches(rank: int) -> list[torch.Tensor]:
    """Different data per rank; rank 1 reaches further out, so grids differ before sync."""
    g = torch.Generator().manual_seed(100 + rank)
    spread = 1.0 if rank == 0 else 3.0
    return [torch.randn(8, 16, generator=g) * spread * (1 + i) + rank for i in range(3)]


def build_observers() -> dict[str, torch.nn.Module]:
    return {
        "minmax": MinMaxObserver(),
        "minmax_channel": MinMaxObserver("channel", axis=1),
        "moving_average": MovingAverageMinMaxObserver("channel", axis=1),
        "ema": EMAMinMaxObserver(0.8),
        "histogram": HistogramObserver(bins=256),
        "histogram_abs": HistogramObserver(bins=256, absolute=True),
        # only rank 0 feeds these: rank 1 must receive the merged state
        "minmax_rank0_only": MinMaxObserver("channel", axis=1),
        "histogram_rank0_only": HistogramObserver(bins=128),
    }


def main(rank: int, world: int, port: int, out: Path) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    observers = build_observers()
    for x in make_batches(rank):
        for name, obs in observers.items():
            if name.endswith("rank0_only") and rank != 0:
                continue
            obs(x)
    for obs in observers.values():
        obs.sync()
    states = {name: {k: v.clone() for k, v in obs.state_dict().items()} for name, obs in observers.items()}
    # A second sync with nothing new is a no-op (it must not double the counts).
    for obs in observers.values():
        obs.sync()
    again = {name: obs.state_dict() for name, obs in observers.items()}
    unchanged = all(torch.equal(states[name][k], again[name][k]) for name in states for k in states[name])
    # Sync, update, sync again: additive states refuse (they would double count).
    hist = observers["histogram"]
    hist(torch.ones(4))
    try:
        hist.sync()
        refused = False
    except DistributedError:
        refused = True
    torch.save({"states": states, "unchanged": unchanged, "refused": refused}, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))

"""One rank of the two-process QAT test (run by test_ddp.py under torchrun, gloo on loopback).

Usage: torchrun --nproc_per_node=2 ddp_worker.py OUTDIR. Every rank calibrates and
trains on its own data; OUTDIR/rank{RANK}.pt holds the states to compare.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from qat_models import batches, mixed_recipe, tiny_net, train_steps
from torch.nn.parallel import DistributedDataParallel

import lowbit
from lowbit.flows.qat_tools import save_qat_checkpoint


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    calib = [x for x, _ in batches(2, seed=100 + rank)]  # each rank sees other data
    qat = lowbit.prepare_qat(tiny_net(), mixed_recipe(), calibrate=calib, freeze_bn_after=3,
                             freeze_observers_after=4)
    prepared = tensors(qat)
    # No buffer broadcast: identical states must come from lowbit's own reductions.
    ddp = DistributedDataParallel(qat, broadcast_buffers=False)
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
    losses = train_steps(ddp, opt, batches(6, seed=200 + rank))
    trained = tensors(qat)
    if rank == 0:
        save_qat_checkpoint(out / "checkpoint.pt", ddp, opt, step=6)

    # Without calibration the first training batch initialises, merged across ranks.
    lazy = lowbit.prepare_qat(tiny_net(), mixed_recipe())
    lazy_ddp = DistributedDataParallel(lazy, broadcast_buffers=False)
    lazy_opt = torch.optim.SGD(lazy_ddp.parameters(), lr=1e-2)
    train_steps(lazy_ddp, lazy_opt, batches(2, seed=300 + rank))
    torch.save({"prepared": prepared, "trained": trained, "lazy": tensors(lazy), "losses": losses},
               out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""QAT under torchrun with DistributedDataParallel (2 CPU processes, gloo on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.flows.qat_tools import load_qat_checkpoint
from qat.qat_models import batches, mixed_recipe, tiny_net

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(out)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the torchrun QAT workers timed out")
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("phase", ["prepared", "trained", "lazy"])
def test_every_rank_holds_the_same_qat_state(ranks, phase):
    _, (a, b) = ranks
    assert a[phase].keys() == b[phase].keys()
    for key in a[phase]:
        assert torch.equal(a[phase][key], b[phase][key]), (phase, key)
    assert a["losses"] != b["losses"]  # the ranks really trained on different data


def test_calibration_merges_every_ranks_data(ranks):
    _, (a, _) = ranks
    union = [x for rank in range(2) for x, _ in batches(2, seed=100 + rank)]
    single = lowbit.prepare_qat(tiny_net(), mixed_recipe(), calibrate=union)
    state = single.state_dict()
    for key in ("0.input_quantizer.scale", "3.input_quantizer.zero_point",
                "3.output_quantizer.scale", "8.input_quantizer.scale"):
        assert torch.equal(a["prepared"][key], state[key]), key
    trained = a["trained"]
    assert int(trained["0.step"]) == 6 and bool(trained["0.bn_frozen"])
    assert bool(trained["8.input_quantizer.observer_frozen"])


def test_a_rank0_checkpoint_resumes_in_one_process(ranks):
    out, (a, _) = ranks
    qat = lowbit.prepare_qat(tiny_net(), mixed_recipe(), freeze_bn_after=3, freeze_observers_after=4)
    info = load_qat_checkpoint(out / "checkpoint.pt", qat)
    assert info["step"] == 6
    for key, value in qat.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, a["trained"][key]), key

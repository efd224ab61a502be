"""sync() across two real processes (gloo on loopback) equals one observer that saw everything."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lowbit.observers import EMAMinMaxObserver, MinMaxObserver

WORKER = Path(__file__).with_name("dist_worker.py")
WORLD = 2


def _load_worker():
    spec = importlib.util.spec_from_file_location("lowbit_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path_factory.mktemp("sync")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(WORLD)
    ]
    deadline = time.monotonic() + 90
    logs = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("distributed observer workers timed out")
        logs.append(stdout.decode(errors="replace"))
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{logs[rank]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _single(name: str):
    """One observer fed every rank's batches, rank by rank."""
    worker = _load_worker()
    obs = worker.build_observers()[name]
    for rank in range(WORLD):
        if name.endswith("rank0_only") and rank != 0:
            continue
        for x in worker.make_batches(rank):
            obs(x)
    return obs


def test_every_rank_holds_the_same_state(synced):
    a, b = synced[0]["states"], synced[1]["states"]
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


@pytest.mark.parametrize(
    "name",
    [
        "minmax",
        "minmax_channel",
        "histogram",
        "histogram_abs",
        "minmax_rank0_only",
        "histogram_rank0_only",
    ],
)
def test_exact_merges_equal_a_single_observer(synced, name):
    state = synced[0]["states"][name]
    single = _single(name).state_dict()
    assert state.keys() == single.keys()
    assert int(state["sync_state"]) == 1  # marks a merged state
    for key in state.keys() - {"sync_state"}:
        assert torch.equal(state[key], single[key]), (name, key)


def test_moving_average_merges_all_batches(synced):
    state = synced[0]["states"]["moving_average"]
    single = _single("moving_average").state_dict()
    assert int(state["seen"]) == int(single["seen"]) == 6
    torch.testing.assert_close(state["min_sum"], single["min_sum"], rtol=1e-12, atol=0)
    torch.testing.assert_close(state["max_sum"], single["max_sum"], rtol=1e-12, atol=0)


def test_ema_is_the_mean_of_the_rank_emas(synced):
    worker = _load_worker()
    per_rank = []
    for rank in range(WORLD):
        obs = EMAMinMaxObserver(0.8)
        for x in worker.make_batches(rank):
            obs(x)
        per_rank.append(obs)
    state = synced[0]["states"]["ema"]
    expect_min = (per_rank[0].min_val.double() + per_rank[1].min_val.double()) / 2
    expect_max = (per_rank[0].max_val.double() + per_rank[1].max_val.double()) / 2
    torch.testing.assert_close(state["min_val"], expect_min.float())
    torch.testing.assert_close(state["max_val"], expect_max.float())


def test_second_sync_is_a_noop_and_resync_after_update_is_refused(synced):
    for rank_result in synced:
        assert rank_result["unchanged"]
        assert rank_result["refused"]


def test_sync_without_process_group_is_a_noop():
    obs = MinMaxObserver()
    obs(torch.tensor([1.0, -2.0]))
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    obs.sync()
    for key, value in obs.state_dict().items():
        assert torch.equal(value, before[key])

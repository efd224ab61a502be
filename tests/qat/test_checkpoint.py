"""Save and resume QAT mid-training: every quantizer state survives; foreign checkpoints are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.flows.qat import qat_status
from lowbit.flows.qat_tools import load_qat_checkpoint, save_qat_checkpoint
from lowbit.nn.qat import QATCheckpointError, QATError
from qat.qat_models import batches, mixed_recipe, tiny_net, train_steps

KW = {"freeze_bn_after": 3, "freeze_observers_after": 5}


def make(calibrate: bool = True, recipe=None):
    recipe = recipe or mixed_recipe()
    data = [x for x, _ in batches(2, seed=9)] if calibrate else None
    qat = lowbit.prepare_qat(tiny_net(), recipe, calibrate=data, **KW)
    opt = torch.optim.AdamW(qat.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return qat, opt, sched


def run(qat, opt, sched, data):
    for batch in data:
        train_steps(qat, opt, [batch])
        sched.step()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


def test_resume_mid_training_continues_exactly(tmp_path):
    data = batches(8, seed=4)
    qat, opt, sched = make()
    run(qat, opt, sched, data[:4])
    path = save_qat_checkpoint(tmp_path / "qat.pt", qat, opt, sched, step=4, extra={"epoch": 0})
    run(qat, opt, sched, data[4:])

    fresh, opt2, sched2 = make(calibrate=False)  # the checkpoint holds every parameter
    info = load_qat_checkpoint(path, fresh, opt2, sched2)
    assert info["step"] == 4 and info["extra"] == {"epoch": 0}
    status = qat_status(fresh)
    assert status["steps"] == 4 and status["bn_frozen"] == 2 and status["observers_frozen"] == 0
    assert all(int(q.step) == 4 for q in fresh.modules() if hasattr(q, "observer_frozen"))
    run(fresh, opt2, sched2, data[4:])
    assert_same_state(fresh, qat)  # learned scales, offsets, counters, flags, BN and observers
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), qat.eval()(x))


def test_plain_state_dict_round_trip_keeps_learned_scales_and_counters():
    data = batches(3, seed=5)
    qat, opt, _ = make()
    train_steps(qat, opt, data)
    fresh, _, _ = make(calibrate=False)
    fresh.load_state_dict(qat.state_dict())
    assert_same_state(fresh, qat)
    assert isinstance(fresh[0].weight_quantizer.scale, nn.Parameter)
    assert int(fresh[0].step) == 3 and bool(fresh[0].bn_frozen)


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    qat, opt, _ = make()
    path = save_qat_checkpoint(tmp_path / "qat.pt", qat, opt)
    other, _, _ = make(calibrate=False, recipe=lowbit.qat_recipe("x86"))
    with pytest.raises(QATCheckpointError, match="another recipe"):
        load_qat_checkpoint(path, other)
    with pytest.raises(QATCheckpointError, match="Prepare the model with the recipe"):
        other.load_state_dict(qat.state_dict())  # plain state dicts are checked per quantizer


def test_foreign_or_mismatched_files_are_refused(tmp_path):
    qat, _, _ = make(calibrate=False)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(QATCheckpointError, match="not a lowbit QAT checkpoint"):
        load_qat_checkpoint(tmp_path / "other.pt", qat)
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(QATCheckpointError, match="cannot read"):
        load_qat_checkpoint(tmp_path / "junk.pt", qat)
    with pytest.raises(QATCheckpointError, match="no checkpoint"):
        load_qat_checkpoint(tmp_path / "missing.pt", qat)
    smaller = tiny_net()
    smaller[8] = nn.Linear(32, 5)  # another head: same recipe, other shapes
    small = lowbit.prepare_qat(smaller, mixed_recipe())
    path = save_qat_checkpoint(tmp_path / "small.pt", small)
    with pytest.raises(QATCheckpointError, match="does not fit"):
        load_qat_checkpoint(path, qat)
    with pytest.raises(QATError, match="prepare_qat"):
        save_qat_checkpoint(tmp_path / "x.pt", tiny_net())

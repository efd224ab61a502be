"""HistogramObserver's lean update path equals the general one, and notices outside writes.

The lean path (`HistogramObserver._update`) keeps the state's scalars in Python
while the buffers are untouched; these tests hold it to `Observer.update` (the
general path) on streams that grow, jump off the window and shrink, and check
that writes to the buffers from outside (reset, load_state_dict, in-place edits,
replaced buffers) are seen.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.observers import HistogramObserver
from lowbit.observers.base import Observer


def general_only(monkeypatch) -> None:
    monkeypatch.setattr(HistogramObserver, "known_state", lambda self: None)


def stream(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, 0), (1, 0), (1.2, 0.1), (0.5, 0), (3, 0), (3, 0.5), (1, -40), (0.01, 0), (60, 0), (1, 0)]
    return [torch.randn(50_000, generator=gen) * scale + shift for scale, shift in shapes]


def observe(batches: list[torch.Tensor], **kwargs) -> list[dict[str, torch.Tensor]]:
    obs = HistogramObserver(**kwargs)
    states = []
    for x in batches:
        obs(x)
        states.append({k: v.clone() for k, v in obs.state_dict().items()})
    return states


@pytest.mark.parametrize("kwargs", [{}, {"absolute": True}, {"bins": 333}])
def test_lean_path_equals_general_path_after_every_batch(monkeypatch, kwargs):
    batches = stream()
    lean = observe(batches, **kwargs)
    general_only(monkeypatch)
    general = observe(batches, **kwargs)
    for a, b in zip(lean, general, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_the_lean_path_runs_in_steady_state():
    obs = HistogramObserver()
    obs(torch.randn(10_000))
    obs(torch.randn(10_000) * 2)
    known = obs.known_state()
    assert known is not None
    assert (known.lo, known.hi, known.grid) == (float(obs.min_val), float(obs.max_val), obs.grid())
    assert (known.seen, known.input_shape, known.sync_state) == (2, (10_000,), 0)
    assert obs.state_summary()[1:] == (known.lo, known.hi, 2, (10_000,), 0)


@pytest.mark.parametrize("edit", ["reset", "load", "in_place", "replace"])
def test_writes_from_outside_are_seen(edit):
    gen = torch.Generator().manual_seed(3)
    first, second = torch.randn(20_000, generator=gen), torch.randn(20_000, generator=gen) * 2
    obs, other = HistogramObserver(), HistogramObserver()
    obs(first)
    other(second * 5)
    if edit == "reset":
        obs.reset()
    elif edit == "load":
        obs.load_state_dict(other.state_dict())
    elif edit == "in_place":
        obs.max_val.fill_(50.0)  # a wider range than the data: the grid must follow it
    else:
        obs.counts = obs.counts * 2
    assert obs.known_state() is None
    expected = HistogramObserver()
    expected.load_state_dict(obs.state_dict())
    obs(second)
    Observer.update(expected, second)  # the general path
    for key, value in expected.state_dict().items():
        assert torch.equal(obs.state_dict()[key], value), key


def test_nan_and_inf_still_raise_and_leave_the_state(monkeypatch):
    obs = HistogramObserver()
    obs(torch.randn(10_000))
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    for bad in (float("nan"), float("inf")):
        x = torch.randn(10_000)
        x[123] = bad
        with pytest.raises(InputError):
            obs(x)
        for key, value in before.items():
            assert torch.equal(obs.state_dict()[key], value), key
    with pytest.raises(InputError, match="float tensors"):
        obs([1.0, 2.0])


def test_copies_and_pickles_leave_the_mirror_behind():
    import copy
    import io

    obs = HistogramObserver()
    obs(torch.randn(10_000))
    assert obs.known_state() is not None
    buffer = io.BytesIO()
    torch.save(obs, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(obs), torch.load(buffer, weights_only=False)):
        assert "_known" not in twin.__dict__ and twin.known_state() is None
        x = torch.randn(10_000) * 3
        twin(x)
        obs_copy = copy.deepcopy(obs)
        Observer.update(obs_copy, x)
        for key, value in obs_copy.state_dict().items():
            assert torch.equal(twin.state_dict()[key], value), key

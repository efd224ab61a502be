"""Histogram observers that see the same tensor in a row compute its update once, exactly."""

from __future__ import annotations

import gc

import pytest
import torch

from lowbit.errors import InputError
from lowbit.observers import HistogramObserver, shared_input

N = 2 * shared_input.MIN_ELEMENTS


def state(obs: HistogramObserver) -> dict[str, torch.Tensor]:
    return {name: getattr(obs, name).clone() for name in shared_input.STATE}


def assert_same_state(a: HistogramObserver, b: HistogramObserver) -> None:
    for name, value in state(a).items():
        assert torch.equal(value, getattr(b, name)), name


def computed_alone(*xs: torch.Tensor) -> HistogramObserver:
    """An observer that saw copies of ``xs``: fresh tensors, nothing to copy from."""
    obs = HistogramObserver()
    for x in xs:
        obs(x.clone())
    return obs


@pytest.fixture
def computed(monkeypatch):
    """How many updates were computed (not copied)."""
    calls = []
    update = HistogramObserver._update
    monkeypatch.setattr(HistogramObserver, "_update", lambda self, x: calls.append(1) or update(self, x))
    return calls


def batches(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, N // 8, generator=gen) * (1 + i) for i in range(n)]


def test_query_key_value_observe_once_and_equal_separate_observers(computed):
    shared = [HistogramObserver() for _ in range(3)]
    for x in batches():
        for obs in shared:  # one input, three projections
            obs(x)
    assert len(computed) == 4
    reference = computed_alone(*batches())
    for obs in shared:
        assert_same_state(obs, reference)
        assert obs.choose_range("int8") == reference.choose_range("int8")


@pytest.mark.parametrize("written", ["input", "leader"])
def test_a_write_between_the_two_observations_is_computed_again(computed, written):
    x = batches(1)[0]
    a, b = HistogramObserver(), HistogramObserver()
    a(x)
    if written == "input":
        x.mul_(3)  # same object, new version
    else:
        a.counts.mul_(2)  # the leader's state, in place after its update: b must not take this
    b(x)
    assert len(computed) == 2
    assert_same_state(b, computed_alone(x))


def test_a_different_state_or_configuration_is_computed_again(computed):
    x, y = batches(2)
    a, b = HistogramObserver(), HistogramObserver()
    b(y)  # b has seen more
    a(x)
    b(x)
    c = HistogramObserver(bins=1024)
    c(x)
    d = HistogramObserver(absolute=True)
    d(x)
    assert len(computed) == 5
    assert_same_state(b, computed_alone(y, x))


def test_a_freed_tensor_whose_memory_is_reused_never_matches(computed):
    a, b = HistogramObserver(), HistogramObserver()
    a(torch.randn(N))
    gc.collect()
    x = torch.randn(N) * 5  # may well land at the freed tensor's address
    b(x)
    assert len(computed) == 2
    assert_same_state(b, computed_alone(x))


def test_a_failed_update_leaves_nothing_to_copy(computed):
    a, b = HistogramObserver(), HistogramObserver()
    x = torch.randn(N)
    x[7] = float("nan")
    for obs in (a, b):
        with pytest.raises(InputError, match="NaN"):
            obs(x)
        assert not obs.has_data
    assert len(computed) == 2


def test_small_tensors_skip_the_bookkeeping(computed):
    x = torch.randn(shared_input.MIN_ELEMENTS - 1)
    a, b = HistogramObserver(), HistogramObserver()
    a(x)
    b(x)
    assert len(computed) == 2
    assert_same_state(a, b)


def test_a_copy_does_not_share_memory_with_its_source(computed):
    x, y = batches(2)
    a, b = HistogramObserver(), HistogramObserver()
    a(x)
    b(x)
    assert len(computed) == 1
    a(y)
    assert_same_state(b, computed_alone(x))

"""Rules every observer shares: bad input, empty input, no data, the name table."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError, ObserverError
from lowbit.observers import (
    OBSERVERS,
    EMAMinMaxObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
)

FACTORIES = {
    "minmax": lambda: MinMaxObserver(),
    "minmax_channel": lambda: MinMaxObserver("channel", axis=0),
    "moving_average": lambda: MovingAverageMinMaxObserver(),
    "ema": lambda: EMAMinMaxObserver(),
    "histogram": lambda: HistogramObserver(bins=64),
    "histogram_abs": lambda: HistogramObserver(bins=64, absolute=True),
}


def snapshot(obs) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in obs.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_raise_input_error_and_leave_state(name, bad):
    obs = FACTORIES[name]()
    obs(torch.randn(4, 6))
    before = snapshot(obs)
    x = torch.randn(4, 6)
    x[2, 3] = bad
    with pytest.raises(InputError, match="NaN"):
        obs(x)
    assert same(before, snapshot(obs))


@pytest.mark.parametrize("name", FACTORIES)
def test_compute_before_data_raises_observer_error(name):
    obs = FACTORIES[name]()
    with pytest.raises(ObserverError, match=r"before the observer saw any data.*calibration"):
        obs.compute_qparams("int8")


@pytest.mark.parametrize("name", FACTORIES)
def test_empty_batches_are_skipped(name):
    obs = FACTORIES[name]()
    obs(torch.empty(0, 6))
    assert not obs.has_data
    obs(torch.randn(4, 6))
    before = snapshot(obs)
    obs(torch.empty(0, 6))
    assert same(before, snapshot(obs))


@pytest.mark.parametrize("name", FACTORIES)
def test_non_float_input_is_rejected(name):
    with pytest.raises(InputError, match="float tensors"):
        FACTORIES[name]()(torch.arange(6))


def test_values_beyond_float32_are_rejected():
    with pytest.raises(InputError, match="float32's range"):
        MinMaxObserver()(torch.tensor([1e300, 0.0], dtype=torch.float64))


def test_mismatched_channels_raise():
    obs = FACTORIES["minmax_channel"]()
    obs(torch.randn(4, 6))
    with pytest.raises(ObserverError, match="4 channels before and 5 now"):
        obs(torch.randn(5, 6))


def test_observer_table_names_classes():
    assert {
        "minmax": MinMaxObserver,
        "moving_average": MovingAverageMinMaxObserver,
        "ema": EMAMinMaxObserver,
        "histogram": HistogramObserver,
    } == OBSERVERS


@pytest.mark.parametrize("name", FACTORIES)
def test_observer_in_a_model_passes_values_through(name):
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), FACTORIES[name]())
    x = torch.randn(4, 6, requires_grad=True)
    y = model(x)
    y.sum().backward()  # the observer does not break autograd
    assert x.grad is not None
    assert model[1].has_data

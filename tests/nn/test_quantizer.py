"""Quantizer: observe → freeze → quantize, dynamic specs, state_dict round trips, errors."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError, ObserverError
from lowbit.nn import Quantizer
from lowbit.primitives import choose_qparams, fake_quantize
from lowbit.recipes import QuantSpec


def test_observe_then_quantize_equals_fake_quantize_with_observed_range():
    q = Quantizer(QuantSpec("uint8", symmetric=False), "act")
    batches = [torch.randn(4, 32) * (i + 1) for i in range(3)]
    for b in batches:
        assert q(b) is b  # observing passes through
    q.freeze()
    p = choose_qparams(torch.cat(batches), "uint8", symmetric=False)
    assert float(q.scale) == float(p.scale) and int(q.zero_point) == int(p.zero_point)
    x = torch.randn(4, 32) * 5
    assert torch.equal(q(x), fake_quantize(x, p.scale, p.zero_point, "uint8"))
    low, high = q.chosen_range()
    assert low <= 0 <= high


def test_modes_and_errors():
    q = Quantizer(QuantSpec("int8"), "layer1:input")
    with pytest.raises(ObserverError, match="calibrate"):
        q.mode = "quantize"
    with pytest.raises(ObserverError, match="saw no data"):
        q.freeze()
    with pytest.raises(ObserverError, match="unknown quantizer mode"):
        q.mode = "fake"
    with pytest.raises(InputError, match="layer1:input"):
        q(torch.tensor([1.0, float("nan")]))
    q(torch.randn(10))
    q.freeze()
    q.mode = "off"
    x = torch.randn(10)
    assert q(x) is x


def test_dynamic_per_token_quantizer_needs_no_calibration():
    q = Quantizer(QuantSpec("int8", "token", dynamic=True))
    q.freeze()
    x = torch.randn(2, 3, 64) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1)
    y = q(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert bool(((y - x).abs() <= step / 2 * 1.001).all())
    x.requires_grad_()
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through


def test_state_dict_round_trip_into_a_fresh_quantizer():
    spec = QuantSpec("int8", "channel", axis=0)
    q = Quantizer(spec)
    q(torch.randn(6, 9))
    q.freeze()
    fresh = Quantizer(spec)
    fresh.load_state_dict(q.state_dict())
    assert fresh.mode == "quantize" and torch.equal(fresh.scale, q.scale) and fresh.axis == 0
    x = torch.randn(6, 9)
    assert torch.equal(fresh(x), q(x))


def test_histogram_spec_uses_its_range_method():
    q = Quantizer(QuantSpec("int8", observer="histogram", method="percentile", percentile=99.0))
    x = torch.randn(100_000)
    x[0] = 1000.0
    q(x)
    q.freeze()
    _, high = q.chosen_range()
    assert high < 10  # the outlier is clipped


def test_ema_spec_builds_an_ema_observer_with_its_momentum():
    q = Quantizer(QuantSpec("uint8", symmetric=False, observer="ema", momentum=0.5))
    assert type(q.observer).__name__ == "EMAMinMaxObserver" and q.observer.momentum == 0.5
    q(torch.tensor([-1.0, 2.0]))
    q(torch.tensor([-3.0, 4.0]))
    assert (float(q.observer.min_val), float(q.observer.max_val)) == (-2.0, 3.0)  # halfway

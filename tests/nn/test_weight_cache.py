"""The fake-quantized weight is computed once per weight / parameter version, never stale."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lowbit.nn import modules as qmodules


def _prepared_layer():
    """A QuantLinear in quantize mode whose weight is still float (as during calibration)."""
    from lowbit.recipes import LayerSpec, QuantSpec

    torch.manual_seed(0)
    layer = qmodules.QuantLinear.from_float(nn.Linear(16, 8), LayerSpec(weight=QuantSpec("int8", "channel")),
                                            "fc")
    layer.calibrate_weight()
    layer.weight_quantizer.mode = "quantize"
    return layer


def _uncached(layer):
    return layer.weight_quantizer(layer.weight).detach()


def test_cached_weight_equals_fake_quantizing_it_again():
    layer = _prepared_layer()
    with torch.no_grad():
        first = layer.effective_weight()
        assert layer.effective_weight() is first  # computed once
        assert torch.equal(first, _uncached(layer))


def test_in_place_weight_change_invalidates_the_cache():
    layer = _prepared_layer()
    with torch.no_grad():
        before = layer.effective_weight()
        layer.weight.mul_(0.5)
        after = layer.effective_weight()
    assert not torch.equal(before, after)
    assert torch.equal(after, _uncached(layer))


def test_new_parameters_invalidate_the_cache():
    layer = _prepared_layer()
    with torch.no_grad():
        before = layer.effective_weight()
        layer.weight_quantizer.scale.mul_(2)
        after = layer.effective_weight()
    assert not torch.equal(before, after)
    assert torch.equal(after, _uncached(layer))


def test_training_keeps_the_straight_through_gradient():
    layer = _prepared_layer()
    x = torch.randn(4, 16)
    layer(x).sum().backward()  # grad enabled and weight.requires_grad: no cache, a real graph
    assert layer.weight.grad is not None and bool(layer.weight.grad.abs().sum() > 0)


def test_deepcopy_does_not_share_or_carry_the_cache():
    layer = _prepared_layer()
    with torch.no_grad():
        layer.effective_weight()
        twin = copy.deepcopy(layer)
        twin.weight.mul_(2)
        assert torch.equal(twin.effective_weight(), _uncached(twin))
        assert torch.equal(layer.effective_weight(), _uncached(layer))

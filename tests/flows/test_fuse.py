"""BN folding: numerically the same model, found through fx or Sequential patterns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.flow_models import ResidualCNN, Untraceable, batches, randomize_bn
from lowbit.flows import fuse


def test_folded_model_computes_the_same_outputs():
    torch.manual_seed(0)
    model = randomize_bn(ResidualCNN())
    x = batches(1)[0]
    before = model(x)
    fused = fuse(model)
    assert {(p.layer, p.norm) for p in fused} == {("stem.0", "stem.1"), ("conv", "bn")}
    assert isinstance(model.bn, nn.Identity) and isinstance(model.stem[1], nn.Identity)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_linear_bn1d_and_conv_without_bias_fold():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(3, 5, 3, bias=False), nn.BatchNorm1d(5), nn.Flatten(),
                          nn.Linear(5 * 6, 7), nn.BatchNorm1d(7)).eval()
    for m in (model[1], model[4]):
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 8)
    before = model(x)
    assert len(fuse(model)) == 2 and model[0].bias is not None
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_untraceable_models_fall_back_to_sequential_patterns():
    model = Untraceable().eval()
    assert fuse(model) == []
    seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    wrapper = Untraceable().eval()
    wrapper.fc1 = seq
    assert [p.layer for p in fuse(wrapper)] == ["fc1.0"]


def test_bn_that_does_not_follow_a_conv_is_left_alone():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3)).eval()
    assert fuse(model) == []


def test_training_mode_warns():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with pytest.warns(UserWarning, match="eval mode"):
        fuse(model)

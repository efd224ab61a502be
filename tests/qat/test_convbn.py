"""Folded Conv-BN for QAT: float numerics equal Conv→BN, running statistics, freezing, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn.modules import QuantConv2d
from lowbit.nn.qat import QATError
from lowbit.nn.qat_convbn import QuantConvBn2d, check_foldable
from lowbit.recipes import LayerSpec, QuantSpec
from qat.qat_models import tiny_net


def pair(seed: int = 0, bias: bool = True) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return conv, bn


def folded(conv: nn.Conv2d, bn: nn.BatchNorm2d, **kwargs) -> QuantConvBn2d:
    spec = LayerSpec(weight=QuantSpec("int8", "channel", axis=0), input=QuantSpec("int8"))
    qconv = QuantConv2d.from_float(copy.deepcopy(conv), spec, "conv")
    module = QuantConvBn2d.from_conv(qconv, copy.deepcopy(bn), **kwargs)
    for quantizer in module.quantizers().values():
        quantizer.mode = "off"
    return module


@pytest.mark.parametrize("bias", [True, False])
def test_training_mode_matches_conv_then_bn_in_float(bias):
    conv, bn = pair(bias=bias)
    fused = folded(conv, bn).train()
    reference = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)).train()
    x = torch.randn(8, 3, 10, 10)
    for _ in range(3):  # several steps: running statistics move alike
        out, ref = fused(x), reference(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.bn.running_mean, reference[1].running_mean)
        torch.testing.assert_close(fused.bn.running_var, reference[1].running_var)
        x = x * 1.3 + 0.1
    # Gradients agree too; in float64 so that the comparison is not about float32 rounding.
    fused, reference = fused.double(), reference.double()
    x = x.double()
    fused(x).square().sum().backward()
    reference(x).square().sum().backward()
    for ours, theirs in ((fused.weight, reference[0].weight), (fused.bn.weight, reference[1].weight),
                         (fused.bn.bias, reference[1].bias)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-9)


def test_eval_mode_is_the_folded_convolution():
    conv, bn = pair(1)
    fused = folded(conv, bn).eval()
    reference = nn.Sequential(conv, bn).eval()
    x = torch.randn(4, 3, 7, 7)
    torch.testing.assert_close(fused(x), reference(x), rtol=1e-5, atol=1e-5)
    converted = fused.to_conv()
    assert type(converted) is QuantConv2d
    assert torch.equal(converted(x), fused(x))


def test_running_statistics_take_over_after_freeze_bn_after_steps():
    conv, bn = pair(2)
    fused = folded(conv, bn, freeze_bn_after=2).train()
    x = torch.randn(8, 3, 6, 6) * 2 + 1
    fused(x)
    assert not bool(fused.bn_frozen)
    mean = fused.bn.running_mean.clone()
    fused(x)
    assert bool(fused.bn_frozen)  # set right after the second step, which still used batch stats
    assert not torch.equal(fused.bn.running_mean, mean)
    mean, var = fused.bn.running_mean.clone(), fused.bn.running_var.clone()
    out = fused(x)
    assert int(fused.step) == 3
    assert torch.equal(fused.bn.running_mean, mean) and torch.equal(fused.bn.running_var, var)
    eval_out = copy.deepcopy(fused).eval()(x)
    assert torch.equal(out, eval_out)  # training mode now computes the deployed graph


def test_quantized_weights_are_the_folded_weights():
    conv, bn = pair(3)
    fused = folded(conv, bn)
    fused.calibrate_weight()  # PTQ quantizer: parameters from the folded weight, then quantize
    w = fused.folded_weight().detach()
    torch.testing.assert_close(fused.weight_quantizer.scale, w.abs().amax((1, 2, 3)) / 127)


def test_bad_folds_are_refused_with_what_to_do():
    conv, _ = pair()
    with pytest.raises(QATError, match="not followed by a BatchNorm"):
        check_foldable(conv, None, "features.0")
    with pytest.raises(QATError, match="track_running_stats"):
        check_foldable(conv, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(QATError, match="6 output channels"):
        check_foldable(conv, nn.BatchNorm2d(4))
    model = tiny_net()
    with pytest.raises(QATError, match="conv 8 is not followed by a BatchNorm"):
        lowbit.prepare_qat(model, "x86", fold_bn=["0", "8"])
    with pytest.raises(QATError, match="not a module"):
        lowbit.prepare_qat(model, "x86", fold_bn=["nope"])
    qat = lowbit.prepare_qat(model, "x86", fold_bn=["3"])
    assert type(qat[3]).__name__ == "QuantConvBn2d" and type(qat[0]).__name__ == "QuantConv2d"
    assert isinstance(qat[1], nn.BatchNorm2d)  # not folded: trains as an ordinary BN

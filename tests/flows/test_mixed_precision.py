"""Automatic mixed precision: measure, promote the sensitive layer (wherever it is), and no more."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.flows.api import quantize
from lowbit.flows.mixed_precision import (
    MixedPrecisionError,
    MixedPrecisionResult,
    auto_mixed_precision,
)
from lowbit.nn.float_cast import FloatKept
from lowbit.nn.modules import QuantLinear
from lowbit.recipes import Recipe, Rule, preset


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls are slowest with several threads on a loaded CI machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def activation_outlier(target: int = 4, factor: float = 200.0) -> nn.Sequential:
    """Layer ``target``'s input has one channel ~200x the rest (per-tensor activations crush it)."""
    model = mlp()
    with torch.no_grad():
        model[target - 2].weight[5].mul_(factor)
        model[target - 2].bias[5] = factor
        model[target].weight[:, 5].div_(factor)
    return model


def weight_outlier(target: int = 2, factor: float = 30.0) -> nn.Sequential:
    """Layer ``target`` has one weight column 30x the rest (int4 groups round the others to 0)."""
    model = mlp()
    with torch.no_grad():
        model[target].weight[:, 7].mul_(factor)
        model[target - 2].weight[7].div_(factor)
        model[target - 2].bias[7] /= factor
    return model


def batches(n: int = 6, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 16, generator=gen) for _ in range(n)]


def output_sqnr(model: nn.Module, qmodel: nn.Module, data: list[torch.Tensor]) -> float:
    with torch.no_grad():
        ref = torch.cat([model(x).double().flatten() for x in data])
        out = torch.cat([qmodel(x).double().flatten() for x in data])
    return 10 * math.log10(float(ref.pow(2).sum()) / float((ref - out).pow(2).sum()))


@pytest.mark.parametrize("target", [2, 4, 6])
def test_promotes_exactly_the_sensitive_layer_wherever_it_is(target):
    # Seed 004 names first / last layers as the usual suspects: measured, not assumed.
    model, data = activation_outlier(target), batches()
    result = auto_mixed_precision(model, preset("x86"), data, min_sqnr_db=35, progress=False)
    assert isinstance(result, MixedPrecisionResult)
    assert result.promoted == [str(target)]
    assert result.metric_before < 20 <= 35 <= result.metric_after
    assert result.extra_bits == model[target].weight.numel() * (32 - 8)
    assert result.weight_bits_after == result.weight_bits_before + result.extra_bits
    assert result.recipe.rules[-1] == Rule(str(target), types=("Linear",), keep="fp32")
    layers = dict(result.model.named_modules())
    assert type(layers[str(target)]) is nn.Linear
    assert all(isinstance(layers[n], QuantLinear) for n in ("0", "2", "4", "6") if n != str(target))
    assert result.metric_after == pytest.approx(output_sqnr(model, result.model, data), abs=1e-6)


def test_int8_fallback_on_a_w4_recipe_promotes_to_int8_not_float():
    model, data = weight_outlier(target=2), batches()
    result = auto_mixed_precision(model, preset("w4-g32"), data, min_sqnr_db=20, fallback="int8",
                                  progress=False)
    assert result.promoted == ["2"] and result.fallback == "int8"
    assert result.metric_before < 15 and result.metric_after >= 20
    assert result.extra_bits == 32 * 32 * (8 - 4)
    layer = result.model.get_submodule("2")
    assert isinstance(layer, QuantLinear)
    assert layer.weight_quantizer.fmt.name == "int8" and layer.weight_codes.dtype == torch.int8
    assert layer.weight_quantizer.spec.granularity == "channel"
    assert result.model.get_submodule("4").weight_quantizer.fmt.name == "int4"
    rule = result.recipe.rules[-1]
    assert rule.pattern == "2" and rule.keep is None and rule.weight.format == "int8"
    assert result.evaluations >= 3  # int8 measurements are real rebuilds


def test_fp16_fallback_keeps_the_layer_in_fp16():
    model, data = weight_outlier(target=2), batches()
    result = auto_mixed_precision(model, preset("w4-g32"), data, min_sqnr_db=20, fallback="fp16",
                                  progress=False)
    assert result.promoted == ["2"] and result.extra_bits == 32 * 32 * (16 - 4)
    kept = result.model.get_submodule("2")
    assert isinstance(kept, FloatKept) and kept.keep == "fp16"
    assert "| `2` | Linear | 1024 | 4 | fp16 |" in result.to_markdown()


def test_eval_fn_budget_promotes_the_sensitive_layer():
    model, data = activation_outlier(target=4), batches()
    with torch.no_grad():
        reference = [model(x) for x in data]

    def eval_fn(m: nn.Module) -> float:  # higher is better: minus the relative output MSE
        with torch.no_grad():
            err = sum(float((m(x) - r).pow(2).sum()) for x, r in zip(data, reference, strict=True))
        return -err / sum(float(r.pow(2).sum()) for r in reference)

    result = auto_mixed_precision(model, preset("x86"), data, eval_fn=eval_fn, max_drop=1e-3,
                                  progress=False)
    assert result.metric == "eval_fn" and result.promoted == ["4"]
    assert result.float_metric - result.metric_before > 1e-2
    assert result.float_metric - result.metric_after <= 1e-3
    assert result.metric_after == pytest.approx(eval_fn(result.model))


@pytest.mark.parametrize(
    ("fallback", "budget", "message"),
    [("int8", 80.0, "cannot be met even with all 4"), ("fp16", 200.0, "needs every quantized layer"),
     ("fp32", 200.0, "needs every quantized layer")],
)
def test_impossible_budget_raises(fallback, budget, message):
    # No choice of layers meets these budgets (fp32 only by quantizing nothing at all).
    with pytest.raises(MixedPrecisionError, match=message) as info:
        auto_mixed_precision(weight_outlier(), preset("w4-g32"), batches(3), min_sqnr_db=budget,
                             fallback=fallback, progress=False)
    assert isinstance(info.value, LowbitError)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_recipe_round_trips_and_reproduces_the_result(tmp_path, suffix):
    model, data = activation_outlier(target=4), batches()
    result = auto_mixed_precision(model, preset("x86"), data, min_sqnr_db=35, progress=False)
    loaded = Recipe.load(result.recipe.save(tmp_path / f"mixed{suffix}"))
    assert loaded == result.recipe
    again = quantize(model, loaded, calibrate=data, progress=False)
    assert output_sqnr(model, again, data) == pytest.approx(result.metric_after, abs=1e-6)


def test_int8_recipe_round_trips_and_reproduces_the_result(tmp_path):
    model, data = weight_outlier(target=2), batches()
    result = auto_mixed_precision(model, preset("w4-g32"), data, min_sqnr_db=20, fallback="int8",
                                  progress=False)
    loaded = Recipe.load(result.recipe.save(tmp_path / "mixed.yaml"))
    assert loaded == result.recipe
    again = quantize(model, loaded, calibrate=data, progress=False)
    assert output_sqnr(model, again, data) == pytest.approx(result.metric_after, abs=1e-6)


def test_budget_already_met_changes_nothing():
    model, data = mlp(), batches()
    before = copy.deepcopy(model.state_dict())
    result = auto_mixed_precision(model, preset("w8"), data, min_sqnr_db=20, progress=False)
    assert result.promoted == [] and result.extra_bits == 0
    assert result.recipe == preset("w8")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "promoted 0 layer(s)" in result.to_markdown()


def test_budget_decides_how_many_layers_are_promoted():
    # Two sensitive layers (2 and 4); a loose budget needs only the worse one.
    model, data = weight_outlier(target=2), batches()
    with torch.no_grad():
        model[4].weight[:, 9].mul_(8.0)
        model[2].weight[9].div_(8.0)
        model[2].bias[9] /= 8.0
    loose = auto_mixed_precision(model, preset("w4-g32"), data, min_sqnr_db=15, progress=False)
    tight = auto_mixed_precision(model, preset("w4-g32"), data, min_sqnr_db=22, progress=False)
    assert loose.promoted == ["2"] and tight.promoted == ["2", "4"]
    assert loose.metric_after >= 15 and tight.metric_after >= 22
    assert tight.extra_bits == 2 * loose.extra_bits


def test_pruning_drops_a_cheap_promotion_the_budget_does_not_need():
    # Layer 6 is mildly sensitive but has 4x fewer weights, so gain per bit promotes it
    # first; once layer 2 is promoted too, layer 6 is no longer needed and is dropped.
    model, data = weight_outlier(target=2), batches()
    with torch.no_grad():
        model[6].weight[:, 9].mul_(6.0)
        model[4].weight[9].div_(6.0)
        model[4].bias[9] /= 6.0
    result = auto_mixed_precision(model, preset("w4-g32"), data, min_sqnr_db=17, progress=False)
    assert result.promoted == ["2"]
    assert [(action, name) for action, name, _ in result.trail] == [
        ("promote", "6"), ("promote", "2"), ("drop", "6")]
    assert result.metric_after >= 17
    assert "−`6`" in result.to_markdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one budget"),
        ({"min_sqnr_db": 30, "max_drop": 0.1, "eval_fn": lambda m: 0.0}, "exactly one budget"),
        ({"max_drop": 0.1}, "eval_fn"),
        ({"min_sqnr_db": 30, "eval_fn": lambda m: 0.0}, "eval_fn is not used"),
        ({"eval_fn": lambda m: 0.0, "max_drop": -1.0}, ">= 0"),
        ({"min_sqnr_db": math.nan}, "finite"),
        ({"min_sqnr_db": 30, "fallback": "int4"}, "fallback"),
        ({"min_sqnr_db": 30, "fallback": "int8", "recipe": preset("x86")}, "below 8 bits"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    recipe = kwargs.pop("recipe", preset("w4-g32"))
    with pytest.raises(MixedPrecisionError, match=message):
        auto_mixed_precision(mlp(), recipe, batches(2), progress=False, **kwargs)

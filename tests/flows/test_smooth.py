"""Outlier smoothing: exact in float, better under static int8, survives state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from helpers.flow_models import sqnr
from lowbit.errors import LowbitError
from lowbit.flows import smooth, smoothing_factors
from lowbit.recipes import Recipe, preset
from lowbit.recipes.spec import RecipeError


def _outlier_model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    gen = torch.Generator().manual_seed(1)
    scale = torch.ones(32)
    scale[[3, 17]] = 60.0  # two outlier channels, as transformer activations have
    data = [torch.randn(16, 32, generator=gen) * scale for _ in range(8)]
    return model, data


def test_factors_follow_the_smoothquant_formula():
    act = torch.tensor([100.0, 4.0, 0.0])
    w = torch.tensor([[1.0, 0.25, 2.0], [-0.5, 1.0, 1.0]])
    factors = smoothing_factors(act, w, 0.5)
    s = torch.sqrt(act[:2]) / torch.sqrt(w.abs().amax(0)[:2])
    torch.testing.assert_close(factors[:2], 1 / s)
    assert factors[2] == 1.0  # a dead channel is left alone


def test_smoothing_is_exact_in_float_and_helps_static_int8():
    model, data = _outlier_model_and_data()
    base = preset("onnxruntime")
    plain = lowbit.quantize(model, base, calibrate=data, progress=False)
    smoothed = lowbit.quantize(model, base.with_(smooth_alpha=0.5), calibrate=data, progress=False)
    assert smoothed.lowbit_state.smoothed == ["0", "2"]
    x = torch.cat(data)
    ref = model(x)
    assert sqnr(ref, smoothed(x)) > sqnr(ref, plain(x)) + 6  # at least 1 bit better

    prepared = lowbit.prepare(copy.deepcopy(model), base)
    smooth(prepared, data, 0.5, progress=False)
    for _, _, q in lowbit.flows.quantizer_modules(prepared):
        q.mode = "off"  # float path: x * (1/s) against W * s
    torch.testing.assert_close(prepared(x), ref, rtol=1e-4, atol=1e-4)


def test_smoothed_state_dict_loads_into_a_fresh_quantized_model():
    model, data = _outlier_model_and_data()
    recipe = preset("onnxruntime").with_(smooth_alpha=0.5)
    a = lowbit.quantize(model, recipe, calibrate=data, progress=False)
    b = lowbit.quantize(model, preset("onnxruntime"), calibrate=data, progress=False)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(data[0]), b(data[0]))


def test_bad_alpha():
    with pytest.raises(RecipeError, match="smooth_alpha"):
        Recipe("r", smooth_alpha=1.5)
    model, data = _outlier_model_and_data()
    prepared = lowbit.prepare(model, preset("onnxruntime"))
    with pytest.raises(LowbitError, match="alpha"):
        smooth(prepared, data, alpha=0.0)

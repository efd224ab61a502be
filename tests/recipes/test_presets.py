"""Backend presets: each validates, resolves, and encodes its target's arithmetic."""

from __future__ import annotations

import pytest

from lowbit.recipes import PRESETS, QuantSpec, Recipe, RecipeError, list_presets, preset

REQUIRED = ["x86", "x86-novnni", "arm", "mnn", "tensorrt", "onnxruntime", "onnxruntime-u8s8",
            "w8a8-dynamic", "onnxruntime-dynamic", "w8", "w4-g128", "w4-g32", "fp8", "int8"]


def test_required_presets_exist_and_are_listed():
    listed = dict(list_presets())
    assert set(REQUIRED) <= set(PRESETS) == set(listed)
    for name, description in listed.items():
        assert description and "\n" not in description, name
        assert PRESETS[name].name == name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_on_linear_and_conv(name):
    recipe = preset(name)
    assert isinstance(recipe, Recipe)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    for module, kind in (("encoder.layer.0.attention.self.query", "Linear"),
                         ("features.0.0", "Conv2d")):
        spec = recipe.layer_spec(module, kind)
        assert spec is not None and spec.quantized and spec.weight is not None, (name, kind)
        if recipe.mode == "weight_only":
            assert spec.input is None
        else:
            assert spec.input is not None
        assert spec.input is None or spec.input.dynamic == (recipe.mode == "dynamic")
    assert recipe.describe().startswith(f"Recipe {name!r}")


def test_preset_lookup():
    assert preset("W8A8_dynamic") is PRESETS["w8a8-dynamic"]
    with pytest.raises(RecipeError, match=r"unknown preset 'x87'.*'x86'"):
        preset("x87")


def test_x86_matches_pytorch_fbgemm():
    x86 = preset("x86")
    assert x86.weight == QuantSpec("int8", "channel", symmetric=True)
    assert (x86.input.format, x86.input.granularity, x86.input.symmetric) == (
        "uint8", "tensor", False)
    assert x86.input.observer == "histogram" and x86.input.method == "mse"
    novnni = preset("x86-novnni")
    assert novnni.input == x86.input.with_(format="uint7")
    assert novnni.input.fmt.qmax == 127
    assert preset("arm").input == x86.input and preset("arm").backend == "qnnpack"


def test_mnn_rounds_half_away_and_is_symmetric():
    mnn = preset("mnn")
    for spec in (mnn.weight, mnn.input):
        assert spec.rounding == "half_away" and spec.symmetric and spec.fmt.signed
        assert (spec.fmt.qmin, spec.fmt.qmax) == (-127, 127)
    assert mnn.weight.granularity == "channel" and mnn.input.granularity == "tensor"


def test_tensorrt_has_no_zero_points():
    trt = preset("tensorrt")
    assert trt.weight.symmetric and trt.input.symmetric
    assert trt.weight.observer == "minmax" and trt.weight.fmt.qmin == -127
    assert trt.input.method == "entropy" and trt.input.fmt.qmin == -128


def test_onnxruntime_s8s8_and_u8s8():
    ort = preset("onnxruntime")
    assert ort.weight.format == "int8" and ort.weight.symmetric
    assert ort.input.format == "int8" and not ort.input.symmetric
    assert preset("onnxruntime-u8s8").input.format == "uint8"
    int8 = preset("int8")
    assert int8.with_(name="onnxruntime", description=ort.description) == ort


def test_llm_presets():
    dyn = preset("w8a8-dynamic")
    assert dyn.mode == "dynamic" and dyn.input.granularity == "token" and dyn.input.dynamic
    ort = preset("onnxruntime-dynamic")  # ONNX DynamicQuantizeLinear's parameters exactly
    assert ort.mode == "dynamic" and ort.input.granularity == "tensor" and ort.input.dynamic
    assert ort.input.format == "uint8" and not ort.input.symmetric and ort.calibration_batches == 0
    assert preset("w8").mode == "weight_only" and preset("w8").weight.format == "int8"
    for size in (128, 32):
        w4 = preset(f"w4-g{size}")
        assert w4.weight.group_size == size and w4.weight.clip_search and w4.weight.symmetric
        assert w4.layer_spec("model.embed_tokens", "Embedding") is None
    fp8 = preset("fp8")
    assert fp8.weight.format == fp8.input.format == "fp8_e4m3fn"
    assert fp8.mode == "static" and fp8.input.granularity == "tensor"


def test_presets_are_frozen():
    with pytest.raises(AttributeError):
        preset("x86").name = "mine"  # type: ignore[misc]

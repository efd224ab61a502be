"""Recipe resolution: rule precedence, globs, type filters, include / exclude, modes."""

from __future__ import annotations

import pytest

from lowbit.recipes import LayerSpec, QuantSpec, Recipe, RecipeError, Rule, glob_match

BERT = [
    "bert.embeddings.word_embeddings",
    *[f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(3)
      for p in ("query", "key", "value")],
    *[f"bert.encoder.layer.{i}.attention.output.dense" for i in range(3)],
    *[f"bert.encoder.layer.{i}.intermediate.dense" for i in range(3)],
    "classifier",
]
CNN = ["features.0.0", "features.0.1", "features.1.conv.0.0", "features.18.0", "classifier.1"]
INT4 = QuantSpec("int4", "group", group_size=128)


def test_default_recipe_resolves_linear_and_conv():
    recipe = Recipe()
    spec = recipe.layer_spec("bert.encoder.layer.0.attention.self.query", "Linear")
    assert isinstance(spec, LayerSpec) and spec.quantized
    assert spec.weight == QuantSpec("int8", "channel")
    assert spec.input == QuantSpec("int8", symmetric=False)
    assert spec.output is None
    assert recipe.layer_spec("features.0.0", "Conv2d").weight.granularity == "channel"


def test_types_outside_module_types_are_not_quantized():
    recipe = Recipe()
    assert recipe.layer_spec("features.0.1", "BatchNorm2d") is None
    assert recipe.layer_spec("bert.encoder.layer.0.attention.output.LayerNorm", "LayerNorm") is None
    assert Recipe(module_types=("Conv2d",)).layer_spec("classifier", "Linear") is None


def test_module_type_may_be_the_class():
    import torch.nn as nn

    assert Recipe().layer_spec("fc", nn.Linear) is not None


def test_glob_match_semantics():
    assert glob_match("bert.encoder.layer.*.attention.*", "bert.encoder.layer.0.attention.self.key")
    assert glob_match("*.query", "bert.encoder.layer.11.attention.self.query")
    assert glob_match("features.0", "features.0.0")  # a parent names its children
    assert not glob_match("features.0", "features.01")
    assert not glob_match("features.1", "features.18.0")
    assert not glob_match("Classifier", "classifier")  # case-sensitive like module names


def test_later_rules_override_field_by_field():
    recipe = Recipe(rules=(
        Rule("bert.encoder.*", weight=INT4),
        Rule("*.attention.self.*", input=QuantSpec("uint8", symmetric=False)),
        Rule("bert.encoder.layer.2.*", weight=QuantSpec("int8", "channel")),
    ))
    query0 = recipe.layer_spec("bert.encoder.layer.0.attention.self.query", "Linear")
    assert query0.weight == INT4
    assert query0.input.format == "uint8"
    assert query0.extra["rules"] == (0, 1)
    dense0 = recipe.layer_spec("bert.encoder.layer.0.intermediate.dense", "Linear")
    assert dense0.weight == INT4 and dense0.input == recipe.input
    query2 = recipe.layer_spec("bert.encoder.layer.2.attention.self.query", "Linear")
    assert query2.weight.format == "int8" and query2.input.format == "uint8"
    assert recipe.layer_spec("classifier", "Linear").weight == recipe.weight


def test_rule_none_means_float_and_inherit_means_untouched():
    recipe = Recipe(rules=(Rule("classifier", input=None), Rule("features.*", output="none")))
    head = recipe.layer_spec("classifier", "Linear")
    assert head.input is None and head.weight is not None
    assert Rule("x", weight=None).weight is None
    assert Rule("x", weight=None).input == "inherit"
    all_float = Recipe(rules=(Rule("classifier", weight=None, input=None),))
    assert all_float.layer_spec("classifier", "Linear") is None


def test_type_filters():
    recipe = Recipe(rules=(Rule("*", types=("Conv2d",), weight=INT4.with_(group_size=32)),))
    assert recipe.layer_spec("features.0.0", "Conv2d").weight.group_size == 32
    assert recipe.layer_spec("classifier.1", "Linear").weight == recipe.weight
    assert Rule("*", types="Linear", skip=True).types == ("Linear",)


def test_include_exclude():
    recipe = Recipe(include=("bert.encoder.*",), exclude=("bert.encoder.layer.0",))
    assert recipe.layer_spec("bert.encoder.layer.1.attention.self.query", "Linear") is not None
    assert recipe.layer_spec("bert.encoder.layer.0.attention.self.query", "Linear") is None
    assert recipe.layer_spec("classifier", "Linear") is None
    # exclude wins over rules
    with_rule = recipe.with_rules(Rule("bert.encoder.layer.0.*", skip=False, weight=INT4))
    assert with_rule.layer_spec("bert.encoder.layer.0.intermediate.dense", "Linear") is None
    cnn = Recipe(exclude=("features.0", "classifier"))
    assert [n for n in CNN if cnn.layer_spec(n, "Conv2d")] == ["features.1.conv.0.0",
                                                               "features.18.0"]


def test_skip_and_unskip():
    recipe = Recipe(rules=(Rule("bert.encoder.*", skip=True),
                           Rule("bert.encoder.layer.1.*", skip=False)))
    assert recipe.layer_spec("bert.encoder.layer.0.intermediate.dense", "Linear") is None
    assert recipe.layer_spec("bert.encoder.layer.1.intermediate.dense", "Linear") is not None


def test_keep_fp16_and_undo():
    recipe = Recipe(rules=(Rule("*.attention.*", keep="fp16"),
                           Rule("bert.encoder.layer.2.*", keep="none")))
    kept = recipe.layer_spec("bert.encoder.layer.0.attention.self.value", "Linear")
    assert kept == LayerSpec(keep="fp16") and not kept.quantized
    assert recipe.layer_spec("bert.encoder.layer.2.attention.self.value", "Linear").quantized
    assert recipe.layer_spec("bert.encoder.layer.0.intermediate.dense", "Linear").keep is None


def test_embedding_is_weight_only_whatever_the_mode():
    for mode in ("static", "dynamic", "weight_only"):
        spec = Recipe(mode=mode).layer_spec("bert.embeddings.word_embeddings", "Embedding")
        assert spec.weight is not None and spec.input is None and spec.output is None


def test_weight_only_mode():
    recipe = Recipe(mode="weight_only", weight=INT4, output=QuantSpec())
    assert recipe.input is None and recipe.output is None
    spec = recipe.layer_spec("features.0.0", "Conv2d")
    assert spec.weight == INT4 and spec.input is None
    with pytest.raises(RecipeError) as info:
        Recipe(mode="weight_only", rules=(Rule("x", input=QuantSpec()),))
    assert info.value.key == "rules[0].input"
    with pytest.raises(RecipeError) as info:
        Recipe(mode="weight_only", weight=None)
    assert info.value.key == "weight"


def test_dynamic_mode_marks_activations_dynamic():
    recipe = Recipe(mode="dynamic", input=QuantSpec("int8", "token"),
                    rules=(Rule("classifier", input=QuantSpec("uint8", symmetric=False)),))
    assert recipe.layer_spec("fc", "Linear").input.dynamic
    assert recipe.layer_spec("classifier", "Linear").input == QuantSpec(
        "uint8", symmetric=False, dynamic=True)
    assert recipe.input.dynamic is False  # the recipe itself is left as written


def test_validation_names_keys():
    cases = [
        (dict(mode="qat"), "mode"),
        (dict(name=""), "name"),
        (dict(weight=QuantSpec(dynamic=True)), "weight.dynamic"),
        (dict(input=QuantSpec(clip_search=True)), "input.clip_search"),
        (dict(include=("ok", 3)), "include[1]"),
        (dict(module_types=()), "module_types"),
        (dict(fuse="yes"), "fuse"),
        (dict(calibration_batches=-1), "calibration_batches"),
        (dict(calibration_batches=True), "calibration_batches"),
        (dict(rules=("encoder.*",)), "rules[0]"),
        (dict(rules=({"pattern": "a", "keep": "fp64"},)), "rules[0].keep"),
        (dict(weight="int8"), "weight"),
    ]
    for kwargs, key in cases:
        with pytest.raises(RecipeError) as info:
            Recipe(**kwargs)
        assert info.value.key == key, kwargs


def test_rule_validation():
    with pytest.raises(RecipeError, match="changes nothing"):
        Rule("encoder.*")
    with pytest.raises(RecipeError) as info:
        Rule("")
    assert info.value.key == "pattern"
    with pytest.raises(RecipeError) as info:
        Rule("a", skip="yes")
    assert info.value.key == "skip"


def test_with_and_with_rules_are_copies():
    base = Recipe()
    changed = base.with_(name="mine", exclude=("classifier",))
    assert base.exclude == () and changed.exclude == ("classifier",)
    more = base.with_rules(Rule("a", skip=True), Rule("b", keep="bf16"))
    assert [r.pattern for r in more.rules] == ["a", "b"] and base.rules == ()
    assert hash(more) == hash(base.with_rules(Rule("a", skip=True), Rule("b", keep="bf16")))
    with pytest.raises(RecipeError):
        base.with_(mode="sometimes")


def test_unmatched_patterns():
    recipe = Recipe(
        rules=(Rule("bert.encoder.layer.*.attention.*", keep="fp16"),
               Rule("bert.decoder.*", skip=True),
               Rule("*", types=("ConvTranspose2d",), weight=None)),
        include=("bert.*",), exclude=("lm_head", "classifier", "lm_head"))
    assert recipe.unmatched_patterns(BERT) == ["bert.decoder.*", "lm_head"]
    assert recipe.unmatched_patterns({n: "Linear" for n in BERT}) == ["bert.decoder.*", "lm_head"]
    assert Recipe(exclude=("features.0",)).unmatched_patterns(CNN) == []
    assert Recipe().unmatched_patterns([]) == []


def test_describe():
    recipe = Recipe("demo", backend="x86", description="a test",
                    rules=(Rule("head", types=("Linear",), weight=None, keep="fp16"),),
                    exclude=("stem",))
    text = recipe.describe()
    assert text.splitlines()[0] == "Recipe 'demo' (static, backend x86): a test"
    assert "  input:  int8 per-tensor asym" in text
    assert "  output: float" in text
    assert "rule[0] 'head' (Linear): weight=float, keep=fp16" in text
    assert "exclude: stem" in text

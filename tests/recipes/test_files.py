"""YAML / TOML save and load: exact round trips, and errors that name the key path."""

from __future__ import annotations

import math
import textwrap

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lowbit.recipes import PRESETS, QuantSpec, Recipe, RecipeError, Rule
from lowbit.recipes.files import loads, toml_dumps

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUFFIXES = [".yaml", ".yml", ".toml"]


def busy_recipe() -> Recipe:
    return Recipe(
        name="bert-mixed", mode="static", backend=None,
        description='quotes " and \\ backslashes, ünïcode, tab\t',
        rules=(
            Rule("bert.encoder.layer.*.attention.*", types=("Linear",), keep="fp16"),
            Rule("*.intermediate.dense", weight=QuantSpec("int4", "group", group_size=64),
                 input=None),
            Rule("classifier", skip=True),
            Rule("bert.encoder.layer.0.*", keep="none", skip=False,
                 output=QuantSpec("uint8", symmetric=False, observer="ema", momentum=0.5)),
        ),
        include=("bert.*",), exclude=("bert.pooler",),
        fuse=False, bias_correction=True, calibration_batches=32,
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(tmp_path, name, suffix):
    recipe = PRESETS[name]
    path = recipe.save(tmp_path / f"{name}{suffix}")
    assert path.exists()
    assert Recipe.load(path) == recipe
    assert Recipe.load(str(path)) == recipe


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_busy_recipe_round_trips(tmp_path, suffix):
    recipe = busy_recipe()
    loaded = Recipe.load(recipe.save(tmp_path / f"r{suffix}"))
    assert loaded == recipe
    assert loaded.rules[1].weight.group_size == 64 and loaded.rules[1].input is None
    assert loaded.rules[0].input == "inherit"


def test_unknown_suffix(tmp_path):
    with pytest.raises(RecipeError, match=r"suffix '\.json'"):
        Recipe().save(tmp_path / "r.json")
    with pytest.raises(RecipeError, match="suffix"):
        Recipe.load(tmp_path / "r")


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        Recipe.load(tmp_path / "absent.yaml")


def write(tmp_path, text, suffix=".yaml"):
    path = tmp_path / f"hand{suffix}"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_hand_written_yaml(tmp_path):
    path = write(tmp_path, """\
        name: bert
        mode: static
        weight: {format: int8, granularity: channel}
        input: {format: uint8, symmetric: false, observer: histogram, method: entropy}
        exclude: [classifier]
        rules:
          - pattern: "*.attention.*"
            keep: fp16
          - pattern: bert.encoder.layer.11.*
            weight: none
    """)
    recipe = Recipe.load(path)
    assert recipe.exclude == ("classifier",) and recipe.input.method == "entropy"
    assert recipe.rules[1].weight is None
    assert recipe.layer_spec("bert.encoder.layer.0.attention.self.query", "Linear").keep == "fp16"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("mdoe: static\n", "mdoe"),
        ("weight: {formt: int8}\n", "weight.formt"),
        ("weight: {format: unt8}\n", "weight.format"),
        ("input: {format: uint8, symmetric: maybe}\n", "input.symmetric"),
        ("fuse: 'yes'\n", "fuse"),
        ("calibration_batches: 1.5\n", "calibration_batches"),
        ("exclude: [classifier, 3]\n", "exclude[1]"),
        ("rules:\n  - {pattern: a, keep: fp16}\n  - {pattern: b, skip: true}\n"
         "  - {pattern: c, weight: {formt: int4}}\n", "rules[2].weight.formt"),
        ("rules:\n  - {pattern: a, weight: {format: int4, granularity: group}}\n",
         "rules[0].weight.group_size"),
        ("rules:\n  - {pattern: a, kep: fp16}\n", "rules[0].kep"),
        ("rules:\n  - just-a-string\n", "rules[0]"),
        ("version: 2\n", "version"),
    ],
)
def test_bad_yaml_names_the_key(tmp_path, body, key):
    with pytest.raises(RecipeError) as info:
        Recipe.load(write(tmp_path, "name: hand\n" + body))
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert "hand.yaml" in str(info.value)


def test_lone_rule_mapping_is_one_rule():
    assert Recipe.from_dict({"rules": {"pattern": "a", "skip": True}}).rules == (
        Rule("a", skip=True),)


def test_bad_toml_names_the_key(tmp_path):
    path = write(tmp_path, """\
        name = "hand"
        [[rules]]
        pattern = "a"
        keep = "fp16"
        [[rules]]
        pattern = "b"
        [rules.weight]
        format = "int4"
        granularity = "group"
        group_size = 0
    """, ".toml")
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    assert info.value.key == "rules[1].weight.group_size"


def test_syntax_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"(?s)not valid YAML.*must be quoted"):
        Recipe.load(write(tmp_path, "rules:\n  - pattern: *.query\n    skip: true\n"))
    with pytest.raises(RecipeError, match="not valid TOML"):
        Recipe.load(write(tmp_path, "name = \n", ".toml"))
    with pytest.raises(RecipeError, match="must hold a mapping"):
        Recipe.load(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RecipeError, match=r"must hold a mapping.*nothing"):
        Recipe.load(write(tmp_path, ""))


scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False) | st.text(st.characters(exclude_categories=("Cs",))))
keys = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)
flat = st.dictionaries(keys, scalars | st.lists(scalars, max_size=3), max_size=4)


@settings(max_examples=150, deadline=None)
@given(top=flat, table=flat, items=st.lists(flat, max_size=3))
@example(top={}, table={"0\n": False}, items=[])  # a key ending in a newline once passed as bare
def test_toml_emitter_round_trips(top, table, items):
    data = {**top, "tbl": table}
    if items and all(items):
        data["arr"] = items
    text = toml_dumps(data)
    assert tomllib.loads(text) == data
    assert loads(text, "toml") == data


def test_toml_emitter_special_floats():
    text = toml_dumps({"a": math.inf, "b": -math.inf, "c": 1e-300, "d": math.nan})
    parsed = tomllib.loads(text)
    assert parsed["a"] == math.inf and parsed["b"] == -math.inf and parsed["c"] == 1e-300
    assert math.isnan(parsed["d"])
    with pytest.raises(RecipeError, match="no null"):
        toml_dumps({"a": None})

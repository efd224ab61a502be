"""QuantSpec validation: every error names the offending key."""

from __future__ import annotations

import pytest

from lowbit.errors import LowbitError
from lowbit.formats.qformat import get_format
from lowbit.primitives.granularity import per_channel, per_token
from lowbit.recipes import QuantSpec, RecipeError


def test_defaults_and_str():
    spec = QuantSpec()
    assert (spec.format, spec.granularity, spec.symmetric) == ("int8", "tensor", True)
    assert str(QuantSpec("uint8", symmetric=False, observer="histogram", method="mse")) == (
        "uint8 per-tensor asym mse")
    assert str(QuantSpec("int4", "group", group_size=32, clip_search=True)) == (
        "int4 per-group(32) sym clip-search")


def test_value_objects_are_stored_as_names():
    assert QuantSpec(get_format("uint8"), symmetric=False).format == "uint8"
    assert QuantSpec(granularity=per_channel(1)) == QuantSpec(granularity="channel", axis=1)
    assert QuantSpec(granularity=per_token()).axis is None
    assert QuantSpec(granularity="per_channel").granularity == "channel"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"format": "unt8"}, "format"),
        ({"format": 8}, "format"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": "group"}, "group_size"),
        ({"granularity": "channel", "group_size": 128}, "group_size"),
        ({"axis": 0}, "axis"),
        ({"axis": "0", "granularity": "channel"}, "axis"),
        ({"symmetric": "yes"}, "symmetric"),
        ({"observer": "kl"}, "observer"),
        ({"method": "entropy"}, "method"),
        ({"method": "kl", "observer": "histogram"}, "method"),
        ({"rounding": "nearest"}, "rounding"),
        ({"percentile": 0}, "percentile"),
        ({"percentile": True}, "percentile"),
        ({"momentum": 1.0}, "momentum"),
        ({"format": "fp8_e4m3fn", "symmetric": False}, "symmetric"),
        ({"dynamic": 1}, "dynamic"),
    ],
)
def test_bad_field_names_key(changes, key):
    with pytest.raises(RecipeError) as info:
        QuantSpec(**changes)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert isinstance(info.value, LowbitError)


def test_from_dict_paths():
    with pytest.raises(RecipeError) as info:
        QuantSpec.from_dict({"formt": "int8"}, "rules[2].weight")
    assert info.value.key == "rules[2].weight.formt"
    with pytest.raises(RecipeError) as info:
        QuantSpec.from_dict({"format": "int99"}, "weight")
    assert info.value.key == "weight.format"
    with pytest.raises(RecipeError, match="input: must be a mapping"):
        QuantSpec.from_dict(["int8"], "input")


def test_to_dict_round_trip():
    spec = QuantSpec("uint7", symmetric=False, observer="histogram", method="percentile",
                     percentile=99.9, rounding="half_away")
    data = spec.to_dict()
    assert data["format"] == "uint7" and "axis" not in data
    assert QuantSpec.from_dict(data) == spec
    assert QuantSpec.from_dict({"format": "int8", "percentile": 99}).percentile == 99.0

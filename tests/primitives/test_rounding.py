"""Rounding modes against Python's own rounding, including ties and huge values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError
from lowbit.primitives import ROUNDING_MODES, round_tensor

REFERENCE = {
    "half_even": lambda v: float(round(v)),
    "half_away": lambda v: math.copysign(math.floor(abs(v) + 0.5), v) if abs(v) < 2**52 else v,
    "floor": lambda v: float(math.floor(v)),
    "ceil": lambda v: float(math.ceil(v)),
    "truncate": lambda v: float(math.trunc(v)),
}
TIES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 8388609.0, -8388609.0, 4194304.5, 0.49999997]


@pytest.mark.parametrize("mode", sorted(REFERENCE))
def test_ties_and_large_values(mode):
    x = torch.tensor(TIES, dtype=torch.float32)
    expected = [REFERENCE[mode](float(v)) for v in x.tolist()]
    assert round_tensor(x, mode).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e9, 1e9, width=32), min_size=1, max_size=50),
       st.sampled_from(sorted(REFERENCE)))
def test_matches_python(values, mode):
    x = torch.tensor(values, dtype=torch.float32)
    assert round_tensor(x, mode).tolist() == [REFERENCE[mode](float(v)) for v in x.tolist()]


def test_half_modes_differ_exactly_on_ties():
    x = torch.tensor([0.5, 1.5, 2.5, -2.5])
    assert round_tensor(x, "half_even").tolist() == [0.0, 2.0, 2.0, -2.0]
    assert round_tensor(x, "half_away").tolist() == [1.0, 2.0, 3.0, -3.0]


def test_stochastic_stays_between_floor_and_ceil():
    x = torch.randn(1000) * 10
    r = round_tensor(x, "stochastic", torch.Generator().manual_seed(0))
    assert bool(((r == torch.floor(x)) | (r == torch.ceil(x))).all())


def test_unknown_mode():
    with pytest.raises(FormatError, match="half_even"):
        round_tensor(torch.ones(1), "banker")
    assert "stochastic" in ROUNDING_MODES

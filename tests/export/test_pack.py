"""Bit packing: exact round trips at every width, ONNX's nibble order, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError
from lowbit.export.pack import container_bits, pack_codes, unpack_codes
from lowbit.formats import get_format


@pytest.mark.parametrize("bits,signed", [(4, True), (4, False), (2, True), (2, False), (1, False)])
def test_round_trip_every_code_of_every_width(bits, signed):
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = torch.arange(low, high + 1, dtype=torch.int8).repeat(7)[:-3]  # length not a multiple
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, codes.numel(), signed=signed).to(torch.int8), codes)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=1, max_size=300))
def test_int4_property_round_trip(values):
    codes = torch.tensor(values, dtype=torch.int8)
    assert torch.equal(unpack_codes(pack_codes(codes, 4), 4, len(values), signed=True).to(torch.int8), codes)


def test_onnx_nibble_order_first_element_in_low_bits():
    assert pack_codes(torch.tensor([-8, 7, 1], dtype=torch.int8), 4).tolist() == [0x78, 0x01]
    assert pack_codes(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [0b00111001]


def test_container_widths():
    names = ["int2", "int3", "int4", "uint4", "int5", "int8", "uint7", "int12", "binary", "ternary"]
    assert [container_bits(get_format(n)) for n in names] == [2, 4, 4, 4, 8, 8, 8, 16, 2, 2]


def test_bad_input_is_refused():
    with pytest.raises(FormatError):
        pack_codes(torch.zeros(4, dtype=torch.int8), 3)
    with pytest.raises(FormatError):
        pack_codes(torch.zeros(4), 4)
    with pytest.raises(FormatError, match="packed bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 8, signed=True)

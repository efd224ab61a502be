"""quantize to FP8 / FP16 / BF16 by torch's cast equals lowbit's own rounding, bit for bit.

`quantize` takes torch's float32 cast (after clamping to ±max_finite) for the
formats in `TORCH_CASTS`; `floats.encode` is the reference it must equal (itself
checked against ONNX Runtime's Cast in tests/formats).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.formats import floats
from lowbit.formats.qformat import get_format
from lowbit.primitives import quantize
from lowbit.primitives.quantize import TORCH_CASTS


def tie_regions() -> torch.Tensor:
    """Every sign, exponent and top 11 mantissa bits of float32, each with the low 12
    mantissa bits at 0, 1, just below / at / just above half, and all ones: every tie
    and its neighbours for formats with up to 10 mantissa bits (bfloat16's 7 included)."""
    high = np.arange(1 << 20, dtype=np.uint32) << 12
    lows = (0, 1, 0x7FF, 0x800, 0x801, 0xFFF)
    values = torch.from_numpy(np.concatenate([(high | low).view(np.float32) for low in lows]))
    return values[~torch.isnan(values)]


def as_bits(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.uint8 if codes.element_size() == 1 else torch.int16)


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2", "fp16", "bf16"])
def test_torch_cast_equals_encode_on_every_tie(name):
    fmt = get_format(name)
    assert fmt.storage_dtype in TORCH_CASTS
    x = tie_regions()
    got = quantize(x, 1.0, None, fmt)
    assert torch.equal(as_bits(got), as_bits(floats.encode(x, fmt, saturate=True)))


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2", "fp16"])
def test_scaled_values_saturate_and_keep_signed_zero(name):
    fmt = get_format(name)
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38, float("inf"), float("-inf"), 0.7, -1.3])
    x = x.repeat(40_000)  # several chunks
    got = quantize(x, 0.37, None, fmt)
    want = floats.encode(x / torch.tensor(0.37), fmt, saturate=True)
    assert torch.equal(as_bits(got), as_bits(want))
    assert float(got.float().abs().max()) == fmt.max_finite


def test_nan_takes_the_exact_path():
    fmt = get_format("fp8_e4m3fn")
    x = torch.randn(300_000)
    x[5], x[-5] = float("nan"), -float("nan")
    got = quantize(x, 0.1, None, fmt)
    want = floats.encode(x / torch.tensor(0.1), fmt, saturate=True)
    assert torch.equal(as_bits(got), as_bits(want))
    assert int(as_bits(got)[5]) & 0x7F == 0x7F  # NaN codes

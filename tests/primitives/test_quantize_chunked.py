"""The chunked half-to-even path of quantize (one rounding add per chunk) against NumPy.

The fused numba kernel (tests/primitives/test_kernels.py) would take float32 input
here; it is switched off so that these tests keep exercising the torch path.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.primitives import kernels, quantize

quantize_module = importlib.import_module("lowbit.primitives.quantize")


@pytest.fixture(autouse=True)
def torch_path_only(monkeypatch):
    monkeypatch.setattr(kernels, "AVAILABLE", False)


def numpy_quantize(x: torch.Tensor, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear: float32 division, round half to even (np.rint), + zero point, saturate."""
    r = x.float().numpy() / np.float32(scale)
    return np.clip(np.rint(r).astype(np.float64) + zp, qmin, qmax)


def tricky(n: int, scale: float) -> torch.Tensor:
    """Ties (odd and even), their neighbours, values near and past the rounding limit 2**22, ±inf."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen) * 100 * scale
    q = n // 4
    x[:q] = (torch.randint(-300, 300, (q,), generator=gen) + 0.5) * scale
    x[q : 2 * q] = torch.nextafter(x[:q], torch.full((q,), float("inf")))
    special = torch.tensor([2.0**22, 2.0**22 + 0.5, 2.0**22 + 1, 2.0**23 - 0.5, 2.0**23, 2.0**24 + 2, 3e38,
                            float("inf"), 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -0.0])
    x[2 * q : 2 * q + special.numel()] = special * scale
    x[2 * q + special.numel() : 2 * q + 2 * special.numel()] = -special * scale
    return x


@pytest.mark.parametrize(
    "fmt,qmin,qmax,zp",
    [("int8", -128, 127, 0), ("uint8", 0, 255, 3), ("uint8", 0, 255, 128), ("int16", -32768, 32767, -7),
     ("uint4", 0, 15, 5)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_many_chunks_equal_numpy(monkeypatch, fmt, qmin, qmax, zp, dtype):
    monkeypatch.setattr(quantize_module, "CHUNK", 1000)  # many chunks and a short last one
    for scale in (0.25, 0.05):  # a power of two keeps the ties exact after division
        x = tricky(10_007, scale).to(dtype)
        got = quantize(x, scale, zp, fmt)
        want = numpy_quantize(x, scale, zp, qmin, qmax)
        np.testing.assert_array_equal(got.numpy().astype(np.float64), want)
    out = torch.empty_like(got)
    assert quantize(x, scale, zp, fmt, out=out).data_ptr() == out.data_ptr()
    assert torch.equal(out, got)


def test_per_channel_zero_points_in_the_chunked_path(monkeypatch):
    monkeypatch.setattr(quantize_module, "CHUNK", 64)
    x = tricky(40 * 33, 0.1).reshape(40, 33)
    scale = torch.linspace(0.05, 0.2, 40)
    zp = torch.arange(40) % 7 + 100
    got = quantize(x, scale, zp, "uint8", axis=0)
    for c in range(40):
        want = numpy_quantize(x[c], float(scale[c]), int(zp[c]), 0, 255)
        np.testing.assert_array_equal(got[c].numpy().astype(np.float64), want)


def test_nan_in_a_later_chunk_is_an_error(monkeypatch):
    monkeypatch.setattr(quantize_module, "CHUNK", 100)
    x = torch.zeros(1000)
    x[777] = float("nan")
    with pytest.raises(InputError, match="1 NaN"):
        quantize(x, 0.1, 0, "int8")

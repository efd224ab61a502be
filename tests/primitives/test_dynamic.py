"""dynamic_quantize beyond the ONNX operator: per-token and signed symmetric."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.formats import INT8
from lowbit.primitives import choose_qparams, dequantize, dynamic_quantize, quantize


def test_per_token_scales_each_row_by_its_own_range():
    x = torch.randn(2, 5, 64) * torch.logspace(-2, 2, 5).view(1, 5, 1)
    codes, p = dynamic_quantize(x, INT8, "token", symmetric=True)
    assert p.scale.shape == (2, 5, 1)
    ref = choose_qparams(x, INT8, "token", symmetric=True)
    assert torch.equal(p.scale, ref.scale)
    assert torch.equal(codes, quantize(x, ref.scale, None, INT8, axis=2, block_size=64))
    back = dequantize(codes, p.scale, p.zero_point, INT8, axis=p.axis, block_size=p.block_size)
    rel = (back - x).abs().amax(-1) / x.abs().amax(-1)
    assert bool((rel <= 0.5 / 127 * 1.001).all())


def test_bad_input():
    with pytest.raises(InputError, match="empty"):
        dynamic_quantize(torch.empty(0))
    with pytest.raises(InputError, match="NaN"):
        dynamic_quantize(torch.tensor([1.0, float("nan")]))

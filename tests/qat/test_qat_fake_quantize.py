"""qat_fake_quantize: forward bit-identical to fake_quantize, same STE / LSQ / LSQ+ gradients."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats import get_format
from lowbit.nn.qat_fq import qat_fake_quantize
from lowbit.primitives.fake_quantize import fake_quantize

CASES = [  # format, input shape, (axis, block), scale shape, zero point learned, rounding
    ("int8", (6, 10), (None, None), (), False, "half_even"),
    ("uint4", (6, 10), (None, None), (), True, "half_even"),
    ("int4", (6, 10), (0, None), (6,), False, "half_away"),
    ("uint8", (6, 5, 2), (1, None), (5,), True, "half_away"),
    ("int2", (6, 10), (1, 4), (6, 3), False, "half_even"),
]


@pytest.mark.parametrize(("fmt", "shape", "layout", "scale_shape", "learn_zp", "rounding"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_bit_identical_and_gradients_agree(fmt, shape, layout, scale_shape, learn_zp,
                                                      rounding, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    x.view(-1)[0] = 0.25  # an exact tie at scale 0.5
    axis, block = layout
    if scale_shape:
        scale = torch.rand(scale_shape, generator=gen) * 0.4 + 0.1
    else:
        scale = torch.tensor(0.5)
    zp = torch.full(scale_shape, 3.0 if learn_zp else 0.0)
    results = []
    for fn in (fake_quantize, qat_fake_quantize):
        xi = x.clone().requires_grad_(True)
        si = scale.clone().requires_grad_(True)
        zi = zp.clone().requires_grad_(True) if learn_zp else zp.int()
        out = fn(xi, si, zi, get_format(fmt), axis=axis, block_size=block, rounding=rounding,
                 grad_scale=0.3)
        weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        (out.float() * weights).sum().backward()
        results.append((out.detach(), xi.grad, si.grad, zi.grad if learn_zp else None))
    (ref, gx, gs, gz), (ours, hx, hs, hz) = results
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
    torch.testing.assert_close(hx, gx)
    torch.testing.assert_close(hs, gs, rtol=1e-4, atol=1e-5)
    if learn_zp:
        torch.testing.assert_close(hz, gz, rtol=1e-4, atol=1e-5)


def test_float_formats_fall_back_to_fake_quantize():
    x = torch.randn(16)
    out = qat_fake_quantize(x, torch.tensor(0.01), torch.tensor(0), get_format("fp8_e4m3fn"))
    assert torch.equal(out, fake_quantize(x, 0.01, None, "fp8_e4m3fn"))

"""fake_quantize: forward equals quantize→dequantize, STE / LSQ / LSQ+ gradients, torch agreement."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import QParamsError
from lowbit.formats import INT4, INT8, UINT8, get_format
from lowbit.primitives import choose_qparams, dequantize, fake_quantize, lsq_grad_scale, quantize


@pytest.mark.parametrize("name", ["int8", "uint8", "int4", "uint4", "int2", "int16", "fp8_e4m3fn",
                                  "fp8_e5m2", "fp4_e2m1", "ternary"])
@pytest.mark.parametrize("granularity,kw", [("tensor", {}), ("channel", {"axis": 1}),
                                            ("group", {"group_size": 5})])
def test_forward_equals_quantize_then_dequantize(name, granularity, kw):
    fmt = get_format(name)
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(2)) * 3
    p = choose_qparams(x, fmt, granularity, symmetric=fmt.signed, **kw)
    ref = dequantize(quantize(x, p.scale, p.zero_point, fmt, axis=p.axis, block_size=p.block_size),
                     p.scale, p.zero_point, fmt, axis=p.axis, block_size=p.block_size)
    out = fake_quantize(x, p.scale, p.zero_point, fmt, axis=p.axis, block_size=p.block_size)
    assert torch.equal(out, ref)


def test_agrees_with_torch_fake_quantize_per_tensor_and_per_channel():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 50, generator=gen) * 2
    # A power-of-two scale makes x * (1/s) (torch) and x / s (ONNX, lowbit) identical.
    ours = fake_quantize(x, 0.0625, 3, UINT8)
    theirs = torch.fake_quantize_per_tensor_affine(x, 0.0625, 3, 0, 255)
    assert torch.equal(ours, theirs)
    scale = 2.0 ** torch.randint(-6, 0, (8,)).float()
    zp = torch.randint(-5, 5, (8,), dtype=torch.int32)
    ours = fake_quantize(x, scale, zp, INT8, axis=0)
    theirs = torch.fake_quantize_per_channel_affine(x, scale, zp, 0, -128, 127)
    assert torch.equal(ours, theirs)
    # Arbitrary scales: torch multiplies by 1/s, so it may differ by one step at rare ties.
    ours = fake_quantize(x, 0.0137, 0, INT8)
    theirs = torch.fake_quantize_per_tensor_affine(x, 0.0137, 0, -128, 127)
    assert ((ours - theirs).abs() <= 0.0137 * 1.0001).all()
    assert (ours != theirs).float().mean() < 0.01


def slow_grads(x, s, z, qmin, qmax):
    """The STE / LSQ / LSQ+ definitions, one element at a time."""
    gx, gs, gz = [], 0.0, 0.0
    for v in x.tolist():
        r = float(torch.round(torch.tensor(v) / torch.tensor(s)))
        code = r + z
        if code < qmin:
            gx.append(0.0)
            gs += qmin - z
            gz += -s
        elif code > qmax:
            gx.append(0.0)
            gs += qmax - z
            gz += -s
        else:
            gx.append(1.0)
            gs += r - float(torch.tensor(v) / torch.tensor(s))
    return torch.tensor(gx), gs, gz


def test_gradients_equal_the_ste_lsq_definitions():
    x = (torch.randn(200, generator=torch.Generator().manual_seed(4)) * 3).requires_grad_()
    scale = torch.tensor(0.05, requires_grad=True)
    zp = torch.tensor(10.0, requires_grad=True)
    fake_quantize(x, scale, zp, UINT8).sum().backward()
    gx, gs, gz = slow_grads(x.detach(), 0.05, 10, 0, 255)
    assert torch.equal(x.grad, gx)
    assert scale.grad.item() == pytest.approx(gs, rel=1e-4, abs=1e-4)
    assert zp.grad.item() == pytest.approx(gz, rel=1e-5)


def test_gradients_agree_with_torch_learnable_fake_quantize():
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(9)) * 2
    g = torch.randn(4, 300, generator=torch.Generator().manual_seed(10))
    for use_ours in (True, False):
        xi = x.clone().requires_grad_()
        s = torch.tensor([0.0078125], requires_grad=True)  # power of two: identical forward
        z = torch.tensor([5.0], requires_grad=True)
        if use_ours:
            out = fake_quantize(xi, s, z, INT8, grad_scale=0.5)
        else:
            out = torch._fake_quantize_learnable_per_tensor_affine(xi, s, z, -128, 127, 0.5)
        (out * g).sum().backward()
        if use_ours:
            ours = (out.detach(), xi.grad, s.grad, z.grad)
        else:
            theirs = (out.detach(), xi.grad, s.grad, z.grad)
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])
    assert torch.allclose(ours[2], theirs[2], rtol=1e-4, atol=1e-4)
    assert torch.allclose(ours[3], theirs[3], rtol=1e-4, atol=1e-4)


def test_per_group_scale_gradient_sums_over_each_group():
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
    p = choose_qparams(x.detach(), INT4, "group", group_size=4)
    s = p.scale.clone().requires_grad_()
    fake_quantize(x, s, None, INT4, axis=1, block_size=4).sum().backward()
    for row in range(3):
        for grp in range(3):
            cols = slice(4 * grp, min(4 * grp + 4, 10))
            sg = p.scale[row, grp].clone().requires_grad_()
            fake_quantize(x.detach()[row, cols], sg, None, INT4).sum().backward()
            assert s.grad[row, grp].item() == pytest.approx(sg.grad.item(), abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=40),
       st.sampled_from(["int8", "uint8", "int4", "fp8_e4m3fn"]))
def test_idempotent(values, name):
    fmt = get_format(name)
    x = torch.tensor(values)
    p = choose_qparams(x, fmt, symmetric=fmt.signed)
    once = fake_quantize(x, p.scale, p.zero_point, fmt)
    assert torch.equal(fake_quantize(once, p.scale, p.zero_point, fmt), once)


def test_half_precision_input_keeps_its_dtype_and_grad_dtype():
    x = torch.randn(16, dtype=torch.bfloat16, requires_grad=True)
    out = fake_quantize(x, 0.05, 0, INT8)
    out.sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16


def test_collapsed_scale_is_a_clear_error():
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(QParamsError, match="positive and finite"):
            fake_quantize(torch.ones(3), torch.tensor(bad), None, INT8)


def test_lsq_grad_scale():
    assert lsq_grad_scale(100, INT8) == pytest.approx(1 / (100 * 127) ** 0.5)

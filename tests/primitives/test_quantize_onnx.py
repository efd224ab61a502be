"""quantize / dequantize / dynamic_quantize equal the ONNX operators bit for bit.

Integer and float8 formats run in ONNX Runtime (the real engine); int2, uint2
and float4e2m1, which ONNX Runtime does not implement, run in onnx's reference
evaluator, which is the operator definition in executable form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.onnx_ops import (
    dequantize_model,
    dynamic_quantize_model,
    quantize_model,
    run_ort,
    run_reference,
)
from lowbit.formats import get_format
from lowbit.formats.floats import decode
from lowbit.primitives import dequantize, dynamic_quantize, quantize

ORT_FORMATS = ["int8", "uint8", "int16", "uint16", "int4", "uint4", "fp8_e4m3fn", "fp8_e5m2"]
REFERENCE_ONLY = ["int2", "uint2", "fp4_e2m1"]
# (shape, axis, block_size): per-tensor, per-axis on two axes, blocked with a short last block.
LAYOUTS = [((6, 10), None, None), ((6, 10), 0, None), ((3, 4, 5), 1, None), ((6, 10), 1, 4),
           ((4, 9), 0, 2)]


def _inputs(shape, fmt, seed):
    """Normal data plus exact ties, values past the range, and signed zeros."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 3
    flat = x.view(-1)
    n = flat.numel()
    flat[: n // 4] = (torch.randint(-40, 40, (n // 4,), generator=gen) + 0.5) * 0.25
    flat[n // 4] = 1e6
    flat[n // 4 + 1] = -1e6
    flat[n // 4 + 2] = -0.0
    return x


def _params(shape, axis, block_size, fmt, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    if axis is None:
        pshape = ()
    elif block_size is None:
        pshape = (shape[axis],)
    else:
        pshape = list(shape)
        pshape[axis] = -(-shape[axis] // block_size)
    # Powers of two keep the ties of _inputs exact ties after division; mix in others too.
    scale = 2.0 ** torch.randint(-3, 1, pshape, generator=gen).float()
    scale = torch.where(torch.rand(pshape, generator=gen) < 0.3, scale * 1.37, scale)
    if fmt.kind == "float":
        return scale, None
    low, high = int(fmt.qmin), int(fmt.qmax)
    zp = torch.randint(low, high + 1, pshape, generator=gen)
    return scale, zp


def _codes_as_float(codes, fmt):
    return decode(codes, fmt) if fmt.kind == "float" else codes.to(torch.float64)


@pytest.mark.parametrize("name", ORT_FORMATS + REFERENCE_ONLY)
@pytest.mark.parametrize("shape,axis,block_size", LAYOUTS)
def test_quantize_matches_onnx(name, shape, axis, block_size):
    fmt = get_format(name)
    x = _inputs(shape, fmt, seed=len(name) + len(shape))
    scale, zp = _params(shape, axis, block_size, fmt, seed=7)
    ours = quantize(x, scale, zp, fmt, axis=axis, block_size=block_size)
    assert ours.dtype == fmt.storage_dtype
    np_zp = None if zp is None else zp.numpy()
    opset = 25 if name in ("int2", "uint2") else 23 if name == "fp4_e2m1" else 21
    model = quantize_model(shape, scale.numpy(), np_zp, fmt.onnx_type, axis, block_size,
                           opset=opset)
    runner = run_reference if name in REFERENCE_ONLY else run_ort
    (theirs,) = runner(model, x=x.numpy())
    np.testing.assert_array_equal(_codes_as_float(ours, fmt).numpy(), theirs.astype(np.float64))


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_float8_saturate_attribute_matches_onnx_runtime(name, saturate):
    fmt = get_format(name)
    x = torch.tensor([0.0, 1.0, 447.0, 449.0, 470.0, 1e5, 6e4, -6e4, -1e9, float("inf"),
                      -float("inf"), 2.0**-10, 2.0**-17, -(2.0**-20)])
    ours = quantize(x, 1.0, None, fmt, saturate=bool(saturate))
    model = quantize_model(x.shape, np.float32(1.0), None, fmt.onnx_type, saturate=saturate)
    (theirs,) = run_ort(model, x=x.numpy())
    np.testing.assert_array_equal(decode(ours, fmt).numpy(), theirs)


@pytest.mark.parametrize("name", ORT_FORMATS + REFERENCE_ONLY)
@pytest.mark.parametrize("shape,axis,block_size", LAYOUTS)
def test_dequantize_matches_onnx(name, shape, axis, block_size):
    fmt = get_format(name)
    scale, zp = _params(shape, axis, block_size, fmt, seed=11)
    scale = scale * 0.7131  # not a power of two: the multiply must round as ONNX does
    x = _inputs(shape, fmt, seed=3)
    codes = quantize(x, 1.0, None, fmt) if fmt.kind == "float" else quantize(x * 5, 1.0, 0, fmt)
    ours = dequantize(codes, scale, zp, fmt, axis=axis, block_size=block_size)
    np_zp = None if zp is None else zp.numpy()
    opset = 25 if name in ("int2", "uint2") else 23 if name == "fp4_e2m1" else 21
    model = dequantize_model(shape, scale.numpy(), np_zp, fmt.onnx_type, axis, block_size,
                             opset=opset)
    runner = run_reference if name in REFERENCE_ONLY else run_ort
    (theirs,) = runner(model, x=_codes_as_float(codes, fmt).float().numpy())
    np.testing.assert_array_equal(ours.numpy(), theirs)


@pytest.mark.parametrize("case", ["normal", "positive", "negative", "zeros", "tiny", "ties"])
def test_dynamic_quantize_matches_onnx_runtime(case):
    gen = torch.Generator().manual_seed(5)
    x = {
        "normal": torch.randn(7, 33, generator=gen),
        "positive": torch.rand(100, generator=gen) + 3,
        "negative": -torch.rand(100, generator=gen) - 0.5,
        "zeros": torch.zeros(16),
        "tiny": torch.randn(64, generator=gen) * 1e-30,
        "ties": torch.arange(-255, 256, dtype=torch.float32) / 2,
    }[case]
    codes, params = dynamic_quantize(x)
    y, s, z = run_ort(dynamic_quantize_model(x.shape), x=x.numpy())
    assert float(params.scale) == float(s)
    assert int(params.zero_point) == int(z)
    np.testing.assert_array_equal(codes.numpy(), y)

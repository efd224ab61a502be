"""requant="float": integer layers equal ONNX Runtime's QLinearConv / QLinearMatMul / QLinearAdd.

The issue's bar is ≥ 99.99 % equal elements and no difference above 1; the
float multiplier is computed as ORT computes it ((s_x · s_w) / s_y in float32)
and applied as MLAS does, so the outputs are expected to be identical.

u8 × s8 cases keep weights in [-64, 64]: on AVX2 CPUs without VNNI, ORT's
u8s8 kernels add pairs of products in int16 with saturation (seed 003 §3.1),
and |w| ≤ 64 keeps every pair sum below 255 · 128 < 32768, so the comparison
holds on any x86 machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from integer.ort_models import qlinear_add, qlinear_conv, qlinear_matmul
from lowbit.nn.integer import CodeParams, IntConv2d, IntLinear, OutputStage, along
from lowbit.nn.integer_ops import IntAdd
from lowbit.nn.integer_overflow import avx2_u8s8_saturation

ACT = {"int8": (torch.int8, -128, 127), "uint8": (torch.uint8, 0, 255)}


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _weights(shape, act: str, gen) -> tuple[torch.Tensor, torch.Tensor]:
    limit = 127 if act == "int8" else 64
    w = torch.randint(-limit, limit + 1, shape, generator=gen).to(torch.int8)
    if act == "uint8":
        assert not avx2_u8s8_saturation(w, 8).saturates
    scale = torch.rand(shape[0], generator=gen) * 0.02 + 1e-3
    return w, scale


def _output_params(layer, x, act: str, gen) -> CodeParams:
    """An output scale that spans the accumulators (a few percent saturate), a random zero point."""
    acc = layer(x).double() * layer.input_params.scale
    acc = acc * along(layer.weight_scale.double(), layer.channel_axis, acc.dim())
    scale = _f32(float(acc.abs().quantile(0.98)) / 100)
    _, lo, hi = ACT[act]
    zero_point = int(torch.randint(lo + 40, hi - 40, (1,), generator=gen))
    return CodeParams(scale, zero_point, act)


def _compare(ours: torch.Tensor, ref: np.ndarray) -> None:
    diff = np.abs(ours.numpy().astype(np.int64) - ref.astype(np.int64))
    assert ours.shape == ref.shape
    assert (diff == 0).mean() >= 0.9999, f"only {(diff == 0).mean():.6f} equal"
    assert diff.max() <= 1


CONV_CASES = [
    # (in, out, kernel, stride, pads (top, left, bottom, right), dilation, groups)
    (8, 16, 3, 1, (1, 1, 1, 1), 1, 1),
    (8, 12, 3, 2, (1, 0, 2, 1), 1, 1),
    (16, 16, 3, 1, (1, 1, 1, 1), 1, 16),  # depthwise, as in MobileNetV2
    (6, 6, 3, 1, (2, 2, 2, 2), 2, 3),
    (64, 24, 1, 1, (0, 0, 0, 0), 1, 1),
]


@pytest.mark.parametrize("act", ["int8", "uint8"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_int_conv_equals_qlinearconv(act, case):
    cin, cout, k, stride, pads, dilation, groups = case
    gen = torch.Generator().manual_seed(cin * 31 + cout)
    dtype, lo, hi = ACT[act]
    x = torch.randint(lo, hi + 1, (2, cin, 11, 10), generator=gen).to(dtype)
    w, w_scale = _weights((cout, cin // groups, k, k), act, gen)
    x_params = CodeParams(_f32(0.05), int(torch.randint(lo, hi + 1, (1,), generator=gen)), act)
    top, left, bottom, right = pads
    conv = IntConv2d(w, w_scale, torch.zeros(cout), x_params, torch.randn(cout, generator=gen),
                     stride=stride, padding=[left, right, top, bottom], dilation=dilation,
                     groups=groups, mode="float")
    y_params = _output_params(conv, x, act, gen)
    conv.set_output(OutputStage.plain(y_params))
    ref = qlinear_conv(
        x.numpy(), x_params.scale, x_params.zero_point, w.numpy(), w_scale.numpy(),
        y_params.scale, y_params.zero_point, x.numpy().dtype, conv.bias_codes.numpy(),
        pads=pads, strides=(stride, stride), dilations=(dilation, dilation), group=groups,
    )
    _compare(conv(x), ref)


@pytest.mark.parametrize("act", ["int8", "uint8"])
@pytest.mark.parametrize("k, n", [(64, 10), (300, 48), (1280, 20)])
def test_int_linear_equals_qlinearmatmul(act, k, n):
    gen = torch.Generator().manual_seed(k + n)
    dtype, lo, hi = ACT[act]
    x = torch.randint(lo, hi + 1, (16, k), generator=gen).to(dtype)
    w, w_scale = _weights((n, k), act, gen)
    x_params = CodeParams(_f32(0.02), int(torch.randint(lo, hi + 1, (1,), generator=gen)), act)
    lin = IntLinear(w, w_scale, torch.zeros(n), x_params, None, mode="float")
    y_params = _output_params(lin, x, act, gen)
    lin.set_output(OutputStage.plain(y_params))
    ref = qlinear_matmul(x.numpy(), x_params.scale, x_params.zero_point, w.numpy().T.copy(),
                         w_scale.numpy(), y_params.scale, y_params.zero_point, x.numpy().dtype)
    _compare(lin(x), ref)


def test_many_elements_against_ort():
    # one larger layer: 2 · 32 · 28 · 28 ≈ 50k outputs, so 99.99 % allows at most 5 differences
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-128, 128, (2, 32, 28, 28), generator=gen).to(torch.int8)
    w, w_scale = _weights((32, 32, 3, 3), "int8", gen)
    x_params = CodeParams(_f32(0.031), -7, "int8")
    conv = IntConv2d(w, w_scale, torch.zeros(32), x_params, torch.randn(32, generator=gen),
                     padding=[1, 1, 1, 1], mode="float")
    y_params = _output_params(conv, x, "int8", gen)
    conv.set_output(OutputStage.plain(y_params))
    ref = qlinear_conv(x.numpy(), x_params.scale, x_params.zero_point, w.numpy(), w_scale.numpy(),
                       y_params.scale, y_params.zero_point, np.int8, conv.bias_codes.numpy(),
                       pads=(1, 1, 1, 1))
    _compare(conv(x), ref)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return {f for line in info if line.startswith("flags") for f in line.split(":")[1].split()}
    except OSError:
        return set()


# ONNX Runtime picks its QLinearAdd kernel by CPU: the AVX2 one (two FMAs) is what
# IntAdd's float mode reproduces; SSE2 and NEON machines round differently at near-ties.
needs_avx2 = pytest.mark.skipif(not {"avx2", "fma"} <= _cpu_flags(),
                                reason="IntAdd(float) follows ONNX Runtime's x86 AVX2 QLinearAdd kernel")


def _add_params(gen: np.random.Generator, act: str, contracted_matters: bool):
    """Random QLinearAdd parameters; with ``contracted_matters`` only sets where MLAS's
    FMA-contracted constant ``z_c − fma(r_ac, z_a, r_bc·z_b)`` differs from the plain one
    (zero points as the kernel sees them: uint8, see `_ort_add`)."""
    _, lo, hi = ACT[act]
    shift = 128 if act == "int8" else 0
    f32 = np.float32
    while True:
        sa, sb, sc = (float(f32(v)) for v in gen.uniform(0.004, 0.06, 3))
        za, zb, zc = (int(v) for v in gen.integers(lo, hi + 1, 3))
        r_ac, r_bc = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
        plain = f32(f32(r_ac * f32(za + shift)) + f32(r_bc * f32(zb + shift)))
        fused = f32(np.float64(r_ac) * (za + shift) + np.float64(f32(r_bc * f32(zb + shift))))
        if not contracted_matters or plain != fused:
            return sa, za, sb, zb, sc, zc


def _ort_add(a: torch.Tensor, b: torch.Tensor, sa, za, sb, zb, sc, zc) -> np.ndarray:
    """QLinearAdd as ONNX Runtime runs it inside an exported QDQ graph on x86: int8
    graphs are rewritten to uint8 (codes and zero points + 128) before the kernel runs."""
    if a.dtype == torch.uint8:
        return qlinear_add(a.numpy(), sa, za, b.numpy(), sb, zb, sc, zc)
    up = [(t.to(torch.int16) + 128).to(torch.uint8).numpy() for t in (a, b)]
    out = qlinear_add(up[0], sa, za + 128, up[1], sb, zb + 128, sc, zc + 128)
    return out.astype(np.int16) - 128


@needs_avx2
@pytest.mark.parametrize("act", ["uint8", "int8"])
@pytest.mark.parametrize("contracted_matters", [False, True])
def test_int_add_equals_qlinearadd_on_every_code_pair(act, contracted_matters):
    dtype, lo, hi = ACT[act]
    grid = torch.arange(lo, hi + 1)
    a, b = (t.reshape(-1).to(dtype) for t in torch.meshgrid(grid, grid, indexing="ij"))
    gen = np.random.default_rng(11 if contracted_matters else 5)
    for _ in range(4):
        sa, za, sb, zb, sc, zc = _add_params(gen, act, contracted_matters)
        pa, pb, pc = CodeParams(sa, za, act), CodeParams(sb, zb, act), CodeParams(sc, zc, act)
        ours = IntAdd(pa, pb, OutputStage.plain(pc), mode="float")(a, b)
        ref = _ort_add(a, b, sa, za, sb, zb, sc, zc)
        assert np.array_equal(ours.numpy(), ref), f"{int((ours.numpy() != ref).sum())} of 65536 differ"


@needs_avx2
def test_textbook_add_formula_misses_near_ties_that_int_add_gets():
    # Why IntAdd mirrors MLAS instead of round(((a−za)·sa + (b−zb)·sb) / sc) + zc:
    # across many parameter sets the textbook formula disagrees with ONNX Runtime
    # in some codes, while IntAdd never does.
    gen = np.random.default_rng(3)
    grid = torch.arange(256)
    a, b = (t.reshape(-1).to(torch.uint8) for t in torch.meshgrid(grid, grid, indexing="ij"))
    textbook_misses = 0
    for _ in range(12):
        sa, za, sb, zb, sc, zc = _add_params(gen, "uint8", False)
        ref = qlinear_add(a.numpy(), sa, za, b.numpy(), sb, zb, sc, zc)
        real = ((a.double() - za) * sa + (b.double() - zb) * sb) / sc
        textbook = (torch.round(real) + zc).clamp(0, 255).numpy()
        textbook_misses += int((textbook != ref).sum())
        params = [CodeParams(s, z, "uint8") for s, z in ((sa, za), (sb, zb), (sc, zc))]
        ours = IntAdd(params[0], params[1], OutputStage.plain(params[2]), mode="float")(a, b)
        assert np.array_equal(ours.numpy(), ref)
    assert textbook_misses > 0

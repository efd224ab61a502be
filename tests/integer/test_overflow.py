"""Accumulator overflow analysis and the AVX2 u8 × s8 saturation that motivates 7-bit activations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from integer.int_models import digits, trained
from lowbit.flows.integer import to_integer
from lowbit.nn.integer import CodeParams, IntegerError, IntLinear
from lowbit.nn.integer_overflow import (
    INT16_MAX,
    accumulator_bounds,
    avx2_u8s8_dot,
    avx2_u8s8_saturation,
)
from lowbit.recipes import QuantSpec, preset


def _linear(k: int, fmt: str, zero_point: int = 0, seed: int = 0) -> IntLinear:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (4, k), generator=gen).to(torch.int8)
    return IntLinear(w, torch.full((4,), 0.01), torch.zeros(4), CodeParams(0.1, zero_point, fmt),
                     torch.randn(4, generator=gen), name="fc")


def test_int8_layer_does_not_flag():
    bounds = accumulator_bounds(_linear(576, "uint8", 128))  # a 3×3×64 conv's reduction
    assert not bounds.overflows
    assert bounds.worst_with_bias < 576 * 128 * 127 + 2**20
    assert "fits int32" in str(bounds)


def test_long_reduction_with_16_bit_inputs_flags():
    bounds = accumulator_bounds(_linear(4096, "int16"))
    assert bounds.overflows and bounds.bits > 32
    assert "OVERFLOWS int32" in str(bounds)
    # the same 8-bit layer asked "what if the inputs were 16-bit"
    assert accumulator_bounds(_linear(4096, "int8"), input_format="int16").overflows
    assert not accumulator_bounds(_linear(4096, "int8")).overflows


def test_the_bound_is_reached_by_some_input():
    layer = _linear(300, "uint8", zero_point=37, seed=3)
    bounds = accumulator_bounds(layer)
    # the worst input puts each code at an end of [0, 255] by the sign of its weight
    w = layer.weight_codes.to(torch.int64)
    high = torch.where(w > 0, 255, 0).to(torch.uint8)
    low = torch.where(w > 0, 0, 255).to(torch.uint8)
    sums = torch.cat([layer(high), layer(low)]).to(torch.int64)  # rows: one per channel each
    reached = torch.stack([sums[c, c] for c in range(4)] + [sums[4 + c, c] for c in range(4)])
    assert int(reached.abs().max()) == bounds.worst_with_bias


def test_bounds_of_a_quantized_layer_in_a_model():
    qmodel = lowbit.quantize(trained("digits_cnn"), "x86", calibrate=[digits().train_images[:64]],
                             progress=False)
    bounds = accumulator_bounds(qmodel[3], name="conv2")
    assert bounds.layer == "conv2" and bounds.reduction == 16 * 9 and not bounds.overflows
    imodel = to_integer(qmodel, digits().test_images[:2])
    report = imodel.report()
    assert len(report.accumulators) == 4 and not report.overflow_risks


def test_16_bit_activation_model_reports_the_risk():
    recipe = preset("onnxruntime").with_(input=QuantSpec("int16", symmetric=False))
    model = torch.nn.Sequential(torch.nn.Linear(8192, 4))
    torch.nn.init.uniform_(model[0].weight, -1, 1)
    qmodel = lowbit.quantize(model, recipe, calibrate=[torch.rand(4, 8192)], progress=False)
    imodel = to_integer(qmodel, torch.full((1, 8192), 0.01))  # a tame input still runs
    risks = imodel.report().overflow_risks
    assert len(risks) == 1 and risks[0].layer == "0"
    assert "overflow risks: 1" in imodel.report().to_markdown()


def test_saturation_finder_flags_same_sign_pairs_only_with_8_bit_activations():
    w = torch.tensor([[127, 127, 127, -128, -100, -100, 3, 5]], dtype=torch.int8)
    at8 = avx2_u8s8_saturation(w, 8)
    assert at8.saturating == 2 and at8.pairs == 4
    assert [e[:2] for e in at8.examples] == [(0, 0), (0, 4)]
    assert at8.worst_sum == 255 * 254
    assert not avx2_u8s8_saturation(w, 7).saturates


def test_no_int8_weight_pair_saturates_with_7_bit_activations():
    values = torch.arange(-128, 128)
    pairs = torch.stack(torch.meshgrid(values, values, indexing="ij"), -1).reshape(1, -1).to(torch.int8)
    assert not avx2_u8s8_saturation(pairs, 7).saturates  # all 65536 pairs
    assert avx2_u8s8_saturation(pairs, 7).worst_sum == 127 * 256 <= INT16_MAX + 1
    assert avx2_u8s8_saturation(pairs, 8).saturating > 0


def test_conv_pairs_follow_the_channels_last_reduction():
    w = torch.zeros(1, 2, 1, 2, dtype=torch.int8)
    w[0, :, 0, 0] = 127  # two input channels at the same tap: adjacent in channels-last order
    assert avx2_u8s8_saturation(w, 8).examples == [(0, 0, 127, 127)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 64))
def test_emulated_avx2_dot_is_exact_with_7_bit_activations(seed, k):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (k,), generator=gen).to(torch.int8)
    x7 = torch.randint(0, 128, (5, k), generator=gen)
    exact = x7 @ w.to(torch.int64)
    assert torch.equal(avx2_u8s8_dot(x7, w), exact)


def test_emulated_avx2_dot_saturates_with_8_bit_activations():
    w = torch.tensor([127, 127, -128, -128], dtype=torch.int8)
    x = torch.tensor([[255, 255, 0, 0], [0, 0, 255, 255]])
    assert avx2_u8s8_dot(x, w).tolist() == [32767, -32768]  # exact: 64770, -65280
    assert (x @ w.to(torch.int64)).tolist() == [64770, -65280]


def test_report_lists_saturation_for_8_bit_but_not_7_bit_activations():
    split = digits()
    for name, expect in (("x86", True), ("x86-novnni", False)):
        qmodel = lowbit.quantize(trained("digits_cnn"), name, calibrate=[split.train_images[:64]],
                                 progress=False)
        report = to_integer(qmodel, split.test_images[:2]).report()
        assert any(s.saturates for s in report.saturation.values()) == expect, name


def test_bad_arguments_are_refused():
    with pytest.raises(IntegerError, match="integer weight codes"):
        avx2_u8s8_saturation(torch.randn(3, 3))
    with pytest.raises(IntegerError, match="act_bits"):
        avx2_u8s8_saturation(torch.zeros(2, 2, dtype=torch.int8), 9)
    with pytest.raises(IntegerError, match="integer format"):
        accumulator_bounds(_linear(8, "int8"), input_format="fp8")

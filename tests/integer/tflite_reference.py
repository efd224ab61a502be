"""A slow, plain-Python reference of TFLite's integer kernels (reference_integer_ops).

Scalar Python ints emulate C int32 arithmetic: truncating division, arithmetic
shifts, and the one saturating case of SaturatingRoundingDoublingHighMul.
Written from gemmlowp's fixedpoint.h and TFLite's quantization_util.cc,
reference_integer_ops/conv.h, fully_connected.h and add.h, one element at a
time, independent of lowbit's vectorised implementation.
"""

from __future__ import annotations

import math

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _c_div(ab + nudge, 1 << 31)


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    shifted = x * (1 << left)
    assert INT32_MIN <= shifted <= INT32_MAX, "TFLite's input would overflow int32"
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier`` (round half away from zero, as ``std::round``)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = math.floor(q * (1 << 31) + 0.5)
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def conv_per_channel(x, w, bias, input_offset: int, output_offset: int, multipliers, shifts,
                     act_min: int, act_max: int, stride: int = 1, pad: int = 0, dilation: int = 1,
                     groups: int = 1):
    """``reference_integer_ops::ConvPerChannel`` on nested lists ``x[n][c][y][x]``, ``w[o][i][ky][kx]``."""
    batches, _, height, width = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
    out_c, in_per_group, kh, kw = len(w), len(w[0]), len(w[0][0]), len(w[0][0][0])
    out_h = (height + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    out_per_group = out_c // groups
    out = [[[[0] * out_w for _ in range(out_h)] for _ in range(out_c)] for _ in range(batches)]
    for n in range(batches):
        for oc in range(out_c):
            group = oc // out_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    acc = 0
                    for ic in range(in_per_group):
                        for ky in range(kh):
                            for kx in range(kw):
                                iy = oy * stride - pad + dilation * ky
                                ix = ox * stride - pad + dilation * kx
                                if 0 <= iy < height and 0 <= ix < width:
                                    value = x[n][group * in_per_group + ic][iy][ix]
                                    acc += w[oc][ic][ky][kx] * (value + input_offset)
                    acc += bias[oc]
                    acc = multiply_by_quantized_multiplier(acc, multipliers[oc], shifts[oc])
                    out[n][oc][oy][ox] = min(max(acc + output_offset, act_min), act_max)
    return out


def fully_connected_per_channel(x, w, bias, input_offset: int, output_offset: int, multipliers,
                                shifts, act_min: int, act_max: int):
    """Per-channel ``FullyConnected`` on nested lists ``x[n][k]``, ``w[o][k]``."""
    out = []
    for row in x:
        values = []
        for oc, weights in enumerate(w):
            acc = sum(wk * (xk + input_offset) for wk, xk in zip(weights, row, strict=True)) + bias[oc]
            acc = multiply_by_quantized_multiplier(acc, multipliers[oc], shifts[oc])
            values.append(min(max(acc + output_offset, act_min), act_max))
        out.append(values)
    return out


def add(a, b, a_scale: float, a_zp: int, b_scale: float, b_zp: int, out_scale: float, out_zp: int,
        act_min: int, act_max: int):
    """TFLite's int8 ``Add`` on flat lists (left shift 20, ``PrepareGeneralSubOp`` multipliers)."""
    left_shift = 20
    twice_max = 2 * max(a_scale, b_scale)
    m_a, s_a = quantize_multiplier(a_scale / twice_max)
    m_b, s_b = quantize_multiplier(b_scale / twice_max)
    m_out, s_out = quantize_multiplier(twice_max / ((1 << left_shift) * out_scale))
    out = []
    for qa, qb in zip(a, b, strict=True):
        scaled_a = multiply_by_quantized_multiplier((qa - a_zp) * (1 << left_shift), m_a, s_a)
        scaled_b = multiply_by_quantized_multiplier((qb - b_zp) * (1 << left_shift), m_b, s_b)
        raw = multiply_by_quantized_multiplier(scaled_a + scaled_b, m_out, s_out) + out_zp
        out.append(min(max(raw, act_min), act_max))
    return out


def requantize(q, in_scale: float, in_zp: int, out_scale: float, out_zp: int, qmin: int, qmax: int):
    """TFLite's int8 → int8 ``Quantize`` (requantize) on a flat list."""
    m, s = quantize_multiplier(in_scale / out_scale)
    return [min(max(multiply_by_quantized_multiplier(v - in_zp, m, s) + out_zp, qmin), qmax) for v in q]

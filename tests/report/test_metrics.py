"""Metrics against slow, obviously correct references; model size of converted models."""

from __future__ import annotations

import collections
import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import lowbit.flows as flows
from lowbit.errors import LowbitError
from lowbit.recipes import Rule, preset
from lowbit.report import (
    ReportError,
    accuracy,
    compare_outputs,
    cosine_similarity,
    flatten_outputs,
    model_size_bytes,
    sqnr_db,
    top1_agreement,
)


def slow_sqnr(ref, approx) -> float:
    ref = [float(v) for v in ref.reshape(-1)]
    approx = [float(v) for v in approx.reshape(-1)]
    signal = sum(r * r for r in ref)
    noise = sum((r - a) ** 2 for r, a in zip(ref, approx, strict=True))
    return 10 * math.log10(signal / noise)


def test_sqnr_of_known_signals():
    x = torch.ones(1000, dtype=torch.float64)
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0, abs=1e-9)  # noise power 1 %
    assert sqnr_db(x, x * 1.01) == pytest.approx(40.0, abs=1e-9)
    # A full-scale sine against its b-bit rounding: ~6.02 b + 1.76 dB.
    t = torch.linspace(0, 200 * math.pi, 100_000, dtype=torch.float64)
    sine = torch.sin(t)
    step = 2 / 2**8
    rounded = torch.round(sine / step) * step
    assert sqnr_db(sine, rounded) == pytest.approx(6.02 * 8 + 1.76, abs=0.3)


def test_sqnr_matches_reference_and_edge_cases():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 17, generator=gen)
    approx = ref + 0.05 * torch.randn(3, 17, generator=gen)
    assert sqnr_db(ref, approx) == pytest.approx(slow_sqnr(ref, approx), rel=1e-12)
    assert sqnr_db(ref, ref.clone()) == math.inf
    assert sqnr_db(torch.zeros(4), torch.ones(4)) == -math.inf
    with pytest.raises(ReportError, match="shapes differ"):
        sqnr_db(ref, approx[:2])
    with pytest.raises(ReportError, match="NaN"):
        sqnr_db(ref, torch.full_like(ref, float("nan")))
    with pytest.raises(ReportError, match="empty"):
        sqnr_db(torch.zeros(0), torch.zeros(0))
    assert issubclass(ReportError, LowbitError)


def test_cosine_against_numpy():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 9, generator=gen), torch.randn(5, 9, generator=gen)
    got = cosine_similarity(a, b).numpy()
    an, bn = a.double().numpy(), b.double().numpy()
    want = [float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(an, bn, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert cosine_similarity(a, b, dim=0).shape == (9,)
    assert cosine_similarity(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [1.0, 1.0]
    assert cosine_similarity(torch.zeros(1, 3), torch.ones(1, 3)).tolist() == [0.0]


def test_top1_and_accuracy():
    ref = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    assert top1_agreement(ref, q) == 0.75
    assert accuracy(ref, torch.tensor([1, 0, 0, 1])) == 0.75
    with pytest.raises(ReportError, match="labels"):
        accuracy(ref, torch.tensor([1, 0]))
    with pytest.raises(ReportError, match="classes"):
        top1_agreement(torch.zeros(3, 1), torch.zeros(3, 1))


class FakeModelOutput(collections.OrderedDict):
    """What transformers' ModelOutput looks like: a dict whose to_tuple() drops None fields."""

    def to_tuple(self):
        return tuple(v for v in self.values() if v is not None)


@dataclasses.dataclass
class Pair:
    first: torch.Tensor
    second: object


def test_flatten_outputs_nested_structures():
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    out = {"logits": a, "extra": (b, None, [c, "text", 3]), "pair": Pair(d, None)}
    assert [float(t) for t in flatten_outputs(out)] == [0, 1, 2, 3]
    hf = FakeModelOutput(logits=a, hidden_states=None, past=((b, c), (d,)))
    assert [float(t) for t in flatten_outputs(hf)] == [0, 1, 2, 3]
    assert flatten_outputs(a) == [a]
    assert flatten_outputs(None) == [] and flatten_outputs("x") == []


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).eval()


def test_model_size_float_counts_every_stored_tensor():
    model = _mlp()
    assert model_size_bytes(model) == 4 * sum(p.numel() for p in model.parameters())
    bn = nn.BatchNorm1d(4)  # running stats and num_batches_tracked (int64) count; nothing else
    assert model_size_bytes(bn) == 4 * 4 * 4 + 8


def _quantizer_bytes(qmodel: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for k, t in qmodel.state_dict().items()
               if "_quantizer." in k or k.endswith("converted"))


def test_model_size_w8_is_a_quarter_plus_scales():
    model = _mlp()
    float_bytes = model_size_bytes(model)
    weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    biases = sum(m.bias.numel() for m in model if isinstance(m, nn.Linear))
    qmodel = flows.quantize(model, "w8", progress=False)
    size = model_size_bytes(qmodel)
    assert size == weights + 4 * biases + _quantizer_bytes(qmodel)
    assert 0.25 < size / float_bytes < 0.30
    # the dequantized weight cache (non-persistent) is not counted
    assert all("weight_codes" in k or not k.endswith(".weight") for k in qmodel.state_dict())


def test_model_size_w4_counts_packed_codes():
    model = _mlp()
    float_bytes = model_size_bytes(model)
    weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    biases = sum(m.bias.numel() for m in model if isinstance(m, nn.Linear))
    qmodel = flows.quantize(model, "w4-g32", progress=False)
    assert qmodel[0].weight_codes.dtype == torch.int8  # stored one per byte in memory ...
    size = model_size_bytes(qmodel)
    assert size == weights // 2 + 4 * biases + _quantizer_bytes(qmodel)  # ... counted packed
    groups = weights // 32
    # per group: a float32 scale and a one-byte zero point
    assert size == pytest.approx(float_bytes / 8 + 4 * biases * 7 / 8 + 5 * groups, rel=0.05)
    assert size < 0.75 * model_size_bytes(flows.quantize(model, "w8", progress=False))


def test_model_size_counts_fp16_kept_layers_at_two_bytes():
    model = _mlp()
    recipe = preset("w8").with_rules(Rule("2", keep="fp16"))
    qmodel = flows.quantize(model, recipe, progress=False)
    kept = qmodel[2].module
    kept_bytes = 2 * (kept.weight.numel() + kept.bias.numel())
    plain = copy.deepcopy(qmodel)
    plain[2] = kept  # the same tensors outside FloatKept count at 4 bytes
    assert model_size_bytes(plain) - model_size_bytes(qmodel) == kept_bytes


def test_compare_outputs_identical_perturbed_and_broken():
    model = _mlp()
    data = [torch.randn(4, 64) for _ in range(3)]
    same = compare_outputs(model, copy.deepcopy(model), data)
    assert same.sqnr_db == math.inf and same.max_abs_error == 0.0
    assert same.cosine_min == pytest.approx(1.0, abs=1e-12)
    assert same.batches == 3 and same.top1_agreement == 1.0
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        noisy[2].bias += 0.01
    fid = compare_outputs(model, noisy, data, max_batches=2)
    assert fid.batches == 2
    with torch.no_grad():
        ref = torch.cat([model(x) for x in data[:2]])
        out = torch.cat([noisy(x) for x in data[:2]])
    assert fid.sqnr_db == pytest.approx(slow_sqnr(ref, out), rel=1e-6)
    assert fid.max_abs_error == pytest.approx(0.01, rel=1e-3)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[2].bias[0] = float("nan")
    assert compare_outputs(model, broken, data).sqnr_db == -math.inf


def test_compare_outputs_bad_input():
    model = _mlp()
    with pytest.raises(ReportError, match="no batch"):
        compare_outputs(model, model, [])
    with pytest.raises(ReportError, match="iterable of batches"):
        compare_outputs(model, model, torch.randn(2, 64))
    with pytest.raises(ReportError, match="float model failed"):
        compare_outputs(model, model, [torch.randn(2, 3)])
    with pytest.raises(ReportError, match="forward_loop"):
        compare_outputs(model, model, lambda m: m(torch.randn(2, 64)))


def test_compare_outputs_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    before = copy.deepcopy(model.state_dict())
    compare_outputs(model, copy.deepcopy(model), [torch.randn(8, 4)])
    assert model.training and model[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

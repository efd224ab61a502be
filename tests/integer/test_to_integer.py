"""to_integer: whole models in integer arithmetic agree with lowbit's simulated model.

Why "within a few output steps": the integer model and the simulation differ
only where a value lands within rounding error of a rounding boundary. The
simulation rounds ``y / s`` computed in float32 from a float bias; the integer
model rounds ``M · acc`` (float32 or fixed-point ``M``) with the bias rounded to
int32. Such a tie flips one intermediate code by ±1, which moves the logits by
``s_in · Σ |w|`` of the layers after it: a fraction of one step of an int8 grid
over the logits' range. So the logits are compared in those steps.
"""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from helpers.flow_models import ResidualCNN, Untraceable, batches, randomize_bn
from integer.int_models import SumQuantAdd, digits, trained
from lowbit.flows.integer import IntegerModel, to_integer
from lowbit.nn.integer import IntAccumulating, IntegerError
from lowbit.nn.integer_ops import IntAdd, IntGlobalAvgPool, Requantize

MODES = ["fixed_point", "float"]


def _quantized(name: str, preset: str) -> torch.nn.Module:
    split = digits()
    return lowbit.quantize(trained(name), preset, calibrate=[split.train_images[:256]], progress=False)


def _compare(qmodel, imodel, x) -> tuple[float, float]:
    """(top-1 agreement, largest |Δ logit| in steps of an int8 grid over the logits' range)."""
    with torch.no_grad():
        sim, out = qmodel(x), imodel(x)
    step = float(sim.max() - sim.min()) / 255
    agreement = float((sim.argmax(1) == out.argmax(1)).float().mean())
    return agreement, float((sim - out).abs().max()) / step


def _modules(imodel: IntegerModel, cls) -> list:
    return [m for m in imodel.graph_module.modules() if isinstance(m, cls)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("preset", ["x86", "onnxruntime", "x86-novnni"])
@pytest.mark.parametrize("name", ["digits_cnn", "tiny_mobilenet"])
def test_small_cnns_agree_with_the_simulation(name, preset, mode):
    qmodel = _quantized(name, preset)
    x = digits().test_images
    imodel = to_integer(qmodel, x[:4], requant=mode)
    agreement, steps = _compare(qmodel, imodel, x)
    assert agreement >= 0.99
    assert steps <= 3.0
    report = imodel.report()
    assert report.fully_integer, report.to_markdown()
    boundaries = [r.op for r in report.ops if r.domain == "boundary"]
    assert boundaries == ["Quantize", "Dequantize"]


def test_requantization_targets_the_consumers_codes():
    qmodel = _quantized("digits_cnn", "x86")
    imodel = to_integer(qmodel, digits().test_images[:2])
    layers = _modules(imodel, IntAccumulating)
    assert len(layers) == 4
    # conv → relu → conv, conv → relu → maxpool → flatten → linear, linear → relu → linear:
    # each output is produced directly in the next layer's input codes, ReLU as its clamp
    for layer, consumer in zip(layers[:-1], ["3", "8", "10"], strict=True):
        params = qmodel[int(consumer)].input_quantizer
        assert layer.output.codes.scale == float(params.scale)
        assert layer.output.codes.zero_point == int(params.zero_point)
        assert layer.output.act_min == max(int(params.zero_point), 0)
    assert layers[-1].output is None  # logits: int32 accumulators, dequantized at the output
    assert not _modules(imodel, Requantize)


def test_mobilenet_like_model_runs_adds_and_pooling_in_integers():
    qmodel = _quantized("tiny_mobilenet", "onnxruntime")
    imodel = to_integer(qmodel, digits().test_images[:2], requant="fixed_point")
    assert len(_modules(imodel, IntAdd)) >= 2
    pool = _modules(imodel, IntGlobalAvgPool)
    assert len(pool) == 1 and pool[0].spatial == 64
    ops = [r.op for r in imodel.report().ops]
    assert ops[0] == "Quantize" and ops[-1] == "Dequantize"
    assert "IntGlobalAvgPool" in ops


def test_float_ops_are_dequantized_and_reported():
    qmodel = _quantized("sigmoid_mlp", "onnxruntime")
    x = digits().test_images
    imodel = to_integer(qmodel, x[:2], requant="float")
    report = imodel.report()
    assert [r.op for r in report.float_ops] == ["Sigmoid"]
    assert "no integer version" in report.float_ops[0].detail
    assert not report.fully_integer
    assert [r.op for r in report.ops].count("Dequantize") == 2  # before the sigmoid, at the output
    agreement, steps = _compare(qmodel, imodel, x)
    assert agreement >= 0.99 and steps <= 3.0


def test_a_sum_without_its_own_quantizer_stays_float_where_nothing_quantizes_it():
    qmodel = _quantized("relu_after_add", "x86")
    x = digits().test_images
    imodel = to_integer(qmodel, x[:2])
    report = imodel.report()
    assert {r.op for r in report.float_ops} >= {"add", "mean"}
    agreement, steps = _compare(qmodel, imodel, x)
    assert agreement >= 0.99 and steps <= 3.0


def _agree_where_clear(qmodel, imodel, x, steps: float = 2.0) -> float:
    """Top-1 agreement on samples whose simulated top-1 leads by more than ``steps`` int8 steps.

    An untrained model's top-1 often leads by less than the rounding differences
    move the logits, so only clear decisions are compared.
    """
    with torch.no_grad():
        sim, out = qmodel(x), imodel(x)
    top2 = sim.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > steps * float(sim.max() - sim.min()) / 255
    return float((sim.argmax(1) == out.argmax(1))[clear].float().mean())


@pytest.mark.parametrize("mode", MODES)
def test_residual_cat_model_and_sum_quantized_adds(mode):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = randomize_bn(ResidualCNN())  # untrained: the logits, not top-1, are compared
    data = batches(6)
    qmodel = lowbit.quantize(model, "onnxruntime", calibrate=data, progress=False)
    x = torch.cat(batches(8, seed=1))
    imodel = to_integer(qmodel, data[0], requant=mode)
    assert imodel.report().fully_integer
    assert any(r.op == "cat" and r.domain == "int" for r in imodel.report().ops)
    assert _compare(qmodel, imodel, x)[1] <= 3.0
    assert _agree_where_clear(qmodel, imodel, x) == 1.0
    # the other convention: operands in float, the sum quantized (int32 accumulators meet in the add)
    old = copy.deepcopy(qmodel)
    old.lowbit_add = SumQuantAdd(copy.deepcopy(qmodel.side.input_quantizer))
    imodel = to_integer(old, data[0], requant=mode)
    add = _modules(imodel, IntAdd)
    assert len(add) == 1 and "int32 accumulator + int32 accumulator" in add[0].describe()
    assert _compare(old, imodel, x)[1] <= 3.0
    assert _agree_where_clear(old, imodel, x) == 1.0


def test_state_dict_round_trip():
    qmodel = _quantized("digits_cnn", "onnxruntime")
    x = digits().test_images[:16]
    first = to_integer(qmodel, x[:2])
    state = first.state_dict()
    assert any(k.endswith("weight_codes") for k in state) and any(k.endswith("bias_codes") for k in state)
    second = to_integer(qmodel, x[:2])
    for key in state:
        if key.endswith("weight_codes"):
            state[key] = torch.zeros_like(state[key])
    second.load_state_dict(state)
    assert not torch.equal(first(x), second(x))
    second.load_state_dict(first.state_dict())
    assert torch.equal(first(x), second(x))


def test_errors_say_what_to_do():
    split = digits()
    qmodel = _quantized("digits_cnn", "x86")
    with pytest.raises(IntegerError, match="fixed_point"):
        to_integer(qmodel, split.test_images[:2], requant="double")
    weight_only = lowbit.quantize(trained("digits_cnn"), "w8", progress=False)
    with pytest.raises(IntegerError, match="static recipe"):
        to_integer(weight_only, split.test_images[:2])
    untraceable = lowbit.quantize(Untraceable(), "x86", calibrate=[torch.randn(8, 16)], progress=False)
    with pytest.raises(IntegerError, match=r"torch\.fx"):
        to_integer(untraceable, torch.randn(2, 16))

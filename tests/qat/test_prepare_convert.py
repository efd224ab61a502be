"""prepare_qat → training → lowbit.convert: types, placement, PTQ init, bit-exact conversion."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.flows.qat import activation_consumers, freeze_bn, freeze_observers, qat_status
from lowbit.flows.qat_tools import rounding_mismatch
from lowbit.nn import QuantConv2d, Quantizer, QuantLinear
from lowbit.nn.qat import QATError, QATQuantizer
from lowbit.recipes import QuantSpec, Recipe
from qat.qat_models import batches, mixed_recipe, tiny_net, train_steps


def quantizer_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, Quantizer)}


@pytest.mark.parametrize("recipe", ["x86", "mixed", "w4a4-lsq"])
def test_convert_equals_the_trained_qat_model_bit_for_bit(recipe):
    if recipe == "mixed":
        recipe = mixed_recipe()
    elif recipe == "w4a4-lsq":
        recipe = lowbit.qat_recipe(Recipe(
            "w4a4", backend="x86", weight=QuantSpec("int4", "group", group_size=2),
            input=QuantSpec("uint4", symmetric=False)))
    data = batches(6, seed=0)
    qat = lowbit.prepare_qat(tiny_net(), recipe, calibrate=[x for x, _ in data[:2]],
                             freeze_bn_after=4)
    opt = torch.optim.AdamW(qat.parameters(), lr=3e-3)
    train_steps(qat, opt, data)
    test = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        expected = qat.eval()(test)
    deployed = lowbit.convert(qat)
    assert torch.equal(deployed(test), expected)
    assert type(deployed[0]) is QuantConv2d and type(deployed[3]) is QuantConv2d
    assert type(deployed[8]) is QuantLinear
    assert bool(deployed[0].converted) and deployed[0].weight_codes.dtype == torch.int8
    assert quantizer_types(deployed) == {Quantizer}  # what post-training quantization produces
    assert isinstance(deployed[1], nn.Identity)  # the BN is folded away, as PTQ's fuse does
    assert not deployed.training


def test_qat_starts_from_post_training_calibration():
    data = [x for x, _ in batches(4, seed=1)]
    recipe = lowbit.qat_recipe("x86")
    qat = lowbit.prepare_qat(tiny_net(), recipe, calibrate=data)
    ptq = lowbit.quantize(tiny_net(), recipe, calibrate=data, progress=False)
    for name in ("0", "3", "8"):
        ours, theirs = qat.get_submodule(name), ptq.get_submodule(name)
        torch.testing.assert_close(ours.input_quantizer.scale.detach(),
                                   theirs.input_quantizer.scale, rtol=1e-5, atol=0)
        assert float(ours.input_quantizer.zero_point.detach()) == int(theirs.input_quantizer.zero_point)
        torch.testing.assert_close(ours.weight_quantizer.scale.detach(),
                                   theirs.weight_quantizer.scale, rtol=1e-5, atol=0)
    # PTQ folds BN in float64, QAT in float32 (as every training step does): a folded weight
    # may differ in its last bit and, rarely, an activation lands one code away.
    x = torch.randn(256, 1, 8, 8)
    with torch.no_grad():
        ours, theirs = qat.eval()(x), ptq(x)
    assert float((ours - theirs).abs().max()) < 0.02 * float(theirs.abs().max())
    assert float((ours.argmax(1) == theirs.argmax(1)).float().mean()) > 0.99


def test_quantization_sits_where_the_backend_fuses():
    model = tiny_net()
    assert activation_consumers(model) == {"0": nn.ReLU, "3": nn.SiLU}
    qat = lowbit.prepare_qat(model, "x86", calibrate=[x for x, _ in batches(2, seed=0)])
    assert qat[0].output_quantizer is None  # Conv-BN-ReLU is fused: the next input quantizer
    assert isinstance(qat[3].output_quantizer, QATQuantizer)  # SiLU is not: quantize the BN output
    assert qat.lowbit_qat.output_quantized == {"3": "SiLU"}
    trt = lowbit.prepare_qat(model, lowbit.preset("tensorrt"))
    assert trt[3].output_quantizer is None  # TensorRT fuses SiLU into the conv
    assert isinstance(qat[8].input_quantizer, QATQuantizer)  # the SiLU output is requantized


def test_freezing_counters_and_status():
    data = batches(5, seed=2)
    qat = lowbit.prepare_qat(tiny_net(), "x86", freeze_bn_after=2, freeze_observers_after=3)
    status = qat_status(qat)
    assert status["uninitialised"]  # activations wait for the first training batch
    opt = torch.optim.SGD(qat.parameters(), lr=0.01)
    train_steps(qat, opt, data)
    status = qat_status(qat)
    assert status["steps"] == 5 and status["folded_bn"] == 2 and status["bn_frozen"] == 2
    assert status["observers_frozen"] == status["quantizers"] and not status["uninitialised"]
    fresh = lowbit.prepare_qat(tiny_net(), "x86")
    assert freeze_bn(fresh) == 2 and freeze_observers(fresh) == qat_status(fresh)["quantizers"]


def test_bf16_autocast_training_step():
    qat = lowbit.prepare_qat(tiny_net(), lowbit.qat_recipe("x86"),
                             calibrate=[x for x, _ in batches(1, seed=0)])
    opt = torch.optim.AdamW(qat.parameters(), lr=1e-3)
    x, y = batches(1, seed=3)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(qat(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert qat[0].weight_quantizer.scale.grad is not None


def test_rounding_mismatch_is_measured_against_the_backend():
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3, 4))
        model[0].bias.zero_()
    recipe = Recipe("r", weight=QuantSpec("int8", "channel"), input=QuantSpec("int8"))
    calib = [torch.tensor([[-1.0, 1.0, 0.5, 0.0]]) * 127 / 64]  # input scale 1/64
    qat = lowbit.prepare_qat(model, recipe, calibrate=calib)
    ties = torch.tensor([[2.5, 3.5, -2.5, 0.0]]) / 64  # exactly half a step
    r = rounding_mismatch(qat, [ties], "mnn")  # MNN rounds half away from zero
    assert r.simulated == "half_even" and r.backend == "half_away"
    assert r.codes_differ == 2  # 2.5 and -2.5 round differently; 3.5 does not
    assert r.max_abs_diff == pytest.approx(1 / 64)
    same = rounding_mismatch(qat, [ties], "half_even")
    assert same.codes_differ == 0 and same.max_abs_diff == 0 and same.top1_agreement == 1.0
    matched = lowbit.prepare_qat(model, lowbit.preset("mnn"), calibrate=calib)
    assert rounding_mismatch(matched, [ties], "mnn").codes_differ == 0  # trained as deployed
    with pytest.raises(QATError, match="unknown backend rounding"):
        rounding_mismatch(qat, [ties], "tflite-ish")


def test_a_model_without_quantizable_layers_is_refused():
    with pytest.raises(QATError, match="no layer for quantization-aware training"):
        lowbit.prepare_qat(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), "x86")
    with pytest.raises(QATError, match="no layer"):
        lowbit.prepare_qat(tiny_net(), Recipe("none", exclude=("*",)))
    with pytest.raises(QATError, match="init"):
        lowbit.prepare_qat(tiny_net(), "x86", init="random")
    with pytest.raises(QATError, match="freeze_bn_after"):
        lowbit.prepare_qat(tiny_net(), "x86", freeze_bn_after=-1)


def test_prepare_qat_leaves_the_float_model_alone_and_warns_about_unreached_layers():
    model = tiny_net()
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = lowbit.prepare_qat(model, "x86", calibrate=lambda m: m[0](torch.randn(2, 1, 8, 8)))
    assert any("saw no calibration data" in str(w.message) for w in caught)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert qat[3].input_quantizer.mode == "off"
    assert qat.training


@pytest.mark.slow
def test_torch_compile_trains_like_eager_and_converts_exactly():
    data = batches(3, seed=1)
    qat = lowbit.prepare_qat(tiny_net(), mixed_recipe(), calibrate=[x for x, _ in batches(2, 0)],
                             freeze_bn_after=2)
    eager = copy.deepcopy(qat)
    compiled = torch.compile(qat)
    ours = train_steps(compiled, torch.optim.AdamW(qat.parameters(), lr=1e-3), data)
    theirs = train_steps(eager, torch.optim.AdamW(eager.parameters(), lr=1e-3), data)
    assert ours == pytest.approx(theirs, rel=1e-4)  # fused kernels round differently
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        expected = qat.eval()(x)
    assert torch.equal(lowbit.convert(qat)(x), expected)


class _Residual(nn.Module):
    """Conv-BN-SiLU (functional) and a residual join: traces with torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(256, 3)

    def forward(self, x):
        h = nn.functional.silu(self.bn1(self.conv1(x)))
        h = h + torch.relu(self.conv2(h))
        return self.head(h.flatten(1))


def test_functional_activations_and_traced_adds_are_placed_and_convert_exactly():
    model = _Residual().eval()
    assert activation_consumers(model) == {"conv1": nn.SiLU, "conv2": nn.ReLU}
    data = [torch.randn(8, 1, 8, 8) for _ in range(2)]
    qat = lowbit.prepare_qat(model, lowbit.qat_recipe("x86"), calibrate=data, freeze_bn_after=1)
    assert qat.lowbit_qat.output_quantized == {"conv1": "SiLU"}
    assert type(qat.conv1).__name__ == "QuantConvBn2d"
    assert any(isinstance(q, QATQuantizer) for n, q in qat.named_modules() if "lowbit_add" in n)
    opt = torch.optim.AdamW(qat.parameters(), lr=1e-3)
    for x in data:
        qat(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = qat.eval()(x)
    assert torch.equal(lowbit.convert(qat)(x), expected)


def test_a_converted_qat_model_exports_to_onnx_and_runs_identically(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from lowbit.export import onnx as export_onnx

    qat = lowbit.prepare_qat(tiny_net(), lowbit.qat_recipe("x86"),
                             calibrate=[x for x, _ in batches(2, 0)], freeze_bn_after=2)
    train_steps(qat, torch.optim.AdamW(qat.parameters(), lr=1e-3), batches(4, 1))
    deployed = lowbit.convert(qat)
    x = torch.randn(16, 1, 8, 8)
    export_onnx(deployed, x, tmp_path / "qat.onnx")
    session = ort.InferenceSession(str(tmp_path / "qat.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = deployed(x).numpy()
    assert (out.argmax(1) == expected.argmax(1)).all()
    assert abs(out - expected).max() < 1e-4

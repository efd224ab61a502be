"""ONNX QDQ export: ONNX Runtime computes what lowbit simulates, with integer kernels.

Tolerances. Weight-only and dynamic models compute the same real numbers in a
different order: float rounding only (1e-5 relative). Static models run in
ONNX Runtime's integer kernels, which differ from lowbit's float simulation in
two documented ways: the bias is rounded to int32 with scale s_in·s_w (every
int8 runtime does this), and requantization multiplies the exact int32 sum by
s_in·s_w / s_out instead of dividing a float32 sum by s_out. Both move a value
by a tiny fraction of a step, so a code can only land one step away when the
value sits next to a rounding boundary. The head's output is quantized here,
so the bound is exact: at most one output quantization step (plus float
rounding of the step itself), and the top-1 class of a classifier with clear
margins never changes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import lowbit
from helpers.export_models import MLP, calibration_batches, synthetic_images, trained_classifier
from lowbit import runtime
from lowbit.export import ExportError
from lowbit.flows import fuse, prepare
from lowbit.recipes import QuantSpec, Recipe, Rule, preset

FLOAT_CONV = ("Conv", "FusedConv")


@pytest.fixture(scope="module")
def classifier():
    return trained_classifier()


@pytest.fixture(scope="module")
def images():
    return synthetic_images(256, seed=3)[0]


def _static(name: str) -> Recipe:
    recipe = preset(name)
    return recipe.with_rules(Rule("head", output=recipe.input))


def _export_run(qmodel, example, inputs, path, **kwargs):
    out_path = lowbit.export.onnx(qmodel, example, path, **kwargs)
    sess = runtime.session(out_path, threads=1, nbits_accuracy_level=0)
    return out_path, runtime.run(sess, inputs)[0]


@pytest.mark.parametrize("layer", ["conv", "linear"])
@pytest.mark.parametrize("name", ["x86", "onnxruntime", "x86-novnni", "tensorrt"])
def test_one_layer_is_within_one_output_step(name, layer, tmp_path):
    torch.manual_seed(0)
    if layer == "conv":
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1)).eval()
        x = torch.randn(8, 3, 12, 12)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(48, 16)).eval()
        x = torch.randn(64, 48)
    recipe = preset(name).with_rules(Rule("0", output=preset(name).input))
    qmodel = lowbit.quantize(model, recipe, calibrate=[torch.randn_like(x) for _ in range(2)], progress=False)
    path, out = _export_run(qmodel, x[:2], x, tmp_path / "m.onnx")
    with torch.no_grad():
        ref = qmodel(x).numpy()
    step = float(qmodel[0].output_quantizer.scale)
    assert np.abs(out - ref).max() <= step * (1 + 1e-5)  # one code at most
    assert (np.abs(out - ref) > step / 2).mean() < 0.01  # and rarely
    if name != "tensorrt":  # symmetric int8 activations stay int8 for TensorRT (see qdq.py)
        ops = runtime.optimized_ops(path)
        assert ops["QLinearConv" if layer == "conv" else "QGemm"] == 1, ops


@pytest.mark.parametrize("name", ["x86", "onnxruntime", "x86-novnni", "tensorrt"])
def test_classifier_parity_and_integer_kernels(classifier, images, name, tmp_path):
    qmodel = lowbit.quantize(classifier, _static(name), calibrate=calibration_batches(2), progress=False)
    path, out = _export_run(qmodel, images[:2], images, tmp_path / "m.onnx")
    with torch.no_grad():
        ref = qmodel(images).numpy()
    step = float(qmodel.head.output_quantizer.scale)
    # Through six quantized layers a code that lands one step away in an early layer can
    # move a logit by a few steps; most logits are identical and the class never changes.
    assert np.array_equal(out.argmax(1), ref.argmax(1))
    assert (np.abs(out - ref) > step / 2).mean() < 0.1
    assert np.abs(out - ref).max() <= 4 * step
    ops = runtime.optimized_ops(path)
    if name != "tensorrt":
        assert ops["QLinearConv"] == 4 and not any(ops[op] for op in FLOAT_CONV), ops
        assert ops["QGemm"] == 2 and ops["Gemm"] == 0, ops


def test_one_quantize_linear_per_tensor_and_parameters(classifier, tmp_path):
    qmodel = lowbit.quantize(classifier, "onnxruntime", calibrate=calibration_batches(2), progress=False)
    path = lowbit.export.onnx(qmodel, calibration_batches(1)[0][:2], tmp_path / "m.onnx")
    model = onnx.load(str(path))
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert consumers[node.output[0]] == ["DequantizeLinear"], node.name
    assert {o.domain for o in model.opset_import} == {""}
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert '"onnxruntime"' in meta["lowbit_recipe"]


WEIGHT_ONLY = {
    "w8": preset("w8"),
    "w4-g32": preset("w4-g32"),
    "int4-channel": Recipe("int4-channel", mode="weight_only", weight=QuantSpec("int4", "channel")),
    "uint4-asym": Recipe("uint4-asym", mode="weight_only",
                         weight=QuantSpec("uint4", "channel", symmetric=False)),
    "int2-channel": Recipe("int2-channel", mode="weight_only", weight=QuantSpec("int2", "channel")),
}


@pytest.mark.parametrize("name", list(WEIGHT_ONLY))
def test_weight_only_parity(classifier, images, name, tmp_path):
    qmodel = lowbit.quantize(classifier, WEIGHT_ONLY[name], progress=False)
    path, out = _export_run(qmodel, images[:2], images, tmp_path / "m.onnx")
    with torch.no_grad():
        ref = qmodel(images).numpy()
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    dq_types = {i.data_type for i in onnx.load(str(path)).graph.initializer if i.name.endswith("weight_q")}
    expected = {"w8": {3}, "w4-g32": {22}, "int4-channel": {22}, "uint4-asym": {21}, "int2-channel": {22}}
    assert dq_types == expected[name]  # int8 / int4 / uint4 initializers (int2 in an int4 container)


def test_int4_linear_runs_as_matmul_nbits(tmp_path):
    torch.manual_seed(0)
    mlp = MLP(width=64).eval()
    x = torch.randn(4, 8, 32)
    qmodel = lowbit.quantize(mlp, "w4-g32", progress=False)
    with torch.no_grad():
        ref = qmodel(x).numpy()
    plain, out = _export_run(qmodel, x, x, tmp_path / "plain.onnx")
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    assert runtime.optimized_ops(plain)["MatMulNBits"] == 3  # ONNX Runtime fuses blocked int4 itself
    nbits, out = _export_run(qmodel, x, x, tmp_path / "nbits.onnx", matmul_nbits_layers=True)
    model = onnx.load(str(nbits))
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == 3
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


DYNAMIC = {
    "w8a8-dynamic": (preset("w8a8-dynamic"), "MatMulInteger"),
    "uint8-tensor": (preset("w8a8-dynamic").with_(input=QuantSpec("uint8", symmetric=False, dynamic=True)),
                     "DynamicQuantizeMatMul"),
    "onnxruntime-dynamic": (preset("onnxruntime-dynamic"), "DynamicQuantizeMatMul"),
}


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_dynamic_linear_layers_run_integer_matmuls(name, tmp_path):
    recipe, kernel = DYNAMIC[name]
    torch.manual_seed(0)
    mlp = MLP(width=64).eval()
    x = torch.randn(4, 8, 32)
    qmodel = lowbit.quantize(mlp, recipe, progress=False)
    path, out = _export_run(qmodel, x, x, tmp_path / "m.onnx", dynamic_axes={"input": {0: "b", 1: "t"}})
    with torch.no_grad():
        ref = qmodel(x).numpy()
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    ops = runtime.optimized_ops(path)
    assert ops[kernel] == 3 and ops["MatMul"] == 0 and ops["Gemm"] == 0, ops
    other = torch.randn(2, 5, 32)  # dynamic shapes, parameters recomputed per token
    with torch.no_grad():
        ref = qmodel(other).numpy()
    out = runtime.run(runtime.session(path), other)[0]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_fp8_parity(classifier, images, tmp_path):
    qmodel = lowbit.quantize(classifier, "fp8", calibrate=calibration_batches(2), progress=False)
    _, out = _export_run(qmodel, images[:2], images, tmp_path / "m.onnx")
    with torch.no_grad():
        ref = qmodel(images).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_keyword_inputs_and_names(tmp_path):
    class Keyword(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP()

        def forward(self, features, scale):
            return self.mlp(features) * scale

    torch.manual_seed(0)
    model = Keyword().eval()
    inputs = {"features": torch.randn(3, 32), "scale": torch.ones(3, 1)}
    qmodel = lowbit.quantize(model, "w8", progress=False)
    path, out = _export_run(qmodel, inputs, inputs, tmp_path / "m.onnx")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["features", "scale"]
    with torch.no_grad():
        assert np.allclose(out, qmodel(**inputs).numpy(), atol=1e-5)


def test_uncalibrated_model_is_refused(classifier, tmp_path):
    model = trained_classifier()
    fuse(model)
    prepared = prepare(model, preset("x86"))
    with pytest.raises(ExportError, match="not calibrated"):
        lowbit.export.onnx(prepared, calibration_batches(1)[0], tmp_path / "m.onnx")


def test_rounding_onnx_cannot_express_is_refused(classifier, tmp_path):
    qmodel = lowbit.quantize(classifier, "mnn", calibrate=calibration_batches(1), progress=False)
    with pytest.raises(ExportError, match="half to even"):
        lowbit.export.onnx(qmodel, calibration_batches(1)[0], tmp_path / "m.onnx")


def test_bad_arguments(classifier, tmp_path):
    qmodel = lowbit.quantize(classifier, "w8", progress=False)
    with pytest.raises(ExportError, match="opset"):
        lowbit.export.onnx(qmodel, calibration_batches(1)[0], tmp_path / "m.onnx", opset=17)
    with pytest.raises(ExportError, match=r"nn\.Module"):
        lowbit.export.onnx("model", calibration_batches(1)[0], tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="example_inputs"):
        lowbit.export.onnx(qmodel, 3.0, tmp_path / "m.onnx")

"""The integer-only model is ONNX Runtime's arithmetic: same codes, same logits.

`to_integer(qmodel, requant="float")` and the model `lowbit.export.onnx` writes
for ONNX Runtime hold the same int8 weights, int32 biases and scales; ONNX
Runtime fuses the QDQ graph into QLinearConv / QLinearAdd /
QLinearGlobalAveragePool / QGemm, and lowbit's integer layers compute what those
kernels compute (float32 requantization multipliers, MLAS's QLinearAdd formula).
So every intermediate code agrees and the logits differ only by the float
rounding of the last dequantization: this is the simulation whose top-1 matches
the runtime on every input, where the fake-quantized model (float convolutions)
can only match it as well as it matches itself under rounding noise.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import lowbit
from integer.int_models import digits, trained
from integer.test_kernels_ort import needs_avx2
from lowbit import runtime
from lowbit.flows.integer import to_integer
from lowbit.nn.integer import IntAccumulating


def _quantized_and_exported(name: str, preset: str, tmp_path):
    split = digits()
    qmodel = lowbit.quantize(trained(name), preset, calibrate=[split.train_images[:256]], progress=False)
    path = lowbit.export.onnx(qmodel, split.test_images[:2], tmp_path / f"{name}.onnx")
    return qmodel, path


@needs_avx2
@pytest.mark.parametrize("preset", ["x86", "onnxruntime"])
@pytest.mark.parametrize("name", ["tiny_mobilenet", "digits_cnn"])
def test_integer_model_equals_onnx_runtime(name, preset, tmp_path):
    qmodel, path = _quantized_and_exported(name, preset, tmp_path)
    # the test digits and jittered copies: enough values that near-ties occur in every layer
    test = digits().test_images
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([test] + [test + 0.1 * torch.randn(test.shape, generator=gen) for _ in range(7)])
    ort_out = runtime.run(runtime.session(path, threads=2), x)[0]
    imodel = to_integer(qmodel, x[:2], requant="float")
    with torch.no_grad():
        ours = imodel(x).numpy()
    scale = float(np.abs(ort_out).max())
    assert np.abs(ours - ort_out).max() <= 1e-5 * scale  # float rounding of the output only
    assert (ours.argmax(1) == ort_out.argmax(1)).all()


def test_exported_biases_are_the_integer_layers_biases(tmp_path):
    qmodel, path = _quantized_and_exported("tiny_mobilenet", "x86", tmp_path)
    graph = onnx.load(path).graph
    exported = {i.name.removesuffix("_bias_q"): numpy_helper.to_array(i)
                for i in graph.initializer if i.name.endswith("_bias_q")}
    imodel = to_integer(qmodel, digits().test_images[:2], requant="float")
    layers = {m.layer_name: m for m in imodel.graph_module.modules() if isinstance(m, IntAccumulating)}
    assert exported and set(exported) <= set(layers)
    for name, codes in exported.items():
        assert np.array_equal(codes, layers[name].bias_codes.numpy()), name

"""Real models exported and run in ONNX Runtime: Fashion-MNIST CNN and MobileNetV2 (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit
from lowbit import runtime
from lowbit.zoo.errors import MissingResourceError


def _fashion():
    from lowbit.zoo.fashion_mnist import load_fashion_mnist, train_fashion_cnn

    try:
        return train_fashion_cnn(), load_fashion_mnist("train")[0], load_fashion_mnist("test")[0]
    except MissingResourceError as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_fashion_cnn_runs_in_integers_and_agrees_with_the_simulation(tmp_path):
    model, train, test = _fashion()
    qmodel = lowbit.quantize(model, "onnxruntime", calibrate=list(train[:1024].split(128)), progress=False)
    path = lowbit.export.onnx(qmodel, test[:2], tmp_path / "fashion.onnx")
    sess = runtime.session(path, threads=2)
    out = np.concatenate([runtime.run(sess, b)[0] for b in test.split(2000)])
    with torch.no_grad():
        ref = torch.cat([qmodel(b) for b in test.split(2000)]).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.999  # 10,000 test images
    _assert_integer_model_is_the_runtime(qmodel, test, out)
    ops = runtime.optimized_ops(path)
    assert ops["QLinearConv"] == 3 and ops["QGemm"] == 2, ops
    assert ops["Conv"] == ops["FusedConv"] == ops["Gemm"] == 0, ops  # nothing left in float


@pytest.mark.slow
def test_mobilenet_v2_runs_in_integers_and_tracks_the_simulation(tmp_path):
    from lowbit.zoo.images import real_images
    from lowbit.zoo.mobilenet_v2 import load_mobilenet_v2

    try:
        model = load_mobilenet_v2()
        calib, images = list(real_images(64, seed=0).split(32)), real_images(64, seed=1)
    except MissingResourceError as err:
        pytest.skip(str(err))
    qmodel = lowbit.quantize(model, "onnxruntime", calibrate=calib, progress=False)
    path = lowbit.export.onnx(qmodel, images[:1], tmp_path / "mbv2.onnx")
    ops = runtime.optimized_ops(path)
    # All 52 convs run as QLinearConv (the last one's output is the quantized input of
    # the average pool), the 10 residual adds as QLinearAdd, the pool as
    # QLinearGlobalAveragePool, the classifier as QGemm: what ONNX Runtime's own
    # quantizer produces for this model, and nothing left in float.
    assert ops["QLinearConv"] == 52 and ops["QLinearAdd"] == 10 and ops["QGemm"] == 1, ops
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["Conv"] == ops["FusedConv"] == 0, ops
    out = runtime.run(runtime.session(path, threads=2), images)[0]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ref = qmodel(images).numpy()
        noisy = qmodel(images * (1 + 1e-6 * torch.randn(images.shape, generator=gen))).numpy()
    # An int8 MobileNetV2 amplifies float-rounding-sized differences layer after layer
    # (a 1e-6 relative input change moves its top-1 on a good share of these crops), so
    # no second implementation agrees with the simulation better than the simulation
    # agrees with itself under such noise; ONNX Runtime must be within that floor.
    floor = (noisy.argmax(1) != ref.argmax(1)).mean()
    assert (out.argmax(1) != ref.argmax(1)).mean() <= 2 * floor + 0.05
    # The integer-only simulation reproduces the runtime's arithmetic instead: same top-1 on
    # every crop, logits equal up to the float rounding of the last dequantization.
    _assert_integer_model_is_the_runtime(qmodel, images, out)


def _assert_integer_model_is_the_runtime(qmodel, x: torch.Tensor, ort_out: np.ndarray) -> None:
    imodel = lowbit.to_integer(qmodel, x[:1], requant="float")
    with torch.no_grad():
        ours = torch.cat([imodel(b) for b in x.split(500)]).numpy()
    assert (ours.argmax(1) == ort_out.argmax(1)).all()
    assert np.abs(ours - ort_out).max() <= 1e-5 * np.abs(ort_out).max()

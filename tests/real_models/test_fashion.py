"""FashionCNN (Fashion-MNIST): int8 static costs at most 0.3 accuracy points.

On the first 2,000 test images (the full 10,000 are in benchmarks/ptq.py);
calibration on 2,048 training images. Measured: FP32 91.85 %, x86 int8
91.80 % (drop 0.05 points).
"""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit import zoo
from real_models.support import assert_weights_quantized, load_or_skip

pytestmark = pytest.mark.slow


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    return float(torch.cat([model(x).argmax(1) for x in images.split(1000)]).eq(labels).float().mean())


def test_int8_static_accuracy_drop_is_small():
    test_x, test_y = load_or_skip(zoo.load_fashion_mnist, "test")
    train_x, _ = zoo.load_fashion_mnist("train")
    model = zoo.train_fashion_cnn()  # cached after the first training (~1 min on 2 cores)
    test_x, test_y = test_x[:2000], test_y[:2000]
    base = accuracy(model, test_x, test_y)
    assert base > 0.90
    qmodel = lowbit.quantize(model, "x86", calibrate=list(train_x[:2048].split(256)), progress=False)
    drop = base - accuracy(model=qmodel, images=test_x, labels=test_y)
    assert drop <= 0.003, drop
    assert_weights_quantized(qmodel, 8, expect_layers=5)
    with torch.no_grad():  # the quantized model is not the float one
        assert not torch.equal(model(test_x[:64]), qmodel(test_x[:64]))

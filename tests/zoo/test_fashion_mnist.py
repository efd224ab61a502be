"""FashionCNN: its shape here; real training to at least 90 % test accuracy (slow)."""

from __future__ import annotations

import time

import pytest
import torch

from lowbit.zoo.fashion_mnist import (
    FASHION_MNIST_DIR,
    FashionCNN,
    load_fashion_mnist,
    train_fashion_cnn,
)
from lowbit.zoo.training import evaluate_accuracy


def test_fashion_cnn_shape_and_size():
    model = FashionCNN()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 96_162


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_trains_to_90_percent_and_caches(tmp_path):
    start = time.perf_counter()
    model = train_fashion_cnn(cache_dir=tmp_path)
    trained = time.perf_counter() - start
    images, labels = load_fashion_mnist("test")
    accuracy = evaluate_accuracy(model, images, labels)
    print(f"FashionCNN: trained in {trained:.1f} s, test accuracy {accuracy:.4f}")
    assert accuracy >= 0.90
    start = time.perf_counter()
    cached = train_fashion_cnn(cache_dir=tmp_path)
    assert time.perf_counter() - start < 5.0
    assert all(torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), cached.state_dict().values(), strict=True))

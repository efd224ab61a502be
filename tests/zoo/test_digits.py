"""scikit-learn digits: a deterministic split and a DigitsCNN that trains in seconds."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.zoo.digits import DigitsCNN, load_digits_split, train_digits_cnn
from lowbit.zoo.training import evaluate_accuracy


def test_split_shapes_ranges_and_determinism():
    s = load_digits_split()
    assert s.train_images.shape == (1348, 1, 8, 8) and s.test_images.shape == (449, 1, 8, 8)
    assert s.train_labels.dtype == torch.int64 and set(s.test_labels.tolist()) == set(range(10))
    assert s.train_images.min() == 0.0 and s.train_images.max() == 1.0
    again = load_digits_split()
    assert all(torch.equal(a, b) for a, b in zip(s, again, strict=True))
    other = load_digits_split(seed=1)
    assert not torch.equal(s.test_labels, other.test_labels)
    # train and test are disjoint: no test image appears in the training part
    train_rows = {row.numpy().tobytes() for row in s.train_images.flatten(1)}
    overlap = sum(row.numpy().tobytes() in train_rows for row in s.test_images.flatten(1))
    assert overlap <= 2  # the source has a couple of duplicate images, nothing more
    with pytest.raises(InputError):
        load_digits_split(test_fraction=1.0)


def test_digits_cnn_shape_and_size():
    model = DigitsCNN()
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == 38_330


def test_train_reaches_95_percent_and_caches(tmp_path):
    split = load_digits_split()
    model = train_digits_cnn(cache_dir=tmp_path)
    assert not model.training
    accuracy = evaluate_accuracy(model, split.test_images, split.test_labels)
    print(f"DigitsCNN test accuracy {accuracy:.4f}")
    assert accuracy >= 0.95
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["digits_cnn-v1-e10-s0.pt"]
    cached = train_digits_cnn(cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), cached.state_dict().values(), strict=True))

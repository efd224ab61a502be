"""The shared training loop and metrics: determinism, restored state, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import InputError
from lowbit.zoo.training import evaluate_accuracy, fit, predict


def tiny_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    return x, y


def tiny_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 2))


def test_fit_is_deterministic_and_leaves_global_state_alone():
    x, y = tiny_problem()
    model = tiny_model()
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    threads = torch.get_num_threads()
    a = fit(model, x, y, epochs=20, batch_size=16, lr=2e-2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads
    b = fit(tiny_model(), x, y, epochs=20, batch_size=16, lr=2e-2, seed=7)
    c = fit(tiny_model(), x, y, epochs=20, batch_size=16, lr=2e-2, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert not a.training and a[0].weight.is_contiguous()
    assert evaluate_accuracy(a, x, y) > 0.8


def test_predict_restores_training_mode():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3)).train()
    pred = predict(model, torch.randn(10, 1, 2, 2), batch_size=3)
    assert pred.shape == (10,) and pred.dtype == torch.int64 and model.training


@pytest.mark.parametrize(
    ("images", "labels"),
    [
        (torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.long)),
        (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)),
        (torch.zeros(4, 1, 2, 2), torch.zeros(4)),
    ],
)
def test_bad_datasets_raise_input_error(images, labels):
    with pytest.raises(InputError):
        evaluate_accuracy(nn.Flatten(), images, labels)
    with pytest.raises(InputError):
        fit(tiny_model(), images, labels, epochs=1, batch_size=2, lr=1e-2, seed=0)


def test_bad_hyperparameters_raise_input_error():
    x, y = tiny_problem()
    with pytest.raises(InputError, match="epochs"):
        fit(tiny_model(), x, y, epochs=0, batch_size=2, lr=1e-2, seed=0)

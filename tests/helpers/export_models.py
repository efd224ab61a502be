"""Small trained models for the export and checkpoint tests.

`trained_classifier` trains a small residual CNN for a second on a synthetic
4-class problem (class templates plus noise), so its logits have clear margins
and the top-1 class of a correct runtime cannot flip by a one-step rounding
difference.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class SmallResNet(nn.Module):
    """Conv-BN-ReLU stem, a residual block, max pooling, a concatenation and a 2-layer head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(12 * 4 * 4, 32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        x = torch.cat([x, self.side(x)], dim=1)
        x = self.pool(x).flatten(1)
        return self.head(torch.relu(self.fc(x)))


class MLP(nn.Module):
    """Two hidden layers; input [batch, tokens, inputs] or [batch, inputs]."""

    def __init__(self, width: int = 64, classes: int = 4, inputs: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def synthetic_images(n: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    templates = torch.randn(classes, 1, 8, 8, generator=gen)
    gen.manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return templates[labels] + 0.5 * torch.randn(n, 1, 8, 8, generator=gen), labels


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallResNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = synthetic_images(256, seed=1)
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trained_classifier() -> SmallResNet:
    """A `SmallResNet` trained on `synthetic_images` (about 1 s the first time, cached after)."""
    model = SmallResNet()
    model.load_state_dict(_trained_state())
    return model.eval()


def calibration_batches(n: int = 4, batch: int = 32) -> list[torch.Tensor]:
    x, _ = synthetic_images(n * batch, seed=2)
    return list(x.split(batch))

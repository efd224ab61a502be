"""Small models shared by the report tests (quantized once per module)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit.flows as flows


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, a LayerNorm (unsupported) and two Linear layers; traces with torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self.head(torch.relu(self.fc(self.norm(x))))


def make_cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial BN so that folding matters
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 4 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 3 + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def make_batches(n: int = 4, shape=(8, 3, 8, 8), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


@pytest.fixture
def cnn_factory():
    """``make_cnn`` for tests that need a fresh model of their own."""
    return make_cnn


@pytest.fixture(scope="module")
def cnn() -> SmallCNN:
    return make_cnn()


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    return make_batches()


@pytest.fixture(scope="module")
def qcnn(cnn, batches):
    return flows.quantize(cnn, "x86", calibrate=batches, progress=False)

"""Small models and data shared by the QAT tests and the two-process DDP worker."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.recipes import QuantSpec, Recipe, Rule


class TinyNet(nn.Sequential):
    """Conv-BN-ReLU, Conv-BN-SiLU (unfused activation), pool, Linear: 8x8 inputs, 4 classes."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
        )


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def batches(n: int, seed: int, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 1, 8, 8, generator=gen)
        y = (x[:, 0, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 0, 4:].mean((1, 2)) > 0).long()
        out.append((x, y))
    return out


def mixed_recipe() -> Recipe:
    """LSQ weights, LSQ+ activations, and one fixed-scale (EMA-tracked) layer input."""
    return Recipe(
        name="qat-test", backend="x86",
        weight=QuantSpec("int4", "channel", learn="lsq"),
        input=QuantSpec("uint8", symmetric=False, learn="lsq+"),
        rules=(Rule("8", input=QuantSpec("uint8", symmetric=False, learn="none")),),
    )


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, data) -> list[float]:
    losses = []
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

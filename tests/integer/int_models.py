"""Small trained models for the integer-only tests (8×8 digits, seconds to train)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from lowbit.nn.functional import QuantAdd
from lowbit.zoo.digits import DigitsSplit, load_digits_split, train_digits_cnn
from lowbit.zoo.training import fit


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU6())


class Block(nn.Module):
    """MobileNetV2's inverted residual: expand, depthwise, project, plus the skip."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv_bn_relu6(channels, hidden, 1),
            conv_bn_relu6(hidden, hidden, 3, hidden),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return x + self.conv(x)


class TinyMobileNet(nn.Module):
    """MobileNetV2 in miniature: stem, two residual blocks, 1×1 conv, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu6(1, 16), Block(16, 48), Block(16, 48),
                                      conv_bn_relu6(16, 64, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 10))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class ReluAfterAdd(nn.Module):
    """A residual join followed by ReLU and global pooling: the sum has no quantizer of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu6(1, 16)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        s = self.stem(x)
        x = torch.relu(s + self.block(s))
        return self.head(x.mean(dim=(2, 3)))


class SigmoidMLP(nn.Module):
    """Linear → Sigmoid → Linear: the sigmoid has no integer version."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.act = nn.Sigmoid()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flatten(x))))


class SumQuantAdd(QuantAdd):
    """The other residual-join convention: float operands, one quantizer on the sum."""

    def __init__(self, output_quantizer) -> None:
        nn.Module.__init__(self)
        self.layer_name = "sum_add"
        self.a_quantizer = self.b_quantizer = None
        self.output_quantizer = output_quantizer

    def quantizers(self):
        return {"output": self.output_quantizer}

    def forward(self, a, b):
        return self.output_quantizer(a + b)


@functools.cache
def digits() -> DigitsSplit:
    return load_digits_split()


@functools.cache
def trained(name: str) -> nn.Module:
    """A model trained on the digits (cached per test session)."""
    if name == "digits_cnn":
        return train_digits_cnn(use_cache=False)
    model = {"tiny_mobilenet": TinyMobileNet, "relu_after_add": ReluAfterAdd,
             "sigmoid_mlp": SigmoidMLP}[name]()
    split = digits()
    return fit(model, split.train_images, split.train_labels, epochs=6, batch_size=64, lr=1e-2, seed=0)

"""The models and data of `deploy.py`: a ResNet-18-shaped CNN, MobileNetV2, MiniLM.

Each `Case` is one (model, batch shape) with its calibration and evaluation
data; `CASES` maps a model name to a function that builds its cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def sqnr(ref: Tensor, out: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``out`` against ``ref``, in dB."""
    noise = (ref.float() - out.float()).pow(2).sum()
    return float(10 * torch.log10(ref.float().pow(2).sum() / noise.clamp_min(1e-30)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with BN, identity or 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (11.7 M parameters), written out here."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def random_resnet18(seed: int = 0) -> ResNet18:
    """ResNet-18 with He-initialised convs and randomised (but plausible) BN statistics."""
    torch.manual_seed(seed)
    model = ResNet18()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


class _Positional(nn.Module):
    """A keyword-input encoder called positionally, returning ``last_hidden_state``."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


@dataclass
class Case:
    """One benchmarked model at one batch shape."""

    name: str
    batch_desc: str
    kind: str  # "classifier" | "embedding"
    model: nn.Module
    recipe: Any
    example: Any
    calibration: list[Any]
    evaluation: list[Any]

    def input_names(self) -> list[str]:
        return list(self.example) if isinstance(self.example, dict) else ["input"]

    def positional(self, model: nn.Module) -> nn.Module:
        return _Positional(model, self.input_names()) if isinstance(self.example, dict) else model

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in self.input_names()}

    @staticmethod
    def pool(hidden: Tensor, mask: Tensor) -> Tensor:
        from lowbit.zoo.minilm import mean_pool

        return mean_pool(hidden, mask)


def _images(n: int, seed: int, batch: int) -> list[Tensor]:
    from lowbit.zoo.images import real_images

    return list(real_images(n, seed=seed).split(batch))


def resnet_cases() -> list[Case]:
    model = random_resnet18()
    return [Case("ResNet-18-shaped CNN", "batch 1, 224x224", "classifier", model, "x86",
                 torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)),
                 _images(64, 0, 16), _images(128, 1, 32))]


def mobilenet_cases() -> list[Case]:
    from lowbit.zoo.mobilenet_v2 import load_mobilenet_v2

    model = load_mobilenet_v2()
    calib, evaluation = _images(256, 0, 32), _images(512, 1, 64)
    return [Case("MobileNetV2", f"batch {b}, 224x224", "classifier", model, "x86",
                 evaluation[0][:b].clone(), calib, evaluation) for b in (1, 8)]


def minilm_cases() -> list[Case]:
    from lowbit.zoo.minilm import load_minilm
    from lowbit.zoo.text import sentences

    model, tokenizer = load_minilm()

    def batches(texts: list[str], size: int) -> list[dict[str, Tensor]]:
        out = []
        for i in range(0, len(texts), size):
            enc = tokenizer(texts[i:i + size], padding="max_length", truncation=True, max_length=128,
                            return_tensors="pt")
            out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        return out

    texts = sentences(320, seed=0)
    calib, evaluation = batches(texts[:64], 8), batches(texts[64:], 32)
    example = batches(texts[64:72], 8)[0]
    return [Case("MiniLM (all-MiniLM-L6-v2)", "batch 8 x 128 tokens", "embedding", model,
                 "w8a8-dynamic", example, calib, evaluation)]


CASES: dict[str, Callable[[], list[Case]]] = {
    "resnet18": resnet_cases,
    "mobilenet_v2": mobilenet_cases,
    "minilm": minilm_cases,
}

"""The models and data of `deploy.py`: a ResNet-18-shaped CNN, MobileNetV2, MiniLM.

MobileNetV2 appears twice: the ImageNet checkpoint on real photos (speed, and
fidelity on crops where its top-1 is often a close call), and the same
checkpoint fine-tuned on Fashion-MNIST at 64x64 (cached after the first run),
whose 2,000 labelled test images measure simulation-vs-runtime agreement on
decisions the model is sure of.

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
    calib, evaluation = _images(128, 0, 32), _images(256, 1, 64)
    return [Case("MobileNetV2", f"batch {b}, 224x224", "classifier", model, "x86",
                 evaluation[0][:b].clone(), calib, evaluation) for b in (1, 8)]


FASHION_SIZE = 64


def _fashion_rgb(x: Tensor) -> Tensor:
    """Fashion-MNIST [N, 1, 28, 28] in [0, 1] → ImageNet-normalised RGB at 64x64."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = nn.functional.interpolate(x, size=(FASHION_SIZE, FASHION_SIZE), mode="bilinear", align_corners=False)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def fashion_mobilenet(steps: int = 200) -> nn.Module:
    """The ImageNet MobileNetV2 fine-tuned on Fashion-MNIST (cached in the zoo cache)."""
    from lowbit.zoo.cache import load_or_train, resolve_cache_dir
    from lowbit.zoo.fashion_mnist import load_fashion_mnist
    from lowbit.zoo.mobilenet_v2 import load_mobilenet_v2

    model = load_mobilenet_v2()
    model.classifier[1] = nn.Linear(1280, 10)

    def train(m: nn.Module) -> None:
        x, y = load_fashion_mnist("train")
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
        m.train()
        for _ in range(steps):
            idx = torch.randint(0, len(y), (64,), generator=gen)
            loss = nn.functional.cross_entropy(m(_fashion_rgb(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    load_or_train(model, resolve_cache_dir() / f"mobilenet_v2_fashion{FASHION_SIZE}_{steps}.pt", train)
    return model.eval()


def fashion_mobilenet_cases() -> list[Case]:
    from lowbit.zoo.fashion_mnist import load_fashion_mnist

    model = fashion_mobilenet()
    train_x = load_fashion_mnist("train")[0]
    test_x = load_fashion_mnist("test")[0]
    calib = [_fashion_rgb(b) for b in train_x[:256].split(32)]
    evaluation = [_fashion_rgb(b) for b in test_x[:2000].split(250)]
    return [Case("MobileNetV2 fine-tuned on Fashion-MNIST", "batch 1, 64x64", "classifier", model, "x86",
                 evaluation[0][:1].clone(), calib, evaluation)]


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
    import lowbit

    # Static int8 with SmoothQuant-style smoothing: what ptq.py measures as lowbit's best
    # pure-int8 MiniLM recipe (cosine 0.997), exported as QDQ like ORT's static quantizer.
    static = lowbit.preset("x86").with_(name="x86-smooth0.85", smooth_alpha=0.85)
    return [Case("MiniLM (all-MiniLM-L6-v2)", "batch 8 x 128 tokens", "embedding", model,
                 "w8a8-dynamic", example, calib, evaluation),
            Case("MiniLM (all-MiniLM-L6-v2), dynamic per-tensor", "batch 8 x 128 tokens", "embedding",
                 model, "onnxruntime-dynamic", example, calib, evaluation),
            Case("MiniLM (all-MiniLM-L6-v2), static int8", "batch 8 x 128 tokens", "embedding", model,
                 static, example, calib, evaluation)]


CASES: dict[str, Callable[[], list[Case]]] = {
    "resnet18": resnet_cases,
    "mobilenet_v2": mobilenet_cases,
    "mobilenet_v2_fashion": fashion_mobilenet_cases,
    "minilm": minilm_cases,
}

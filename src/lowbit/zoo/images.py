"""Real photographs, offline: scikit-image's sample images as ImageNet-style inputs.

scikit-image ships a handful of real photographs inside its wheel
(`skimage.data`); the ones listed in `PHOTOS` load without network access or
the optional ``pooch`` package. (``eagle``, ``lily`` and ``skin`` do not — they
are downloaded on first use — and ``horse``, ``logo``, ``colorwheel`` or
``microaneurysms`` are drawings or too small, so they are left out.)

`photo_batch` gives the standard ImageNet view (resize 256, center crop 224)
of every photo; `real_images` gives any number of distinct 224×224 views
(random scale, crop position and horizontal flip, seeded) for calibration
and evaluation sets.

Example:
    >>> calib = real_images(64, seed=0)
    >>> evaluation = real_images(64, seed=1)
    >>> calib.shape
    torch.Size([64, 3, 224, 224])
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from lowbit.errors import InputError
from lowbit.zoo.mobilenet_v2 import imagenet_preprocess, normalize_imagenet, resize_bilinear
from lowbit.zoo.resources import require

__all__ = ["PHOTOS", "base_photos", "photo_batch", "real_images"]

# name → (skimage.data function, index into its result when it returns a tuple)
PHOTOS: dict[str, tuple[str, int | None]] = {
    "astronaut": ("astronaut", None),
    "brick": ("brick", None),
    "camera": ("camera", None),
    "cell": ("cell", None),
    "chelsea": ("chelsea", None),
    "clock": ("clock", None),
    "coffee": ("coffee", None),
    "coins": ("coins", None),
    "grass": ("grass", None),
    "gravel": ("gravel", None),
    "hubble_deep_field": ("hubble_deep_field", None),
    "immunohistochemistry": ("immunohistochemistry", None),
    "moon": ("moon", None),
    "motorcycle_left": ("stereo_motorcycle", 0),
    "motorcycle_right": ("stereo_motorcycle", 1),
    "page": ("page", None),
    "retina": ("retina", None),
    "rocket": ("rocket", None),
    "text": ("text", None),
}

_SIZE = 224
# random views resize the shorter side to a length in this range before cropping
_MIN_SHORT, _MAX_SHORT = 224, 320


@functools.lru_cache(maxsize=1)
def _photos_float() -> tuple[tuple[str, Tensor], ...]:
    data = require("skimage.data", "scikit-image", "lowbit.zoo.images")
    out = []
    for name, (func, index) in PHOTOS.items():
        image = getattr(data, func)()
        if index is not None:
            image = image[index]
        x = torch.from_numpy(image)
        if x.ndim == 2:  # grey photographs become RGB by repetition
            x = x.unsqueeze(-1).expand(-1, -1, 3)
        out.append((name, x[..., :3].permute(2, 0, 1).float().div(255.0).contiguous()))
    return tuple(out)


def base_photos() -> dict[str, Tensor]:
    """The distinct base photographs, as uint8 RGB [H, W, 3] tensors (grey repeated).

    Returns:
        name → image, in the order of `PHOTOS` (19 photos).

    Raises:
        MissingResourceError: scikit-image is not installed.

    Example:
        >>> base_photos()["chelsea"].shape
        torch.Size([300, 451, 3])
    """
    return {
        name: x.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        for name, x in _photos_float()
    }


def photo_batch() -> tuple[list[str], Tensor]:
    """Every base photo in the standard ImageNet evaluation view.

    Returns:
        ``(names, images)``: images float32 [len(PHOTOS), 3, 224, 224], normalised.

    Example:
        >>> names, x = photo_batch()
        >>> names[4], x.shape
        ('chelsea', torch.Size([19, 3, 224, 224]))
    """
    photos = base_photos()
    return list(photos), torch.stack([imagenet_preprocess(x) for x in photos.values()])


def real_images(n: int, seed: int = 0) -> Tensor:
    """``n`` distinct 224×224 views of the base photos, ImageNet-normalised.

    View ``i`` comes from photo ``order[i % 19]`` (a seeded shuffle of the
    photos, reshuffled every 19 views), resized so its shorter side is a random
    length in [224, 320] (bilinear, antialiased), cropped at a random position
    and flipped left-right with probability ½. The random parameters are drawn
    from ``torch.Generator().manual_seed(seed)``, and a parameter tuple already
    used is drawn again, so the ``n`` views are distinct.

    Args:
        n: number of images (at least 1).
        seed: the same seed gives the same images; different seeds give
            different views (use two seeds for calibration and evaluation).

    Returns:
        float32 [n, 3, 224, 224].

    Raises:
        MissingResourceError: scikit-image is not installed.

    Example:
        >>> real_images(4, seed=0).shape
        torch.Size([4, 3, 224, 224])
    """
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    photos = _photos_float()
    g = torch.Generator().manual_seed(seed)
    seen: set[tuple[int, int, int, int, bool]] = set()
    out = torch.empty(n, 3, _SIZE, _SIZE)
    order: list[int] = []
    for i in range(n):
        if i % len(photos) == 0:
            order = torch.randperm(len(photos), generator=g).tolist()
        photo = order[i % len(photos)]
        _, x = photos[photo]
        while True:
            short = int(torch.randint(_MIN_SHORT, _MAX_SHORT + 1, (1,), generator=g))
            h, w = x.shape[1:]
            new_h, new_w = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
            top = int(torch.randint(0, new_h - _SIZE + 1, (1,), generator=g))
            left = int(torch.randint(0, new_w - _SIZE + 1, (1,), generator=g))
            flip = bool(torch.rand((), generator=g) < 0.5)
            key = (photo, short, top, left, flip)
            if key not in seen:
                seen.add(key)
                break
        view = resize_bilinear(x, new_h, new_w)[:, top : top + _SIZE, left : left + _SIZE]
        out[i] = normalize_imagenet(view.flip(-1) if flip else view)
    return out

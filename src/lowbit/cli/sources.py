"""Where the command line gets models and calibration data from.

Models: ``package.module:factory`` (a callable returning an ``nn.Module``), a
file saved with ``torch.save(model)``, or a Hugging Face model directory.
Calibration data: ``.npy`` arrays (a file or a directory of them), a directory
of images, or a text file (one sample per line, tokenized with the Hugging
Face model's tokenizer).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.errors import InputError, LowbitError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SourceError(LowbitError, ValueError):
    """A model or data source given on the command line cannot be used."""


def load_model(spec: str) -> tuple[nn.Module, object | None]:
    """Load ``spec`` as a model; returns ``(model, tokenizer or None)``."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf(path)
    if path.is_file():
        try:
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # an unreadable file is the user's to fix, with the reason
            raise SourceError(f"cannot load {path} with torch.load ({err}); save the whole model "
                              "with torch.save(model, path)") from err
        if not isinstance(model, nn.Module):
            raise SourceError(f"{path} holds a {type(model).__name__}, not a model: a state_dict "
                              "needs its architecture, so pass module:factory instead")
        return model.eval(), None
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise SourceError(f"cannot import {spec!r} ({err}); use package.module:callable") from err
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(model, nn.Module):
            raise SourceError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
        return model.eval(), None
    raise SourceError(f"model {spec!r} is neither a file, a Hugging Face model directory, nor "
                      "package.module:factory")


def _load_hf(path: Path) -> tuple[nn.Module, object]:
    try:
        import transformers
    except ImportError as err:
        raise SourceError("Hugging Face model directories need transformers: "
                          "pip install 'lowbit[hf]'") from err
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    archs = getattr(config, "architectures", None) or []
    loader = transformers.AutoModelForCausalLM if any("CausalLM" in a for a in archs) else \
        transformers.AutoModel
    model = loader.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def load_batches(source: str, *, batch_size: int, max_batches: int, tokenizer=None,
                 image_size: int = 224, normalize: str = "imagenet", max_length: int = 128) -> list:
    """Calibration batches from ``source`` (see the module docstring)."""
    path = Path(source)
    if not path.exists():
        raise SourceError(f"calibration data {source} does not exist")
    needed = batch_size * max_batches
    if path.is_file() and path.suffix == ".npy":
        return _split(torch.from_numpy(np.load(path)), batch_size, max_batches)
    if path.is_file():
        if tokenizer is None:
            raise SourceError("a text file needs a tokenizer: give a Hugging Face model directory")
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        lines = lines[:needed]
        return [dict(tokenizer(lines[i:i + batch_size], padding=True, truncation=True,
                               max_length=max_length, return_tensors="pt"))
                for i in range(0, len(lines), batch_size)]
    arrays = sorted(path.glob("*.npy"))
    if arrays:
        data = torch.cat([torch.from_numpy(np.load(f)) for f in arrays])
        return _split(data, batch_size, max_batches)
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:needed]
    if not images:
        raise SourceError(f"{path} has no .npy arrays and no images ({', '.join(IMAGE_SUFFIXES)})")
    stacked = torch.stack([_load_image(p, image_size, normalize) for p in images])
    return _split(stacked, batch_size, max_batches)


def _split(data: torch.Tensor, batch_size: int, max_batches: int) -> list[torch.Tensor]:
    if data.numel() == 0:
        raise InputError("the calibration array is empty")
    if data.is_floating_point():
        data = data.float()
    return list(data.split(batch_size))[:max_batches]


def _load_image(path: Path, size: int, normalize: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        scale = 256 / min(rgb.size) * size / 224
        rgb = rgb.resize((max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))),
                         Image.BILINEAR)
        left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if normalize == "imagenet":
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x

"""Quantized checkpoints in safetensors: the model's state (low-bit codes, scales) plus metadata.

A checkpoint holds ``state_dict()`` of a quantized model (codes stay in their
integer storage dtype) and, in the safetensors metadata, the recipe and a
format version, so that a file from another tool, another model or a newer
lowbit is refused with a clear message instead of loading garbage.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError

FORMAT_VERSION = 1
MAGIC = "lowbit"


class CheckpointError(LowbitError, ValueError):
    """A checkpoint file is corrupt, foreign, from a newer lowbit, or does not fit the model."""


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.state_dict()`` and its recipe to a safetensors file.

    Example:
        >>> save_checkpoint(qmodel, "model.lowbit.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = getattr(model, "lowbit_state", None)
    metadata = {
        "format": MAGIC,
        "format_version": str(FORMAT_VERSION),
        "recipe": json.dumps(state.recipe.to_dict()) if state is not None else "{}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a lowbit checkpoint, validated.

    Raises:
        CheckpointError: missing, truncated or corrupt file, not written by
            lowbit, or written by a newer format version.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass the .safetensors file lowbit wrote")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be "
                              "truncated or corrupt: write it again") from err
    if metadata.get("format") != MAGIC:
        raise CheckpointError(f"{path} was not written by lowbit (no lowbit metadata); load it with "
                              "the tool that wrote it")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this lowbit "
                              f"understands ({FORMAT_VERSION}); upgrade lowbit")
    return tensors, metadata


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into a model prepared with the same recipe (strict).

    Raises:
        CheckpointError: as `read_checkpoint`, or the file's tensors do not fit
            the model (another model, or another recipe).
    """
    tensors, _ = read_checkpoint(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model: {str(err).splitlines()[0]} — was it "
                              "written for another model or recipe?") from err
    return model

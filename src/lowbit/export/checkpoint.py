"""Quantized checkpoints in safetensors: packed low-bit codes, scales, and how to rebuild the model.

A checkpoint holds the quantized model's ``state_dict()`` — weight codes packed
at their width (two int4 per byte, four int2 per byte), scales and zero
points — plus, in the safetensors metadata:

- ``format`` / ``format_version``: a file from another tool or a newer lowbit is refused;
- ``recipe`` and ``graph``: how to rebuild the quantized structure from the
  float model (fuse → prepare, with or without the traced functional ops);
- ``quantizers``: the spec of every quantizer, so those that a recipe alone
  does not create (QAT's output quantizers) are rebuilt too;
- ``codec``: how tensors were packed; ``checksum``: SHA-256 of the stored bytes,
  so a corrupted file is refused instead of loading garbage.

`load_quantized(model_fp32, path)` rebuilds the quantized model and loads the
state; its outputs equal the saved model's bit for bit.
"""

from __future__ import annotations

import base64
import copy
import json
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.state_codec import checksum, decode_state, encode_state

FORMAT_VERSION = 3  # 3: codec and quantizer index zlib-compressed (2 wrote them as plain JSON)
MAGIC = "lowbit"
STATE_FIELDS = ("quantized", "kept", "excluded", "unsupported", "functional", "graph_note",
                "disabled", "bias_corrected")


class CheckpointError(LowbitError, ValueError):
    """A checkpoint file is corrupt, foreign, from a newer lowbit, or does not fit the model."""


def _quantizer_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``module path -> {attribute: spec dict}`` of every quantizer in ``model``."""
    from lowbit.nn.quantizer import Quantizer

    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        for attr, child in module._modules.items():
            if isinstance(child, Quantizer):
                found.setdefault(name, {})[attr] = child.spec.to_dict()
    return found


def _state_summary(state: Any) -> dict[str, Any]:
    summary = {key: getattr(state, key) for key in STATE_FIELDS if hasattr(state, key)}
    summary["fused"] = [[p.layer, p.norm] for p in getattr(state, "fused", [])]
    return summary


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write a quantized model to a safetensors file, low-bit codes packed.

    Args:
        model: a model quantized by lowbit (``model.lowbit_state`` holds its recipe).
        path: the ``.safetensors`` file to write.

    Returns:
        The path written.

    Example:
        >>> save_checkpoint(qmodel, "model.lowbit.safetensors")  # doctest: +SKIP
        >>> qmodel2 = load_quantized(model_fp32, "model.lowbit.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    from lowbit import __version__

    path = Path(path)
    tensors, codec = encode_state(model)
    state = getattr(model, "lowbit_state", None)
    metadata = {
        "format": MAGIC,
        "format_version": str(FORMAT_VERSION),
        "lowbit_version": __version__,
        "recipe": json.dumps(state.recipe.to_dict()) if state is not None else "{}",
        "graph": "auto" if state is not None and state.functional else "never",
        "state": json.dumps(_state_summary(state)) if state is not None else "{}",
        "quantizers": _packed_json(_quantizer_specs(model)),
        "codec": _packed_json(codec),
        "checksum": checksum(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _packed_json(value: Any) -> str:
    """Compact JSON, zlib-compressed and base64-encoded behind a ``z:`` prefix.

    The codec names every elided all-zero buffer: for a 53-layer MobileNetV2 that
    index was 55 KB of plain JSON, 1.5 % of the int8 checkpoint.
    """
    raw = json.dumps(value, separators=(",", ":")).encode()
    return "z:" + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def _unpacked_json(text: str, path: str | Path = "checkpoint", field: str = "index") -> Any:
    """Inverse of `_packed_json`; plain JSON (format 2 files) passes through.

    Raises:
        CheckpointError: the text is not what `_packed_json` writes (a damaged file).
    """
    try:
        if text.startswith("z:"):
            return json.loads(zlib.decompress(base64.b64decode(text[2:], validate=True)))
        return json.loads(text)
    except (ValueError, zlib.error) as err:  # binascii.Error and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path} is corrupted: its {field} index cannot be read ({err}); "
                              "write it again") from err


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model state and metadata of a lowbit checkpoint, validated and unpacked.

    Returns:
        ``(state_dict, metadata)``: tensors exactly as ``state_dict()`` held them.

    Raises:
        CheckpointError: missing, truncated or corrupt file (checksum mismatch),
            not written by lowbit, or written by a newer format version.

    Example:
        >>> state, meta = read_checkpoint("model.lowbit.safetensors")  # doctest: +SKIP
        >>> meta["format_version"]                                    # doctest: +SKIP
        '2'
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
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be "
                              "truncated or corrupt: write it again") from err
    if metadata.get("format") != MAGIC:
        raise CheckpointError(f"{path} was not written by lowbit (no lowbit metadata); load it with "
                              "the tool that wrote it")
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path} has an unreadable format version "
                              f"{metadata.get('format_version')!r}; write it again") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this lowbit "
                              f"understands ({FORMAT_VERSION}); upgrade lowbit")
    if version < 2:  # format 1 stored state_dict() as it was
        return tensors, metadata
    if checksum(tensors) != metadata.get("checksum"):
        raise CheckpointError(f"{path} is corrupted: its tensors do not match the checksum written "
                              "with them. Write the checkpoint again")
    codec = _unpacked_json(metadata.get("codec", "{}"), path, "codec")
    try:
        state = decode_state(tensors, codec)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} is corrupted: cannot unpack it ({err}); write it again") from err
    return state, metadata


def _weight_shapes_fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Codes must have the float weight's shape (before loading replaces the weight)."""
    for name, module in model.named_modules():
        key = f"{name}.weight_codes" if name else "weight_codes"
        weight = getattr(module, "weight", None)
        if key in state and isinstance(weight, torch.Tensor) and weight.numel() \
                and tuple(weight.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{path} was written for another model: layer {name} has weight "
                f"{tuple(weight.shape)} here but {tuple(state[key].shape)} in the file")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into a model already prepared with the same recipe (strict).

    Raises:
        CheckpointError: as `read_checkpoint`, or the file's tensors do not fit
            the model (another model, or another recipe).

    Example:
        >>> load_checkpoint(prepare(fused_model, recipe), "model.lowbit.safetensors")  # doctest: +SKIP
    """
    state, _ = read_checkpoint(path)
    path = Path(path)
    _weight_shapes_fit(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model: {_first_lines(err)} — was it "
                              "written for another model or recipe?") from err
    return model


def _first_lines(err: Exception, n: int = 3) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:n])[:600]


def _add_recorded_quantizers(model: nn.Module, specs: dict[str, dict[str, Any]]) -> None:
    """Create quantizers the file has but the recipe alone does not (QAT output quantizers)."""
    from lowbit.nn.quantizer import Quantizer
    from lowbit.recipes.spec import QuantSpec

    modules = dict(model.named_modules())
    for name, attrs in specs.items():
        module = modules.get(name)
        if module is None:
            continue  # reported as missing / unexpected keys by _check_fits
        for attr, spec in attrs.items():
            if getattr(module, attr, None) is None and (attr in module._modules or hasattr(module, attr)):
                setattr(module, attr, Quantizer(QuantSpec.from_dict(spec), f"{name}:{attr}"))


def load_quantized(model_fp32: nn.Module, path: str | Path, *, inplace: bool = False) -> nn.Module:
    """Rebuild a quantized model from its float model and a checkpoint; outputs are bit-exact.

    The recipe stored in the file drives the same steps `lowbit.quantize` took:
    fuse (if the recipe fuses), prepare (tracing adds / matmuls / cats only if
    the saved model did), then the saved codes, scales and zero points are loaded.

    Args:
        model_fp32: the float model the checkpoint was quantized from (weights
            need not be trained: they are replaced by the saved codes).
        path: the checkpoint written by `save_checkpoint`.
        inplace: modify ``model_fp32`` itself instead of a copy.

    Returns:
        The quantized model, in eval mode, with ``lowbit_state``.

    Raises:
        CheckpointError: corrupt / truncated / foreign / newer file, no recipe
            in it, or a file written for another model.

    Example:
        >>> qmodel = load_quantized(MobileNetV2(), "mbv2.int8.safetensors")  # doctest: +SKIP
    """
    from lowbit.flows.fuse import fuse
    from lowbit.flows.prepare import prepare
    from lowbit.recipes import Recipe

    path = Path(path)
    state, metadata = read_checkpoint(path)
    try:
        recipe = Recipe.from_dict(json.loads(metadata.get("recipe", "{}"))) \
            if metadata.get("recipe", "{}") != "{}" else None
    except (LowbitError, ValueError) as err:
        raise CheckpointError(f"{path} holds a recipe this lowbit cannot read ({err})") from err
    if recipe is None:
        raise CheckpointError(f"{path} holds no recipe, so the quantized structure cannot be "
                              "rebuilt; prepare the model yourself and use load_checkpoint")
    model = model_fp32 if inplace else copy.deepcopy(model_fp32)
    model.eval()
    fused = fuse(model) if recipe.fuse else []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the recipe matched this model when it was saved
            model = prepare(model, recipe, graph=metadata.get("graph", "auto"))
    except LowbitError as err:
        raise CheckpointError(f"{path} was written for another model: its recipe selects nothing "
                              f"here ({err})") from err
    _weight_shapes_fit(model, state, path)
    _add_recorded_quantizers(model, _unpacked_json(metadata.get("quantizers", "{}"), path, "quantizer"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} was written for another model or recipe: "
                              f"{_first_lines(err)}") from err
    qstate = model.lowbit_state
    qstate.fused = fused
    saved = json.loads(metadata.get("state", "{}"))
    for key in ("disabled", "bias_corrected", "kept"):
        if key in saved:
            setattr(qstate, key, type(getattr(qstate, key))(saved[key]))
    return model.eval()

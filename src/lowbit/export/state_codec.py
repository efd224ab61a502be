"""Encoding a quantized model's state for a checkpoint, and decoding it back bit-exactly.

- low-bit weight codes (and their zero points) are packed at their container
  width: two int4 / uint4 / int3 / fp4 codes per byte, four int2 / ternary /
  binary codes per byte (`lowbit.export.pack`);
- zero points that are all zero (symmetric formats) are not stored at all;
- tiny bookkeeping tensors (a quantizer's mode, layout, per-tensor scale and
  zero point) go into the metadata as exact numbers (floats by their bit
  pattern), so that a model with hundreds of quantizers does not pay a
  safetensors header entry for each 8-byte tensor;
- everything else is stored as it is.

`encode_state` returns the tensors to store and a JSON-able description;
`decode_state` inverts it exactly.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.export.pack import PACKED_WIDTHS, container_bits, pack_codes, unpack_codes

# Tensors with at most this many elements go into the metadata.
SMALL_NUMEL = 4
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
    torch.int16, torch.uint16, torch.int32, torch.int64, torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
)}
# float dtype -> same-size integer dtype, for exact bit patterns in JSON
_BITS_AS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    return _DTYPES[name]


def _code_formats(model: nn.Module) -> dict[str, Any]:
    """State-dict key prefix of each quantized layer -> its weight format."""
    found = {}
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None and hasattr(module, "converted"):
            found[f"{name}." if name else ""] = quantizer.fmt
    return found


def _small_entry(tensor: Tensor) -> dict[str, Any] | None:
    if tensor.numel() > SMALL_NUMEL or tensor.dtype not in _DTYPES.values():
        return None
    if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz):
        return None
    flat = tensor.detach().reshape(-1)
    if tensor.dtype in _BITS_AS:
        values = flat.view(_BITS_AS[tensor.dtype]).tolist()
    else:
        values = [int(v) for v in flat.tolist()]
    return {"dtype": dtype_name(tensor.dtype), "shape": list(tensor.shape), "values": values}


def _small_tensor(entry: dict[str, Any]) -> Tensor:
    dtype = dtype_from_name(entry["dtype"])
    shape = entry["shape"]
    if dtype in _BITS_AS:
        bits = torch.tensor(entry["values"], dtype=_BITS_AS[dtype])
        return bits.view(dtype).reshape(shape).clone()
    return torch.tensor(entry["values"], dtype=dtype).reshape(shape)


def encode_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors to store for ``model.state_dict()`` and the description to decode them.

    Returns:
        ``(tensors, codec)``: ``codec`` has ``packed`` (key → shape, dtype, bits),
        ``zeros`` (key → shape, dtype of all-zero tensors left out) and ``small``
        (key → exact values).
    """
    formats = _code_formats(model)
    tensors: dict[str, Tensor] = {}
    packed: dict[str, Any] = {}
    zeros: dict[str, Any] = {}
    small: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            continue
        tensor = value.detach().cpu().contiguous()
        prefix = key[: -len("weight_codes")] if key.endswith("weight_codes") else None
        if key.endswith("weight_quantizer.zero_point"):
            prefix = key[: -len("weight_quantizer.zero_point")]
        fmt = formats.get(prefix) if prefix is not None else None
        is_zp = key.endswith("zero_point")
        if is_zp and tensor.numel() > SMALL_NUMEL and not tensor.is_floating_point() \
                and not bool(tensor.any()):
            zeros[key] = {"shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype)}
            continue
        if fmt is not None and not tensor.is_floating_point():
            bits = container_bits(fmt)
            if bits in PACKED_WIDTHS and tensor.numel() > SMALL_NUMEL:
                packed[key] = {"shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype),
                               "bits": bits, "signed": bool(fmt.signed or fmt.kind != "int")}
                tensors[key] = pack_codes(tensor, bits)
                continue
        entry = _small_entry(tensor)
        if entry is not None:
            small[key] = entry
            continue
        tensors[key] = tensor
    return tensors, {"packed": packed, "zeros": zeros, "small": small}


def decode_state(tensors: dict[str, Tensor], codec: dict[str, Any]) -> dict[str, Tensor]:
    """Invert `encode_state`: the model's ``state_dict()`` exactly as it was saved.

    Raises:
        ValueError: the description does not match the stored tensors.
    """
    state = dict(tensors)
    for key, info in codec.get("packed", {}).items():
        if key not in state:
            raise ValueError(f"packed tensor {key} is missing")
        shape = [int(d) for d in info["shape"]]
        numel = 1
        for d in shape:
            numel *= d
        codes = unpack_codes(state[key], int(info["bits"]), numel, signed=bool(info["signed"]))
        state[key] = codes.to(dtype_from_name(info["dtype"])).reshape(shape)
    for key, info in codec.get("zeros", {}).items():
        state[key] = torch.zeros([int(d) for d in info["shape"]], dtype=dtype_from_name(info["dtype"]))
    for key, entry in codec.get("small", {}).items():
        state[key] = _small_tensor(entry)
    return state


def checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over every stored tensor (name, dtype, shape and bytes), in key order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{dtype_name(tensor.dtype)}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def signature(state: dict[str, Tensor]) -> str:
    """SHA-256 of the state's structure (keys, dtypes, shapes): which model a file belongs to."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key]
        digest.update(f"{key}|{dtype_name(tensor.dtype)}|{list(tensor.shape)};".encode())
    return digest.hexdigest()

"""Writing quantized models out: ONNX QDQ models and packed safetensors checkpoints.

- `onnx(qmodel, example_inputs, path)`: a standard ONNX QDQ model (opset 21+)
  that ONNX Runtime and TensorRT run, computing what lowbit simulated;
- `save_checkpoint` / `load_quantized`: packed low-bit checkpoints that reload
  bit-exactly.
"""

from __future__ import annotations

from lowbit.export.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_quantized,
    read_checkpoint,
    save_checkpoint,
)
from lowbit.export.errors import ExportError
from lowbit.export.onnx_export import onnx

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "ExportError",
    "load_checkpoint",
    "load_quantized",
    "onnx",
    "read_checkpoint",
    "save_checkpoint",
]

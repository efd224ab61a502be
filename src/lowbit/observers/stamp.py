"""Has a module's state changed? A stamp: which tensors hold it, and their version counters.

torch bumps a tensor's version counter on every in-place write, and a buffer
replaced by assignment is a different object. The stamp holds the tensors
themselves, so a freed tensor's memory (or ``id``) can never be mistaken for
the stamped one.
"""

from __future__ import annotations

from torch import Tensor, nn


def version(tensor: Tensor) -> int:
    """``tensor``'s version counter. Inference tensors (made under ``torch.inference_mode``)
    have none, and cannot be written outside inference mode, where lowbit runs: 0."""
    return 0 if tensor.is_inference() else tensor._version


def stamp(module: nn.Module, names: tuple[str, ...]) -> tuple:
    buffers = module._buffers
    return tuple((buffers[name], buffers[name]._version) for name in names)


def unchanged(module: nn.Module, names: tuple[str, ...], stamped: tuple) -> bool:
    """True if the buffers ``names`` are the very tensors `stamp` saw, not written since."""
    buffers = module._buffers
    return all(buffers[name] is tensor and tensor._version == version
               for name, (tensor, version) in zip(names, stamped, strict=True))

"""`FloatKept`: a layer left in FP16 / BF16 on purpose (mixed precision).

The wrapped layer's weight and input are rounded to the float format
(round to nearest even, as a cast does), so the simulation shows what
running that layer in half precision costs; the rest of the model is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.formats import floats
from lowbit.formats.qformat import get_format

KEEP_FORMATS = {"fp16": "fp16", "bf16": "bf16"}


def _cast(x: Tensor, fmt) -> Tensor:
    with torch.no_grad():
        rounded = floats.round_to_format(x.detach().float(), fmt, saturate=True).to(x.dtype)
    return x + (rounded - x).detach()


class FloatKept(nn.Module):
    """Runs ``module`` with its weight and input rounded to ``keep`` (``"fp16"``/``"bf16"``)."""

    def __init__(self, module: nn.Module, keep: str, name: str = "") -> None:
        super().__init__()
        self.module = module
        self.keep = keep
        self.layer_name = name
        self.fmt = get_format(KEEP_FORMATS[keep])
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            with torch.no_grad():
                weight.copy_(floats.round_to_format(weight.float(), self.fmt).to(weight.dtype))

    def quantizers(self) -> dict:
        return {}

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if x.is_floating_point():
            x = _cast(x, self.fmt)
        return self.module(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"keep={self.keep}"

"""Rounding modes as named choices.

The training framework and the deployment backend must round alike (seed 003
§3.4: PyTorch and ONNX round half to even, MNN and C ``round`` half away from
zero), so the mode is always explicit and always one of `ROUNDING_MODES`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.errors import FormatError

ROUNDING_MODES = ("half_even", "half_away", "floor", "ceil", "truncate", "stochastic")


def check_rounding(mode: str) -> str:
    if mode not in ROUNDING_MODES:
        raise FormatError(f"unknown rounding mode {mode!r}; use one of {', '.join(ROUNDING_MODES)}")
    return mode


def round_tensor(x: Tensor, mode: str = "half_even", generator: torch.Generator | None = None) -> Tensor:
    """Round a float tensor to integers (still float) with the named mode.

    Args:
        x: float tensor.
        mode: one of `ROUNDING_MODES`. ``stochastic`` rounds up with probability
            equal to the fractional part; pass a seeded ``generator`` to make it
            reproducible.
        generator: random source for ``stochastic``.

    Returns:
        A new float tensor of integral values.

    Example:
        >>> round_tensor(torch.tensor([0.5, 1.5, -0.5]), "half_away")
        tensor([ 1.,  2., -1.])
    """
    check_rounding(mode)
    if mode == "half_even":
        return torch.round(x)
    if mode == "floor":
        return torch.floor(x)
    if mode == "ceil":
        return torch.ceil(x)
    if mode == "truncate":
        return torch.trunc(x)
    if mode == "half_away":
        # x - trunc(x) is exact in binary floating point, unlike x + 0.5, which
        # itself rounds for |x| >= 2**22 and would move odd integers.
        whole = torch.trunc(x)
        away = (x - whole).abs() >= 0.5
        return whole + torch.sign(x) * away
    low = torch.floor(x)
    draw = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return low + (draw < (x - low)).to(x.dtype)

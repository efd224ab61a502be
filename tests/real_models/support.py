"""Helpers of the real-model tests: skip when a model is not installed; prove weights are low-bit."""

from __future__ import annotations

import pytest
import torch


def load_or_skip(loader, *args, **kwargs):
    """Call a `lowbit.zoo` loader; skip the test when its package or data is not installed."""
    from lowbit.zoo import MissingResourceError

    try:
        return loader(*args, **kwargs)
    except MissingResourceError as err:
        pytest.skip(str(err))


def assert_weights_quantized(qmodel: torch.nn.Module, bits: int, expect_layers: int) -> None:
    """The quantized copy really holds low-bit codes (a no-op quantizer must not pass)."""
    from lowbit.nn.modules import QuantMixin

    converted = [m for m in qmodel.modules()
                 if isinstance(m, QuantMixin) and getattr(m, "weight_codes", None) is not None
                 and m.weight_quantizer is not None and m.weight_quantizer.fmt.bits == bits]
    assert len(converted) >= expect_layers, (len(converted), expect_layers)
    codes = converted[0].weight_codes
    fmt = converted[0].weight_quantizer.fmt
    assert int(codes.min()) >= fmt.qmin and int(codes.max()) <= fmt.qmax
    # at least half of the levels are in use: the weights were not collapsed to a few values
    assert codes.unique().numel() >= min(2 ** bits, codes.numel()) // 2

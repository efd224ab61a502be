"""Bias correction (seed 004): undo the mean output shift that weight rounding causes.

Quantizing W to Ŵ shifts a layer's output by (W − Ŵ)·x, whose expectation
(W − Ŵ)·E[x] is a per-output-channel constant. Folding it into the bias
removes the systematic part of the error (Nagel et al. 2019, "Data-Free
Quantization", computed here from calibration data instead of BN statistics).
For convolutions E[x] is taken per input channel, which is exact away from the
zero-padded borders.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.flows.calibrate import CalibrationData, feed
from lowbit.nn.modules import QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear, QuantMixin


class _InputMean:
    """Running mean of a layer's input per input channel (no activations stored)."""

    def __init__(self, channel_dim: int) -> None:
        self.channel_dim = channel_dim
        self.total: Tensor | None = None
        self.count = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().double()
        dim = self.channel_dim if self.channel_dim >= 0 else x.dim() + self.channel_dim
        dims = [d for d in range(x.dim()) if d != dim]
        batch_sum = x.sum(dim=dims)
        self.total = batch_sum if self.total is None else self.total + batch_sum
        self.count += x.numel() // x.shape[dim]

    def mean(self) -> Tensor:
        return self.total / max(self.count, 1)


def _correctable(module: nn.Module) -> bool:
    if not isinstance(module, (QuantLinear, QuantConv1d, QuantConv2d, QuantConv3d)):
        return False
    if module.weight_quantizer is None or bool(module.converted):
        return False
    return getattr(module, "groups", 1) == 1


@torch.no_grad()
def correct_bias(model: nn.Module, data: CalibrationData, *, max_batches: int | None = 32,
                 progress: bool = True) -> list[str]:
    """Fold the expected weight-quantization error into each layer's bias (in place).

    Must run before `convert` (it needs the float weights). Input means are
    measured with every quantizer active, so they include upstream error.

    Returns:
        Names of the corrected layers.
    """
    layers = {name: m for name, m in model.named_modules() if _correctable(m)}
    means = {name: _InputMean(1 if isinstance(m, QuantMixin) and not isinstance(m, QuantLinear)
                              else -1) for name, m in layers.items()}
    handles = [layers[name].register_forward_pre_hook(means[name]) for name in layers]
    try:
        feed(model, data, max_batches=max_batches, progress=progress, desc="bias correction")
    finally:
        for handle in handles:
            handle.remove()
    corrected = []
    for name, layer in layers.items():
        if means[name].total is None:
            continue
        w = layer.weight.detach().double()
        w_hat = layer.weight_quantizer(layer.weight).detach().double()
        delta = w - w_hat
        if delta.dim() > 2:
            delta = delta.flatten(2).sum(-1)  # per (out, in) channel, summed over the kernel
        shift = delta @ means[name].mean()
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=layer.weight.dtype))
        layer.bias.add_(shift.to(layer.bias.dtype))
        corrected.append(name)
    state = getattr(model, "lowbit_state", None)
    if state is not None:
        state.bias_corrected = corrected
    return corrected

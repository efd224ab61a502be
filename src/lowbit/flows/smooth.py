"""Outlier smoothing (SmoothQuant, Xiao et al. 2023): move activation outliers into the weights.

Activations of transformer layers carry a few channels with values 10–100x
larger than the rest (seed 002 on outliers); one per-tensor activation scale
must cover them and so wastes most levels on the others. Per input channel j,

    s_j = max|X_j|^α / max|W_:,j|^(1−α),      X' = X / s,   W' = W · s

keeps X'W'ᵀ = XWᵀ, while X' has flatter channels and W' (quantized per output
channel, where the extra range costs little) absorbs the difference. α = 0.5
splits the difficulty evenly. At deployment the 1/s multiply folds into the
preceding LayerNorm or Linear; lowbit keeps it explicit on the layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.flows.calibrate import CalibrationData, feed
from lowbit.flows.prepare import quantizer_modules
from lowbit.nn.modules import QuantLinear


class _ChannelAbsMax:
    """Running max of |x| per input channel (the last dimension)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        batch = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
        self.value = batch if self.value is None else torch.maximum(self.value, batch)


def smoothing_factors(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``1 / s`` per input channel (what multiplies the input), guarded against zeros.

    Example:
        >>> smoothing_factors(torch.tensor([100.0, 1.0]), torch.ones(4, 2), 0.5)
        tensor([0.1000, 1.0000])
    """
    w_absmax = weight.detach().abs().float().amax(0)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    # Channels that never carry signal (all-zero activations or weights) keep s = 1.
    s = torch.where((act_absmax > 0) & (w_absmax > 0), s, torch.ones_like(s))
    return 1.0 / s.clamp(min=1e-5)


@torch.no_grad()
def smooth(model: nn.Module, data: CalibrationData, alpha: float = 0.5, *,
           max_batches: int | None = 16, progress: bool = True) -> list[str]:
    """Smooth every quantized Linear whose input is quantized (in place, before calibration).

    Args:
        model: a prepared, not yet calibrated model.
        data: calibration batches or ``forward_loop(model)``.
        alpha: migration strength in (0, 1).
        max_batches: batches used to measure per-channel input ranges.

    Returns:
        Names of the smoothed layers. Their weight quantizers are re-derived
        from the smoothed weights.
    """
    if not 0 < alpha < 1:
        raise LowbitError(f"smoothing alpha must be in (0, 1), got {alpha}; SmoothQuant uses 0.5")
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, QuantLinear) and m.input_quantizer is not None
              and not m.input_quantizer.spec.dynamic and not bool(m.converted)}
    if not layers:
        return []
    saved_modes = [(q, q.mode) for _, _, q in quantizer_modules(model)]
    for q, _ in saved_modes:
        q.mode = "off"  # measure the float model's activations
    stats = {name: _ChannelAbsMax() for name in layers}
    handles = [layers[name].register_forward_pre_hook(stats[name]) for name in layers]
    try:
        feed(model, data, max_batches=max_batches, progress=progress, desc="smoothing")
    finally:
        for handle in handles:
            handle.remove()
        for q, mode in saved_modes:
            q.mode = mode
    smoothed = []
    for name, layer in layers.items():
        if stats[name].value is None:
            continue
        layer.set_smoothing(smoothing_factors(stats[name].value, layer.weight, alpha))
        layer.calibrate_weight()
        smoothed.append(name)
    state = getattr(model, "lowbit_state", None)
    if state is not None:
        state.smoothed = smoothed
    return smoothed

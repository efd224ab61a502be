"""Conv + BatchNorm folded for quantization-aware training (Jacob et al. 2018, Krishnamoorthi 2018).

A deployment runtime runs Conv-BN as one convolution with the folded weight
``W · γ/σ`` (σ = sqrt(running_var + ε)) and bias ``(b − μ) · γ/σ + β``, so
that folded weight is what QAT must quantize. Training still needs batch
statistics, which the module gets without a second convolution:

    y  = conv(x, q(W · γ/σ))                 the quantized, folded convolution
    y' = y · σ/γ + b                         ≈ conv(x, W) + b: batch mean μ_B, var σ_B²
    out = γ · (y' − μ_B) / σ_B + β           = y · σ/σ_B + (β − γ(μ_B − b)/σ_B)

i.e. the output of the folded convolution rescaled by sqrt(running_var + ε) /
sqrt(batch_var + ε) plus the bias correction; gradients flow through the batch
statistics as in ordinary batch norm, and the running statistics are updated.
After ``freeze_bn_after`` training steps (or `freeze_bn`) the running statistics
stop moving and the module computes exactly the deployed graph
``conv(x, q(W · γ/σ)) + folded bias``, as it also does in eval mode; `to_conv`
then hands back that convolution as an ordinary quantized layer.

Under ``torch.distributed`` the running statistics are updated from the batch
statistics of all ranks (sum, sum of squares and count are all-reduced), so
every rank folds the same weight.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.nn.modules import QuantConv1d, QuantConv2d, QuantConv3d
from lowbit.nn.qat import QATError
from lowbit.observers import sync as dist_sync

# |γ/σ| below this is treated as this (sign kept), so y · σ/γ stays finite for a zero γ.
MIN_FOLD = 1e-12


def check_foldable(conv: nn.Module, bn: nn.Module | None, name: str = "") -> None:
    """Raise `QATError` unless ``bn`` is a batch norm that can fold into ``conv``.

    Example:
        >>> check_foldable(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    """
    where = f" {name}" if name else ""
    if bn is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise QATError(
            f"conv{where} is not followed by a BatchNorm (got {type(bn).__name__}); there is "
            "nothing to fold. Leave it out of fold_bn, or use fold_bn='auto' (folds only real pairs)"
        )
    if not bn.track_running_stats or bn.running_mean is None:
        raise QATError(
            f"the BatchNorm after conv{where} keeps no running statistics "
            "(track_running_stats=False), so it cannot be folded for deployment; build it with "
            "track_running_stats=True or leave it out of fold_bn"
        )
    if conv.out_channels != bn.num_features:
        raise QATError(
            f"conv{where} has {conv.out_channels} output channels but its BatchNorm has "
            f"{bn.num_features} features; they cannot be folded"
        )


@torch.compiler.disable
def _running_stats(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Copies of the running mean and variance, made outside any compiled graph.

    Batch norm updates the buffers in place later in the same step; a compiled
    graph that kept the buffer itself for its backward pass would then fail.
    """
    return bn.running_mean.detach().clone(), bn.running_var.detach().clone()


def _retyped(module: nn.Module, cls: type) -> nn.Module:
    """A shallow copy of ``module`` as class ``cls``: same parameters, buffers, quantizers, hooks.

    Copying the whole state (rather than listing attributes) keeps whatever
    ``QuantMixin`` holds now and later (e.g. smoothing factors).
    """
    new = copy.copy(module)
    new.__class__ = cls
    for name in ("_parameters", "_buffers", "_modules"):
        setattr(new, name, OrderedDict(getattr(module, name)))
    new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return new


class _QuantConvBnNd:
    """Folding logic shared by `QuantConvBn1d` / `2d` / `3d` (mixed into a quantized conv)."""

    _conv_type: type = QuantConv2d

    @classmethod
    def from_conv(cls, conv: nn.Module, bn: nn.Module, *, freeze_bn_after: int | None = None,
                  name: str = ""):
        """Fuse a quantized conv (from `prepare`) and the BatchNorm that follows it.

        Args:
            conv: a `QuantConv1d` / `QuantConv2d` / `QuantConv3d` (its parameters and
                quantizers are shared, not copied).
            bn: the batch norm applied to its output.
            freeze_bn_after: training steps after which running statistics are used.
            name: the conv's module name, for messages.

        Raises:
            QATError: ``bn`` is no batch norm, has no running statistics, or its size differs.
        """
        check_foldable(conv, bn, name)
        new = _retyped(conv, cls)
        new.bn = bn
        new.register_buffer("step", torch.zeros((), dtype=torch.int64))
        new.register_buffer("freeze_bn_after", torch.tensor(
            -1 if freeze_bn_after is None else int(freeze_bn_after)))
        new.register_buffer("bn_frozen", torch.tensor(False))
        return new

    # --- folding --------------------------------------------------------------------
    def _fold_shape(self) -> list[int]:
        return [-1] + [1] * (self.weight.dim() - 1)

    def fold_factor(self) -> Tensor:
        """γ / sqrt(running_var + ε) per output channel (magnitude at least `MIN_FOLD`)."""
        bn = self.bn
        _, var = _running_stats(bn)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
        factor = gamma / torch.sqrt(var + bn.eps)
        tiny = torch.where(factor < 0, -MIN_FOLD, MIN_FOLD).to(factor.dtype)
        return torch.where(factor.abs() < MIN_FOLD, tiny, factor)

    def folded_weight(self, factor: Tensor | None = None) -> Tensor:
        """The weight a runtime runs: W · γ/σ (float, before quantization)."""
        factor = self.fold_factor() if factor is None else factor
        return self.weight * factor.reshape(self._fold_shape())

    def folded_bias(self, factor: Tensor | None = None) -> Tensor:
        """The bias a runtime runs: (b − μ) · γ/σ + β."""
        bn = self.bn
        factor = self.fold_factor() if factor is None else factor
        mean, _ = _running_stats(bn)
        bias = self.bias if self.bias is not None else torch.zeros_like(mean)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
        return (bias - mean) * factor + beta

    def effective_weight(self) -> Tensor:
        weight = self.folded_weight()
        quantizer = self.weight_quantizer
        if quantizer is None or quantizer.mode != "quantize":
            return weight
        return quantizer(weight)

    def calibrate_weight(self) -> None:
        if self.weight_quantizer is not None:
            with torch.no_grad():
                self.weight_quantizer.calibrate_weight(self.folded_weight())

    def freeze_bn(self) -> None:
        """Use running statistics from now on (and stop updating them)."""
        self.bn_frozen.fill_(True)

    # --- forward --------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.training and self._freeze_due():
            self.bn_frozen.fill_(True)
        x = self.quantize_input(x)
        factor = self.fold_factor()
        weight = self.folded_weight(factor)
        if self.weight_quantizer is not None and self.weight_quantizer.mode == "quantize":
            weight = self.weight_quantizer(weight)
        if not self.training or bool(self.bn_frozen):
            # Exactly the deployed convolution (to_conv computes the same thing).
            y = self._conv_forward(x, weight, self.folded_bias(factor))
        else:
            y = self._conv_forward(x, weight, None)
            y = y / factor.reshape(self._bias_shape(y))
            if self.bias is not None:
                y = y + self.bias.reshape(self._bias_shape(y))
            y = self._batch_norm(y)
        if self.training:
            # The flag flips right after the last batch-statistics step, so a
            # checkpoint taken then already says so.
            self.step += 1
            if self._freeze_due():
                self.bn_frozen.fill_(True)
        return self.quantize_output(y)

    def _freeze_due(self) -> bool:
        limit = int(self.freeze_bn_after)
        return limit >= 0 and int(self.step) >= limit

    def _bias_shape(self, y: Tensor) -> list[int]:
        return [1, -1] + [1] * (y.dim() - 2)

    def _batch_norm(self, y: Tensor) -> Tensor:
        bn = self.bn
        if dist_sync.world_size() <= 1:
            return bn(y)  # training mode: batch statistics, running statistics updated
        out = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        self._update_running_stats_synced(y.detach())
        return out

    @torch.no_grad()
    def _update_running_stats_synced(self, y: Tensor) -> None:
        bn = self.bn
        dims = [d for d in range(y.dim()) if d != 1]
        y = y.double()
        stats = torch.stack([y.sum(dims), (y * y).sum(dims),
                             torch.full((y.shape[1],), y.numel() / y.shape[1],
                                        dtype=torch.float64, device=y.device)])
        dist_sync.all_reduce_(stats, "sum")
        total, squares, count = stats[0], stats[1], stats[2]
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=0) * count / (count - 1).clamp(min=1)
        bn.num_batches_tracked += 1
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var.to(bn.running_var.dtype), alpha=momentum)

    # --- conversion -----------------------------------------------------------------
    @torch.no_grad()
    def to_conv(self) -> nn.Module:
        """The deployed layer: a quantized conv holding the folded weight and bias.

        Its quantizers are this module's (the caller swaps QAT quantizers for plain ones).
        """
        factor = self.fold_factor()
        weight = nn.Parameter(self.folded_weight(factor).detach().clone())
        bias = nn.Parameter(self.folded_bias(factor).detach().clone())
        conv = _retyped(self, self._conv_type)
        del conv._modules["bn"]
        for name in ("step", "freeze_bn_after", "bn_frozen"):
            del conv._buffers[name]
        conv.weight, conv.bias = weight, bias
        return conv

    def extra_repr(self) -> str:
        text = f"{nn.modules.conv._ConvNd.extra_repr(self)}, {self.quant_extra_repr()}, folded bn"
        if bool(self.bn_frozen):
            text += " (frozen)"
        return text


class QuantConvBn1d(_QuantConvBnNd, QuantConv1d):
    """`QuantConv1d` with its BatchNorm1d folded in for QAT."""

    _conv_type = QuantConv1d


class QuantConvBn2d(_QuantConvBnNd, QuantConv2d):
    """`QuantConv2d` with its BatchNorm2d folded in for QAT.

    Example:
        >>> from lowbit.recipes.spec import LayerSpec, QuantSpec
        >>> conv = QuantConv2d.from_float(nn.Conv2d(3, 8, 3), LayerSpec(weight=QuantSpec()))
        >>> m = QuantConvBn2d.from_conv(conv, nn.BatchNorm2d(8))
        >>> m(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 6, 6])
    """

    _conv_type = QuantConv2d


class QuantConvBn3d(_QuantConvBnNd, QuantConv3d):
    """`QuantConv3d` with its BatchNorm3d folded in for QAT."""

    _conv_type = QuantConv3d


# The one table from quantized convs to their QAT Conv-BN versions.
CONV_BN_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    QuantConv1d: QuantConvBn1d,
    QuantConv2d: QuantConvBn2d,
    QuantConv3d: QuantConvBn3d,
}

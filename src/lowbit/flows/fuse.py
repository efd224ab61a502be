"""Fusion before quantization: fold batch norm into the preceding Conv / Linear.

Deployment runtimes run Conv-BN(-ReLU) as one conv with folded weights, so the
weights that get quantized must be the folded ones (seeds 003, 004). In eval
mode BN is an affine map per channel:

    y = γ · (x − μ) / sqrt(σ² + ε) + β   ⇒   W' = W · γ/sqrt(σ² + ε),  b' = (b − μ) · γ/sqrt(σ² + ε) + β

Pairs are found in a torch.fx trace when the model traces, which sees the
real data flow; otherwise in `nn.Sequential` containers, whose order is their
data flow. Activations (ReLU, ReLU6) stay where they are: the next layer's
input quantizer sees their output, which is where a fused kernel quantizes.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import nn

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FusedPair:
    layer: str
    norm: str


def fold_bn_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s running statistics and affine parameters into ``layer`` in place."""
    with torch.no_grad():
        var = bn.running_var.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        factor = gamma / torch.sqrt(var + bn.eps)
        out_axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        shape = [1] * layer.weight.dim()
        shape[out_axis] = -1
        weight = layer.weight.double() * factor.reshape(shape)
        bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
        bias = (bias - bn.running_mean.double()) * factor + beta
        layer.weight.copy_(weight.to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.to(layer.weight.dtype))
        else:
            layer.bias.copy_(bias.to(layer.bias.dtype))


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(layer, FOLDABLE) or not isinstance(bn, NORMS):
        return False
    if not bn.track_running_stats or bn.running_mean is None:
        return False
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return channels == bn.num_features


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]] | None:
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure means: use module patterns
        return None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), NORMS):
            continue
        source = node.args[0] if node.args else None
        if getattr(source, "op", None) != "call_module" or len(source.users) != 1:
            continue
        if _foldable(modules[source.target], modules[node.target]):
            pairs.append((source.target, node.target))
    return pairs


def _pairs_from_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in itertools.pairwise(names):
            if _foldable(container._modules[first], container._modules[second]):
                base = f"{prefix}." if prefix else ""
                pairs.append((base + first, base + second))
    return pairs


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fuse(model: nn.Module) -> list[FusedPair]:
    """Fold every eval-mode BatchNorm that directly follows a Conv / Linear (in place).

    Args:
        model: the model (its BN layers are replaced by ``nn.Identity``).

    Returns:
        The fused ``(layer, norm)`` pairs, for the report.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> [p.layer for p in fuse(m)]
        ['0']
    """
    if model.training:
        warnings.warn(
            "fuse() folds BatchNorm running statistics, which is only right in eval mode; "
            "call model.eval() first (lowbit.quantize does)",
            stacklevel=2,
        )
    pairs = _pairs_from_fx(model)
    if pairs is None:
        pairs = _pairs_from_sequentials(model)
    fused = []
    for layer_name, norm_name in pairs:
        fold_bn_into(model.get_submodule(layer_name), model.get_submodule(norm_name))
        set_submodule(model, norm_name, nn.Identity())
        fused.append(FusedPair(layer_name, norm_name))
    return fused

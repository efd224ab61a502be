"""Quantized versions of Linear, Conv1d/2d/3d, ConvTranspose2d and Embedding.

Each subclasses its float module, so parameter names (``weight``, ``bias``)
and ``isinstance`` checks in users' code keep working. Each carries up to
three `Quantizer`s: ``input_quantizer``, ``weight_quantizer`` and
``output_quantizer`` (None where the layer spec leaves that tensor float).

Before `convert_weight` the weight is a float Parameter, fake-quantized in
every forward (trainable, as QAT needs). After it, the weight is held as
low-bit codes (``weight_codes``, persistent) and a dequantized float copy
(``weight``, a non-persistent buffer rebuilt on load), so checkpoints are small
and the forward pass costs what the float one costs.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.nn.quantizer import Quantizer
from lowbit.primitives.quantize import dequantize, quantize
from lowbit.recipes.spec import LayerSpec, QuantSpec

# module → (versions of its weight and weight parameters, fake-quantized weight). Outside
# the module, so that deepcopy, pickling and state_dict never carry the cache along.
_FAKE_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class QuantMixin:
    """Quantizer bookkeeping shared by all quantized layers."""

    # (axis of output channels, axis that groups run along) in the weight tensor.
    weight_axes: tuple[int, int] = (0, 1)

    def _init_quantizers(self, spec: LayerSpec, name: str) -> None:
        self.layer_spec = spec
        self.layer_name = name
        self.input_quantizer = Quantizer(spec.input, f"{name}:input") if spec.input else None
        weight_spec = self._weight_spec(spec.weight) if spec.weight else None
        self.weight_quantizer = Quantizer(weight_spec, f"{name}:weight") if weight_spec else None
        self.output_quantizer = Quantizer(spec.output, f"{name}:output") if spec.output else None
        self.register_buffer("converted", torch.tensor(False))
        # Per-input-channel factor applied to the input before its quantizer (outlier
        # smoothing, lowbit.flows.smooth); None when the layer is not smoothed.
        self.register_buffer("smooth_factor", None)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _weight_spec(self, spec: QuantSpec) -> QuantSpec:
        if spec.axis is not None or spec.granularity not in ("channel", "group"):
            return spec
        channel_axis, group_axis = self.weight_axes
        return replace(spec, axis=channel_axis if spec.granularity == "channel" else group_axis)

    def quantizers(self) -> dict[str, Quantizer]:
        found = {
            "input": self.input_quantizer,
            "weight": self.weight_quantizer,
            "output": self.output_quantizer,
        }
        return {role: q for role, q in found.items() if q is not None}

    def calibrate_weight(self) -> None:
        """Weight parameters straight from the weight (no data needed)."""
        if self.weight_quantizer is not None and not bool(self.converted):
            self.weight_quantizer.calibrate_weight(self.weight)

    def effective_weight(self) -> Tensor:
        quantizer = self.weight_quantizer
        if bool(self.converted) or quantizer is None or quantizer.mode != "quantize":
            return self.weight
        if (torch.is_grad_enabled() and self.weight.requires_grad) or type(quantizer) is not Quantizer \
                or quantizer.spec.rounding == "stochastic":
            return quantizer(self.weight)  # training (the STE needs the graph), learned or random
        # Calibration and evaluation run many batches through the same frozen weight:
        # fake-quantize it once (a 30k-row embedding table cost more than the matmuls).
        # Any in-place change to the weight or the parameters bumps a version counter.
        key = (self.weight.data_ptr(), self.weight._version, quantizer.scale.data_ptr(),
               quantizer.scale._version, quantizer.zero_point.data_ptr(), quantizer.zero_point._version,
               quantizer.mode_code._version)
        cached = _FAKE_WEIGHTS.get(self)
        if cached is None or cached[0] != key:
            cached = (key, quantizer(self.weight).detach())
            _FAKE_WEIGHTS[self] = cached
        return cached[1]

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.smooth_factor is not None:
            x = x * self.smooth_factor.to(x.dtype)
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    @torch.no_grad()
    def set_smoothing(self, factor: Tensor) -> None:
        """Scale the input by ``factor`` per input channel and the weight by ``1 / factor``.

        The product is unchanged in exact arithmetic; outlier channels of the input
        shrink and the weight (quantized per output channel) absorbs them.
        """
        if bool(self.converted):
            raise LowbitError(f"{self.layer_name}: smooth before convert, while weights are float")
        factor = factor.detach().to(torch.float32)
        shape = [1] * self.weight.dim()
        shape[self.weight_axes[1]] = -1
        self.weight.div_(factor.reshape(shape).to(self.weight.dtype))
        if self.smooth_factor is not None:
            factor = factor * self.smooth_factor
        self.smooth_factor = factor

    def quantize_output(self, y: Tensor) -> Tensor:
        return self.output_quantizer(y) if self.output_quantizer is not None else y

    @torch.no_grad()
    def convert_weight(self) -> None:
        """Replace the float weight by its low-bit codes plus a dequantized cache."""
        quantizer = self.weight_quantizer
        if quantizer is None or bool(self.converted):
            return
        _FAKE_WEIGHTS.pop(self, None)
        if not bool(quantizer.frozen):
            quantizer.calibrate_weight(self.weight)
        p = quantizer.qparams()
        codes = quantize(self.weight.detach().float(), p.scale, p.zero_point, p.fmt,
                         axis=p.axis, block_size=p.block_size, rounding=quantizer.spec.rounding)
        dtype = self.weight.dtype
        del self._parameters["weight"]
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight", torch.empty(0, dtype=dtype), persistent=False)
        self.converted.fill_(True)
        self._rebuild_weight()

    def _rebuild_weight(self) -> None:
        p = self.weight_quantizer.qparams()
        dtype = self.weight.dtype if self.weight is not None else torch.float32
        self.weight = dequantize(self.weight_codes, p.scale, p.zero_point, p.fmt,
                                 axis=p.axis, block_size=p.block_size).to(dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        if prefix + "smooth_factor" in state_dict and self.smooth_factor is None:
            self.smooth_factor = torch.empty_like(state_dict[prefix + "smooth_factor"])
        # A converted checkpoint holds codes instead of a float weight: take that shape.
        if prefix + "weight_codes" in state_dict and "weight" in self._parameters:
            codes = state_dict[prefix + "weight_codes"]
            dtype = self._parameters["weight"].dtype
            del self._parameters["weight"]
            self.register_buffer("weight_codes", torch.empty_like(codes))
            self.register_buffer("weight", torch.empty(0, dtype=dtype), persistent=False)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def quant_extra_repr(self) -> str:
        parts = [f"{role}={q.spec}" for role, q in self.quantizers().items()]
        if bool(self.converted):
            parts.append("converted")
        return ", ".join(parts)


def _refresh_after_load(module: nn.Module, incompatible) -> None:
    if bool(module.converted) and getattr(module, "weight_codes", None) is not None:
        module._rebuild_weight()


class QuantLinear(QuantMixin, nn.Linear):
    """`nn.Linear` with quantized input, weight and output."""

    @classmethod
    def from_float(cls, module: nn.Linear, spec: LayerSpec, name: str = "") -> QuantLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = module.in_features, module.out_features
        new.weight, new.bias = module.weight, module.bias
        new._init_quantizers(spec, name)
        return new

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(self.quantize_input(x), self.effective_weight(), self.bias)
        return self.quantize_output(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_extra_repr()}"


class _QuantConvNd(QuantMixin):
    @classmethod
    def from_float(cls, module: nn.Module, spec: LayerSpec, name: str = ""):
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                     "transposed", "output_padding", "groups", "padding_mode",
                     "_reversed_padding_repeated_twice"):
            setattr(new, attr, getattr(module, attr))
        new.weight, new.bias = module.weight, module.bias
        new._init_quantizers(spec, name)
        return new

    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(self.quantize_input(x), self.effective_weight(), self.bias)
        return self.quantize_output(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_extra_repr()}"


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """`nn.Conv1d` with quantized input, weight and output."""


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """`nn.Conv2d` with quantized input, weight and output."""


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """`nn.Conv3d` with quantized input, weight and output."""


class QuantConvTranspose2d(_QuantConvNd, nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` with quantized input, weight and output.

    Its weight is ``(in, out / groups, kh, kw)``: output channels are axis 1.
    """

    weight_axes = (1, 0)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        y = F.conv_transpose2d(
            self.quantize_input(x), self.effective_weight(), self.bias, self.stride,
            self.padding, output_padding, self.groups, self.dilation,
        )
        return self.quantize_output(y)


class QuantEmbedding(QuantMixin, nn.Embedding):
    """`nn.Embedding` with a quantized table (weight-only: indices are not quantized)."""

    @classmethod
    def from_float(cls, module: nn.Embedding, spec: LayerSpec, name: str = "") -> QuantEmbedding:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                     "scale_grad_by_freq", "sparse"):
            setattr(new, attr, getattr(module, attr))
        new.weight = module.weight
        new._init_quantizers(LayerSpec(weight=spec.weight), name)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.embedding(x, self.effective_weight(), self.padding_idx, self.max_norm,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_extra_repr()}"


# The one dispatch table from float module types to their quantized versions.
QUANTIZED_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Embedding: QuantEmbedding,
}


def quantized_version(module: nn.Module, spec: LayerSpec, name: str = "") -> nn.Module:
    """The quantized counterpart of ``module`` (sharing its parameters).

    Raises:
        LowbitError: the module type has no quantized version.
    """
    cls = QUANTIZED_MODULES.get(type(module))
    if cls is None:
        raise LowbitError(
            f"{name or 'module'} is a {type(module).__name__}, which lowbit cannot quantize; "
            f"supported: {', '.join(t.__name__ for t in QUANTIZED_MODULES)}. Exclude it in the recipe"
        )
    return cls.from_float(module, spec, name)

"""`Quantizer`: one tensor's observer, quantization parameters and mode.

Modes (a per-module attribute, never a global flag):

- ``"observe"``: record ranges, pass the tensor through unchanged;
- ``"quantize"``: fake-quantize with the frozen scale / zero point
  (or with parameters computed from each batch for dynamic specs);
- ``"off"``: pass through (used by sensitivity analysis and mixed precision).

All state that matters is in buffers (scale, zero point, layout, mode), so a
quantized model survives ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.errors import InputError, ObserverError
from lowbit.observers import OBSERVERS, HistogramObserver, Observer
from lowbit.observers.weight_clip import search_clip
from lowbit.primitives.dynamic import dynamic_quantize
from lowbit.primitives.fake_quantize import fake_quantize
from lowbit.primitives.qparams import QParams, choose_qparams
from lowbit.primitives.quantize import dequantize
from lowbit.recipes.spec import QuantSpec

QUANTIZER_MODES = ("observe", "quantize", "off")
_MODE_CODES = {name: i for i, name in enumerate(QUANTIZER_MODES)}


def build_observer(spec: QuantSpec) -> Observer:
    """The observer a spec names, configured from the spec."""
    cls = OBSERVERS[spec.observer]
    if cls is HistogramObserver:
        if spec.granularity != "tensor":
            raise ObserverError(
                f"a histogram observer keeps one range per tensor, but the spec asks for "
                f"{spec.granularity_value()}; use observer='minmax' or 'ema' for that granularity"
            )
        return HistogramObserver(method=spec.method, percentile=spec.percentile)
    granularity = spec.granularity_value()
    if spec.observer == "ema":
        return cls(momentum=spec.momentum, granularity=granularity)
    return cls(granularity)


class Quantizer(nn.Module):
    """Quantizes one tensor as its `QuantSpec` says.

    Args:
        spec: the tensor's `QuantSpec`.
        name: where the tensor lives (for messages and reports).

    Example:
        >>> q = Quantizer(QuantSpec("uint8", symmetric=False))
        >>> _ = q(torch.randn(8, 16))          # observe
        >>> q.freeze()                          # choose scale / zero point, start quantizing
        >>> q(torch.randn(8, 16)).shape
        torch.Size([8, 16])
    """

    def __init__(self, spec: QuantSpec, name: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.fmt = spec.fmt
        self.name = name
        self.observer: Observer | None = None if spec.dynamic else build_observer(spec)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        # ONNX layout of scale: (axis, block_size), -1 for None.
        self.register_buffer("layout", torch.tensor([-1, -1], dtype=torch.int64))
        self.register_buffer("mode_code", torch.tensor(_MODE_CODES["observe"]))
        self.register_buffer("frozen", torch.tensor(False))

    # --- mode -----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return QUANTIZER_MODES[int(self.mode_code)]

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in _MODE_CODES:
            raise ObserverError(f"unknown quantizer mode {value!r}; use one of {QUANTIZER_MODES}")
        if value == "quantize" and not self.spec.dynamic and not bool(self.frozen):
            raise ObserverError(
                f"quantizer {self.name or ''} has no scale yet; calibrate and freeze() it first"
            )
        self.mode_code.fill_(_MODE_CODES[value])

    @property
    def axis(self) -> int | None:
        value = int(self.layout[0])
        return None if value < 0 else value

    @property
    def block_size(self) -> int | None:
        value = int(self.layout[1])
        return None if value < 0 else value

    def qparams(self) -> QParams:
        return QParams(self.scale, self.zero_point, self.fmt, self.axis, self.block_size)

    # --- forward --------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        mode = self.mode
        if mode == "off" or x.numel() == 0:
            return x
        if self.spec.dynamic:
            return self._dynamic(x) if mode == "quantize" else x
        if mode == "observe":
            deferral = self.__dict__.get("_deferral")  # set by calibrate (lowbit.flows.deferred)
            if deferral is None or not deferral.take(self, x):
                self.observe(x)
            return x
        return fake_quantize(
            x, self.scale, self.zero_point, self.fmt,
            axis=self.axis, block_size=self.block_size, rounding=self.spec.rounding,
        )

    def observe(self, x: Tensor) -> None:
        """Fold ``x`` into the observer (what ``"observe"`` mode does to each input)."""
        try:
            self.observer.update(x)
        except InputError as err:
            raise InputError(f"{self.name or 'quantizer'}: {err}") from err

    def _dynamic(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            granularity = self.spec.granularity_value()
            codes, p = dynamic_quantize(x.detach(), self.fmt, granularity, symmetric=self.spec.symmetric)
            out = dequantize(codes, p.scale, p.zero_point, self.fmt, axis=p.axis, block_size=p.block_size)
        # Straight-through: gradients see the identity.
        return x + (out.to(x.dtype) - x).detach()

    # --- parameters -----------------------------------------------------------------
    def set_qparams(self, params: QParams) -> None:
        """Freeze the given parameters and switch to ``"quantize"`` mode."""
        self.scale = params.scale.detach().to(torch.float32).clone()
        # Zero points are stored in the codes' own dtype (ONNX requires that too),
        # so per-group parameters of int4 weights cost a byte, not four.
        zp_dtype = self.fmt.storage_dtype if self.fmt.kind == "int" else torch.int8
        self.zero_point = params.zero_point.detach().to(zp_dtype).clone()
        self.layout = torch.tensor(
            [-1 if params.axis is None else params.axis,
             -1 if params.block_size is None else params.block_size],
            dtype=torch.int64,
        )
        self.frozen.fill_(True)
        self.mode = "quantize"

    def freeze(self) -> QParams | None:
        """Turn what the observer saw into scale / zero point and start quantizing.

        Raises:
            ObserverError: the observer saw no data (the layer never ran during
                calibration: check that the calibration loop reaches it).
        """
        if self.spec.dynamic:
            self.mode = "quantize"
            return None
        if not self.observer.has_data:
            raise ObserverError(
                f"quantizer {self.name or '(unnamed)'} saw no data during calibration; the layer "
                "never ran. Check that the calibration loop calls the model, or exclude the layer"
            )
        params = self.observer.compute_qparams(self.fmt, symmetric=self.spec.symmetric)
        self.set_qparams(params)
        return params

    def calibrate_weight(self, weight: Tensor) -> QParams:
        """Parameters straight from a weight tensor (min-max or MSE clipping search)."""
        w = weight.detach().float()
        granularity = self.spec.granularity_value()
        if self.spec.clip_search and self.fmt.kind == "int":
            params = search_clip(w, self.fmt, granularity, symmetric=self.spec.symmetric).qparams
        else:
            params = choose_qparams(w, self.fmt, granularity, symmetric=self.spec.symmetric)
        self.set_qparams(params)
        return params

    def chosen_range(self) -> tuple[float, float] | None:
        """The real-valued range the frozen parameters cover (per-tensor only)."""
        if not bool(self.frozen) or self.scale.numel() != 1:
            return None
        s, z = float(self.scale), int(self.zero_point)
        return s * (float(self.fmt.qmin) - z), s * (float(self.fmt.qmax) - z)

    def drop_observer(self) -> None:
        """Free the observer once parameters are frozen (smaller checkpoints)."""
        self.observer = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # Frozen scales of per-channel / per-group quantizers have data-dependent shapes.
        for name in ("scale", "zero_point", "layout"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        if self.observer is not None and not any(k.startswith(prefix + "observer.") for k in state_dict):
            self.observer = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        text = f"{self.spec}, mode={self.mode}"
        if bool(self.frozen) and self.scale.numel() == 1:
            text += f", scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}"
        elif bool(self.frozen):
            text += f", scales={tuple(self.scale.shape)}"
        return text

"""`QATQuantizer`: the `Quantizer` of quantization-aware training.

It fake-quantizes in every forward pass (straight-through estimator for the
input) and keeps its quantization parameters current while the model trains:

- ``learn="none"`` (fixed scale): weights take min-max parameters from the
  current weight at every step; activations track an exponential moving
  average of the batch ranges (seed 003 §3.1 freezes it later). After
  ``freeze_after`` training steps the parameters stop moving ("observer frozen").
- ``learn="lsq"``: the scale is an ``nn.Parameter`` with the LSQ gradient
  (Esser et al. 2020) scaled by 1 / sqrt(N · qmax);
- ``learn="lsq+"``: scale and offset (zero point, rounded in the forward pass)
  are parameters (Bhalgat et al. 2020), for asymmetric activations.

Initialisation (``init``): ``"ptq"`` takes what post-training quantization
would choose (the observer's range for activations, min-max of the weight);
``"lsq"`` takes LSQ's 2 · mean|x| / sqrt(qmax). Activations are initialised
from calibration data when `lowbit.prepare_qat` gets some (seed 003 §3.2),
else from the first training batch.

A learned scale must stay positive and finite: before each use it is clamped
to [1e-4, max(qmax, 16)] times its initial value (``scale_floor`` /
``scale_ceiling``: below, x/s overflows; above, every code is 0 and the scale
stops learning) and a non-finite value is replaced by the last good one, so one
bad optimizer step cannot turn every later loss into NaN or freeze the layer at
zero.

Under ``torch.distributed`` every statistic that feeds a parameter (calibration
observers, first-batch initialisation, moving averages) is reduced across
ranks, so every rank holds the same quantizer state.

The forward pass is `qat_fake_quantize`: the values of `fake_quantize` (so a
trained model converts bit for bit) with a cheaper backward pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.errors import LowbitError, ObserverError
from lowbit.nn.qat_fq import qat_fake_quantize
from lowbit.nn.quantizer import _MODE_CODES, QUANTIZER_MODES, Quantizer
from lowbit.observers import sync as dist_sync
from lowbit.observers.weight_clip import search_clip
from lowbit.primitives.fake_quantize import lsq_grad_scale
from lowbit.primitives.granularity import (
    expand_to,
    onnx_layout,
    reduce_minmax,
    reduce_to,
    scale_shape,
)
from lowbit.primitives.qparams import MIN_SCALE, QParams, choose_qparams, qparams_from_minmax
from lowbit.recipes.spec import QuantSpec

ROLES = ("weight", "activation")
INITS = ("ptq", "lsq")
FLOOR_FRACTION = 1e-4  # a learned scale may shrink to this fraction of its initial value
# ... and grow to max(qmax, 16) times it: beyond that every code would round to 0, where
# the scale gets no gradient and the layer outputs zeros for good.
MIN_CEILING_FACTOR = 16.0


class QATError(LowbitError, RuntimeError):
    """Quantization-aware training cannot proceed as asked (the message says what to do)."""


class QATCheckpointError(QATError):
    """A QAT checkpoint does not fit the model it is loaded into."""


def lsq_init_scale(mean_abs: Tensor, spec: QuantSpec) -> Tensor:
    """LSQ's initial step size 2 · mean|x| / sqrt(qmax), kept inside normal float32.

    Example:
        >>> float(lsq_init_scale(torch.tensor(1.0), QuantSpec("int4")))
        0.7559289336204529
    """
    qmax = max(float(spec.fmt.qmax), 1.0)
    scale = 2.0 * mean_abs.double() / qmax**0.5
    return torch.where(scale > 0, scale, torch.ones_like(scale)).clamp(MIN_SCALE).float()


class QATQuantizer(Quantizer):
    """A `Quantizer` that trains: fake quantization with STE, LSQ or LSQ+, freezing.

    Args:
        spec: the tensor's `QuantSpec`; ``spec.learn`` picks fixed / LSQ / LSQ+.
        name: where the tensor lives (for messages).
        role: ``"weight"`` or ``"activation"``.
        init: ``"ptq"`` or ``"lsq"`` (see the module docs).
        freeze_after: training steps after which fixed-scale parameters stop
            following the data (None: never).

    Example:
        >>> q = QATQuantizer(QuantSpec("int4", learn="lsq"), role="weight")
        >>> w = nn.Parameter(torch.randn(8, 4))
        >>> q(w).sum().backward()
        >>> q.scale.grad is not None
        True
    """

    def __init__(self, spec: QuantSpec, name: str = "", *, role: str = "activation",
                 init: str = "ptq", freeze_after: int | None = None) -> None:
        super().__init__(spec, name)
        if role not in ROLES:
            raise QATError(f"role must be one of {ROLES}, got {role!r}")
        if init not in INITS:
            raise QATError(f"init must be one of {INITS}, got {init!r}")
        self.role = role
        self.init = init
        self.learn = spec.learn
        self.mode_code.fill_(_MODE_CODES["quantize"])  # initialised by the first training batch
        if self.learn != "none":
            del self._buffers["scale"]
            self.scale = nn.Parameter(torch.ones(()))
        if self.learn == "lsq+":
            del self._buffers["zero_point"]
            self.zero_point = nn.Parameter(torch.zeros(()))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("freeze_after", torch.tensor(-1 if freeze_after is None
                                                          else int(freeze_after)))
        self.register_buffer("observer_frozen", torch.tensor(False))
        self.register_buffer("scale_floor", torch.tensor(MIN_SCALE))
        self.register_buffer("scale_ceiling", torch.tensor(float("inf")))
        # Fixed-scale activations: moving average of batch ranges, in the scale's layout.
        self.register_buffer("range_min", torch.zeros(0))
        self.register_buffer("range_max", torch.zeros(0))
        # Last good learned values, and how often they had to be restored.
        self.register_buffer("good_scale", torch.zeros(0), persistent=False)
        self.register_buffer("good_zero_point", torch.zeros(0), persistent=False)
        self.register_buffer("recoveries", torch.zeros((), dtype=torch.int64), persistent=False)
        # LSQ initialisation from calibration data: sum |x| and counts per scale.
        self._abs_sum: Tensor | None = None
        self._abs_count: Tensor | None = None

    @classmethod
    def from_quantizer(cls, quantizer: Quantizer, role: str, *, init: str = "ptq",
                       freeze_after: int | None = None) -> QATQuantizer:
        """A QAT quantizer for the same tensor as a PTQ ``quantizer`` (its mode is kept)."""
        new = cls(quantizer.spec, quantizer.name, role=role, init=init, freeze_after=freeze_after)
        new.mode_code.copy_(quantizer.mode_code)
        return new

    # --- mode -----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return QUANTIZER_MODES[int(self.mode_code)]

    @mode.setter
    def mode(self, value: str) -> None:
        # Unlike PTQ, "quantize" is allowed before parameters exist: the first
        # training batch initialises them.
        if value not in _MODE_CODES:
            raise ObserverError(f"unknown quantizer mode {value!r}; use one of {QUANTIZER_MODES}")
        self.mode_code.fill_(_MODE_CODES[value])

    # --- forward --------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        mode = self.mode
        if mode == "off" or x.numel() == 0 or self.spec.dynamic:
            return super().forward(x)
        if mode == "observe":
            self.observe(x)
            return x
        if self.training:
            self._training_update(x)
        elif not bool(self.frozen):
            if self.role != "weight":
                raise ObserverError(
                    f"quantizer {self.name or '(unnamed)'} has no scale yet: run a training "
                    "step first, or pass calibrate= to lowbit.prepare_qat"
                )
            self.init_from(x)
        elif self._follows_weight():
            self._refresh_weight(x)
        scale, zero_point = self.sane_params()
        grad_scale = self._grad_scale(x) if self.learn != "none" else 1.0
        return qat_fake_quantize(
            x, scale, zero_point, self.fmt, axis=self.axis, block_size=self.block_size,
            rounding=self.spec.rounding, grad_scale=grad_scale,
        )

    def observe(self, x: Tensor) -> None:
        """Record ``x`` for initialisation (observer range, and mean |x| for LSQ init)."""
        try:
            self.observer.update(x)
        except LowbitError as err:
            raise type(err)(f"{self.name or 'quantizer'}: {err}") from err
        if self.init == "lsq":
            self._accumulate_abs(x)

    def _follows_weight(self) -> bool:
        return self.role == "weight" and self.learn == "none" and not bool(self.observer_frozen)

    def _training_update(self, x: Tensor) -> None:
        limit = int(self.freeze_after)
        if limit >= 0 and int(self.step) >= limit:
            self.observer_frozen.fill_(True)
        if not bool(self.frozen):
            self.init_from(x, from_training=True)
        elif self._follows_weight():
            self._refresh_weight(x)
        elif self.learn == "none" and not bool(self.observer_frozen):
            self._track_range(x)
        self.step += 1
        if limit >= 0 and int(self.step) >= limit:
            self.observer_frozen.fill_(True)

    # --- initialisation -------------------------------------------------------------
    @torch.no_grad()
    def init_from(self, x: Tensor, *, from_training: bool = False) -> QParams:
        """Initialise the parameters from one tensor (a weight, or a first batch)."""
        x = x.detach()
        if self.role == "weight":
            params = self._weight_params(x)
        else:
            self.observer.update(x)
            if self.init == "lsq":
                self._accumulate_abs(x)
            self.sync_stats()
            return self.freeze(from_training=from_training)
        if self.init == "lsq":
            self._accumulate_abs(x)
            params = replace(params, scale=lsq_init_scale(self._mean_abs(), self.spec))
        self._abs_sum = self._abs_count = None
        self.set_qparams(params, from_training=from_training)
        return params

    def _weight_params(self, w: Tensor) -> QParams:
        w = w.float()
        granularity = self.spec.granularity_value()
        if self.spec.clip_search and self.fmt.kind == "int":
            return search_clip(w, self.fmt, granularity, symmetric=self.spec.symmetric).qparams
        return choose_qparams(w, self.fmt, granularity, symmetric=self.spec.symmetric)

    def calibrate_weight(self, weight: Tensor) -> QParams:
        """Parameters straight from a weight tensor (``init`` decides PTQ or LSQ values)."""
        return self.init_from(weight)

    @torch.no_grad()
    def _refresh_weight(self, w: Tensor) -> None:
        p = self._weight_params(w.detach())
        self.scale.copy_(p.scale)
        self.zero_point.copy_(p.zero_point.to(self.zero_point.dtype))

    def _accumulate_abs(self, x: Tensor) -> None:
        axis, block = self._layout_for(x)
        shape = scale_shape(x.shape, axis, block)
        x = x.detach().float()
        total = reduce_to(x.abs(), shape, axis, block).double()
        count = reduce_to(torch.ones_like(x), shape, axis, block).double()
        if self._abs_sum is None or self._abs_sum.shape != total.shape:
            self._abs_sum, self._abs_count = total, count
        else:
            self._abs_sum, self._abs_count = self._abs_sum + total, self._abs_count + count

    def _layout_for(self, x: Tensor) -> tuple[int | None, int | None]:
        # Weight specs carry the layer's channel axis (QuantMixin._weight_spec), and an
        # activation observer is built from the same granularity: one rule for both.
        return onnx_layout(x.shape, self.spec.granularity_value())

    def _mean_abs(self) -> Tensor:
        return self._abs_sum / self._abs_count.clamp(min=1)

    def sync_stats(self) -> None:
        """Merge calibration statistics across ``torch.distributed`` ranks (all must call)."""
        if self.observer is not None:
            self.observer.sync()
        if self.init != "lsq" or dist_sync.world_size() <= 1:
            return
        # Every rank must take part, also one that saw nothing: agree on the shape first.
        shapes = dist_sync.all_gather_object(
            None if self._abs_sum is None else tuple(self._abs_sum.shape))
        shape = next((s for s in shapes if s is not None), None)
        if shape is None:
            return
        if self._abs_sum is None:
            self._abs_sum = torch.zeros(shape, dtype=torch.float64)
            self._abs_count = torch.zeros(shape, dtype=torch.float64)
        dist_sync.all_reduce_(self._abs_sum, "sum")
        dist_sync.all_reduce_(self._abs_count, "sum")

    def freeze(self, *, from_training: bool = False) -> QParams | None:
        """Turn what the observer saw into parameters (LSQ-initialised if ``init="lsq"``).

        Call `sync_stats` first under ``torch.distributed`` (``prepare_qat`` does).

        Raises:
            ObserverError: the observer saw no data.
        """
        if self.spec.dynamic:
            return super().freeze()
        if not self.observer.has_data:
            raise ObserverError(
                f"quantizer {self.name or '(unnamed)'} saw no data; the layer never ran. Check "
                "that the calibration loop reaches it, or exclude the layer in the recipe"
            )
        params = self.observer.compute_qparams(self.fmt, symmetric=self.spec.symmetric)
        if self.init == "lsq" and self._abs_sum is not None:
            params = replace(params, scale=lsq_init_scale(self._mean_abs(), self.spec))
        self._abs_sum = self._abs_count = None
        self.set_qparams(params, from_training=from_training)
        return params

    @torch.no_grad()
    def set_qparams(self, params: QParams, *, from_training: bool = False) -> None:
        """Set scale / zero point (keeping parameter objects when the shape allows)."""
        scale = params.scale.detach().float().to(self.mode_code.device)
        zero_point = params.zero_point.detach().to(self.mode_code.device)
        self._assign("scale", scale, from_training)
        zp_dtype = torch.float32 if self.learn == "lsq+" else torch.int32
        self._assign("zero_point", zero_point.to(zp_dtype), from_training)
        self.layout = torch.tensor(
            [-1 if params.axis is None else params.axis,
             -1 if params.block_size is None else params.block_size],
            dtype=torch.int64, device=self.mode_code.device,
        )
        self.scale_floor = (scale * FLOOR_FRACTION).clamp(min=MIN_SCALE)
        self.scale_ceiling = scale * max(float(self.fmt.qmax), MIN_CEILING_FACTOR)
        self.good_scale = scale.clone()
        self.good_zero_point = zero_point.float().clone()
        if self.role != "weight":
            lo = scale * (float(self.fmt.qmin) - zero_point.float())
            hi = scale * (float(self.fmt.qmax) - zero_point.float())
            self.range_min, self.range_max = lo.clone(), hi.clone()
        self.frozen.fill_(True)
        self.mode_code.fill_(_MODE_CODES["quantize"])

    def _assign(self, name: str, value: Tensor, from_training: bool) -> None:
        current = getattr(self, name)
        if current.shape == value.shape:
            current.copy_(value.to(current.dtype))
            return
        if not isinstance(current, nn.Parameter):
            setattr(self, name, value.clone())
            return
        if from_training:
            raise QATError(
                f"quantizer {self.name or '(unnamed)'} learns a {self.spec.granularity_value()} "
                f"{name} whose shape {tuple(value.shape)} is only known from data, after the "
                "optimizer was built; pass calibrate= to lowbit.prepare_qat so the parameter "
                "exists before you create the optimizer"
            )
        setattr(self, name, nn.Parameter(value.clone()))

    # --- fixed-scale tracking -------------------------------------------------------
    @torch.no_grad()
    def _track_range(self, x: Tensor) -> None:
        lo, hi = reduce_minmax(x.detach().float(), self.axis, self.block_size)
        if dist_sync.world_size() > 1:
            dist_sync.all_reduce_(lo, "min")
            dist_sync.all_reduce_(hi, "max")
        if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
            return  # a non-finite batch must not poison the range; the loss shows it
        m = self.spec.momentum
        self.range_min.mul_(m).add_(lo, alpha=1 - m)
        self.range_max.mul_(m).add_(hi, alpha=1 - m)
        scale, zero_point = qparams_from_minmax(self.range_min, self.range_max, self.fmt,
                                                symmetric=self.spec.symmetric)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point.to(self.zero_point.dtype))

    # --- learned parameters ---------------------------------------------------------
    def _grad_scale(self, x: Tensor) -> float:
        per_scale = x.numel() // max(self.scale.numel(), 1)
        if self.role != "weight" and x.dim() > 1:
            per_scale //= max(int(x.shape[0]), 1)  # LSQ: features per sample
        return lsq_grad_scale(per_scale, self.fmt)

    def sane_params(self) -> tuple[Tensor, Tensor]:
        """Scale and zero point to use now; learned values are repaired in place first.

        A non-finite learned value is replaced by the last good one and the scale
        is clamped to [``scale_floor``, ``scale_ceiling``] (both counted in
        ``recoveries``); LSQ+ offsets are kept inside [qmin, qmax].
        """
        if self.learn == "none":
            return self.scale, self.zero_point
        with torch.no_grad():
            repaired = self._repair("scale", "good_scale", self.scale_floor, self.scale_ceiling)
            if self.learn == "lsq+":
                repaired |= self._repair("zero_point", "good_zero_point",
                                         float(self.fmt.qmin), float(self.fmt.qmax), count=False)
            if repaired:
                self.recoveries += 1
        return self.scale, self.zero_point

    def _repair(self, name: str, good_name: str, low: Tensor | float, high: Tensor | float,
                count: bool = True) -> bool:
        value = getattr(self, name)
        if getattr(self, good_name).shape != value.shape:
            good = torch.where(torch.isfinite(value), value, torch.ones_like(value)).detach()
            setattr(self, good_name, good.clone())
        good = getattr(self, good_name)
        finite = torch.isfinite(value)
        out_of_range = (value < low) | (value > high)
        non_finite = not bool(finite.all())
        outside = bool(out_of_range.any())
        if non_finite or outside:
            value.copy_(torch.where(finite, value, good).clamp(min=low, max=high))
        good.copy_(value)
        return non_finite or (outside and count)

    def chosen_range(self) -> tuple[float, float] | None:
        """The real-valued range the current parameters cover (per-tensor only)."""
        if not bool(self.frozen) or self.scale.numel() != 1:
            return None
        s, z = float(self.scale.detach()), float(torch.round(self.zero_point.detach().float()))
        return s * (float(self.fmt.qmin) - z), s * (float(self.fmt.qmax) - z)

    # --- conversion -----------------------------------------------------------------
    @torch.no_grad()
    def to_quantizer(self, weight: Tensor | None = None) -> Quantizer:
        """The plain `Quantizer` holding this quantizer's current parameters (for `convert`).

        Args:
            weight: for weight quantizers that still follow the weight, the tensor
                whose parameters the forward pass would compute now.
        """
        plain = Quantizer(self.spec, self.name)
        plain.observer = None
        plain.mode_code.copy_(self.mode_code)
        if not bool(self.frozen) and weight is not None:
            self.init_from(weight)
        if not bool(self.frozen):
            plain.mode_code.fill_(_MODE_CODES["off"])
            return plain
        if weight is not None and self._follows_weight():
            self._refresh_weight(weight)
        scale, zero_point = self.sane_params()
        zero_point = torch.round(zero_point.detach().float()).clamp(
            float(self.fmt.qmin), float(self.fmt.qmax)).to(torch.int32)
        plain.set_qparams(QParams(scale.detach().clone(), zero_point, self.fmt, self.axis,
                                  self.block_size))
        plain.mode_code.copy_(self.mode_code)
        return plain

    # --- state_dict -----------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "role": self.role, "init": self.init}

    def set_extra_state(self, state: Any) -> None:
        self._check_compatible(state)

    def _check_compatible(self, state: Any) -> None:
        mine = self.get_extra_state()
        if not isinstance(state, dict) or state.get("spec") != mine["spec"] \
                or state.get("role") != mine["role"]:
            theirs = state.get("spec") if isinstance(state, dict) else state
            raise QATCheckpointError(
                f"quantizer {self.name or '(unnamed)'}: the checkpoint was trained with spec "
                f"{theirs} but this model has {mine['spec']}. Prepare the model with the recipe "
                "the checkpoint was saved with (lowbit.flows.qat.load_qat_checkpoint reads it "
                "from the file), or start again from the float weights"
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing,
                              unexpected, errors):
        extra = prefix + "_extra_state"
        if extra in state_dict:
            self._check_compatible(state_dict[extra])
        for name in ("scale", "zero_point", "layout", "range_min", "range_max", "scale_floor",
                     "scale_ceiling"):
            key = prefix + name
            if key not in state_dict or not isinstance(state_dict[key], Tensor):
                continue
            current, saved = getattr(self, name), state_dict[key]
            if current.shape == saved.shape:
                continue
            if isinstance(current, nn.Parameter):
                setattr(self, name, nn.Parameter(torch.empty_like(saved, dtype=current.dtype)))
            else:
                setattr(self, name, torch.empty_like(saved, dtype=current.dtype))
        if self.observer is not None and not any(k.startswith(prefix + "observer.")
                                                 for k in state_dict):
            self.observer = None
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                        missing, unexpected, errors)
        self.good_scale = self.scale.detach().clone()
        self.good_zero_point = self.zero_point.detach().float().clone()

    def extra_repr(self) -> str:
        text = f"{self.spec}, mode={self.mode}, role={self.role}"
        scale, zero_point = self.scale.detach(), self.zero_point.detach()
        if bool(self.frozen) and scale.numel() == 1:
            text += f", scale={float(scale):.4g}, zero_point={float(zero_point):.4g}"
        elif bool(self.frozen):
            text += f", scales={tuple(scale.shape)}"
        text += f", step={int(self.step)}"
        if bool(self.observer_frozen):
            text += ", observer frozen"
        return text


def expand_scale(quantizer: Quantizer, x: Tensor) -> Tensor:
    """The quantizer's scale broadcast against ``x`` (for reports and tests)."""
    return expand_to(quantizer.scale.detach(), x.shape, quantizer.axis, quantizer.block_size)

"""QAT companions: checkpoints that resume mid-training, and the rounding-mismatch measurement.

- `save_qat_checkpoint` / `load_qat_checkpoint`: the model's state (learned
  scales and offsets, step counters, frozen flags, observers, BN statistics)
  together with the recipe it was trained with and, optionally, the optimizer
  and scheduler. Loading into a model prepared with another recipe is refused
  with a `QATCheckpointError` that names the difference.
- `rounding_mismatch`: how far the simulated model (rounding as trained) is
  from what a backend that rounds differently computes (seed 003 §3.4:
  PyTorch rounds half to even, MNN half away from zero).
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.flows.calibrate import CalibrationData, run_batch
from lowbit.flows.prepare import quantizer_modules
from lowbit.flows.qat import unwrap
from lowbit.nn.qat import QATCheckpointError, QATError
from lowbit.primitives.granularity import expand_to
from lowbit.primitives.rounding import ROUNDING_MODES, round_tensor
from lowbit.recipes import PRESETS, preset

FORMAT = "lowbit-qat"
VERSION = 1


def _qat_state(model: nn.Module) -> Any:
    state = getattr(unwrap(model), "lowbit_qat", None)
    if state is None:
        raise QATError("this model was not prepared for QAT; call lowbit.prepare_qat(model, "
                       "recipe) first (the checkpoint records its recipe)")
    return state


def save_qat_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any | None = None, *, step: int | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write a resumable QAT checkpoint (atomically: a crash never leaves half a file).

    Args:
        path: destination file.
        model: the QAT model (a DDP or ``torch.compile`` wrapper is unwrapped).
        optimizer, scheduler: saved with their ``state_dict()`` when given.
        step: the training loop's own step count.
        extra: anything else picklable with plain types (epoch, best metric, ...).

    Returns:
        The path written.

    Example:
        >>> save_qat_checkpoint("qat.pt", qat, opt, step=100)  # doctest: +SKIP
    """
    state = _qat_state(model)
    data = {
        "format": FORMAT, "version": VERSION, "recipe": state.recipe.to_dict(),
        "init": state.init, "model": unwrap(model).state_dict(), "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _recipe_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, model {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    return "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


def load_qat_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any | None = None) -> dict[str, Any]:
    """Resume from `save_qat_checkpoint`: model (in place), optimizer and scheduler.

    Args:
        path: the checkpoint file.
        model: a model prepared with the same recipe (``prepare_qat`` without
            ``calibrate`` is enough: the checkpoint holds every parameter).
        optimizer, scheduler: restored when given and saved.

    Returns:
        ``{"step": ..., "extra": {...}, "recipe": {...}}`` from the file.

    Raises:
        QATCheckpointError: not a QAT checkpoint, another recipe, or a state that
            does not fit the model.

    Example:
        >>> info = load_qat_checkpoint("qat.pt", qat, opt)  # doctest: +SKIP
    """
    state = _qat_state(model)
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise QATCheckpointError(f"no checkpoint at {path}") from err
    except Exception as err:  # unreadable or foreign pickles
        raise QATCheckpointError(f"cannot read QAT checkpoint {path} ({type(err).__name__}: "
                                 f"{str(err)[:200]}); pass a file written by "
                                 "save_qat_checkpoint") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise QATCheckpointError(f"{path} is not a lowbit QAT checkpoint; write one with "
                                 "lowbit.flows.qat_tools.save_qat_checkpoint")
    if data.get("version") != VERSION:
        raise QATCheckpointError(f"{path} has QAT checkpoint version {data.get('version')!r}; "
                                 f"this lowbit reads version {VERSION}")
    current = state.recipe.to_dict()
    if data["recipe"] != current or data.get("init") != state.init:
        diff = _recipe_difference({**data["recipe"], "init": data.get("init")},
                                  {**current, "init": state.init})
        raise QATCheckpointError(
            f"{path} was trained with another recipe ({diff}). Prepare the model with the "
            "checkpoint's recipe: Recipe.from_dict(torch.load(path)['recipe'])")
    try:
        unwrap(model).load_state_dict(data["model"])
    except RuntimeError as err:
        raise QATCheckpointError(f"{path} does not fit this model: {str(err)[:400]}. Was it saved "
                                 "from another architecture?") from err
    if optimizer is not None and data.get("optimizer") is not None:
        optimizer.load_state_dict(data["optimizer"])
    if scheduler is not None and data.get("scheduler") is not None:
        scheduler.load_state_dict(data["scheduler"])
    return {"step": data.get("step"), "extra": data.get("extra", {}), "recipe": data["recipe"]}


@dataclass
class RoundingMismatch:
    """`rounding_mismatch`'s result.

    Attributes:
        simulated / backend: the rounding modes compared.
        elements: values quantized in the simulated model (activations and weights).
        codes_differ: how many of them round to another code under ``backend``.
        per_quantizer: ``"layer:role" -> codes_differ`` where any differ.
        max_abs_diff / mean_abs_diff: between the two models' outputs.
        top1_agreement: share of equal arg-max predictions (2-D outputs), else None.
    """

    simulated: str
    backend: str
    elements: int = 0
    codes_differ: int = 0
    per_quantizer: dict[str, int] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    top1_agreement: float | None = None

    @property
    def code_mismatch_rate(self) -> float:
        return self.codes_differ / max(self.elements, 1)


class _TieCounter:
    """Forward hook: how many inputs of a quantizer round differently under ``backend``."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.elements = 0
        self.differ = 0

    @torch.no_grad()
    def __call__(self, quantizer: nn.Module, args: tuple, output: Tensor) -> None:
        x = args[0]
        if quantizer.mode != "quantize" or quantizer.fmt.kind != "int" or x.numel() == 0:
            return
        s = expand_to(quantizer.scale.detach(), x.shape, quantizer.axis, quantizer.block_size)
        z = expand_to(torch.round(quantizer.zero_point.detach().float()), x.shape, quantizer.axis,
                      quantizer.block_size)
        value = x.detach().float() / s
        lo, hi = float(quantizer.fmt.qmin), float(quantizer.fmt.qmax)
        ours = (round_tensor(value, quantizer.spec.rounding) + z).clamp(lo, hi)
        theirs = (round_tensor(value, self.backend) + z).clamp(lo, hi)
        self.elements += x.numel()
        self.differ += int((ours != theirs).sum())


def _backend_rounding(backend: str) -> str:
    if backend in ROUNDING_MODES:
        return backend
    key = backend.strip().lower().replace("_", "-")
    if key in PRESETS:
        spec = preset(key).input or preset(key).weight
        return spec.rounding
    raise QATError(f"unknown backend rounding {backend!r}; use a rounding mode "
                   f"{ROUNDING_MODES} or a preset name {sorted(PRESETS)}")


@torch.no_grad()
def rounding_mismatch(model: nn.Module, data: CalibrationData, backend: str = "half_away", *,
                      max_batches: int | None = 8) -> RoundingMismatch:
    """Compare a (QAT or PTQ) model's simulated outputs with a backend that rounds otherwise.

    Every quantizer of a copy of ``model`` rounds as ``backend`` does; both models
    run on ``data`` in eval mode. Seed 003 §3.4: a mismatch between the training
    framework's rounding and the backend's shows up as an accuracy gap at
    deployment; train with the backend's rounding (the presets set it) instead.

    Args:
        model: the simulated model (left unchanged; it runs in eval mode).
        data: an iterable of batches (a tensor, a tuple of inputs or a dict).
        backend: a rounding mode (``"half_away"``, ``"half_even"``, ...) or a preset
            name whose rounding is taken (``"mnn"`` → ``"half_away"``).
        max_batches: batches to compare.

    Returns:
        A `RoundingMismatch` (code-level and output-level differences).

    Example:
        >>> r = rounding_mismatch(qat, [x], "mnn")  # doctest: +SKIP
        >>> r.codes_differ, r.top1_agreement  # doctest: +SKIP
    """
    target = _backend_rounding(backend)
    simulated = unwrap(model)
    roundings = {q.spec.rounding for _, _, q in quantizer_modules(simulated)}
    result = RoundingMismatch(simulated="/".join(sorted(roundings)) or "none", backend=target)
    other = copy.deepcopy(simulated)
    for _, _, quantizer in quantizer_modules(other):
        quantizer.spec = replace(quantizer.spec, rounding=target)
    counters = {f"{name}:{role}": _TieCounter(target)
                for name, role, _ in quantizer_modules(simulated)}
    handles = [q.register_forward_hook(counters[f"{name}:{role}"])
               for name, role, q in quantizer_modules(simulated)]
    was_training = simulated.training
    simulated.eval()
    other.eval()
    agree = total = 0
    abs_sum, count = 0.0, 0
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            a = run_batch(simulated, batch)
            b = run_batch(other, batch)
            if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                raise QATError("rounding_mismatch compares models that return one tensor")
            diff = (a.float() - b.float()).abs()
            result.max_abs_diff = max(result.max_abs_diff, float(diff.max()) if diff.numel() else 0)
            abs_sum += float(diff.sum())
            count += diff.numel()
            if a.dim() == 2:
                agree += int((a.argmax(1) == b.argmax(1)).sum())
                total += a.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        simulated.train(was_training)
    result.mean_abs_diff = abs_sum / max(count, 1)
    result.top1_agreement = agree / total if total else None
    for key, counter in counters.items():
        result.elements += counter.elements
        result.codes_differ += counter.differ
        if counter.differ:
            result.per_quantizer[key] = counter.differ
    return result

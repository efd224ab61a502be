"""`calibrate`: run the user's data through a prepared model and freeze activation ranges.

Data loading stays the user's: pass a ``forward_loop(model)`` callable, or an
iterable of batches (a tensor, a tuple of positional inputs, or a dict of
keyword inputs). Memory is bounded by the observers (min/max or one
histogram per tensor); activations are never stored. The observers of an
iterable's batch (after the first) run once its forward pass is done
(`lowbit.flows.deferred`): its activations outlive their layer until then, 256 MB
of them at most.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
from torch import nn

from lowbit.errors import CalibrationError, InputError, LowbitError
from lowbit.flows.deferred import Deferral
from lowbit.flows.prepare import LowbitWarning, quantizer_modules

DEFAULT_BATCHES = 100  # seed 001: about 100 mini-batches estimate activation ranges well

CalibrationData = Callable[[nn.Module], Any] | Iterable[Any]


def run_batch(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on one batch: a tensor, a tuple/list of inputs, or a dict of keyword inputs."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _progress(iterable: Iterable, total: int | None, desc: str, show: bool):
    if not show:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety, never a requirement
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


@torch.inference_mode(False)  # see lowbit.flows.api.quantize
def feed(model: nn.Module, data: CalibrationData, *, max_batches: int | None = DEFAULT_BATCHES,
         progress: bool = True, desc: str = "calibrating", deferral: Deferral | None = None) -> int:
    """Run ``data`` through ``model`` without gradients; return how many batches ran.

    ``deferral``: run each batch of an iterable through it (`lowbit.flows.deferred`); a
    ``forward_loop`` callable is run as it is, with every observation at once.

    Raises:
        CalibrationError: the data produced no batch, or a batch failed in the model.
    """
    with torch.no_grad():
        if callable(data) and not isinstance(data, (torch.Tensor, list, tuple, dict)):
            if deferral is not None:
                deferral.stop()
            data(model)
            return -1
        try:
            total = len(data)
        except TypeError:
            total = None
        if max_batches is not None:
            total = min(total, max_batches) if total is not None else max_batches
            data = islice(data, max_batches)
        count = 0
        for batch in _progress(data, total, desc, progress):
            try:
                if deferral is None:
                    run_batch(model, batch)
                else:
                    deferral.run(run_batch, model, batch)
            except LowbitError:
                raise
            except Exception as err:
                raise CalibrationError(
                    f"calibration batch {count} failed in the model: {type(err).__name__}: {err}. "
                    "Pass batches the model accepts (tensor, tuple of inputs, or dict of keyword "
                    "inputs) or a forward_loop(model) callable"
                ) from err
            count += 1
    if count == 0:
        raise CalibrationError(
            "the calibration data yielded no batch; pass a non-empty iterable of batches or a "
            "forward_loop(model) that calls the model"
        )
    return count


def set_mode(model: nn.Module, mode: str, roles: tuple[str, ...] = ("input", "output", "a", "b",
                                                                   "shared")) -> None:
    """Set the mode of every activation quantizer (weights are handled from the weights)."""
    for _, role, quantizer in quantizer_modules(model):
        if role in roles and not (mode == "quantize" and not quantizer.spec.dynamic
                                  and not bool(quantizer.frozen)):
            quantizer.mode = mode


@torch.inference_mode(False)  # see lowbit.flows.api.quantize
def calibrate(model: nn.Module, data: CalibrationData | None, *,
              max_batches: int | None = DEFAULT_BATCHES, progress: bool = True) -> nn.Module:
    """Observe activation ranges on ``data`` and freeze them (in place).

    Args:
        model: a prepared model (see `prepare`).
        data: ``forward_loop(model)`` or an iterable of batches; None when no
            quantizer needs data (weight-only or dynamic recipes).
        max_batches: stop after this many batches (default 100, seed 001).
        progress: show a progress bar.

    Returns:
        ``model``, with every static activation quantizer frozen. Quantizers of
        layers that never ran are switched off (float) with a warning, and
        listed in ``model.lowbit_state.disabled``.

    Raises:
        CalibrationError: static quantizers need data and none was given, or
            the data yielded nothing.
        InputError: an activation held NaN / Inf (the message names the layer).
    """
    static = [(name, role, q) for name, role, q in quantizer_modules(model)
              if role != "weight" and not q.spec.dynamic]
    for _, _, quantizer in static:
        quantizer.mode = "observe"
    if static and data is None:
        raise CalibrationError(
            f"{len(static)} activation quantizers need calibration data (static mode); pass "
            "calibrate=<iterable of batches or forward_loop(model)>, or use a dynamic or "
            "weight-only recipe"
        )
    was_training = model.training
    model.eval()
    try:
        if static:
            with Deferral([q for _, _, q in static]) as deferral:
                feed(model, data, max_batches=max_batches, progress=progress, deferral=deferral)
    except InputError as err:
        raise InputError(f"during calibration: {err}") from err
    finally:
        model.train(was_training)
    state = getattr(model, "lowbit_state", None)
    never_ran = []
    for name, role, quantizer in static:
        if quantizer.observer is not None and not quantizer.observer.has_data:
            quantizer.mode = "off"
            never_ran.append(f"{name}:{role}")
            if state is not None:
                state.disabled[name] = "never ran during calibration"
            continue
        quantizer.freeze()
    if never_ran:
        warnings.warn(
            f"{len(never_ran)} quantizers saw no calibration data and stay float: "
            f"{', '.join(never_ran[:8])}{' ...' if len(never_ran) > 8 else ''}. The calibration "
            "loop does not reach these layers",
            LowbitWarning,
            stacklevel=2,
        )
    set_mode(model, "quantize")
    return model

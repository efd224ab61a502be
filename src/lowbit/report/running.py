"""Running models for a report without changing them: eval mode, no gradients, bounded batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.flows.calibrate import run_batch
from lowbit.report.errors import ReportError


def take_batches(data: Iterable[Any] | None, max_batches: int | None) -> list[Any]:
    """The first ``max_batches`` batches of ``data`` as a list (so several passes see the same ones).

    Args:
        data: an iterable of model inputs: tensors, tuples of positional
            inputs, or dicts of keyword inputs (what ``lowbit.flows.run_batch`` takes).
        max_batches: how many to keep; None keeps all.

    Returns:
        The batches.

    Raises:
        ReportError: ``data`` is None, not iterable, a callable, or empty.

    Example:
        >>> len(take_batches([torch.zeros(1)] * 5, 2))
        2
    """
    if data is None:
        raise ReportError("this part of the report needs data: pass an iterable of input batches")
    if isinstance(data, torch.Tensor):
        raise ReportError(
            "data is a single tensor; pass an iterable of batches, e.g. [x] or list(x.split(32))"
        )
    if callable(data) and not hasattr(data, "__iter__"):
        raise ReportError(
            "the report compares two models batch by batch, so it needs an iterable of input "
            "batches, not a forward_loop callable; pass e.g. [x for x, _ in loader]"
        )
    try:
        batches = list(islice(data, max_batches)) if max_batches is not None else list(data)
    except TypeError as err:
        raise ReportError(f"data must be an iterable of input batches, got {type(data).__name__}") from err
    if not batches:
        raise ReportError("data yielded no batch; pass a non-empty iterable of input batches")
    return batches


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Run ``models`` in eval mode without gradients, then restore every module's training flag.

    Eval mode matters: a forward pass in training mode would update BatchNorm
    running statistics, and a report never changes a model.
    """
    flags = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for pairs in flags:
            for module, training in pairs:
                module.training = training


def call_model(model: nn.Module, batch: Any, which: str) -> Any:
    """``run_batch(model, batch)`` with a message that names the model when it fails."""
    try:
        return run_batch(model, batch)
    except LowbitError:
        raise
    except Exception as err:
        raise ReportError(
            f"the {which} model failed on a report batch: {type(err).__name__}: {err}. Pass batches "
            "the model accepts (a tensor, a tuple of inputs, or a dict of keyword inputs), inputs "
            "only (not (input, label) pairs)"
        ) from err


def check_pair(float_model: nn.Module, qmodel: nn.Module) -> None:
    """Refuse a float model that is the quantized model itself (``quantize(..., inplace=True)``).

    Raises:
        ReportError: the two are the same object, or the float model was quantized.
    """
    if float_model is qmodel or getattr(float_model, "lowbit_state", None) is not None:
        raise ReportError(
            "the float model is itself quantized (was quantize() called with inplace=True?); "
            "keep an untouched copy of the float model (copy.deepcopy before quantizing) and pass that"
        )

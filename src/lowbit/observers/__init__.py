"""Range estimators (observers) and range choice.

Observers are `nn.Module`s whose whole state lives in buffers: they watch
tensors and produce quantization parameters; they never decide what to
quantize and never store activations. Range choice from a histogram
(percentile, TensorRT entropy, MSE) is a set of pure functions in
`range_select`; weights get a direct clipping search in `weight_clip`.

`OBSERVERS` maps the names recipes use to the observer classes.

Example:
    >>> import torch
    >>> from lowbit.observers import OBSERVERS
    >>> obs = OBSERVERS["ema"](momentum=0.9)
    >>> _ = obs(torch.randn(4, 16))
    >>> obs.compute_qparams("int8").scale.shape
    torch.Size([])
"""

from __future__ import annotations

from lowbit.observers.base import Observer
from lowbit.observers.histogram import HistogramObserver
from lowbit.observers.minmax import (
    EMAMinMaxObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
)
from lowbit.observers.range_select import (
    entropy_divergences,
    entropy_threshold,
    mse_range,
    percentile_range,
)
from lowbit.observers.weight_clip import ClipSearchResult, search_clip, search_clip_mse

OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "ema": EMAMinMaxObserver,
    "histogram": HistogramObserver,
}

__all__ = [
    "OBSERVERS",
    "ClipSearchResult",
    "EMAMinMaxObserver",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "entropy_divergences",
    "entropy_threshold",
    "mse_range",
    "percentile_range",
    "search_clip",
    "search_clip_mse",
]

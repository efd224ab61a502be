"""Running exported models: ONNX Runtime sessions, the graph ONNX Runtime runs, timing.

Example:
    >>> from lowbit import runtime
    >>> sess = runtime.session("model.int8.onnx", threads=2)          # doctest: +SKIP
    >>> logits = runtime.run(sess, images)[0]                          # doctest: +SKIP
    >>> runtime.time_session(sess, images, repeats=20).median          # doctest: +SKIP
    >>> runtime.optimized_ops("model.int8.onnx")["QLinearConv"]        # doctest: +SKIP
"""

from __future__ import annotations

from lowbit.runtime.errors import RuntimeLayerError
from lowbit.runtime.session import (
    OPTIMIZATION_LEVELS,
    feeds,
    optimized_graph,
    optimized_ops,
    run,
    session,
    session_options,
)
from lowbit.runtime.timing import Timing, compare, time_fn, time_session

__all__ = [
    "OPTIMIZATION_LEVELS",
    "RuntimeLayerError",
    "Timing",
    "compare",
    "feeds",
    "optimized_graph",
    "optimized_ops",
    "run",
    "session",
    "session_options",
    "time_fn",
    "time_session",
]

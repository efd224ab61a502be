"""Timing helpers: median of N runs after warm-up, and interleaved comparisons.

On a shared, noisy machine a single sequence of runs per candidate confounds
the candidates with load changes; `compare` runs the candidates round-robin
(one run of each per round) so that every candidate sees the same load, and
reports each one's median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lowbit.runtime.errors import RuntimeLayerError
from lowbit.runtime.session import feeds


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of one candidate, in seconds.

    Attributes:
        median: median of ``times``.
        times: every timed run (warm-up runs excluded).
        warmup: warm-up runs done before timing.
    """

    median: float
    times: tuple[float, ...] = field(repr=False)
    warmup: int = 0

    @property
    def minimum(self) -> float:
        return min(self.times)

    @property
    def repeats(self) -> int:
        return len(self.times)

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median * 1e3, "min_ms": self.minimum * 1e3,
                "repeats": self.repeats, "warmup": self.warmup}


def _check(repeats: int, warmup: int) -> None:
    if not isinstance(repeats, int) or repeats < 1:
        raise RuntimeLayerError(f"repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise RuntimeLayerError(f"warmup must be a non-negative integer, got {warmup!r}")


def time_fn(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones.

    Example:
        >>> time_fn(lambda: sum(range(1000)), repeats=5, warmup=1).repeats
        5
    """
    _check(repeats, warmup)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), tuple(times), warmup)


def time_session(sess: Any, inputs: Any, *, repeats: int = 20, warmup: int = 3) -> Timing:
    """Median latency of one ONNX Runtime session on ``inputs`` (converted once, up front).

    Example:
        >>> time_session(session("m.onnx", threads=2), x).median  # doctest: +SKIP
    """
    fed = feeds(sess, inputs)
    return time_fn(lambda: sess.run(None, fed), repeats=repeats, warmup=warmup)


def compare(candidates: Mapping[str, Callable[[], object]], *, repeats: int = 20,
            warmup: int = 3, progress: bool = False) -> dict[str, Timing]:
    """Time several candidates round-robin, so that they share the machine's load.

    Args:
        candidates: name → zero-argument callable.
        repeats: timed rounds (each runs every candidate once).
        warmup: untimed rounds first.
        progress: show a progress bar over the rounds (tqdm, when installed).

    Returns:
        name → `Timing`.

    Example:
        >>> t = compare({"a": lambda: sum(range(100)), "b": lambda: sum(range(10))}, repeats=3)
        >>> sorted(t)
        ['a', 'b']
    """
    _check(repeats, warmup)
    if not candidates:
        raise RuntimeLayerError("compare needs at least one candidate")
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in _rounds(repeats, progress):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(t), tuple(t), warmup) for name, t in times.items()}


def _rounds(repeats: int, progress: bool):
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # progress is a nicety
            return range(repeats)
        return tqdm(range(repeats), desc="timing", unit="round", leave=False)
    return range(repeats)

"""Timing helpers: median of N runs after warm-up, and interleaved comparisons.

On a shared, noisy machine a single sequence of runs per candidate confounds
the candidates with load changes; `compare` runs the candidates round-robin
(one run of each per round) so that every candidate sees the same load, and
reports each one's median. Runtimes leave their worker threads spinning for a
while after a call (OpenMP in PyTorch, ONNX Runtime's pool), which taxes
whichever candidate runs next: ``shuffle`` varies the order per round, so no
candidate always follows the same one. ``settle`` pauses before each timed run
instead; it measures cold starts (a sleeping pool must wake), which tax some
runtimes more than others.
"""

from __future__ import annotations

import random
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

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartile of ``times`` (the spread around the median)."""
        if len(self.times) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.times, n=4)
        return q[0], q[2]

    def to_dict(self) -> dict[str, Any]:
        q1, q3 = self.quartiles
        return {"median_ms": self.median * 1e3, "min_ms": self.minimum * 1e3, "q1_ms": q1 * 1e3,
                "q3_ms": q3 * 1e3, "repeats": self.repeats, "warmup": self.warmup}


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
            warmup: int = 3, progress: bool = False, settle: float = 0.0,
            shuffle: bool = False) -> dict[str, Timing]:
    """Time several candidates round-robin, so that they share the machine's load.

    Args:
        candidates: name → zero-argument callable.
        repeats: timed rounds (each runs every candidate once).
        warmup: untimed rounds first.
        progress: show a progress bar over the rounds (tqdm, when installed).
        settle: seconds to pause before each timed run, so that the threads the
            previous candidate left spinning have gone to sleep (a few ms do).
        shuffle: run the candidates in a new (seeded) order every round.

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
    if not isinstance(settle, (int, float)) or settle < 0:
        raise RuntimeLayerError(f"settle must be a non-negative number of seconds, got {settle!r}")
    times: dict[str, list[float]] = {name: [] for name in candidates}
    order, rng = list(candidates), random.Random(0)
    for _ in _rounds(repeats, progress):
        if shuffle:
            rng.shuffle(order)
        for name in order:
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            candidates[name]()
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

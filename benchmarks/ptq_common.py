"""Shared pieces of the post-training quantization benchmark (`benchmarks/ptq.py`).

Each model family lives in its own module (``ptq_minilm``, ``ptq_mobilenet``,
``ptq_fashion``, ``ptq_smollm2``, ``ptq_calibration``) with one entry point,
``run(cfg) -> Section``. A `Section` holds the family's tables (rendered to
Markdown by ``ptq.py``) and its raw numbers (written to JSON).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
_START = time.perf_counter()


def log(message: str) -> None:
    """Progress on stdout, stamped with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


@dataclass
class Config:
    """What the command line asked for."""

    quick: bool = False
    threads: int = 2
    presets: bool = False  # also run the slow presets (SmolLM2 w4-g128 with clipping search)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lowbit-ptq-")))
    # results one family computes and another reuses in the same run (exported ONNX files,
    # ORT's entropy calibration, which is both a fidelity row and a cost measurement)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class Table:
    """One Markdown table: a title, headers, rows and notes under it."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    """The results of one model family."""

    name: str
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    text: list[str] = field(default_factory=list)  # free Markdown paragraphs after the tables

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def quiet():
    """Silence the warnings lowbit and transformers print for expected situations.

    lowbit's own notes (e.g. "model does not trace with torch.fx") are read from
    ``model.lowbit_state`` and put into the table notes instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def r4(x: float) -> float:
    return float(f"{x:.4f}") if math.isfinite(x) else x


def cos_stats(reference: torch.Tensor, embeddings: torch.Tensor) -> tuple[float, float]:
    """Mean and minimum cosine similarity of matching rows (rows are L2-normalised already)."""
    ref = torch.nn.functional.normalize(reference.double(), dim=1)
    emb = torch.nn.functional.normalize(embeddings.double(), dim=1)
    cos = (ref * emb).sum(1)
    return float(cos.mean()), float(cos.min())


def mb(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 2)


def vm_hwm_bytes() -> int:
    """This process's peak resident set size (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_measured(script: str, args: dict[str, Any], timeout: float = 1800,
                 unset: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``python benchmarks/<script> --child <json>`` in a fresh process; return its JSON.

    A fresh process gives an honest peak RSS (VmHWM is a high-water mark, so it
    can only be measured once per process). The child prints one JSON line last.
    ``unset``: environment variables the child runs without.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name in unset:
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--child", json.dumps(args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} --child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def recipe_text(recipe) -> str:
    """A one-line description of a lowbit recipe for table notes."""
    parts = [f"{recipe.name} ({recipe.mode})"]
    for role in ("weight", "input"):
        spec = getattr(recipe, role)
        if spec is not None:
            parts.append(f"{role}: {spec}")
    if recipe.rules:
        parts.append("rules: " + "; ".join(str(r) for r in recipe.rules))
    if recipe.bias_correction:
        parts.append("bias correction")
    return ", ".join(parts)

"""Throughput of lowbit's primitives and observers against PyTorch, side by side in one run.

    python benchmarks/primitives.py [--elements 67108864] [--repeats 7]

Writes benchmarks/results/primitives.{json,md}. Bandwidth counts the bytes an
operation must read and write; "x copy" is each time over a plain float32
memory copy of the same tensor (the physical limit, 1.0 = as fast as a copy) that
allocates (clone) or not (copy_) as the operation does. Where lowbit has a fused
numba kernel (``pip install lowbit[fast]``), the torch path that runs without
numba is measured too.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from torch.ao.quantization import HistogramObserver as TorchHistogramObserver

from common import interleaved_times, machine, markdown_table, median_time, write_results
from lowbit.observers import HistogramObserver, entropy_threshold, percentile_range, shared_input
from lowbit.primitives import dequantize, fake_quantize, kernels, quantize

warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")

FUSED = "lowbit (numba kernel)" if kernels.AVAILABLE else "lowbit (numba not installed)"
TORCH_PATH = "lowbit (torch path)"


def torch_path(fn):
    """``fn`` with lowbit's numba kernels switched off: what users without numba get."""

    def run():
        saved, kernels.AVAILABLE = kernels.AVAILABLE, False
        try:
            return fn()
        finally:
            kernels.AVAILABLE = saved

    return run


def elementwise(n: int, repeats: int) -> list[dict]:
    """Each op twice where it matters: allocating its result (compared with ``clone``) and
    writing into a preallocated one (compared with ``copy_``): fresh memory costs page faults
    that dwarf the arithmetic, so each variant is held against the copy that pays the same."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    out_f32 = torch.empty_like(x)
    out_u8 = torch.empty(n, dtype=torch.uint8)
    scale, zp = 0.05, 3
    codes = quantize(x, scale, zp, "uint8")
    torch_q = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
    group_scale = torch.full((n // 4096, 32), 0.3)
    f32, u8 = 4 * n, n
    cases = [
        ("memory copy, preallocated (copy_)", "torch", lambda: out_f32.copy_(x), f32 + f32, "copy"),
        ("memory copy, allocating (clone)", "torch", lambda: x.clone(), f32 + f32, "clone"),
        ("quantize uint8, preallocated", FUSED, lambda: quantize(x, scale, zp, "uint8", out=out_u8),
         f32 + u8, "copy"),
        ("quantize uint8, preallocated", TORCH_PATH,
         torch_path(lambda: quantize(x, scale, zp, "uint8", out=out_u8)), f32 + u8, "copy"),
        ("quantize uint8, allocating", FUSED, lambda: quantize(x, scale, zp, "uint8"), f32 + u8, "clone"),
        ("quantize uint8, allocating", "torch.quantize_per_tensor",
         lambda: torch.quantize_per_tensor(x, scale, zp, torch.quint8), f32 + u8, "clone"),
        ("dequantize uint8, preallocated", "lowbit",
         lambda: dequantize(codes, scale, zp, "uint8", out=out_f32), u8 + f32, "copy"),
        ("dequantize uint8, allocating", "lowbit", lambda: dequantize(codes, scale, zp, "uint8"),
         u8 + f32, "clone"),
        ("dequantize uint8, allocating", "torch Tensor.dequantize", lambda: torch_q.dequantize(),
         u8 + f32, "clone"),
        ("fake_quantize uint8, allocating", FUSED, lambda: fake_quantize(x, scale, zp, "uint8"),
         f32 + f32, "clone"),
        ("fake_quantize uint8, allocating", TORCH_PATH,
         torch_path(lambda: fake_quantize(x, scale, zp, "uint8")), f32 + f32, "clone"),
        ("fake_quantize uint8, allocating", "torch.fake_quantize_per_tensor_affine",
         lambda: torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255), f32 + f32, "clone"),
        ("quantize fp8_e4m3fn, allocating", "lowbit", lambda: quantize(x, 0.01, None, "fp8_e4m3fn"),
         f32 + u8, "clone"),
        ("quantize int4 group 128, allocating", FUSED,
         lambda: quantize(x.view(-1, 4096), group_scale, None, "int4", axis=1, block_size=128),
         f32 + u8, "clone"),
        ("quantize int4 group 128, allocating", TORCH_PATH,
         torch_path(lambda: quantize(x.view(-1, 4096), group_scale, None, "int4", axis=1, block_size=128)),
         f32 + u8, "clone"),
    ]
    # All cases in the same shuffled rounds, so that each ratio to a copy compares times
    # taken side by side (a copy timed alone once ran 60 % slow on this shared machine).
    times = interleaved_times({i: case[2] for i, case in enumerate(cases)}, repeats)
    rows = []
    for i, (op, impl, _, nbytes, baseline) in enumerate(cases):
        seconds = times[i]["median"]
        rows.append({"op": op, "impl": impl, "seconds": seconds, "GB/s": nbytes / seconds / 1e9,
                     "baseline": baseline})
    base = {"copy": rows[0]["seconds"], "clone": rows[1]["seconds"]}
    for row in rows:
        row["x copy"] = row["seconds"] / base[row.pop("baseline")]
    return rows


def histogram(n: int, rounds: int) -> list[dict]:
    """Steady updates (range already covers the data) and a calibration stream whose range
    grows, each implementation timed in the same shuffled rounds (`interleaved_times`)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, generator=gen)
    stream = [torch.randn(n // 4, generator=gen) * (1 + i / 4) for i in range(16)]
    impls = {FUSED: (lambda: HistogramObserver(bins=2048), lambda fn: fn),
             TORCH_PATH: (lambda: HistogramObserver(bins=2048), torch_path),
             "torch.ao HistogramObserver": (lambda: TorchHistogramObserver(bins=2048), lambda fn: fn)}
    steady, growing = {}, {}
    for impl, (make, wrap) in impls.items():
        observer = make()
        observer(x * 2)
        steady[impl] = wrap(lambda obs=observer: obs(x))

        def calibrate(make=make):
            obs = make()
            for batch in stream:
                obs(batch)

        growing[impl] = wrap(calibrate)
    ops = ((f"histogram update, steady range ({n:,} elements)", steady, rounds, 4 * n),
           (f"calibration stream, growing range (16 x {n // 4:,})", growing, max(3, rounds // 3), 4 * n * 4))
    rows = []
    # The two lowbit candidates see the same tensors in the same states: lowbit's observers
    # would copy each other's result (observers.shared_input). Off here, for this comparison.
    saved, shared_input.MIN_ELEMENTS = shared_input.MIN_ELEMENTS, 2**62
    try:
        timed = [(op, interleaved_times(candidates, op_rounds), nbytes)
                 for op, candidates, op_rounds, nbytes in ops]
    finally:
        shared_input.MIN_ELEMENTS = saved
    for op, times, nbytes in timed:
        theirs = times["torch.ao HistogramObserver"]["median"]
        for impl, t in times.items():
            rows.append({"op": op, "impl": impl, "seconds": t["median"], "q1": t["q1"], "q3": t["q3"],
                         "GB/s": nbytes / t["median"] / 1e9, "torch.ao / this": theirs / t["median"]})
    return rows


def range_choice(repeats: int) -> list[dict]:
    rng = np.random.default_rng(2)
    data = torch.from_numpy(np.abs(rng.laplace(size=1_000_000)).astype(np.float32))
    counts = torch.histc(data, bins=2048, min=0, max=float(data.max()))
    edges = torch.linspace(0, float(data.max()), 2049)
    rows = []
    for op, fn in (("entropy threshold (2048 bins, 128 levels)",
                    lambda: entropy_threshold(counts, edges)),
                   ("percentile 99.99", lambda: percentile_range(counts, edges, 99.99))):
        seconds = median_time(fn, repeats)
        rows.append({"op": op, "impl": "lowbit", "seconds": seconds, "ms": seconds * 1e3})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--histogram-elements", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--histogram-rounds", type=int, default=31,
                        help="shuffled rounds of histogram updates (the stream gets a third)")
    args = parser.parse_args()

    rows = elementwise(args.elements, args.repeats)
    hist = histogram(args.histogram_elements, args.histogram_rounds)
    ranges = range_choice(args.repeats)
    payload = {"machine": machine(), "elements": args.elements, "elementwise": rows,
               "histogram": hist, "range_choice": ranges}
    md = [f"# Primitives throughput ({args.elements:,} float32 elements, "
          f"{payload['machine']['threads']} threads, medians of {args.repeats} shuffled rounds)\n"]
    md.append(markdown_table(["op", "impl", "seconds", "GB/s", "x copy"],
                             [[r["op"], r["impl"], r["seconds"], r["GB/s"], r["x copy"]] for r in rows]))
    md.append(f"\n## Histogram observer (medians and quartiles of {args.histogram_rounds} shuffled rounds)\n")
    md.append(markdown_table(["op", "impl", "seconds", "q1", "q3", "GB/s", "torch.ao / this"],
                             [[r["op"], r["impl"], r["seconds"], r["q1"], r["q3"], r["GB/s"],
                               r["torch.ao / this"]] for r in hist]))
    ratio = {(r["op"].split(",")[0], r["impl"]): r["torch.ao / this"] for r in hist}
    steady, stream = "histogram update", "calibration stream"
    md.append(f"\n{FUSED} vs torch.ao: {ratio[steady, FUSED]:.1f}x faster on steady updates, "
              f"{ratio[stream, FUSED]:.1f}x on a calibration stream whose range grows "
              f"({TORCH_PATH}: {ratio[steady, TORCH_PATH]:.1f}x and {ratio[stream, TORCH_PATH]:.1f}x).\n")
    md.append("\n## Range choice from a histogram\n")
    md.append(markdown_table(["op", "ms"], [[r["op"], r["ms"]] for r in ranges]))
    json_path, md_path = write_results("primitives", payload, "".join(md))
    print("".join(md))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()

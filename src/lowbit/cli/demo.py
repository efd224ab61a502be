"""`lowbit demo` / `make demo`: the main job on a built-in default, no download needed.

Trains (once, cached) a small CNN on scikit-learn's bundled handwritten digits,
quantizes it with several recipes — int8 static, int8 dynamic, int4
weight-only, W4A8, W4A4, and automatic mixed precision on top of W4A4 — prints
accuracy, size and error side by side, and writes an HTML report.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.flows.prepare import LowbitWarning
from lowbit.recipes import QuantSpec, preset
from lowbit.report import compare
from lowbit.zoo.digits import load_digits_split, train_digits_cnn
from lowbit.zoo.training import evaluate_accuracy

CALIBRATION_BATCHES = 16
BATCH_SIZE = 32
MAX_ACCURACY_DROP = 0.0  # the mixed-precision budget: no accuracy lost at all


def _table(rows: list[dict]) -> str:
    headers = ["recipe", "accuracy", "vs FP32", "size", "smaller", "output SQNR", "worst layer"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['accuracy']:.2%} | {r['delta'] * 100:+.2f} pt | "
            f"{r['size'] / 1024:.1f} KiB | {r['ratio']:.2f}x | {r['sqnr']} | {r['worst']} |"
        )
    return "\n".join(lines)


def run_demo(output: Path, *, progress: bool = True) -> list[dict]:
    """Run the demo, print the comparison table, write ``output/report.html``; return the rows."""
    torch.manual_seed(0)
    print("training the digits CNN (cached after the first run) ...")
    model = train_digits_cnn()
    split = load_digits_split()
    calib = list(split.train_images[: CALIBRATION_BATCHES * BATCH_SIZE].split(BATCH_SIZE))

    def accuracy(m: nn.Module) -> float:
        return evaluate_accuracy(m, split.test_images, split.test_labels)

    w4a8 = preset("x86").with_(name="w4a8", description="int4 per-channel weights, uint8 activations",
                               weight=QuantSpec("int4", "channel"))
    w4a4 = w4a8.with_(name="w4a4", description="int4 per-channel weights, uint4 activations",
                      input=QuantSpec("uint4", symmetric=False, observer="histogram", method="mse"))
    recipes = [("int8 static (x86)", preset("x86")), ("int8 dynamic", preset("w8a8-dynamic")),
               ("int4 weight-only g32", preset("w4-g32")), ("W4A8 static", w4a8),
               ("W4A4 static", w4a4)]
    reports = []
    for label, recipe in recipes:
        print(f"quantizing: {label}")
        qmodel = lowbit.quantize(model, recipe, calibrate=calib, progress=progress)
        reports.append((label, compare(model, qmodel, accuracy, calib)))

    print(f"mixed precision: W4A4, keeping layers in FP16 until accuracy drops by at most "
          f"{MAX_ACCURACY_DROP:.1%} ...")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowbitWarning)
        mixed = lowbit.auto_mixed_precision(model, w4a4, calib, eval_fn=accuracy,
                                            max_drop=MAX_ACCURACY_DROP, fallback="fp16",
                                            progress=progress)
    label = f"mixed W4A4 + FP16 layers {', '.join(mixed.promoted) or '(none)'}"
    reports.append((label, compare(model, mixed.model, accuracy, calib)))

    fp32_accuracy = accuracy(model)
    rows = [{"recipe": "FP32", "accuracy": fp32_accuracy, "delta": 0.0,
             "size": reports[0][1].size_before, "ratio": 1.0, "sqnr": "—", "worst": "—"}]
    for label, report in reports:
        after = report.metrics["accuracy"][1]
        worst = report.comparison_row().get("worst layer") or "—"
        sqnr = report.fidelity.sqnr_db if report.fidelity is not None else float("nan")
        rows.append({"recipe": label, "accuracy": after, "delta": after - fp32_accuracy,
                     "size": report.size_after, "ratio": report.ratio, "sqnr": f"{sqnr:.1f} dB",
                     "worst": worst})
    print()
    print(_table(rows))
    output.mkdir(parents=True, exist_ok=True)
    main_report = reports[0][1]
    html = main_report.write_html(output / "report.html",
                                  compare_with=[r for _, r in reports[1:]],
                                  title="lowbit demo: digits CNN, recipes side by side")
    (output / "report.md").write_text(main_report.to_markdown() + "\n## All recipes\n\n"
                                      + _table(rows) + "\n\n" + mixed.to_markdown())
    print(f"\nwrote {html} (open it in a browser) and {output / 'report.md'}")
    return rows

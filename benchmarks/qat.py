"""Quantization-aware training evidence: FP32 vs PTQ vs QAT on FashionMNIST (FashionCNN, MobileNetV2).

For FashionCNN (lowbit.zoo, trained for 3 epochs) at W8A8, W4A8, W4A4, W3A3 and W2A8:

- accuracy of the float model, of post-training quantization (``lowbit.quantize``)
  and of QAT (``lowbit.prepare_qat`` with LSQ weights / LSQ+ activations
  initialised from PTQ calibration, then ``lowbit.convert``), plus a control:
  the float model fine-tuned with the same budget (extra training alone);
- accuracy-vs-step curves (PNG next to the JSON);
- LSQ (paper initialisation) vs fixed-scale fake quantization (STE, min-max /
  EMA ranges) vs PTQ-initialised LSQ at W4A4, same budget;
- simulation vs deployment: the converted model's predictions vs the QAT model's,
  and the exported ONNX QDQ model's in ONNX Runtime;
- cost: a QAT training step vs an FP32 step, same batch, same run (medians);
- rounding: the W8A8 QAT model (half-to-even) against a half-away backend (MNN).

MobileNetV2 (the ImageNet checkpoint fine-tuned on FashionMNIST at 64x64) runs
with ``--mobilenet``; by default only its step times are measured, to show why
the default run skips it on a 2-core CPU.

Usage: ``python benchmarks/qat.py`` (about 10-15 minutes on 2 shared cores);
``--steps 1500`` for longer QAT runs, ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lowbit
from common import RESULTS, machine, markdown_table, write_results
from lowbit.flows.qat import qat_param_groups, qat_status
from lowbit.flows.qat_tools import rounding_mismatch
from lowbit.recipes import QuantSpec, Recipe
from lowbit.zoo.fashion_mnist import load_fashion_mnist, train_fashion_cnn
from lowbit.zoo.training import evaluate_accuracy, predict

CONFIGS = {  # name: (weight format, activation format)
    "W8A8": ("int8", "uint8"),
    "W4A8": ("int4", "uint8"),
    "W4A4": ("int4", "uint4"),
    "W3A3": ("int3", "uint3"),
    "W2A8": ("int2", "uint8"),
}


def recipe_for(config: str, learn: str = "lsq") -> Recipe:
    """x86-style recipe (per-channel symmetric weights, asymmetric per-tensor MSE activations)."""
    w, a = CONFIGS[config]
    act_learn = "lsq+" if learn == "lsq" else "none"
    return Recipe(
        name=f"{config}-{learn}", backend="x86",
        weight=QuantSpec(w, "channel", learn=learn),
        input=QuantSpec(a, symmetric=False, observer="histogram", method="mse", learn=act_learn),
    )


class Data:
    def __init__(self, args: argparse.Namespace) -> None:
        self.train_x, self.train_y = load_fashion_mnist("train")
        self.test_x, self.test_y = load_fashion_mnist("test")
        if args.test_subset:
            self.test_x, self.test_y = self.test_x[:args.test_subset], self.test_y[:args.test_subset]
        self.curve_x, self.curve_y = self.test_x[:args.curve_subset], self.test_y[:args.curve_subset]
        gen = torch.Generator().manual_seed(7)
        pick = torch.randperm(self.train_x.shape[0], generator=gen)[: args.batch * args.calib_batches]
        self.calib = [self.train_x[pick[i:i + args.batch]] for i in range(0, len(pick), args.batch)]


def train(model: nn.Module, data: Data, args: argparse.Namespace, *, steps: int,
          transform=None, seed: int = 0) -> list[tuple[int, float]]:
    """AdamW + cosine decay; returns the accuracy curve on the curve subset."""
    groups = qat_param_groups(model, weight_decay=1e-4, quantizer_lr=args.scale_lr) \
        if hasattr(model, "lowbit_qat") else [{"params": list(model.parameters()), "weight_decay": 1e-4}]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = data.train_x, data.train_y
    # A QAT model without calibration has no activation scales before its first step.
    ready = not hasattr(model, "lowbit_qat") or not qat_status(model)["uninitialised"]
    curve = [(0, _accuracy(model, data.curve_x, data.curve_y, transform))] if ready else []
    order = torch.randperm(x_all.shape[0], generator=gen)
    cursor = 0
    model.train()
    for step in range(1, steps + 1):
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(x_all.shape[0], generator=gen), 0
        idx = order[cursor:cursor + args.batch]
        cursor += args.batch
        x = x_all[idx] if transform is None else transform(x_all[idx])
        loss = nn.functional.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == steps:
            curve.append((step, _accuracy(model, data.curve_x, data.curve_y, transform)))
    return curve


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, transform=None) -> float:
    if transform is None:
        return 100 * evaluate_accuracy(model, x, y, batch_size=500)
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(transform(x[i:i + 250])).argmax(1) for i in range(0, len(x), 250)])
    model.train(was)
    return 100 * float((pred == y).double().mean())


def run_qat(fp32: nn.Module, recipe: Recipe, data: Data, args: argparse.Namespace, *,
            calibrate: bool = True, init: str = "ptq") -> dict[str, Any]:
    start = time.perf_counter()
    qat = lowbit.prepare_qat(fp32, recipe, calibrate=data.calib if calibrate else None,
                             init=init, freeze_bn_after=args.steps // 2)
    curve = train(qat, data, args, steps=args.steps)
    seconds = time.perf_counter() - start
    sim_pred = predict(qat, data.test_x, batch_size=500)
    with torch.no_grad():
        sim_logits = qat.eval()(data.test_x[:1000])
    mismatch = rounding_mismatch(qat, [data.test_x[i:i + 500] for i in range(0, 2000, 500)],
                                 "half_away") if recipe.name.startswith("W8A8-lsq") else None
    deployed = lowbit.convert(copy.deepcopy(qat))
    dep_pred = predict(deployed, data.test_x, batch_size=500)
    ort_pred, ort_note = onnx_predictions(deployed, data.test_x)
    with torch.no_grad():
        dep_logits = deployed(data.test_x[:1000])
    acc = 100 * float((dep_pred == data.test_y).double().mean())
    return {
        "recipe": recipe.name, "init": init if calibrate or init == "lsq" else "first batch",
        "accuracy": acc, "qat_model_accuracy": 100 * float((sim_pred == data.test_y).double().mean()),
        "curve": curve, "seconds": seconds, "model": qat,
        "agreement": 100 * float((sim_pred == dep_pred).double().mean()),
        "onnxruntime_agreement": None if ort_pred is None else
        100 * float((sim_pred == ort_pred).double().mean()),
        "onnxruntime_note": ort_note,
        "logits_bit_identical": bool(torch.equal(sim_logits, dep_logits)),
        "rounding": None if mismatch is None else {
            "codes_differ": mismatch.codes_differ, "elements": mismatch.elements,
            "rate": mismatch.code_mismatch_rate, "top1_agreement": 100 * mismatch.top1_agreement,
            "max_abs_logit_diff": mismatch.max_abs_diff},
    }


def onnx_predictions(model: nn.Module, x: Tensor) -> tuple[Tensor | None, str]:
    """Arg-max predictions of the exported QDQ model in ONNX Runtime (None and why, if it cannot)."""
    try:
        import onnxruntime as ort

        from lowbit.export import onnx as export_onnx
    except ImportError as err:
        return None, f"onnxruntime missing ({err})"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qat.onnx"
        try:
            export_onnx(model, x[:2], path)
            session = ort.InferenceSession(str(path))
        except Exception as err:  # formats ONNX / ORT do not run (int3, int2): say so
            return None, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        name = session.get_inputs()[0].name
        outs = [session.run(None, {name: x[i:i + 500].numpy()})[0] for i in range(0, len(x), 500)]
    return torch.from_numpy(np.concatenate(outs)).argmax(1), "ok"


def step_times(fp32: nn.Module, qats: dict[str, nn.Module], data: Data, args) -> dict[str, Any]:
    """Median seconds of one training step, FP32 and QAT interleaved, same batch."""
    x, y = data.train_x[: args.batch], data.train_y[: args.batch]
    models = {"FP32": copy.deepcopy(fp32).train(), **{k: copy.deepcopy(m).train()
                                                      for k, m in qats.items()}}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for rep in range(args.timing_repeats + 2):
        for name, model in models.items():
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if rep >= 2:  # warm-up
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["FP32"])
    return {k: {"median_s": statistics.median(v), "ratio": statistics.median(v) / base}
            for k, v in times.items()}


def to_rgb64(size: int):
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)

    def transform(x: Tensor) -> Tensor:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x.expand(-1, 3, -1, -1) - mean) / std
    return transform


def mobilenet(data: Data, args: argparse.Namespace) -> dict[str, Any]:
    from lowbit.zoo.mobilenet_v2 import load_mobilenet_v2

    transform = to_rgb64(args.mobilenet_size)
    model = load_mobilenet_v2()
    model.classifier[1] = nn.Linear(1280, 10)
    x, y = transform(data.train_x[:64]), data.train_y[:64]
    qat = lowbit.prepare_qat(copy.deepcopy(model), recipe_for("W8A8"), calibrate=[x])
    timings = {}
    for name, m in (("FP32", model), ("QAT W8A8", qat)):
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        per = []
        for _ in range(2):
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            per.append(time.perf_counter() - start)
        timings[name] = min(per)
    total = 2 * args.mobilenet_steps * timings["FP32"] + 3 * args.mobilenet_steps * timings["QAT W8A8"]
    result: dict[str, Any] = {"step_seconds_batch64": timings, "estimated_seconds": total,
                              "ran": bool(args.mobilenet)}
    if not args.mobilenet:
        return result
    mb_args = copy.copy(args)
    mb_args.steps, mb_args.batch, mb_args.lr = args.mobilenet_steps, 64, 1e-3
    model = load_mobilenet_v2()
    model.classifier[1] = nn.Linear(1280, 10)
    train(model, data, mb_args, steps=args.mobilenet_steps, transform=transform)
    model.eval()
    calib = [transform(b[:64]) for b in data.calib[:4]]
    rows = {"FP32": _accuracy(model, data.curve_x, data.curve_y, transform)}
    mb_args.lr = 1e-4
    qat_steps = args.mobilenet_qat_steps or args.mobilenet_steps
    control = copy.deepcopy(model)  # the QAT budget spent on float training: extra training alone
    train(control, data, mb_args, steps=qat_steps, transform=transform)
    rows["FP32 + QAT budget"] = _accuracy(control, data.curve_x, data.curve_y, transform)
    for config in args.mobilenet_configs.split(","):
        ptq = lowbit.quantize(model, recipe_for(config), calibrate=calib, progress=False)
        qat = lowbit.prepare_qat(model, recipe_for(config), calibrate=calib,
                                 freeze_bn_after=qat_steps // 2)
        train(qat, data, mb_args, steps=qat_steps, transform=transform)
        rows[f"{config} PTQ"] = _accuracy(ptq, data.curve_x, data.curve_y, transform)
        rows[f"{config} QAT"] = _accuracy(lowbit.convert(qat), data.curve_x, data.curve_y, transform)
    result["accuracy"] = rows
    return result


def plot(curves: dict[str, list[tuple[int, float]]], fp32: float, path) -> None:
    """Accuracy vs step: every run (left) and a zoom around the FP32 accuracy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, zoom in zip(axes, (False, True), strict=True):
        for name, curve in curves.items():
            steps, acc = zip(*curve, strict=True)
            ax.plot(steps, acc, marker=".", label=name)
        ax.axhline(fp32, color="black", linestyle="--", linewidth=1, label="FP32 (no fine-tuning)")
        ax.set_xlabel("QAT step")
        ax.set_ylabel("top-1 accuracy on the curve subset (%)")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_ylim(fp32 - 4, min(fp32 + 1.5, 100))
            ax.set_title("zoom: within 4 points of FP32")
        else:
            ax.set_title("FashionCNN on FashionMNIST: QAT accuracy vs step")
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fashion_cnn(data: Data, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The FashionCNN evidence: accuracy table, variants, curves, cost, rounding."""
    fp32 = train_fashion_cnn()
    fp32_acc = _accuracy(fp32, data.test_x, data.test_y)
    tuned = copy.deepcopy(fp32)
    train(tuned, data, args, steps=args.steps)
    tuned_acc = _accuracy(tuned, data.test_x, data.test_y)

    configs = [c for c in CONFIGS if not (args.no_low and c in ("W3A3", "W2A8"))]
    rows, runs, curves = [], {}, {}
    for config in configs:
        ptq = lowbit.quantize(fp32, recipe_for(config), calibrate=data.calib, progress=False)
        ptq_acc = _accuracy(ptq, data.test_x, data.test_y)
        run = run_qat(fp32, recipe_for(config), data, args)
        runs[config] = run
        curves[f"{config} QAT (LSQ, PTQ init)"] = run["curve"]
        rows.append({"config": config, "fp32": fp32_acc, "fp32_finetuned": tuned_acc, "ptq": ptq_acc,
                     "qat": run["accuracy"], "qat_minus_fp32": run["accuracy"] - fp32_acc,
                     "agreement": run["agreement"], "bit_identical": run["logits_bit_identical"],
                     "ort_agreement": run["onnxruntime_agreement"], "ort_note": run["onnxruntime_note"],
                     "qat_seconds": run["seconds"]})
    variants = {
        "LSQ, PTQ init": runs["W4A4"],
        "LSQ, LSQ init (no calibration)": run_qat(fp32, recipe_for("W4A4"), data, args,
                                                  calibrate=False, init="lsq"),
        "fixed scale (STE, min-max / EMA), PTQ init": run_qat(fp32, recipe_for("W4A4", "none"),
                                                              data, args),
    }
    for name, run in list(variants.items())[1:]:
        curves[f"W4A4 {name}"] = run["curve"]
    timing = step_times(fp32, {"QAT W8A8": runs["W8A8"]["model"], "QAT W4A4": runs["W4A4"]["model"]},
                        data, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(curves, _accuracy(fp32, data.curve_x, data.curve_y), RESULTS / "qat_curves.png")
    payload = {
        "fp32_accuracy": fp32_acc, "fp32_finetuned_accuracy": tuned_acc, "rows": rows,
        "variants_w4a4": {k: {"accuracy": v["accuracy"], "curve": v["curve"], "init": v["init"]}
                          for k, v in variants.items()},
        "curves": curves, "step_times": timing, "rounding_w8a8": runs["W8A8"]["rounding"],
    }
    md = [f"# QAT on FashionMNIST ({args.steps} QAT steps of batch {args.batch}, "
          f"{args.threads} thread(s), {len(data.test_y)} test images)\n\n",
          "FP32 = lowbit.zoo FashionCNN (3 epochs). FP32 fine-tuned = the same model trained for "
          "the QAT budget in float (what extra training alone gives). QAT = LSQ weights / LSQ+ "
          "activations, PTQ-initialised, converted with lowbit.convert. Agreement columns compare "
          "top-1 predictions with the QAT model's on the whole test set.\n\n"]
    md.append(markdown_table(
        ["config", "FP32", "FP32 fine-tuned", "PTQ", "QAT", "QAT − FP32", "QAT − PTQ",
         "converted = QAT top-1 %", "logits bit-identical", "ONNX Runtime = QAT top-1 %", "QAT s"],
        [[r["config"], r["fp32"], r["fp32_finetuned"], r["ptq"], r["qat"], r["qat_minus_fp32"],
          r["qat"] - r["ptq"], r["agreement"], r["bit_identical"],
          "n/a" if r["ort_agreement"] is None else r["ort_agreement"], r["qat_seconds"]]
         for r in rows]))
    notes = [f"{r['config']}: {r['ort_note']}" for r in rows if r["ort_agreement"] is None]
    if notes:
        md.append("\nNot run in ONNX Runtime: " + "; ".join(notes) + "\n")
    md.append("\n## W4A4: LSQ vs fixed scale vs PTQ-initialised LSQ (same budget)\n\n")
    md.append(markdown_table(["variant", "accuracy", "accuracy at step 0 (curve subset)"],
                             [[k, v["accuracy"], v["curve"][0][1] if v["curve"][0][0] == 0 else "n/a"]
                              for k, v in variants.items()]))
    md.append("\n## Cost of a training step (same batch, same run, medians)\n\n")
    md.append(markdown_table(["model", "median s", "x FP32"],
                             [[k, v["median_s"], v["ratio"]] for k, v in timing.items()]))
    rnd = runs["W8A8"]["rounding"]
    md.append(f"\n## Rounding (seed 003 §3.4)\n\nW8A8 QAT model trained with half-to-even, run "
              f"as a half-away backend (MNN) would: {rnd['codes_differ']} of {rnd['elements']} "
              f"quantized values change code ({rnd['rate']:.2e}), top-1 agreement "
              f"{rnd['top1_agreement']:.2f} %, max logit difference {rnd['max_abs_logit_diff']:.3g}. "
              "Presets set the backend's rounding, so QAT trains with it.\n")
    return payload, "".join(md)


def mobilenet_markdown(mobile: dict[str, Any], args: argparse.Namespace, images: int) -> str:
    t = mobile["step_seconds_batch64"]
    md = [f"\n## MobileNetV2 (ImageNet checkpoint, FashionMNIST at {args.mobilenet_size}x"
          f"{args.mobilenet_size})\n\nTraining step, batch 64, {args.threads} thread(s): FP32 "
          f"{t['FP32']:.2f} s, QAT W8A8 {t['QAT W8A8']:.2f} s. Fine-tuning ({args.mobilenet_steps} "
          f"steps), a float control and three QAT runs of as many steps take about "
          f"{mobile['estimated_seconds'] / 60:.0f} min here."]
    if not mobile["ran"]:
        md.append(" Skipped by default (see qat_mobilenet.md for a run with --mobilenet).\n")
        return "".join(md)
    acc = mobile["accuracy"]
    md.append(f" This run: {args.mobilenet_steps} fine-tuning steps, then "
              f"{args.mobilenet_qat_steps or args.mobilenet_steps} QAT steps per configuration; "
              f"accuracy on the first {images} test images.\n\n")
    md.append(markdown_table(
        ["config", "FP32 (fine-tuned)", "FP32 + QAT budget", "PTQ", "QAT", "QAT − FP32"],
        [[c, acc["FP32"], acc["FP32 + QAT budget"], acc[f"{c} PTQ"], acc[f"{c} QAT"],
          acc[f"{c} QAT"] - acc["FP32"]] for c in args.mobilenet_configs.split(",")]))
    return "".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="QAT steps per run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--scale-lr", type=float, default=1e-4, help="LR of learned scales")
    parser.add_argument("--calib-batches", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--curve-subset", type=int, default=2000)
    parser.add_argument("--test-subset", type=int, default=0, help="0: the whole test set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-repeats", type=int, default=15)
    parser.add_argument("--no-low", action="store_true", help="skip W3A3 and W2A8")
    parser.add_argument("--mobilenet", action="store_true",
                        help="also run the MobileNetV2 part (results in qat_mobilenet.*)")
    parser.add_argument("--mobilenet-only", action="store_true", help="only the MobileNetV2 part")
    parser.add_argument("--mobilenet-steps", type=int, default=300)
    parser.add_argument("--mobilenet-size", type=int, default=64)
    parser.add_argument("--mobilenet-qat-steps", type=int, default=0,
                        help="QAT (and float control) steps; 0: as many as --mobilenet-steps")
    parser.add_argument("--mobilenet-configs", default="W8A8,W4A8,W4A4", help="comma-separated")
    parser.add_argument("--tag", default="", help="suffix of the MobileNetV2 result files")
    parser.add_argument("--quick", action="store_true", help="smoke run (tiny budgets)")
    args = parser.parse_args()
    args.mobilenet = args.mobilenet or args.mobilenet_only
    if args.quick:
        args.steps, args.eval_every, args.test_subset, args.curve_subset = 20, 10, 1000, 500
        args.timing_repeats, args.calib_batches, args.mobilenet_steps = 3, 2, 5
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = Data(args)
    if not args.mobilenet_only:
        payload, md = fashion_cnn(data, args)
        mobile = mobilenet(data, argparse.Namespace(**{**vars(args), "mobilenet": False}))
        md += mobilenet_markdown(mobile, args, len(data.curve_y))
        seconds = time.perf_counter() - started
        md += f"\nTotal time {seconds / 60:.1f} min. Curves: qat_curves.png\n"
        payload.update({"machine": machine(), "args": vars(args), "mobilenet_v2_timing": mobile,
                        "total_seconds": seconds})
        paths = write_results("qat", payload, md)
        print(md)
        print(f"wrote {paths[0]}, {paths[1]} and {RESULTS / 'qat_curves.png'}")
    if args.mobilenet:
        start = time.perf_counter()
        mobile = mobilenet(data, args)
        md = "# QAT on MobileNetV2\n" + mobilenet_markdown(mobile, args, len(data.curve_y))
        seconds = time.perf_counter() - start
        md += f"\nTotal time {seconds / 60:.1f} min.\n"
        paths = write_results(f"qat_mobilenet{args.tag}", {"machine": machine(), "args": vars(args),
                                                "mobilenet_v2": mobile, "total_seconds": seconds}, md)
        print(md)
        print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()

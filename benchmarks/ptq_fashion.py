"""FashionCNN on Fashion-MNIST: int8, int4 weight-only and W4A8 accuracy drops; mixed precision.

The CNN (`lowbit.zoo.train_fashion_cnn`, cached after the first training)
is evaluated on the 10,000 test images. Calibration uses 2,048 training
images; the mixed-precision search measures accuracy on 2,000 other training
images, never on the test set, so the test drop it reports is honest.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import lowbit
from lowbit import QuantSpec, Recipe, zoo
from lowbit.report import model_size_bytes
from ptq_common import Config, Section, Stopwatch, Table, log, quiet, recipe_text
from ptq_ort import METHODS, export_onnx, preprocess, quantize_static, run_all, session

INT4_CHANNEL = QuantSpec("int4", "channel", clip_search=True)


def recipes() -> dict[str, Recipe]:
    x86 = lowbit.preset("x86")
    return {
        "int8 (x86)": x86,
        "int8 (onnxruntime)": lowbit.preset("onnxruntime"),
        "int4 weight-only": Recipe(
            name="w4-channel", mode="weight_only", weight=INT4_CHANNEL,
            module_types=("Linear", "Conv2d"), calibration_batches=0,
            description="int4 per-channel symmetric weights with MSE clipping search"),
        "W4A8": x86.with_(name="w4a8", weight=INT4_CHANNEL,
                          description="int4 per-channel weights, uint8 per-tensor activations"),
    }


def run(cfg: Config) -> Section:
    section = Section("fashion")
    log("FashionCNN: loading data and the (cached) trained model")
    model = zoo.train_fashion_cnn()
    test_x, test_y = zoo.load_fashion_mnist("test")
    train_x, train_y = zoo.load_fashion_mnist("train")
    if cfg.quick:
        test_x, test_y = test_x[:2000], test_y[:2000]
    calib = list(train_x[:2048].split(128 if not cfg.quick else 256))
    dev_x, dev_y = train_x[-2000:], train_y[-2000:]

    @torch.no_grad()
    def accuracy(m, x=test_x, y=test_y) -> float:
        return float(torch.cat([m(b).argmax(1) for b in x.split(1000)]).eq(y).float().mean())

    base = accuracy(model)
    base_size = model_size_bytes(model)
    rows = [["FP32", "—", f"{base:.2%}", "—", round(base_size / 1024, 1), "—"]]
    data: dict = {"fp32_accuracy": base, "n_test": len(test_y), "results": {}}
    notes = []

    def record(tool: str, name: str, acc: float, size: int | None, seconds: float, **extra) -> None:
        drop = (base - acc) * 100
        data["results"][f"{tool} / {name}"] = dict(accuracy=acc, drop_points=round(drop, 2),
                                                   size_kb=round(size / 1024, 1) if size else None,
                                                   quantize_s=round(seconds, 2), **extra)
        rows.append([tool, name, f"{acc:.2%}", f"{drop:+.2f}", round(size / 1024, 1) if size else "—",
                     round(seconds, 1)])
        log(f"  {tool:22s} {name:34s} accuracy {acc:.4f}  drop {drop:+.2f} points")

    for name, recipe in recipes().items():
        with quiet(), Stopwatch() as t:
            q = lowbit.quantize(model, recipe, calibrate=calib, progress=False)
        record("lowbit", name, accuracy(q), model_size_bytes(q), t.seconds)
        notes.append(f"lowbit `{name}`: {recipe_text(recipe)}")

    # Mixed precision: promote the fewest layers (int4 → int8 weights) that keep the
    # accuracy drop on 2,000 training images within 0.3 points.
    def dev_accuracy(m) -> float:
        return accuracy(m, dev_x, dev_y)

    for name in ("int4 weight-only", "W4A8"):
        recipe = recipes()[name]
        with quiet(), Stopwatch() as t:
            try:
                result = lowbit.auto_mixed_precision(model, recipe, calib, eval_fn=dev_accuracy,
                                                     max_drop=0.003, fallback="int8", progress=False)
            except lowbit.LowbitError as err:
                notes.append(f"mixed precision for {name} failed: {err}")
                continue
        promoted = ", ".join(f"`{p}`" for p in result.promoted) or "none"
        overhead = result.extra_bits / max(result.weight_bits_before, 1)
        record("lowbit", f"{name} + mixed precision", accuracy(result.model),
               model_size_bytes(result.model), t.seconds, promoted=result.promoted,
               extra_weight_bits=result.extra_bits, evaluations=result.evaluations)
        notes.append(f"mixed precision for {name} (`auto_mixed_precision`, eval_fn = accuracy on "
                     f"2,000 training images, max_drop 0.3 points, fallback int8): promoted {promoted} "
                     f"to int8 weights, +{overhead:.1%} weight bits, {result.evaluations} evaluations")

    # torch.ao FX static x86 (real int8 kernels).
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with quiet(), Stopwatch() as t:
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                              example_inputs=(calib[0][:1],))
        with torch.no_grad():
            for x in calib:
                prepared(x)
        tq = convert_fx(prepared)
    with quiet():
        record("torch.ao FX static", "int8 x86 default qconfig", accuracy(tq), None, t.seconds)

    # ONNX Runtime quantize_static, QDQ per-channel, each calibrator.
    fp32_onnx = export_onnx(model, (calib[0][:1],), cfg.workdir / "fashion.onnx", ["x"], ["logits"],
                            {"x": {0: "batch"}, "logits": {0: "batch"}})
    pre, pre_note = preprocess(fp32_onnx, cfg.workdir / "fashion.pre.onnx")
    feeds = [{"x": x.numpy()} for x in calib]
    test_feeds = [{"x": x.numpy()} for x in test_x.split(1000)]
    for method in METHODS:
        dst = cfg.workdir / f"fashion.{method}.onnx"
        with Stopwatch() as t:
            quantize_static(pre, dst, feeds, method)
        out = np.concatenate(run_all(session(dst, cfg.threads), test_feeds))
        acc = float((torch.from_numpy(out).argmax(1) == test_y).float().mean())
        record("ONNX Runtime", f"int8 {method} (QDQ, per-channel)", acc, dst.stat().st_size, t.seconds)
    notes.append(f"ONNX Runtime: {pre_note}, `quantize_static(QDQ, per_channel=True, S8S8)`; size "
                 "is the .onnx file")
    notes.append(f"{len(test_y)} test images; calibration: first 2,048 training images")
    section.tables.append(Table(
        "FashionCNN (Fashion-MNIST test set): accuracy and drop vs FP32",
        ["tool", "recipe", "accuracy", "drop (points)", "size KB", "quantize s"], rows, notes))
    section.data = data
    return section

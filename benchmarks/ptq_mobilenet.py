"""MobileNetV2 (torchvision ImageNet checkpoint): int8 static, lowbit vs ONNX Runtime vs torch.ao.

Fidelity to FP32 on real photographs (`lowbit.zoo.real_images`: distinct
random views of scikit-image's sample photos): logits SQNR, top-1 and top-5
agreement. Calibration views (seed 0) and evaluation views (seed 1) are
disjoint sets of views; every tool calibrates on the same calibration tensors.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import lowbit
from lowbit import zoo
from lowbit.report import model_size_bytes, sqnr_db, top1_agreement
from ptq_common import Config, Section, Stopwatch, Table, log, mb, quiet, recipe_text
from ptq_ort import METHODS, export_onnx, preprocess, quantize_static, run_all, session


def top5_agreement(ref: torch.Tensor, q: torch.Tensor) -> float:
    """Share of images whose FP32 top-1 class is in the quantized model's top 5."""
    return float((q.topk(5, dim=1).indices == ref.argmax(1, keepdim=True)).any(1).float().mean())


def recipes() -> dict[str, lowbit.Recipe]:
    """The lowbit recipes measured: the two backend presets and the tuned one."""
    return {
        "x86": lowbit.preset("x86"),
        "onnxruntime": lowbit.preset("onnxruntime"),
        # Same arithmetic as x86; bias correction removes the mean output shift that
        # per-channel int8 weights of the depthwise convolutions cause.
        "x86 + bias correction": lowbit.preset("x86").with_(name="x86-bc", bias_correction=True),
    }


def run(cfg: Config) -> Section:
    section = Section("mobilenet")
    n_calib, n_eval, bs = (16, 32, 16) if cfg.quick else (64, 256, 32)
    log(f"MobileNetV2: loading model and {n_calib} calibration + {n_eval} evaluation views")
    model = zoo.load_mobilenet_v2()
    calib = zoo.real_images(n_calib, seed=0)
    evals = zoo.real_images(n_eval, seed=1)
    calib_batches = list(calib.split(bs))
    eval_batches = list(evals.split(bs))

    @torch.no_grad()
    def logits(m) -> torch.Tensor:
        return torch.cat([m(x) for x in eval_batches]).float()

    ref = logits(model)
    fp32_size = model_size_bytes(model)
    rows, data = [], {}

    def record(tool: str, method: str, out: torch.Tensor, size: int | None, seconds: float,
               note: str = "") -> None:
        row = {
            "sqnr_db": round(sqnr_db(ref, out), 2),
            "top1_agreement": round(top1_agreement(ref, out), 4),
            "top5_agreement": round(top5_agreement(ref, out), 4),
            "size_mb": mb(size) if size else None,
            "quantize_s": round(seconds, 1),
        }
        data[f"{tool} / {method}"] = dict(row, note=note)
        rows.append([tool, method, row["sqnr_db"], f"{row['top1_agreement']:.1%}",
                     f"{row['top5_agreement']:.1%}", row["size_mb"] or "—", row["quantize_s"]])
        log(f"  {tool:28s} {method:28s} SQNR {row['sqnr_db']:6.2f} dB  top-1 {row['top1_agreement']:.3f}")

    rows.append(["FP32", "—", "∞", "100%", "100%", mb(fp32_size), 0.0])
    notes = []
    for name, recipe in recipes().items():
        with quiet(), Stopwatch() as t:
            q = lowbit.quantize(model, recipe, calibrate=calib_batches, progress=False)
        record("lowbit", name, logits(q), model_size_bytes(q), t.seconds)
        kinds = list(q.lowbit_state.functional.values())
        notes.append(f"lowbit `{name}`: {recipe_text(recipe)}; {kinds.count('add')} residual adds and "
                     f"{kinds.count('avgpool')} average pool input quantized "
                     "(the model traces with torch.fx)")

    # torch.ao FX graph mode, x86 backend (fbgemm / oneDNN int8 kernels, real integer inference).
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with quiet(), Stopwatch() as t:
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                              example_inputs=(calib[:1],))
        with torch.no_grad():
            for x in calib_batches:
                prepared(x)
        tq = convert_fx(prepared)
    with quiet():
        record("torch.ao FX static", "x86 default qconfig", logits(tq), None, t.seconds)
    notes.append("torch.ao: `prepare_fx(get_default_qconfig_mapping('x86'))` → calibrate → "
                 "`convert_fx`; runs the real fbgemm/oneDNN int8 kernels (per-channel weights, "
                 "HistogramObserver activations, reduce_range on x86)")

    # ONNX Runtime quantize_static, QDQ, per-channel, each calibrator.
    fp32_onnx = export_onnx(model, (calib[:1],), cfg.workdir / "mobilenet.onnx", ["x"], ["logits"],
                            {"x": {0: "batch"}, "logits": {0: "batch"}})
    pre, pre_note = preprocess(fp32_onnx, cfg.workdir / "mobilenet.pre.onnx")
    feeds = [{"x": x.numpy()} for x in calib_batches]
    eval_feeds = [{"x": x.numpy()} for x in eval_batches]
    best = None
    for method in METHODS:
        dst = cfg.workdir / f"mobilenet.{method}.onnx"
        with Stopwatch() as t:
            quantize_static(pre, dst, feeds, method)
        out = torch.from_numpy(np.concatenate(run_all(session(dst, cfg.threads), eval_feeds))).float()
        record("ONNX Runtime quantize_static", f"{method} (QDQ, per-channel)", out,
               dst.stat().st_size, t.seconds)
        score = data[f"ONNX Runtime quantize_static / {method} (QDQ, per-channel)"]["top1_agreement"]
        best = method if best is None or score > data[
            f"ONNX Runtime quantize_static / {best} (QDQ, per-channel)"]["top1_agreement"] else best
    notes.append(f"ONNX Runtime {__import__('onnxruntime').__version__}: FP32 ONNX from "
                 f"`torch.onnx.export(dynamo=False)`, {pre_note}, `quantize_static(QDQ, "
                 "per_channel=True, S8S8)`; sizes are the .onnx files (ORT keeps int8 weights). "
                 f"Best ORT calibrator here: {best}")
    notes.append(f"{n_calib} calibration views (seed 0), {n_eval} evaluation views (seed 1) of the "
                 f"{len(zoo.PHOTOS)} scikit-image photos, 224×224, ImageNet normalisation")
    section.tables.append(Table(
        "MobileNetV2 int8 static: fidelity to FP32 logits on real photos",
        ["tool", "recipe / method", "logits SQNR dB", "top-1 agree", "FP32 top-1 in top-5",
         "size MB", "quantize s"], rows, notes))
    section.data = {"n_calib": n_calib, "n_eval": n_eval, "results": data}
    return section

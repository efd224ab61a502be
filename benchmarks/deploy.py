"""Deployment speed, size and fidelity: lowbit int8 in ONNX Runtime against FP32 and peers.

    python benchmarks/deploy.py [--models resnet18,mobilenet_v2,minilm] [--repeats 31]

Candidates, all on the same CPU threads, timed round-robin (one run of each per
round, so all share the machine's load; the order shuffled each round, so no
candidate always pays for threads its predecessor left spinning), median of
``--repeats`` rounds:

- FP32 PyTorch eager; FP32 ONNX Runtime (TorchScript export);
- lowbit int8 exported with `lowbit.export.onnx`, run in ONNX Runtime;
- ONNX Runtime ``quantize_static``: QDQ, per-channel weights, MinMax, U8S8 and S8S8
  (after ``quant_pre_process``, as its documentation recommends); for MiniLM also
  ``quantize_dynamic`` (per-channel int8 weights), the peer of lowbit's dynamic int8;
- torch.ao static quantization (FX graph mode, x86 backend, default qconfig).

Fidelity is measured against FP32 PyTorch on evaluation data disjoint from the
calibration data (top-1 agreement and SQNR of logits; cosine of sentence
embeddings for MiniLM); "parity" is lowbit's ONNX Runtime output against
lowbit's own simulations: the fake-quantized model, and for CNNs the integer-only
model (`lowbit.to_integer`, ONNX Runtime's requantization), which reproduces the
runtime's integer arithmetic. Writes benchmarks/results/deploy.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lowbit
from common import machine, markdown_table, write_results
from deploy_models import CASES, Case, sqnr
from lowbit import runtime
from lowbit.export import load_quantized, save_checkpoint

warnings.filterwarnings("ignore")
THREADS = 2


def export_fp32(model: nn.Module, case: Case, path: Path) -> Path:
    """FP32 model through torch's TorchScript ONNX exporter (onnxscript is not installed)."""
    names = case.input_names()
    args = tuple(case.example[n] for n in names) if isinstance(case.example, dict) else (case.example,)
    # On a copy: tracing a transformers BERT for export leaves the traced module computing
    # something else afterwards (cosine 0.96 to its own earlier outputs), which would
    # corrupt every later reference and quantization of the shared model.
    wrapped = case.positional(copy.deepcopy(model))
    with torch.no_grad():
        torch.onnx.export(wrapped, args, str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} for n in [*names, "output"]})
    return path


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self):
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def rewind(self) -> None:
        self.i = 0


def ort_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], activations: str) -> Path:
    """ONNX Runtime's own static quantization in its recommended configuration."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(_Reader, CalibrationDataReader):
        pass

    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre))
    except Exception:  # its optional pre-processing failing is not fatal: quantize the raw export
        pre = src
    act = QuantType.QUInt8 if activations == "u8" else QuantType.QInt8
    quantize_static(str(pre), str(dst), Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=act, weight_type=QuantType.QInt8)
    return dst


def ort_dynamic(src: Path, dst: Path) -> Path:
    """ONNX Runtime's own dynamic quantization: int8 per-channel weights, activations at run time."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre))
    except Exception:  # as for ort_static: optional pre-processing
        pre = src
    quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    return dst


def torch_ao(model: nn.Module, case: Case) -> nn.Module:
    """torch.ao FX graph mode static quantization, x86 backend, default qconfig (positional inputs)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = tuple(case.example.values()) if isinstance(case.example, dict) else (case.example,)
    prepared = prepare_fx(case.positional(copy.deepcopy(model)).eval(),
                          get_default_qconfig_mapping("x86"), example)
    with torch.no_grad():
        for batch in case.calibration:
            prepared(*(batch.values() if isinstance(batch, dict) else (batch,)))
    return convert_fx(prepared)


def _args(batch: Any) -> tuple:
    return tuple(batch.values()) if isinstance(batch, dict) else (batch,)


def _torch_fn(model: nn.Module, batch: Any, positional: bool = False):
    """``fn()`` running ``model`` on ``batch``; keyword models give ``last_hidden_state``."""
    args = _args(batch)

    def fn():
        with torch.no_grad():
            if isinstance(batch, dict) and not positional:
                return model(**batch).last_hidden_state
            return model(*args)
    return fn


def _ort_fn(sess: Any, batch: Any):
    feeds = runtime.feeds(sess, batch)
    return lambda: sess.run(None, feeds)


def evaluate(case: Case, forward) -> torch.Tensor:
    """Concatenated outputs of ``forward(batch)`` over the evaluation batches."""
    return torch.cat([torch.as_tensor(np.asarray(forward(b))) for b in case.evaluation])


def fidelity(case: Case, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    if case.kind == "embedding":
        masks = torch.cat([b["attention_mask"] for b in case.evaluation])
        cos = torch.nn.functional.cosine_similarity(case.pool(ref, masks), case.pool(out, masks))
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}
    top1 = float((ref.argmax(1) == out.argmax(1)).float().mean())
    return {"top1_agreement": top1, "sqnr_db": sqnr(ref, out)}


_PREPARED: dict[str, dict[str, Any]] = {}


def _perturbed(case: Case, eps: float = 1e-6) -> list[Any]:
    """The evaluation batches with a relative 1e-6 perturbation (float rounding-sized noise)."""
    gen = torch.Generator().manual_seed(7)
    if case.kind == "embedding":
        return case.evaluation  # token ids cannot be perturbed; see the report text
    return [b * (1 + eps * torch.randn(b.shape, generator=gen)) for b in case.evaluation]


def prepare(case: Case, folder: Path) -> dict[str, Any]:
    """Quantize / export / calibrate every candidate once per model (shared by its batch sizes)."""
    if case.name in _PREPARED:
        return _PREPARED[case.name]
    torch.set_num_threads(THREADS)
    model = case.model
    prep: dict[str, Any] = {"notes": [], "runners": {"FP32 PyTorch": ("torch", model)}, "outputs": {}}
    prep["reference"] = evaluate(case, lambda b: _torch_fn(model, b)())
    fp32_path = export_fp32(model, case, folder / f"{case.name}.fp32.onnx")
    sess = runtime.session(fp32_path, threads=THREADS)
    prep["runners"]["FP32 ONNX Runtime"] = ("ort", sess)

    start = time.perf_counter()
    qmodel = lowbit.quantize(model, case.recipe, calibrate=case.calibration, progress=False)
    prep["quantize_s"] = time.perf_counter() - start
    lowbit_path = lowbit.export.onnx(qmodel, case.example, folder / f"{case.name}.lowbit.onnx",
                                     dynamic_axes=case.dynamic_axes())
    prep["runners"]["lowbit int8 (ORT)"] = ("ort", runtime.session(lowbit_path, threads=THREADS))
    sim = evaluate(case, lambda b: _torch_fn(qmodel, b)())
    prep["sim"] = sim
    prep["recipe"] = case.recipe if isinstance(case.recipe, str) else case.recipe.name
    prep["ops"] = {k: v for k, v in runtime.optimized_ops(lowbit_path).items()
                   if k.startswith(("Q", "Mat", "Dynamic", "Conv", "FusedConv", "Gemm"))}
    prep["sizes"] = sizes(case, qmodel, folder)
    if case.kind == "classifier":
        noisy = torch.cat([_torch_fn(qmodel, b)() for b in _perturbed(case)])
        prep["sim_self"] = fidelity(case, sim, noisy)
        # The integer-only model with ONNX Runtime's requantization: the simulation that
        # reproduces the runtime's arithmetic, not just its quantization grid.
        imodel = lowbit.to_integer(qmodel, case.example, requant="float")
        integer = evaluate(case, lambda b: _torch_fn(imodel, b)())

    calib_feeds = [runtime.feeds(sess, b) for b in case.calibration]
    for act in ("u8", "s8"):
        label = f"ORT quantize_static {act}s8"
        try:
            path = ort_static(fp32_path, folder / f"{case.name}.ort_{act}.onnx", calib_feeds, act)
            prep["runners"][label] = ("ort", runtime.session(path, threads=THREADS))
        except Exception as err:  # a peer failing is a finding, not a crash
            prep["notes"].append(f"{label} failed: {type(err).__name__}: {str(err)[:200]}")
    if case.kind == "embedding":  # the like-for-like peer of lowbit's dynamic int8 transformer
        try:
            path = ort_dynamic(fp32_path, folder / f"{case.name}.ort_dynamic.onnx")
            prep["runners"]["ORT quantize_dynamic"] = ("ort", runtime.session(path, threads=THREADS))
        except Exception as err:
            prep["notes"].append(f"ORT quantize_dynamic failed: {type(err).__name__}: {str(err)[:200]}")
    try:
        prep["runners"]["torch.ao FX x86"] = ("torch-positional", torch_ao(model, case))
    except Exception as err:  # torch.fx cannot trace many transformers models
        prep["notes"].append(f"torch.ao FX failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
    for label, runner in prep["runners"].items():
        if label != "FP32 PyTorch":
            prep["outputs"][label] = evaluate(case, lambda b, r=runner: _call(r, b)())
    prep["parity"] = fidelity(case, sim, prep["outputs"]["lowbit int8 (ORT)"])
    if case.kind == "classifier":
        ort_out = prep["outputs"]["lowbit int8 (ORT)"]
        prep["integer_parity"] = {**fidelity(case, integer, ort_out),
                                  "max_abs_diff": float((integer - ort_out).abs().max())}
    _PREPARED[case.name] = prep
    return prep


def _call(runner: tuple[str, Any], batch: Any):
    kind, obj = runner
    if kind == "ort":
        feeds = runtime.feeds(obj, batch)
        return lambda: obj.run(None, feeds)[0]
    return _torch_fn(obj, batch, positional=kind == "torch-positional")


def run_case(case: Case, folder: Path, repeats: int) -> dict[str, Any]:
    prep = prepare(case, folder)
    fns = {label: _call(runner, case.example) for label, runner in prep["runners"].items()}
    with torch.no_grad():
        # Shuffled rounds: no candidate always pays for the threads its predecessor left
        # spinning (PyTorch's OpenMP, ONNX Runtime's pool). No pause between runs: one
        # (settle=0.01) let those pools fall asleep, and PyTorch's wake-up then inflated
        # every ratio against FP32 PyTorch by ~1.5x.
        timings = runtime.compare(fns, repeats=repeats, warmup=3, shuffle=True)
    base = timings["FP32 PyTorch"].median
    rows = {}
    for label, timing in timings.items():
        q1, q3 = timing.quartiles
        row = {"median_ms": timing.median * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
               "speedup_vs_fp32_torch": base / timing.median}
        if label in prep["outputs"]:
            row.update(fidelity(case, prep["reference"], prep["outputs"][label]))
        rows[label] = row
    keys = ("notes", "parity", "integer_parity", "recipe", "ops", "sizes", "quantize_s", "sim_self")
    return {"case": case.name, "batch": case.batch_desc, "rows": rows,
            **{k: prep[k] for k in keys if k in prep}}


def sizes(case: Case, qmodel: nn.Module, folder: Path) -> dict[str, float]:
    from safetensors.torch import save_file

    fp32 = folder / f"{case.name}.fp32.safetensors"
    save_file({k: v.contiguous() for k, v in case.model.state_dict().items()}, str(fp32))
    ckpt = save_checkpoint(qmodel, folder / f"{case.name}.lowbit.safetensors")
    reloaded = load_quantized(case.model, ckpt)
    batch = case.evaluation[0]
    a, b = _torch_fn(qmodel, batch)(), _torch_fn(reloaded, batch)()
    return {"fp32_bytes": fp32.stat().st_size, "lowbit_bytes": ckpt.stat().st_size,
            "ratio": ckpt.stat().st_size / fp32.stat().st_size, "reload_bit_exact": bool(torch.equal(a, b))}


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = ["# Deployment: lowbit int8 in ONNX Runtime vs FP32 and peers", "",
             f"Written by `python benchmarks/deploy.py`. Machine: {info}. {THREADS} threads everywhere; "
             "candidates timed round-robin, in a new order each round "
             "(median of the rounds; middle half = quartiles). Fidelity vs FP32 PyTorch on "
             "evaluation data disjoint from calibration data.", ""]
    for res in results:
        lines += [f"## {res['case']} ({res['batch']})", ""]
        rows = []
        for label, row in res["rows"].items():
            fid = (f"cos {row['cos_mean']:.4f} (min {row['cos_min']:.4f})" if "cos_mean" in row else
                   f"top-1 {row['top1_agreement']:.2%}, SQNR {row['sqnr_db']:.1f} dB"
                   if "top1_agreement" in row else "reference")
            spread = f"{row['q1_ms']:.2f}–{row['q3_ms']:.2f}" if "q1_ms" in row else "-"
            speedup = f"{row['speedup_vs_fp32_torch']:.2f}x"
            rows.append([label, f"{row['median_ms']:.2f}", spread, speedup, fid])
        lines.append(markdown_table(["candidate", "median ms", "middle half, ms", "vs FP32 PyTorch",
                                     "fidelity vs FP32"], rows))
        parity = res["parity"]
        ptext = (f"cosine {parity['cos_mean']:.5f} mean, {parity['cos_min']:.5f} min" if "cos_mean" in parity
                 else f"top-1 agreement {parity['top1_agreement']:.2%}, SQNR {parity['sqnr_db']:.1f} dB")
        size = res["sizes"]
        lines += [f"- lowbit recipe `{res['recipe']}`; ONNX Runtime vs lowbit simulation: {ptext}"]
        if "sim_self" in res:
            lines.append(f"- lowbit simulation vs itself with the input perturbed by 1e-6 (relative): top-1 "
                         f"{res['sim_self']['top1_agreement']:.2%}, SQNR {res['sim_self']['sqnr_db']:.1f} dB "
                         "(the floor any second implementation of the same int8 model can reach)")
        if "integer_parity" in res:
            ip = res["integer_parity"]
            lines.append(f"- ONNX Runtime vs lowbit integer simulation (`to_integer(requant='float')`): "
                         f"top-1 agreement {ip['top1_agreement']:.2%}, largest logit difference "
                         f"{ip['max_abs_diff']:.2g}")
        lines += [f"- lowbit graph as ONNX Runtime runs it: {res['ops']}",
                  f"- checkpoint {size['lowbit_bytes'] / 1e6:.2f} MB vs FP32 safetensors "
                  f"{size['fp32_bytes'] / 1e6:.2f} MB ({size['ratio']:.3f}x), reload bit-exact: "
                  f"{size['reload_bit_exact']}; quantize {res['quantize_s']:.0f} s"]
        lines += [f"- {note}" for note in res["notes"]] + [""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    results = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for case in CASES[name]():
                print(f"[deploy] {case.name} {case.batch_desc}", flush=True)
                results.append(run_case(case, Path(tmp), args.repeats))
    info = machine()
    payload = {"machine": info, "threads": THREADS, "wall_s": time.time() - started, "results": results}
    _, md_path = write_results("deploy", payload, markdown(results, info))
    print(md_path.read_text())


if __name__ == "__main__":
    main()

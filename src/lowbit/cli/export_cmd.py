"""``lowbit export`` and ``lowbit bench``: a quantized checkpoint to ONNX, and how it runs.

    lowbit export MODEL CHECKPOINT -o model.int8.onnx --input-shape 1,3,224,224
    lowbit bench  MODEL CHECKPOINT --input-shape 1,3,224,224 --threads 2 -o bench/

MODEL is the float model (``package.module:factory``, a ``torch.save``'d
model or a Hugging Face directory); CHECKPOINT the ``.safetensors`` file
``lowbit quantize`` wrote. `register` adds both subcommands to a parser.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import InputError


def register(sub: Any) -> dict[str, Any]:
    """Add ``export`` and ``bench`` to ``sub`` (from ``parser.add_subparsers``); return their commands."""
    helps = {"export": "write a quantized checkpoint as an ONNX QDQ model",
             "bench": "latency, size and fidelity: FP32 vs quantized, PyTorch and ONNX Runtime"}
    for name, help_text in helps.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="the float model: package.module:factory, a torch.save'd model "
                                     "file, or a Hugging Face model directory")
        p.add_argument("checkpoint", type=Path, help="the .safetensors file lowbit quantize wrote")
        p.add_argument("--input-shape", metavar="N,C,H,W", help="random float input of this shape")
        p.add_argument("--example", metavar="DATA", help="example input: .npy, image directory or "
                                                          "text file (as for lowbit quantize --calib)")
        p.add_argument("--batch-size", type=int, default=1, help="samples in the example batch")
        if name == "export":
            p.add_argument("-o", "--output", type=Path, default=Path("model.onnx"), help="ONNX file")
            p.add_argument("--opset", type=int, default=21, help="ONNX opset (21 or newer)")
            p.add_argument("--matmul-nbits", action="store_true",
                           help="int4 / int8 weight-only Linear layers as ONNX Runtime's MatMulNBits")
            p.add_argument("--static-batch", action="store_true", help="fix the batch dimension")
        else:
            p.add_argument("--threads", type=int, default=None, help="threads for PyTorch and ONNX Runtime")
            p.add_argument("--repeats", type=int, default=20, help="timed rounds (median reported)")
            p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
            p.add_argument("-o", "--output", type=Path, help="directory for bench.json and bench.md")
            p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return {"export": cmd_export, "bench": cmd_bench}


def _example(args: argparse.Namespace, tokenizer: Any) -> Any:
    from lowbit.cli.sources import load_batches

    if args.example:
        batch = load_batches(args.example, batch_size=args.batch_size, max_batches=1,
                             tokenizer=tokenizer)[0]
        return dict(batch) if isinstance(batch, dict) else batch
    if args.input_shape:
        try:
            shape = [int(d) for d in args.input_shape.split(",")]
        except ValueError as err:
            raise InputError("--input-shape must be comma-separated integers, got "
                             f"{args.input_shape!r}") from err
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    raise InputError("give an example input: --input-shape N,C,H,W or --example DATA")


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from lowbit.cli.sources import load_model
    from lowbit.export import load_quantized

    model, tokenizer = load_model(args.model)
    qmodel = load_quantized(model, args.checkpoint)
    return model, qmodel, _example(args, tokenizer)


def cmd_export(args: argparse.Namespace) -> int:
    """Write CHECKPOINT (rebuilt on MODEL) as an ONNX QDQ model and say which kernels ONNX Runtime picks."""
    import lowbit

    _, qmodel, example = _load(args)
    path = lowbit.export.onnx(qmodel, example, args.output, opset=args.opset,
                              matmul_nbits_layers=args.matmul_nbits, dynamic_batch=not args.static_batch)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    try:
        ops = lowbit.runtime.optimized_ops(path)
    except lowbit.LowbitError:  # ONNX Runtime is optional for writing the file
        return 0
    prefixes = ("Q", "MatMulInteger", "Dynamic", "MatMulNBits", "Conv", "Gemm", "MatMul")
    kernels = {k: v for k, v in sorted(ops.items()) if k.startswith(prefixes)}
    print("ONNX Runtime runs:", ", ".join(f"{k} {v}" for k, v in kernels.items()))
    return 0


def _first(out: Any) -> torch.Tensor:
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return out[0] if isinstance(out, (tuple, list)) else out


def _fidelity(ref: torch.Tensor, out: torch.Tensor) -> str:
    ref, out = ref.float().reshape(ref.shape[0], -1), torch.as_tensor(out).float().reshape(ref.shape[0], -1)
    noise = (ref - out).pow(2).sum().clamp_min(1e-30)
    sqnr = float(10 * torch.log10(ref.pow(2).sum() / noise))
    cos = float(torch.nn.functional.cosine_similarity(ref, out).mean())
    return f"SQNR {sqnr:.1f} dB, cosine {cos:.5f}"


def cmd_bench(args: argparse.Namespace) -> int:
    """Time FP32 and quantized in PyTorch and ONNX Runtime on the example; print and save a table."""
    import lowbit
    from lowbit import runtime

    model, qmodel, example = _load(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = example if isinstance(example, dict) else None
    args_ = () if kwargs else (example,)

    def torch_call(m):
        return lambda: _first(m(*args_, **(kwargs or {})))

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = lowbit.export.onnx(model, example, Path(tmp) / "fp32.onnx")  # no quantizers: plain FP32
        q_path = lowbit.export.onnx(qmodel, example, Path(tmp) / "quantized.onnx")
        sizes = {"fp32_onnx_mb": fp32_path.stat().st_size / 1e6,
                 "quantized_onnx_mb": q_path.stat().st_size / 1e6,
                 "checkpoint_mb": args.checkpoint.stat().st_size / 1e6}
        sessions = {name: runtime.session(p, threads=args.threads) for name, p in
                    (("FP32 ONNX Runtime", fp32_path), ("quantized ONNX Runtime", q_path))}
        fns = {"FP32 PyTorch": torch_call(model), "quantized PyTorch (simulation)": torch_call(qmodel)}
        for name, sess in sessions.items():
            feeds = runtime.feeds(sess, example)
            fns[name] = (lambda s=sess, f=feeds: torch.as_tensor(s.run(None, f)[0]))
        with torch.no_grad():
            outputs = {name: fn() for name, fn in fns.items()}
            # shuffled rounds: see lowbit.runtime.timing
            timings = runtime.compare(fns, repeats=args.repeats, warmup=args.warmup,
                                      progress=not args.no_progress, shuffle=True)
    base = timings["FP32 PyTorch"].median
    reference = outputs["FP32 PyTorch"]
    rows = [{"candidate": name, "median_ms": t.median * 1e3, "speedup": base / t.median,
             "fidelity": "reference" if name == "FP32 PyTorch" else _fidelity(reference, outputs[name])}
            for name, t in timings.items()]
    lines = ["| candidate | median ms | vs FP32 PyTorch | fidelity vs FP32 |", "|---|---|---|---|"]
    lines += [f"| {r['candidate']} | {r['median_ms']:.2f} | {r['speedup']:.2f}x | {r['fidelity']} |"
              for r in rows]
    lines.append(f"\nsizes: {', '.join(f'{k} {v:.2f}' for k, v in sizes.items())}")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "bench.md").write_text(table)
        (args.output / "bench.json").write_text(json.dumps({"rows": rows, "sizes": sizes}, indent=2))
        print(f"wrote {args.output / 'bench.md'}")
    return 0

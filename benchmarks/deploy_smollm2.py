"""Decoding speed of SmolLM2-135M: lowbit int4 weight-only in ONNX Runtime against FP32.

    python benchmarks/deploy_smollm2.py [--quick] [--new-tokens 64] [--prompt-tokens 32] [--repeats 5]

Greedy decoding with a KV cache of ``--new-tokens`` tokens after a
``--prompt-tokens`` prompt (prose from the Python manual), batch 1, ``--threads`` (default 2)
threads for torch and ONNX Runtime alike, for each candidate:

- FP32 PyTorch eager: ``LlamaForCausalLM`` with a ``DynamicCache`` (transformers' own
  masks and attention), one forward for the prompt, then one per token;
- FP32 ONNX Runtime: the decode-step graph below, exported by torch's TorchScript exporter;
- lowbit int4 weight-only, groups of 32 and of 128 (presets ``w4-g32`` / ``w4-g128``),
  exported by `lowbit.export.onnx` with ``matmul_nbits_layers=True``: every Linear (the
  tied ``lm_head`` included) becomes ONNX Runtime's ``MatMulNBits``; the token embedding
  stays FP32 (a Gather reads one row per token). Each at two MatMulNBits
  ``accuracy_level`` values: 0 (float32 activations: what lowbit simulates) and 4
  (activations quantized to int8 per block on the fly; faster, approximate);
- lowbit int4 simulation in PyTorch (the fidelity reference; converted weights are
  stored dequantized, so it runs at FP32 speed).

The ONNX graph is one decode step, `DecodeStep`: ``input_ids [1, q]`` and the past
keys / values of every layer ``[1, kv_heads, past, head_dim]`` in; the last position's
logits and the grown keys / values out. ``q`` and ``past`` are dynamic, so the prompt
runs through the same graph in one call (``q`` = prompt length, ``past`` = 0) and each
new token with ``q = 1``; positions and the causal mask are computed inside the graph.

Timing is round-robin (one generation of each candidate per round, so all share the
machine's load), median over ``--repeats`` rounds after one warm-up round. Decode
tokens/s counts the ``N - 1`` single-token steps after the prompt step; prefill time
is reported apart. Fidelity: greedy tokens of each candidate against FP32 PyTorch and
(int4) against lowbit's simulation of the same recipe, and the max |logit| difference
against the simulation on the first step (the prompt step). The int4 rows use min-max
group scales by default (``--clip-search`` uses the presets' MSE clipping search, which
takes minutes on a 2-core CPU and does not change speed). Writes
benchmarks/results/deploy_smollm2.{json,md} (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import lowbit
from common import machine, markdown_table, write_results
from lowbit import runtime, zoo
from lowbit.zoo.decode_step import Generation, OrtStepper, TorchStepper, export_decode_step

THREADS = 2  # default of --threads
FALLBACK_PROMPT = (
    "When an error occurs, the interpreter prints an error message and a stack trace. "
    "In interactive mode, it then returns to the primary prompt; when input came from a file, "
    "it exits with a nonzero exit status after printing the stack trace."
)


# --- the benchmark -------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    stepper: Any
    backend: str
    reference: str | None = None  # the simulation this candidate should reproduce
    onnx_mb: float | None = None
    runs: list[Generation] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prompt_ids(tokenizer: Any, n_tokens: int) -> Tensor:
    """The first ``n_tokens`` tokens of prose sentences from the Python manual."""
    try:
        from lowbit.zoo.text import sentences

        text = " ".join(sentences(8, seed=0))
    except Exception:  # the Python docs package is missing: a fixed sentence from it
        text = FALLBACK_PROMPT
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :n_tokens]
    return ids.long()


def recipe(group: int, clip_search: bool):
    base = lowbit.preset(f"w4-g{group}")
    if clip_search:
        return base
    return base.with_(name=f"w4-g{group}-minmax", weight=base.weight.with_(clip_search=False))


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    log(f"{label}: {time.perf_counter() - start:.1f} s")
    return out


def build(args: argparse.Namespace, workdir: Path) -> tuple[list[Candidate], Any, dict]:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model, tokenizer = timed("load SmolLM2-135M (GGUF)", zoo.load_smollm2)
    model.config.use_cache = True
    setup: dict[str, Any] = {}
    cands = [Candidate("FP32 PyTorch eager", TorchStepper(model), "torch")]
    path = timed("export FP32 decode step (torch.onnx)",
                 lambda: export_decode_step(model, workdir / "fp32.onnx", quantized=False))
    cands.append(Candidate("FP32 ONNX Runtime", OrtStepper(path, model.config), "ort",
                           onnx_mb=path.stat().st_size / 2**20))
    groups = (128,) if args.quick else (32, 128)
    levels = (0,) if args.quick else (0, 4)
    for g in groups:
        start = time.perf_counter()
        qmodel = lowbit.quantize(model, recipe(g, args.clip_search), progress=False)
        setup[f"quantize_g{g}_s"] = time.perf_counter() - start
        log(f"quantize w4-g{g}: {setup[f'quantize_g{g}_s']:.1f} s")
        sim = f"lowbit int4 g{g} simulation (PyTorch)"
        for level in levels:
            start = time.perf_counter()
            path = export_decode_step(qmodel, workdir / f"w4g{g}_l{level}.onnx", quantized=True,
                                      accuracy_level=level)
            setup[f"export_g{g}_level{level}_s"] = time.perf_counter() - start
            log(f"export w4-g{g} accuracy_level={level}: {setup[f'export_g{g}_level{level}_s']:.1f} s")
            cands.append(Candidate(f"lowbit int4 g{g} ORT MatMulNBits, accuracy_level={level}",
                                   OrtStepper(path, model.config), "ort", reference=sim,
                                   onnx_mb=path.stat().st_size / 2**20))
        cands.append(Candidate(sim, TorchStepper(qmodel), "torch"))
    ops = runtime.optimized_ops(path)  # the last int4 model: what ONNX Runtime runs its matmuls as
    setup["int4_ort_ops"] = {k: ops[k] for k in ("MatMulNBits", "MatMul", "FusedMatMul", "Gemm")}
    return cands, tokenizer, setup


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 new tokens, 1 repeat, g128 level 0 only")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=THREADS, help="intra-op threads (torch and ORT)")
    parser.add_argument("--clip-search", action="store_true",
                        help="int4 scales by the presets' MSE clipping search (slow) instead of min-max")
    args = parser.parse_args()
    n_new = args.new_tokens or (8 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 5)
    if n_new < 2:
        parser.error("--new-tokens must be at least 2 (one prompt step, then decode steps)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        cands, tokenizer, setup = build(args, Path(tmp))
        prompt = prompt_ids(tokenizer, args.prompt_tokens)
        log(f"prompt: {prompt.shape[1]} tokens; {n_new} new tokens; {repeats} timed rounds + 1 warm-up")
        for r in range(repeats + 1):  # round 0 warms up (allocations, ORT's first-run work)
            for c in cands:
                gen = c.stepper.generate(prompt, n_new)
                if r:
                    c.runs.append(gen)
            log(f"round {r}/{repeats} done")

    by_name = {c.name: c for c in cands}
    fp32, fp32_ort = by_name["FP32 PyTorch eager"], by_name["FP32 ONNX Runtime"]

    def decode_tps(c: Candidate) -> float:
        return (n_new - 1) / statistics.median(g.decode_s for g in c.runs)

    base_torch, base_ort = decode_tps(fp32), decode_tps(fp32_ort)
    rows, results = [], []
    for c in cands:
        gen = c.runs[-1]
        tps = decode_tps(c)
        ref = by_name[c.reference] if c.reference else None
        vs_fp32 = first_divergence(gen.tokens, fp32.runs[-1].tokens)
        vs_sim = first_divergence(gen.tokens, ref.runs[-1].tokens) if ref else None
        diff_sim = float(np.abs(gen.first_logits - ref.runs[-1].first_logits).max()) if ref else None
        entry = {
            "name": c.name, "backend": c.backend, "onnx_mb": c.onnx_mb,
            "decode_tokens_per_s": tps,
            "prefill_ms": 1e3 * statistics.median(g.prefill_s for g in c.runs),
            "decode_s_all": [g.decode_s for g in c.runs], "prefill_s_all": [g.prefill_s for g in c.runs],
            "x_fp32_torch": tps / base_torch, "x_fp32_ort": tps / base_ort,
            "tokens": gen.tokens, "same_tokens_as_fp32": vs_fp32 is None,
            "first_divergence_vs_fp32": vs_fp32,
            "simulation": c.reference, "same_tokens_as_simulation": None if ref is None else vs_sim is None,
            "first_divergence_vs_simulation": vs_sim, "max_first_step_logit_diff_vs_simulation": diff_sim,
        }
        results.append(entry)

        def agree(first: int | None) -> str:
            return "yes" if first is None else f"no (from token {first})"

        rows.append([
            c.name, f"{tps:.1f}", f"{entry['x_fp32_torch']:.2f}x", f"{entry['x_fp32_ort']:.2f}x",
            f"{entry['prefill_ms']:.0f}", "-" if c.onnx_mb is None else f"{c.onnx_mb:.0f}",
            agree(vs_fp32), "-" if ref is None else agree(vs_sim),
            "-" if diff_sim is None else f"{diff_sim:.2e}",
        ])

    headers = ["candidate", "decode tokens/s", "vs FP32 PyTorch", "vs FP32 ORT",
               f"prefill ms ({prompt.shape[1]} tok)", "ONNX MB", "tokens = FP32",
               "tokens = int4 sim", "max abs logit diff vs sim (step 1)"]
    text = tokenizer.decode(fp32.runs[-1].tokens)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    title = "SmolLM2-135M greedy decoding: lowbit int4 weight-only vs FP32" + (" (quick)" * args.quick)
    scales = "presets (MSE clip search)" if args.clip_search else "min-max"
    md = (
        f"# {title}\n\n"
        f"Batch 1, {args.threads} threads, prompt {prompt.shape[1]} tokens, {n_new} new tokens (KV cache); "
        f"decode tokens/s = {n_new - 1} single-token steps / their time, median of {repeats} round-robin "
        f"rounds after one warm-up. int4 scales: {scales}. Load average at the end: {' '.join(load)}.\n\n"
        + markdown_table(headers, rows)
        + "\naccuracy_level=0: MatMulNBits in float32 (what lowbit simulates); accuracy_level=4: activations "
          "quantized to int8 on the fly (faster, approximate). The token embedding stays FP32 in every "
          "model (a Gather).\n\n"
        + f"FP32 continuation: {text!r}\n"
    )
    payload = {"benchmark": "deploy_smollm2", "quick": args.quick, "machine": machine(),
               "loadavg_end": load, "prompt_tokens": int(prompt.shape[1]), "new_tokens": n_new,
               "repeats": repeats, "clip_search": args.clip_search, "setup": setup,
               "fp32_continuation": text, "results": results}
    json_path, md_path = write_results("deploy_smollm2" + ("_quick" if args.quick else ""), payload, md)
    print(md)
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()

"""all-MiniLM-L6-v2: int8 dynamic / static, int8 / int4 weight-only; lowbit vs ORT vs torch.ao.

Fidelity is the cosine similarity between each quantized model's sentence
embedding (mean over the attention mask, L2-normalised, as
sentence-transformers computes it) and the FP32 one, over real sentences from
the Python manual (`lowbit.zoo.sentences`, seed 1). Calibration sentences
(seed 2) and the mixed-precision search's own dev sentences are disjoint from
the evaluation sentences.

The Hugging Face BERT does not trace with torch.fx, so lowbit quantizes its
Linear layers (and the embedding tables, weight-only) and leaves the attention
matmuls (Q·Kᵀ, P·V), softmax, residual adds and LayerNorm in float. ONNX
Runtime's `quantize_static` by default quantizes every op it can (all MatMuls
including the attention ones, Add, Gather, ...); it is also run restricted to
the weight MatMuls (the Linear layers) for a like-for-like comparison.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lowbit
from lowbit import QuantSpec, Recipe, Rule, zoo
from lowbit.report import model_size_bytes
from lowbit.zoo.minilm import mean_pool
from ptq_common import (
    Config,
    Section,
    Stopwatch,
    Table,
    cos_stats,
    log,
    mb,
    quiet,
    r4,
    recipe_text,
)
from ptq_ort import (
    export_onnx,
    preprocess,
    quantized_op_summary,
    session,
    weight_matmuls,
)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# Numbers measured by peers on this machine with tools not installed here (issue #3).
QUOTED = [
    ("dynamic int8", "torchao", "int8 dynamic (quoted)", 0.9976, 0.994),
    ("dynamic int8", "NNCF", "transformer preset (quoted)", 0.9974, 0.992),
    ("weight-only int8", "torchao / optimum-quanto", "int8 weight-only (quoted)", 0.9996, 0.9993),
    ("weight-only int4 g32", "torchao", "int4 g32 (quoted)", 0.961, 0.932),
    ("weight-only int4 g32", "ONNX Runtime", "MatMulNBits g32 (quoted)", 0.974, 0.952),
]


# Asymmetric uint8 tokens: post-GELU and LayerNorm outputs are skewed, and a zero point per
# token buys 2-5 dB of input SQNR per layer over the preset's symmetric int8 tokens.
DYNAMIC_ASYM = lowbit.preset("w8a8-dynamic").with_(
    name="w8a8-dynamic-asym", input=QuantSpec("uint8", "token", symmetric=False, dynamic=True))
# SmoothQuant-style outlier migration; alpha 0.8-0.9 is best on MiniLM (0.5 is worse than none).
STATIC_SMOOTH = lowbit.preset("x86").with_(name="x86-smooth0.85", smooth_alpha=0.85)
# uint4 with a zero point per group of 32 (+ MSE clipping search in the preset's style).
W4_ASYM = lowbit.preset("w4-g32").with_(
    name="w4-g32-asym", weight=QuantSpec("uint4", "group", group_size=32, symmetric=False,
                                         clip_search=True))
W4_ASYM_MINMAX = W4_ASYM.with_(name="w4-g32-asym-minmax",
                               weight=W4_ASYM.weight.with_(clip_search=False))


def lowbit_recipes() -> dict[str, tuple[str, Recipe]]:
    """(mode, recipe) by row name: presets as shipped, then the tuned recipes."""
    return {
        "w8a8-dynamic (preset)": ("dynamic int8", lowbit.preset("w8a8-dynamic")),
        "w8a8-dynamic-asym (tuned)": ("dynamic int8", DYNAMIC_ASYM),
        "x86 (preset)": ("static int8", lowbit.preset("x86")),
        "onnxruntime (preset)": ("static int8", lowbit.preset("onnxruntime")),
        "x86 + smooth_alpha 0.85 (tuned)": ("static int8", STATIC_SMOOTH),
        "w8 (preset)": ("weight-only int8", lowbit.preset("w8")),
        "w4-g32 (preset)": ("weight-only int4 g32", lowbit.preset("w4-g32")),
        "w4-g32 asymmetric + clip search (tuned)": ("weight-only int4 g32", W4_ASYM),
    }


def export_minilm(model: torch.nn.Module, batch: dict, path):
    """FP32 ONNX of the encoder (``last_hidden_state``), dynamic batch and length.

    transformers 5 builds BERT's attention mask with code that the TorchScript
    exporter records wrongly for padded batches (errors > 1 on real tokens), so
    the wrapper builds the classic additive mask itself (0 / -10000) and calls the
    embeddings and the encoder; the export then matches PyTorch (max |Δ| ~ 3e-6).
    """
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")

    class Encoder(torch.nn.Module):
        def __init__(self, bert) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            # BERT's original -10000 rather than transformers' finfo.min: identical after
            # softmax in FP32. Either way the masked scores must stay float in a quantized
            # graph: ORT's default op set quantizes this Add and the Softmax input per tensor,
            # the -10000 stretches that range to ~10^4 and the int8 step (~40) erases the
            # attention scores (cosine ~0.38); see the benchmark's notes and `softmax_inputs`.
            mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
            return self.bert.encoder(h, attention_mask=mask).last_hidden_state

    return export_onnx(Encoder(model).eval(), tuple(batch[k] for k in INPUTS), path, INPUTS,
                       ["last_hidden_state"],
                       {k: {0: "batch", 1: "seq"} for k in (*INPUTS, "last_hidden_state")})


N_EVAL, N_DEV, BATCH = 256, 32, 8
FP32_EXPORT_FLOOR = 0.9999  # min cosine of the FP32 ONNX export to PyTorch (measured ~1 - 1e-12)


def split_sentences(n_eval: int, n_calib: int, n_dev: int) -> tuple[list[str], list[str], list[str]]:
    """Evaluation (seed 1), calibration and dev sentences (seed 2, minus every evaluation one)."""
    evaluation = zoo.sentences(n_eval, seed=1)
    excluded = set(zoo.sentences(N_EVAL, seed=1))
    pool = [s for s in zoo.sentences(n_calib + n_dev + N_EVAL + 64, seed=2) if s not in excluded]
    return evaluation, pool[:n_calib], pool[n_calib:n_calib + n_dev]


def fixed_length_batches(tokenizer, sentences: list[str]) -> list[dict[str, torch.Tensor]]:
    """Batches of `BATCH` sentences, all padded to the longest calibration sentence.

    ONNX Runtime's histogram calibrators (Entropy, Percentile) stack the outputs of all
    batches into one array and fail on batches of different lengths ("inhomogeneous
    shape"), so every tool calibrates on these equal-length batches.
    """
    length = max(len(ids) for ids in tokenizer(sentences, truncation=True, max_length=128)["input_ids"])
    return [dict(tokenizer(sentences[i:i + BATCH], padding="max_length", truncation=True,
                           max_length=length, return_tensors="pt"))
            for i in range(0, len(sentences), BATCH)]


def artifacts(cfg: Config, model, tokenizer) -> dict[str, Any]:
    """Calibration batches, the FP32 ONNX export and its ORT-preprocessed form (once per run).

    Shared with `ptq_calibration`, which measures ONNX Runtime's entropy calibration on
    exactly these batches; the quantized model it writes is also this family's
    "Entropy, default op set" and "Entropy, MatMul ops" rows.
    """
    if "minilm" in cfg.cache:
        return cfg.cache["minilm"]
    n_batches = 8 if cfg.quick else 32
    evaluation, calib, dev = split_sentences(64 if cfg.quick else N_EVAL, n_batches * BATCH,
                                             16 if cfg.quick else N_DEV)
    batches = fixed_length_batches(tokenizer, calib)
    fp32 = export_minilm(model, batches[0], cfg.workdir / "minilm.onnx")
    pre, pre_note = preprocess(fp32, cfg.workdir / "minilm.pre.onnx")
    npz = cfg.workdir / "minilm_calibration.npz"
    np.savez(npz, n=len(batches), **{f"{k}_{i}": b[k].numpy() for i, b in enumerate(batches)
                                     for k in INPUTS})
    cfg.cache["minilm"] = dict(eval=evaluation, calib=calib, dev=dev, batches=batches,
                               fp32_onnx=fp32, onnx=pre, pre_note=pre_note, npz=npz)
    return cfg.cache["minilm"]


class MiniLMBench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.model, self.tok = zoo.load_minilm()
        art = artifacts(cfg, self.model, self.tok)
        self.art = art
        self.eval, self.calib_sentences, self.dev, self.calib = (
            art["eval"], art["calib"], art["dev"], art["batches"])
        with torch.no_grad():
            self.ref = self.embed(self.model)
            self.dev_ref = self.embed(self.model, self.dev)
        self.fp32_size = model_size_bytes(self.model)
        self.rows: list[list[Any]] = []
        self.data: dict[str, Any] = {"n_eval": len(self.eval), "n_calib": len(self.calib_sentences),
                                     "calib_batches": len(self.calib), "n_dev": len(self.dev),
                                     "results": {}}
        self.notes: list[str] = []

    def embed(self, model, sentences=None) -> torch.Tensor:
        return zoo.embed(model, self.tok, sentences or self.eval, batch_size=32)

    def dev_cosine(self, model) -> float:
        """eval_fn for mixed precision: mean cosine to FP32 on the dev sentences (not the eval ones)."""
        with torch.no_grad():
            return cos_stats(self.dev_ref, self.embed(model, self.dev))[0]

    def record(self, mode: str, tool: str, name: str, emb: torch.Tensor, size: int | None,
               seconds: float | None, **extra) -> tuple[float, float]:
        mean, worst = cos_stats(self.ref, emb)
        self.data["results"][f"{mode} / {tool} / {name}"] = dict(
            mode=mode, tool=tool, cos_mean=r4(mean), cos_min=r4(worst),
            size_mb=mb(size) if size else None,
            quantize_s=round(seconds, 1) if seconds is not None else None, **extra)
        self.rows.append([mode, tool, name, f"{mean:.4f}", f"{worst:.4f}",
                          mb(size) if size else "—", round(seconds, 1) if seconds else "—"])
        log(f"  {mode:20s} {tool:12s} {name:48s} cos {mean:.4f} / {worst:.4f}")
        return mean, worst

    # --- lowbit -------------------------------------------------------------------------
    def quantize(self, recipe: Recipe):
        with quiet():
            return lowbit.quantize(self.model, recipe, calibrate=self.calib, progress=False)

    def lowbit(self, name: str, mode: str, recipe: Recipe, **extra):
        with Stopwatch() as t:
            q = self.quantize(recipe)
        with torch.no_grad():
            emb = self.embed(q)
        self.record(mode, "lowbit", name, emb, model_size_bytes(q), t.seconds,
                    recipe=recipe.to_dict(), **extra)
        self.notes.append(f"lowbit `{name}`: {recipe_text(recipe)}")
        return q

    def sensitivity(self, recipe: Recipe, top: int = 8) -> tuple[Table, list[str]]:
        """`analyze_sensitivity` with the embedding metric (mean dev cosine) as ``eval_fn``.

        Output SQNR would rank the pooler first: BERT's pooler output is part of the
        model output but not of the sentence embedding.
        """
        with quiet(), Stopwatch() as t:
            result = lowbit.analyze_sensitivity(self.model, recipe, self.calib,
                                                eval_fn=self.dev_cosine, progress=False)
        log(f"  analyze_sensitivity({recipe.name}): {t.seconds:.0f} s, dev cosine all quantized "
            f"{result.quantized_metric:.4f}")
        ranked = result.ranked()
        self.data[f"sensitivity {recipe.name}"] = [
            dict(name=x.name, only_this=r4(x.only_this), all_but_this=r4(x.all_but_this),
                 cost=r4(x.sensitivity)) for x in ranked]
        rows = [[i + 1, f"`{x.name}`", x.params, f"{x.only_this:.5f}", f"{x.all_but_this:.5f}",
                 f"{x.sensitivity:.5f}"] for i, x in enumerate(ranked[:top])]
        table = Table(
            f"MiniLM sensitivity: `analyze_sensitivity({recipe.name}, eval_fn=dev cosine)`, top {top}",
            ["rank", "layer", "params", "dev cosine, only this layer quantized",
             "dev cosine, all but this layer", "cost (mean of the two losses)"], rows,
            [f"all {len(ranked)} layers quantized: dev cosine {result.quantized_metric:.5f}; "
             f"{len(self.dev)} dev sentences; {t.seconds:.0f} s",
             "the probe prepares, smooths (the recipe's `smooth_alpha`) and calibrates its own "
             "copy as `quantize` does, so it ranks the model that `quantize` returns"])
        return table, [x.name for x in ranked]

    def keep_top(self, recipe: Recipe, ranked: list[str], target: float, max_layers: int = 4):
        """Keep the most sensitive layers in FP32, one more at a time, until the dev cosine >= target."""
        rules, trail = [], []
        for name in ranked[:max_layers]:
            rules.append(Rule(name, keep="fp32"))
            candidate = recipe.with_(name=f"{recipe.name}-keep{len(rules)}").with_rules(*rules)
            with Stopwatch() as t:
                q = self.quantize(candidate)
            dev = self.dev_cosine(q)
            trail.append(f"{len(rules)}: {dev:.4f}")
            log(f"  keep top {len(rules)} in FP32: dev cosine {dev:.4f} ({t.seconds:.0f} s)")
            if dev >= target or len(rules) == max_layers:
                with torch.no_grad():
                    emb = self.embed(q)
                size = model_size_bytes(q)
                self.record("static int8", "lowbit", f"{recipe.name} + top-{len(rules)} layers FP32",
                            emb, size, t.seconds, kept=[r.pattern for r in rules],
                            recipe=candidate.to_dict())
                self.notes.append(
                    f"`{recipe.name} + top-{len(rules)} layers FP32`: the most sensitive layers of "
                    f"the ranking above kept in FP32 one at a time until the dev cosine reached "
                    f"{target} (dev cosine after 1, 2, ... layers: {', '.join(trail)}); kept "
                    f"{', '.join(f'`{r.pattern}`' for r in rules)}")
                return q

    def mixed(self, recipe: Recipe, mode: str, max_drop: float, fallback: str = "fp32",
              data=None):
        with quiet(), Stopwatch() as t:
            result = lowbit.auto_mixed_precision(
                self.model, recipe, data or self.calib, eval_fn=self.dev_cosine, max_drop=max_drop,
                fallback=fallback, progress=False)
        with torch.no_grad():
            emb = self.embed(result.model)
        size = model_size_bytes(result.model)
        name = f"{recipe.name} + auto_mixed_precision ({fallback})"
        self.record(mode, "lowbit", name, emb, size, t.seconds, promoted=result.promoted,
                    extra_weight_bits=result.extra_bits, evaluations=result.evaluations,
                    dev_before=r4(result.metric_before), dev_after=r4(result.metric_after),
                    recipe=result.recipe.to_dict())
        overhead = result.extra_bits / max(result.weight_bits_before, 1)
        self.notes.append(
            f"`{name}`: `auto_mixed_precision(eval_fn = mean cosine on {len(self.dev)} dev "
            f"sentences, max_drop={max_drop}, fallback={fallback!r})` promoted "
            f"{len(result.promoted)} layer(s): {', '.join(f'`{p}`' for p in result.promoted) or 'none'}"
            f"; +{overhead:.1%} weight bits; dev cosine {result.metric_before:.4f} (as the search "
            f"measured it) → {result.metric_after:.4f}; {result.evaluations} evaluations, "
            f"{t.seconds:.0f} s")
        return result

    # --- peers --------------------------------------------------------------------------
    def torch_ao_dynamic(self) -> None:
        from torch.ao.quantization import quantize_dynamic

        torch.backends.quantized.engine = "x86"
        with quiet(), Stopwatch() as t:
            q = quantize_dynamic(copy.deepcopy(self.model), {torch.nn.Linear}, dtype=torch.qint8)
        with quiet(), torch.no_grad():
            emb = self.embed(q)
        self.record("dynamic int8", "torch.ao", "quantize_dynamic (Linear, qint8)", emb, None,
                    t.seconds)
        self.notes.append("torch.ao `quantize_dynamic({nn.Linear}, qint8)`: fbgemm/x86 kernels, "
                          "per-tensor int8 weights, per-tensor dynamic uint8 activations "
                          "(reduce_range: 7 bits)")

    def ort_embed(self, path) -> torch.Tensor:
        sess = session(path, self.cfg.threads)
        out = []
        for batch in zoo.tokenize_batches(self.tok, self.eval, batch_size=32):
            feed = {k: batch[k].numpy() for k in INPUTS}
            hidden = torch.from_numpy(sess.run(None, feed)[0])
            out.append(mean_pool(hidden, batch["attention_mask"]))
        return torch.cat(out)

    def ort_static(self, runs: list[tuple[str, str]]) -> None:
        from ptq_calibration import ort_measured

        # The FP32 export must reproduce PyTorch before any quantized ORT number means anything.
        fp32_mean, fp32_min = cos_stats(self.ref, self.ort_embed(self.art["fp32_onnx"]))
        pre_mean, pre_min = cos_stats(self.ref, self.ort_embed(self.art["onnx"]))
        if min(fp32_min, pre_min) < FP32_EXPORT_FLOOR:
            raise RuntimeError(
                f"the FP32 ONNX export disagrees with PyTorch: cosine mean/min {fp32_mean:.6f} / "
                f"{fp32_min:.6f} (after quant_pre_process {pre_mean:.6f} / {pre_min:.6f}); "
                f"every ONNX Runtime row would be meaningless")
        self.data["fp32_onnx_cosine"] = dict(export=[fp32_mean, fp32_min],
                                             preprocessed=[pre_mean, pre_min])
        self.rows.append(["static int8", "ONNX Runtime", "FP32 export, not quantized (check)",
                          f"{pre_mean:.6f}", f"{pre_min:.6f}",
                          mb(self.art["onnx"].stat().st_size), "—"])
        log(f"  FP32 ONNX vs PyTorch: cos {fp32_mean:.6f} / {fp32_min:.6f}; "
            f"preprocessed {pre_mean:.6f} / {pre_min:.6f}")
        linear_nodes = weight_matmuls(self.art["onnx"])
        best: dict[str, tuple[float, str]] = {}
        for method, scope in runs:
            extra = {}
            try:
                # each in a fresh process (time and peak memory; ORT's histogram calibrators
                # hold gigabytes), shared with the `calibration` family
                measured = ort_measured(self.cfg, method, scope)
                dst, seconds = Path(measured["out"]), measured["seconds"]
                extra = {"peak_rss_mb": mb(measured["peak_rss"])}
            except Exception as err:
                log(f"  ONNX Runtime {method}, {scope} FAILED: {type(err).__name__}: {err}")
                self.rows.append(["static int8", "ONNX Runtime", f"{method}, {scope}", "failed",
                                  "—", "—", "—"])
                self.notes.append(f"ONNX Runtime {method}, {scope} failed: "
                                  f"{type(err).__name__}: {str(err)[-200:]}")
                continue
            mean, _ = self.record("static int8", "ONNX Runtime", f"{method}, {scope}",
                                  self.ort_embed(dst), dst.stat().st_size, seconds,
                                  quantized=quantized_op_summary(dst), **extra)
            if scope != "default op set" and mean > best.get("any", (-1.0, ""))[0]:
                best["any"] = (mean, f"{method}, {scope}")
        quantized = next((v["quantized"] for k, v in self.data["results"].items()
                          if k.endswith("default op set")), "?")
        self.notes.append(
            f"ONNX Runtime {__import__('onnxruntime').__version__} `quantize_static`: FP32 ONNX from "
            "`torch.onnx.export(dynamo=False)` (the default dynamo exporter needs `onnxscript`, "
            f"not installed); the FP32 export reproduces PyTorch (cosine mean / min "
            f"{fp32_mean:.6f} / {fp32_min:.6f}; the benchmark stops if either is below "
            f"{FP32_EXPORT_FLOOR}); {self.art['pre_note']}, QDQ, per_channel=True, S8S8, the same "
            f"{len(self.calib)} calibration batches as lowbit. ORT's Entropy defaults (128 bins, "
            "128 quantized bins) leave one candidate threshold, the full range, so Entropy gives "
            "MinMax's scales")
        self.notes.append(
            "ORT scopes: 'default op set' = `quantize_static`'s default `op_types_to_quantize` "
            f"(quantized inputs of: {quantized}); 'softmax inputs float' = the same with "
            "`nodes_to_exclude` = the 6 Softmax nodes and the 6 attention-mask Adds feeding them; "
            "'MatMul ops' = `op_types_to_quantize=['MatMul']` (the 36 weight MatMuls and the 12 "
            f"attention MatMuls); 'Linear only' = the {len(linear_nodes)} weight MatMuls "
            "(`nodes_to_quantize`), what lowbit quantizes")
        self.notes.append(
            "Why ORT's default op set collapses (cosine ~0.38): it quantizes the attention-mask "
            "Add and the Softmax input per tensor; their calibrated range spans the additive mask "
            "(-10000 on padding tokens; transformers' own finfo.min mask is worse), so the int8 "
            "step is ~40 and every real attention score rounds to the same code: attention "
            "becomes uniform over the sentence. The other Adds (bias adds and the residual "
            "stream, whose outlier channels stretch a per-tensor range) cost most of the rest: "
            "with Softmax inputs float ~0.82, with no Add quantized ~0.93, with only MatMuls "
            "quantized ~0.94 (measured in quick runs; the peers' 0.930 / 0.869)"
            + (f". Best ORT: {best['any'][1]} {best['any'][0]:.4f}" if best else ""))


def run(cfg: Config) -> Section:
    section = Section("minilm")
    log("MiniLM: loading the model, exporting it to ONNX, FP32 embeddings")
    bench = MiniLMBench(cfg)
    log(f"  {len(bench.eval)} evaluation sentences, {len(bench.calib_sentences)} calibration "
        f"sentences in {len(bench.calib)} batches, {len(bench.dev)} dev sentences")
    for name, (mode, recipe) in lowbit_recipes().items():
        bench.lowbit(name, mode, recipe)
    bench.torch_ao_dynamic()

    # static int8: what sensitivity analysis and mixed precision find
    table, ranked = bench.sensitivity(STATIC_SMOOTH)
    section.tables.append(table)
    # (auto_mixed_precision(fallback="fp32") would cost ~10 more calibrations; the full run
    # keeps it out to stay under ~25 min)
    bench.keep_top(STATIC_SMOOTH, ranked, target=0.9985, max_layers=3 if cfg.quick else 6)
    # int4: which layers need int8 weights
    bench.mixed(W4_ASYM_MINMAX, "weight-only int4 g32", max_drop=0.017, fallback="int8",
                data=bench.calib[:4])

    # ORT 1.32's Entropy defaults (128 bins, 128 quantized bins) leave one candidate threshold,
    # the full range, so Entropy = MinMax's scales. Entropy on the default op set and on the
    # MatMul ops are also the calibration-cost runs (shared with `ptq_calibration`).
    runs = [("Entropy", "default op set"), ("MinMax", "default op set, softmax inputs float"),
            ("Entropy", "MatMul ops"), ("Percentile", "MatMul ops"),
            ("MinMax", "Linear only"), ("Percentile", "Linear only")]
    bench.ort_static([runs[0], runs[2], runs[3]] if cfg.quick else runs)

    for mode, tool, name, mean, worst in QUOTED:
        bench.rows.append([mode, tool, name, f"{mean:.4f}", f"{worst:.3f}", "—", "—"])
    order = ["dynamic int8", "static int8", "weight-only int8", "weight-only int4 g32"]
    bench.rows.sort(key=lambda row: order.index(row[0]))
    bench.notes.append("The HF BERT does not trace with torch.fx, so lowbit quantizes only the "
                       "Linear layers (and the embedding tables, weight-only, where the recipe "
                       "includes Embedding): attention matmuls, softmax, residual adds and "
                       "LayerNorm stay float")
    bench.notes.append(f"FP32 size {mb(bench.fp32_size)} MB. Sizes: lowbit `model_size_bytes` "
                       "(codes at their bit width + scales + float parts); ORT: the .onnx file")
    bench.notes.append("'(quoted)' rows: measured on this machine by peers (issue #3) with tools "
                       "not installed here (torchao, NNCF, optimum-quanto; ORT's MatMulNBits "
                       "quantizer needs `onnx_ir`, not installed)")
    section.tables.insert(0, Table(
        f"MiniLM: cosine similarity of sentence embeddings to FP32 ({len(bench.eval)} sentences)",
        ["mode", "tool", "recipe / method", "cos mean", "cos min", "size MB", "quantize s"],
        bench.rows, bench.notes))
    section.data = bench.data
    return section

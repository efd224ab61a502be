"""Post-training quantization of real models: lowbit vs ONNX Runtime vs torch.ao, in one run.

    python benchmarks/ptq.py                      # everything (~25 min on 2 cores)
    python benchmarks/ptq.py --only minilm        # one family: minilm, mobilenet, fashion,
                                                  # smollm2, calibration (repeatable)
    python benchmarks/ptq.py --quick              # small data, a few minutes; writes ptq_quick.*

Writes benchmarks/results/ptq.json and ptq.md. A run with ``--only`` replaces
its families' sections and keeps the others from the previous run (each
section records when and how long it ran). Progress goes to stdout.

Families (one module each):

- ``ptq_minilm``: all-MiniLM-L6-v2 sentence embeddings (int8 static / dynamic,
  int8 / int4 weight-only; sensitivity and mixed precision);
- ``ptq_mobilenet``: MobileNetV2 ImageNet, int8 static per-channel;
- ``ptq_fashion``: FashionCNN, int8 / int4 / W4A8 accuracy drops, mixed precision;
- ``ptq_smollm2``: SmolLM2-135M int8 / int4 weight-only perplexity;
- ``ptq_calibration``: calibration wall time and peak memory, lowbit vs ORT entropy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# On a shared, oversubscribed machine OpenMP threads that spin at barriers waste the cores
# other threads need (measured: several times slower); sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")  # model loaders' progress bars would drown the log

import torch

from common import RESULTS, machine, markdown_table
from ptq_common import Config, Section, log

FAMILIES = ("fashion", "mobilenet", "minilm", "smollm2", "calibration")
TITLES = {
    "fashion": "FashionCNN (Fashion-MNIST)",
    "mobilenet": "MobileNetV2 (ImageNet checkpoint)",
    "minilm": "all-MiniLM-L6-v2 (sentence embeddings)",
    "smollm2": "SmolLM2-135M-Instruct (perplexity)",
    "calibration": "Calibration cost on MiniLM",
}


def run_family(name: str, cfg: Config) -> Section:
    module = __import__(f"ptq_{name}")
    start = time.perf_counter()
    section = module.run(cfg)
    section.seconds = round(time.perf_counter() - start, 1)
    log(f"{name}: done in {section.seconds:.0f} s")
    return section


def render(sections: dict[str, dict], meta: dict) -> str:
    lines = [
        "# Post-training quantization of real models: lowbit vs ONNX Runtime vs torch.ao",
        "",
        "Written by `python benchmarks/ptq.py`"
        + (" --quick" if meta.get("quick") else "") + ". All tools quantize the same FP32 "
        "model and calibrate on the same data; fidelity is always measured against the FP32 "
        "model on data disjoint from the calibration data.",
        "",
        f"Machine: {meta['machine']}; torch threads {meta['machine']['threads']}. "
        "The machine is shared, so wall times are indicative only.",
        "",
    ]
    for name in FAMILIES:
        if name not in sections:
            continue
        sec = sections[name]
        lines += [f"## {TITLES[name]}", "",
                  f"_run {sec.get('finished', '?')}, {sec.get('seconds', 0):.0f} s_", ""]
        for table in sec["tables"]:
            lines += [f"### {table['title']}", "", markdown_table(table["headers"], table["rows"])]
            lines += [f"- {note}" for note in table["notes"]]
            lines.append("")
        for paragraph in sec.get("text", []):
            lines += [paragraph, ""]
    total = meta.get("last_run_seconds")
    if total is not None:
        lines.append(f"Last run ({', '.join(meta['last_run'])}): {total:.0f} s wall time.")
    for family, trace in meta.get("failures", {}).items():
        last = trace.strip().splitlines()[-1] if trace.strip() else "?"
        lines += ["", f"**{family} FAILED in the last run** (its section above, if any, is from an "
                  f"earlier run): `{last}`; the traceback is in the JSON (`meta.failures`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=FAMILIES,
                        help="run only this family (repeat for several)")
    parser.add_argument("--quick", action="store_true",
                        help="small data sets and few windows; writes ptq_quick.{json,md}")
    parser.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    parser.add_argument("--presets", action="store_true",
                        help="also run presets too slow for the default run (SmolLM2 w4-g128 "
                             "with its clipping search, ~9 min)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the exported ONNX files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config(quick=args.quick, threads=args.threads, presets=args.presets)
    families = args.only or list(FAMILIES)
    name = "ptq_quick" if args.quick else "ptq"
    json_path = RESULTS / f"{name}.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    sections: dict[str, dict] = previous.get("sections", {})
    log(f"running {', '.join(families)}{' (quick)' if args.quick else ''}; work dir {cfg.workdir}")
    start = time.perf_counter()
    failed: list[str] = []
    failures: dict[str, str] = {}
    try:
        for family in families:
            log(f"=== {family} ===")
            try:
                section = run_family(family, cfg)
            except Exception as err:  # one family failing must not lose the others' results
                log(f"{family} FAILED: {type(err).__name__}: {err}")
                # the traceback goes to the log and into the results, so a failure is never
                # "unknown" afterwards (the family's previous section is kept as it was)
                trace = traceback.format_exc()
                print(trace, flush=True)
                failures[family] = trace[-4000:]
                failed.append(family)
                continue
            data = section.to_dict()
            data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
            sections[family] = data
            _write(name, sections, args, families, time.perf_counter() - start, failures)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    total = time.perf_counter() - start
    _write(name, sections, args, families, total, failures)
    log(f"all done in {total:.0f} s; wrote {RESULTS / name}.json and .md")
    if failed:
        log(f"failed families: {', '.join(failed)}")
    return 1 if failed else 0


def _write(name: str, sections: dict, args, families: list[str], seconds: float,
           failures: dict[str, str]) -> None:
    meta = {"machine": machine(), "quick": args.quick, "last_run": families,
            "last_run_seconds": round(seconds, 1), "argv": sys.argv[1:], "failures": failures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "sections": sections}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(render(sections, meta))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())

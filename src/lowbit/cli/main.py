"""The ``lowbit`` command: quantize a model, export and benchmark it, list presets, run the demo.

    lowbit presets
    lowbit quantize MODEL --recipe x86 --calib DATA -o OUT
    lowbit export MODEL OUT/model.lowbit.safetensors --input-shape 1,3,224,224 -o model.onnx
    lowbit bench MODEL OUT/model.lowbit.safetensors --input-shape 1,3,224,224 -o bench/
    lowbit demo

Every subcommand is a thin layer over the Python API (``lowbit.quantize``,
``lowbit.recipes``, ``lowbit.report``); nothing here is out of its reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from lowbit import __version__
from lowbit.cli.export_cmd import register as register_export_commands
from lowbit.errors import LowbitError

EPILOG = """examples:
  lowbit presets
  lowbit quantize mypkg.models:resnet18 --recipe x86 --calib calib/ -o out/
  lowbit quantize ./minilm-dir --recipe w8a8-dynamic -o out/
  lowbit quantize model.pt --recipe-file my_recipe.yaml --calib batch.npy -o out/
  lowbit export mypkg.models:resnet18 out/model.lowbit.safetensors --input-shape 1,3,224,224 -o r18.onnx
  lowbit bench mypkg.models:resnet18 out/model.lowbit.safetensors --input-shape 1,3,224,224
  lowbit demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Turn a trained FP32 PyTorch model into a low-bit one and prove it still works.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    presets = sub.add_parser("presets", help="list the recipe presets and what they target")
    presets.add_argument("--show", metavar="NAME", help="print one preset in full (as YAML)")

    q = sub.add_parser(
        "quantize",
        help="quantize a model with a recipe and write the checkpoint and report",
        description="Quantize MODEL with a recipe, calibrate on DATA, write the quantized "
        "checkpoint (safetensors), the recipe, and an HTML + Markdown report to OUT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("model", help="package.module:factory, a torch.save'd model file, or a Hugging "
                                 "Face model directory")
    group = q.add_mutually_exclusive_group()
    group.add_argument("--recipe", default="x86", help="preset name (see `lowbit presets`)")
    group.add_argument("--recipe-file", type=Path, help="recipe in YAML or TOML")
    q.add_argument("--calib", metavar="DATA", help="calibration data: .npy file or directory, image "
                                                 "directory, or text file (Hugging Face models)")
    q.add_argument("--batches", type=int, default=100, help="calibration batches")
    q.add_argument("--batch-size", type=int, default=16, help="samples per calibration batch")
    q.add_argument("--image-size", type=int, default=224, help="image side for image directories")
    q.add_argument("-o", "--output", type=Path, default=Path("lowbit-out"), help="output directory")
    q.add_argument("--no-report", action="store_true", help="skip the HTML / Markdown report")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")

    COMMANDS.update(register_export_commands(sub))

    demo = sub.add_parser("demo", help="train a small CNN on bundled digits and compare recipes",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("-o", "--output", type=Path, default=Path("demo-output"),
                      help="where the report goes")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def cmd_presets(args: argparse.Namespace) -> int:
    from lowbit.recipes import list_presets, preset

    if args.show:
        import yaml

        print(yaml.safe_dump(preset(args.show).to_dict(), sort_keys=False), end="")
        return 0
    rows = list_presets()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name.ljust(width)}  {description}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import lowbit
    from lowbit.cli.sources import load_batches, load_model
    from lowbit.export import save_checkpoint
    from lowbit.recipes import Recipe, preset

    recipe = Recipe.load(args.recipe_file) if args.recipe_file else preset(args.recipe)
    model, tokenizer = load_model(args.model)
    batches = None
    if args.calib:
        batches = load_batches(args.calib, batch_size=args.batch_size, max_batches=args.batches,
                               tokenizer=tokenizer, image_size=args.image_size)
    qmodel = lowbit.quantize(model, recipe, calibrate=batches, max_batches=args.batches,
                             progress=not args.no_progress)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(qmodel, out / "model.lowbit.safetensors")
    recipe.save(out / "recipe.yaml")
    print(f"wrote {checkpoint}")
    if not args.no_report:
        from lowbit.report import compare

        report = compare(model, qmodel, data=batches, max_batches=8)
        (out / "report.md").write_text(report.to_markdown())
        (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        html = report.write_html(out / "report.html")
        report.print()
        print(f"wrote {html}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lowbit.cli.demo import run_demo

    run_demo(args.output, progress=not args.no_progress)
    return 0


COMMANDS = {"presets": cmd_presets, "quantize": cmd_quantize, "demo": cmd_demo}  # + export, bench


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return COMMANDS[args.command](args)
    except LowbitError as err:
        print(f"lowbit: error: {err}", file=sys.stderr)
        return 1

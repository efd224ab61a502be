"""``lowbit export`` / ``lowbit bench`` command functions (wired into the CLI by cli/main.py)."""

from __future__ import annotations

import argparse

import onnx
import torch

import lowbit
from helpers.export_models import MLP
from lowbit.cli.export_cmd import register
from lowbit.export import save_checkpoint


def _parser():
    parser = argparse.ArgumentParser()
    return parser, register(parser.add_subparsers(dest="command"))


def test_export_and_bench_from_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = MLP().eval()
    model_file = tmp_path / "mlp.pt"
    torch.save(model, model_file)
    qmodel = lowbit.quantize(model, "onnxruntime", calibrate=[torch.randn(16, 32) for _ in range(2)],
                             progress=False)
    ckpt = save_checkpoint(qmodel, tmp_path / "mlp.safetensors")
    parser, commands = _parser()
    args = parser.parse_args(["export", str(model_file), str(ckpt), "--input-shape", "4,32",
                              "-o", str(tmp_path / "mlp.onnx")])
    assert commands[args.command](args) == 0
    assert onnx.load(str(tmp_path / "mlp.onnx")).graph.node
    assert "QGemm 3" in capsys.readouterr().out
    args = parser.parse_args(["bench", str(model_file), str(ckpt), "--input-shape", "4,32", "--repeats", "2",
                              "--warmup", "0", "--threads", "1", "--no-progress", "-o", str(tmp_path / "b")])
    assert commands[args.command](args) == 0
    table = (tmp_path / "b" / "bench.md").read_text()
    assert "quantized ONNX Runtime" in table and "SQNR" in table

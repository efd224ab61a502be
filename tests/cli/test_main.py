"""The ``lowbit`` command end to end: presets, quantize, export, bench, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from helpers.export_models import MLP
from lowbit.cli.main import main


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A saved float MLP, its calibration batch and the checkpoint `lowbit quantize` wrote."""
    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model_file = tmp / "mlp.pt"
    torch.save(MLP().eval(), model_file)
    calib = tmp / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32))
    out = tmp / "out"
    assert main(["quantize", str(model_file), "--recipe", "onnxruntime", "--calib", str(calib),
                 "--batches", "4", "--batch-size", "16", "-o", str(out), "--no-progress"]) == 0
    return model_file, calib, out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("presets", "quantize", "export", "bench", "demo"):
        assert command in out


def test_help_of_every_subcommand(capsys):
    for command in ("presets", "quantize", "export", "bench", "demo"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: lowbit " + command in capsys.readouterr().out


def test_presets_lists_and_shows(capsys):
    assert main(["presets"]) == 0
    assert "x86" in capsys.readouterr().out
    assert main(["presets", "--show", "w4-g128"]) == 0
    assert "group" in capsys.readouterr().out


def test_unknown_preset_is_a_clean_error(capsys):
    assert main(["presets", "--show", "no-such-preset"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error:") and "no-such-preset" in err


def test_quantize_writes_checkpoint_recipe_and_report(quantized):
    _, _, out = quantized
    for name in ("model.lowbit.safetensors", "recipe.yaml", "report.md", "report.json", "report.html"):
        assert (out / name).stat().st_size > 0, name


def test_export_then_bench(quantized, tmp_path, capsys):
    model_file, calib, out = quantized
    onnx_path = tmp_path / "mlp.onnx"
    assert main(["export", str(model_file), str(out / "model.lowbit.safetensors"), "--example", str(calib),
                 "--batch-size", "4", "-o", str(onnx_path)]) == 0
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path)).graph.node)
    assert "ONNX Runtime runs:" in capsys.readouterr().out
    assert main(["bench", str(model_file), str(out / "model.lowbit.safetensors"), "--input-shape", "4,32",
                 "--repeats", "2", "--warmup", "0", "--no-progress", "-o", str(tmp_path / "b")]) == 0
    assert "| quantized ONNX Runtime |" in (tmp_path / "b" / "bench.md").read_text()


def test_export_without_an_example_says_what_to_give(quantized, capsys):
    model_file, _, out = quantized
    assert main(["export", str(model_file), str(out / "model.lowbit.safetensors")]) == 1
    assert "--input-shape" in capsys.readouterr().err


def test_bad_input_shape_is_a_clean_error(quantized, capsys):
    model_file, _, out = quantized
    assert main(["export", str(model_file), str(out / "model.lowbit.safetensors"),
                 "--input-shape", "4,x"]) == 1
    assert "comma-separated" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clean_error(quantized, tmp_path, capsys):
    model_file, _, _ = quantized
    assert main(["bench", str(model_file), str(tmp_path / "nothing.safetensors"),
                 "--input-shape", "4,32"]) == 1
    assert "lowbit: error:" in capsys.readouterr().err

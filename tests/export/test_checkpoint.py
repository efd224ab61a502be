"""Packed checkpoints: bit-exact reload for every width, sizes, and every kind of bad file."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import lowbit
from helpers.export_models import MLP, SmallResNet, calibration_batches, trained_classifier
from lowbit.export import CheckpointError, load_checkpoint, load_quantized, read_checkpoint, save_checkpoint
from lowbit.export.checkpoint import _unpacked_json
from lowbit.flows import fuse, prepare
from lowbit.recipes import QuantSpec, Recipe, Rule, preset

WEIGHT_ONLY = {
    "int4-channel": Recipe("int4-channel", mode="weight_only", weight=QuantSpec("int4", "channel")),
    "uint4-asym": Recipe("uint4-asym", mode="weight_only",
                         weight=QuantSpec("uint4", "channel", symmetric=False)),
    "int2-channel": Recipe("int2-channel", mode="weight_only", weight=QuantSpec("int2", "channel")),
    "int3-group": Recipe("int3-group", mode="weight_only", weight=QuantSpec("int3", "group", group_size=16)),
}


def _recipe(name):
    return WEIGHT_ONLY.get(name) or preset(name)


@pytest.fixture(scope="module")
def model():
    return trained_classifier()


@pytest.mark.parametrize("name", ["x86", "w8a8-dynamic", "w4-g32", *WEIGHT_ONLY])
def test_reload_is_bit_exact(model, name, tmp_path):
    qmodel = lowbit.quantize(model, _recipe(name), calibrate=calibration_batches(2), progress=False)
    path = save_checkpoint(qmodel, tmp_path / "m.safetensors")
    reloaded = load_quantized(SmallResNet(), path)  # any float model of the same structure
    x = calibration_batches(1)[0]
    with torch.no_grad():
        assert torch.equal(qmodel(x), reloaded(x)), name
    assert reloaded.lowbit_state.recipe == qmodel.lowbit_state.recipe
    functional = qmodel.lowbit_state.functional
    assert sorted(reloaded.lowbit_state.functional.values()) == sorted(functional.values())


def test_low_bit_codes_are_packed_and_restored_exactly(model, tmp_path):
    qmodel = lowbit.quantize(model, WEIGHT_ONLY["int2-channel"], progress=False)
    path = save_checkpoint(qmodel, tmp_path / "m.safetensors")
    state, meta = read_checkpoint(path)
    assert meta["codec"].startswith("z:")  # compressed index (format 3)
    packed = _unpacked_json(meta["codec"])["packed"]
    assert packed["fc.weight_codes"]["bits"] == 2
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        stored = f.get_tensor("fc.weight_codes")
    assert stored.dtype == torch.uint8 and stored.numel() == qmodel.fc.weight_codes.numel() // 4
    assert torch.equal(state["fc.weight_codes"], qmodel.fc.weight_codes)


def test_mixed_precision_and_bias_corrected_models_reload(model, tmp_path):
    recipe = preset("x86").with_(bias_correction=True).with_rules(Rule("head", keep="fp16"))
    qmodel = lowbit.quantize(model, recipe, calibrate=calibration_batches(2), progress=False)
    reloaded = load_quantized(SmallResNet(), save_checkpoint(qmodel, tmp_path / "m.safetensors"))
    x = calibration_batches(1)[0]
    with torch.no_grad():
        assert torch.equal(qmodel(x), reloaded(x))
    assert reloaded.lowbit_state.kept == {"head": "fp16"}


@pytest.mark.parametrize("recipe,limit", [(preset("w8"), 0.26), (WEIGHT_ONLY["int4-channel"], 0.14),
                                          (preset("w4-g128"), 0.14)])
def test_sizes_against_the_fp32_file(recipe, limit, tmp_path):
    torch.manual_seed(0)
    float_model = MLP(width=512, inputs=512)
    fp32 = tmp_path / "fp32.safetensors"
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()}, str(fp32))
    qmodel = lowbit.quantize(float_model, recipe, progress=False)
    path = save_checkpoint(qmodel, tmp_path / "q.safetensors")
    ratio = path.stat().st_size / fp32.stat().st_size
    assert ratio <= limit, (recipe.name, ratio)


# --- bad files ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    qmodel = lowbit.quantize(model, "w8", progress=False)
    return save_checkpoint(qmodel, tmp_path_factory.mktemp("ckpt") / "good.safetensors")


def _copy(src, dst, data: bytes | None = None):
    dst.write_bytes(src.read_bytes() if data is None else data)
    return dst


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_quantized(SmallResNet(), tmp_path / "nope.safetensors")


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    path = _copy(saved, tmp_path / "t.safetensors", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_quantized(SmallResNet(), path)


def test_corrupted_tensor_bytes(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor: the header still parses
    path = _copy(saved, tmp_path / "c.safetensors", bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        read_checkpoint(path)


def test_corrupted_header(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[10:20] = b"\x00" * 10
    with pytest.raises(CheckpointError):
        read_checkpoint(_copy(saved, tmp_path / "h.safetensors", bytes(data)))


def _with_metadata(src, dst, change):
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    change(header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return dst


def test_format_2_files_with_plain_json_indexes_still_load(model, saved, tmp_path):
    def as_format_2(meta):
        meta.update(format_version="2", codec=json.dumps(_unpacked_json(meta["codec"])),
                    quantizers=json.dumps(_unpacked_json(meta["quantizers"])))

    old = _with_metadata(saved, tmp_path / "v2.safetensors", as_format_2)
    x = calibration_batches(1)[0]
    with torch.no_grad():
        assert torch.equal(load_quantized(model, old)(x), load_quantized(model, saved)(x))


def test_damaged_compressed_index_is_a_clear_error(saved, tmp_path):
    path = _with_metadata(saved, tmp_path / "z.safetensors", lambda m: m.update(codec="z:AAAA"))
    with pytest.raises(CheckpointError, match="corrupted"):
        read_checkpoint(path)


@pytest.mark.parametrize("damaged", ["z:AAAA", "z:not base64!", "{not json"])
def test_damaged_quantizer_index_is_a_clear_error(model, saved, tmp_path, damaged):
    path = _with_metadata(saved, tmp_path / "q.safetensors", lambda m: m.update(quantizers=damaged))
    with pytest.raises(CheckpointError, match="quantizer index"):
        load_quantized(model, path)


def test_newer_format_version(saved, tmp_path):
    path = _with_metadata(saved, tmp_path / "v.safetensors", lambda m: m.update(format_version="99"))
    with pytest.raises(CheckpointError, match="newer"):
        load_quantized(SmallResNet(), path)


def test_file_not_written_by_lowbit(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not written by lowbit"):
        read_checkpoint(path)


def test_file_from_another_model(saved):
    with pytest.raises(CheckpointError, match="another model"):
        load_quantized(MLP(), saved)
    wider = SmallResNet()
    wider.fc = torch.nn.Linear(12 * 4 * 4, 64)
    wider.head = torch.nn.Linear(64, 4)
    with pytest.raises(CheckpointError, match="another model"):
        load_quantized(wider, saved)


def test_model_without_recipe_cannot_be_rebuilt(model, tmp_path):
    qmodel = lowbit.quantize(model, "w8", progress=False)
    del qmodel.lowbit_state
    with pytest.raises(CheckpointError, match="no recipe"):
        load_quantized(SmallResNet(), save_checkpoint(qmodel, tmp_path / "m.safetensors"))


def test_load_checkpoint_into_a_prepared_model(model, saved):
    target = SmallResNet().eval()
    fuse(target)
    target = prepare(target, preset("w8"))
    load_checkpoint(target, saved)
    reference = lowbit.quantize(model, "w8", progress=False)
    x = calibration_batches(1)[0]
    with torch.no_grad():
        assert torch.equal(target(x), reference(x))

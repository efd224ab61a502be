"""lowbit.quantize end to end: presets, fusion, functional ops, calibration and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from helpers.flow_models import ResidualCNN, Untraceable, batches, randomize_bn, sqnr
from lowbit.errors import InputError, LowbitError
from lowbit.flows import CalibrationError, LowbitWarning, QuantState, prepare
from lowbit.nn import FloatKept, QuantAdd, QuantCat, QuantConv2d, QuantLinear
from lowbit.recipes import Rule, list_presets, preset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(ResidualCNN())


@pytest.mark.parametrize("name", [name for name, _ in list_presets()])
def test_every_preset_quantizes_and_stays_close(model, name):
    data = batches()
    qmodel = lowbit.quantize(model, name, calibrate=data, progress=False)
    ref, out = model(data[0]), qmodel(data[0])
    floor = 15.0 if "w4" in name or name in ("fp8", "x86-novnni") else 25.0
    # Symmetric int8 KL-calibrated activations: the residual add's two operands (one a
    # ReLU output, using half the int8 range) are each quantized, as runtimes add them.
    floor = 12.0 if name in ("mnn", "tensorrt") else floor
    assert sqnr(ref, out) > floor, name
    assert isinstance(qmodel.lowbit_state, QuantState)


def test_input_model_is_untouched_unless_inplace(model):
    before = copy.deepcopy(model.state_dict())
    qmodel = lowbit.quantize(model, "x86", calibrate=batches(), progress=False)
    assert qmodel is not model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    inplace = copy.deepcopy(model)
    assert lowbit.quantize(inplace, "w8", inplace=True, progress=False) is not None
    assert isinstance(inplace.head, QuantLinear)


def test_static_recipe_quantizes_residual_add_and_shares_cat_parameters(model):
    qmodel = lowbit.quantize(model, "x86", calibrate=batches(), progress=False)
    state = qmodel.lowbit_state
    assert sorted(state.functional.values()) == ["add", "cat"]
    assert {p.layer for p in state.fused} == {"stem.0", "conv"}
    mods = dict(qmodel.named_modules())
    assert any(isinstance(m, QuantAdd) for m in mods.values())
    cat = next(m for m in mods.values() if isinstance(m, QuantCat))
    assert bool(cat.shared_quantizer.frozen)
    assert isinstance(qmodel.conv, QuantConv2d) and qmodel.conv.weight_codes.dtype == torch.int8


def test_untraceable_model_still_gets_its_linears_quantized():
    model = Untraceable().eval()
    data = [torch.randn(4, 16) for _ in range(4)]
    qmodel = lowbit.quantize(model, "x86", calibrate=data, progress=False)
    state = qmodel.lowbit_state
    assert set(state.quantized) == {"fc1", "fc2"}
    assert "does not trace" in state.graph_note
    assert state.unsupported == {"norm": "LayerNorm"}
    assert sqnr(model(data[0]), qmodel(data[0])) > 25


def test_calibration_accepts_callables_tuples_and_dicts():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, a, scale=1.0):
            return self.fc(a) * scale

    model = TwoInputs().eval()
    data = [torch.randn(3, 4) for _ in range(3)]
    for calib in ([(x, 2.0) for x in data], [{"a": x} for x in data],
                  lambda m: [m(x) for x in data]):
        q = lowbit.quantize(model, "x86", calibrate=calib, progress=False)
        assert bool(q.fc.input_quantizer.frozen)


def test_bad_calibration_input(model):
    with pytest.raises(CalibrationError, match="yielded no batch"):
        lowbit.quantize(model, "x86", calibrate=[], progress=False)
    with pytest.raises(CalibrationError, match="need calibration data"):
        lowbit.quantize(model, "x86", progress=False)
    with pytest.raises(CalibrationError, match="batch 0 failed"):
        lowbit.quantize(model, "x86", calibrate=[torch.randn(2, 3)], progress=False)
    bad = batches(2)
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"stem\.0:input"):
        lowbit.quantize(model, "x86", calibrate=bad, progress=False)


def test_layers_that_never_run_stay_float_with_a_warning():
    class WithUnusedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    with pytest.warns(LowbitWarning, match="unused"):
        q = lowbit.quantize(WithUnusedHead().eval(), "onnxruntime", calibrate=[torch.randn(2, 4)],
                            progress=False)
    assert q.lowbit_state.disabled == {"unused": "never ran during calibration"}
    assert q.unused.input_quantizer.mode == "off"


def test_rules_keep_exclude_and_missing_names(model):
    recipe = preset("x86").with_rules(Rule(pattern="head", keep="fp16"),
                                      Rule(pattern="side", skip=True))
    q = lowbit.quantize(model, recipe, calibrate=batches(), progress=False)
    assert isinstance(q.head, FloatKept) and q.lowbit_state.kept == {"head": "fp16"}
    assert "side" in q.lowbit_state.excluded and isinstance(q.side, nn.Conv2d)
    with pytest.warns(LowbitWarning, match="encoder"):
        lowbit.quantize(model, preset("w8").with_rules(Rule(pattern="encoder.*", skip=True)),
                        progress=False)


def test_recipe_that_selects_nothing_is_an_error():
    with pytest.raises(LowbitError, match="selected no layer"):
        prepare(nn.Sequential(nn.ReLU()), preset("w8"))


def test_quantized_model_state_dict_round_trips(model):
    data = batches()
    qmodel = lowbit.quantize(model, "x86", calibrate=data, progress=False, graph="never")
    # The fresh model is built the same way (fusion turns BN into Identity), then loaded.
    fresh = lowbit.quantize(randomize_bn(ResidualCNN()), "x86", calibrate=data, progress=False,
                            graph="never")
    fresh.load_state_dict(qmodel.state_dict())
    assert torch.equal(fresh(data[0]), qmodel(data[0]))


def test_bias_correction_reduces_the_mean_output_shift():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    data = [torch.randn(32, 64) + 1.0 for _ in range(8)]
    base = preset("w4-g32").with_(calibration_batches=8)
    plain = lowbit.quantize(model, base, calibrate=data, progress=False)
    corrected = lowbit.quantize(model, base.with_(bias_correction=True), calibrate=data,
                                progress=False)
    x = torch.cat(data)
    ref = model(x)
    shift_plain = (ref - plain(x)).mean(0).abs().mean()
    shift_corrected = (ref - corrected(x)).mean(0).abs().mean()
    assert shift_corrected < shift_plain * 0.5
    assert corrected.lowbit_state.bias_corrected == ["0", "2"]


class _Annotated(nn.Module):
    """Type hints on forward, which this file's ``from __future__ import annotations`` makes strings."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + y.relu()


def test_quantized_model_survives_torch_save_and_load(tmp_path):
    model = _Annotated().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    qmodel = lowbit.quantize(model, "x86", calibrate=data, progress=False)
    assert qmodel.lowbit_state.functional  # traced: the add is quantized
    torch.save(qmodel, tmp_path / "q.pt")
    loaded = torch.load(tmp_path / "q.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(data[0]), qmodel(data[0]))


@pytest.mark.parametrize("name", ["x86", "histogram"])
def test_quantize_under_inference_mode_matches_quantize_outside(name):
    # Buffers made under a caller's inference_mode could not be written afterwards, and
    # inference tensors have no version counter: lowbit's steps run with it off.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    data = [torch.randn(1024, 64) for _ in range(3)]
    recipe = preset("onnxruntime").with_(input=lowbit.QuantSpec(
        "int8", symmetric=False, observer="histogram")) if name == "histogram" else name
    outside = lowbit.quantize(model, recipe, calibrate=data, progress=False)
    with torch.inference_mode():
        inside = lowbit.quantize(model, recipe, calibrate=[x.clone() for x in data], progress=False)
        out_inside = inside(data[0])
    state_in, state_out = inside.state_dict(), outside.state_dict()
    assert state_in.keys() == state_out.keys()
    assert all(torch.equal(state_in[k], state_out[k]) for k in state_in)
    assert torch.equal(out_inside, outside(data[0]))

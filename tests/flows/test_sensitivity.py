"""Sensitivity analysis: one deliberately sensitive middle layer must come out on top."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.flows.sensitivity import (
    SensitivityError,
    SensitivityResult,
    analyze_sensitivity,
    make_probe,
    measure_sensitivity,
)
from lowbit.nn.modules import QuantLinear
from lowbit.recipes import preset


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls are slowest with several threads on a loaded CI machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def activation_outlier(target: int = 4, factor: float = 200.0) -> nn.Sequential:
    """Layer ``target``'s input has one channel ~200x the rest: per-tensor activations crush it.

    The function is unchanged in spirit: ``target`` divides the channel back down.
    """
    model = mlp()
    with torch.no_grad():
        model[target - 2].weight[5].mul_(factor)
        model[target - 2].bias[5] = factor
        model[target].weight[:, 5].div_(factor)
    return model


def weight_outlier(target: int = 2, factor: float = 30.0) -> nn.Sequential:
    """Layer ``target`` has one weight column 30x the rest: int4 groups round the others to 0."""
    model = mlp()
    with torch.no_grad():
        model[target].weight[:, 7].mul_(factor)
        model[target - 2].weight[7].div_(factor)
        model[target - 2].bias[7] /= factor
    return model


def batches(n: int = 6, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 16, generator=gen) for _ in range(n)]


class ResidualNet(nn.Module):
    """Conv-BN stem, a residual add (quantized by the fx pass) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.conv(y)
        return self.head(y.mean((2, 3)))


def residual_net() -> ResidualNet:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    with torch.no_grad():
        model.stem[1].running_mean.uniform_(-1, 1)
        model.stem[1].running_var.uniform_(0.5, 2)
        model.stem[1].weight.uniform_(0.5, 1.5)
    return model


def image_batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(4)]


def test_activation_outlier_layer_ranks_first_and_numbers_agree():
    model = activation_outlier(target=4)
    result = analyze_sensitivity(model, preset("x86"), batches(), progress=False)
    assert isinstance(result, SensitivityResult) and result.metric == "sqnr_db"
    assert [layer.name for layer in result.layers] == ["0", "2", "4", "6"]
    assert result.ranked()[0].name == "4"
    assert result.float_metric == math.inf
    worst, others = result["4"], [result[n] for n in ("0", "2", "6")]
    # Quantizing only layer 4 costs about what quantizing everything costs ...
    assert abs(worst.only_this_sqnr - result.quantized_metric) < 1.0
    # ... and un-quantizing it alone buys back more than 20 dB.
    assert worst.all_but_this_sqnr > result.quantized_metric + 20
    for layer in others:
        assert layer.only_this_sqnr > worst.only_this_sqnr + 25
        assert abs(layer.all_but_this_sqnr - result.quantized_metric) < 1.0
    assert worst.sensitivity > 0.9 and all(layer.sensitivity < 0.05 for layer in others)
    assert worst.bits == 8 and worst.params == 32 * 32 and worst.type == "Linear"
    assert worst.only_this_metric is None and worst.only_this == worst.only_this_sqnr


def test_weight_outlier_layer_ranks_first_under_int4_weights():
    result = analyze_sensitivity(weight_outlier(target=2), preset("w4-g32"), batches(),
                                 progress=False)
    ranked = result.ranked()
    assert ranked[0].name == "2" and ranked[0].bits == 4
    assert ranked[0].all_but_this_sqnr > result.quantized_metric + 10
    assert abs(ranked[0].only_this_sqnr - result.quantized_metric) < 1.0
    assert ranked[0].sensitivity > 0.9
    assert result.notes  # weight_only: the graph note says adds stay float


def test_eval_fn_path_ranks_the_same_layer():
    model = activation_outlier(target=4)
    data = batches()
    reference = [model(x) for x in data]
    seen = []

    def eval_fn(m: nn.Module) -> float:  # higher is better: minus the output MSE
        seen.append(m)
        return -float(sum((m(x) - r).pow(2).mean() for x, r in zip(data, reference, strict=True)))

    result = analyze_sensitivity(model, preset("x86"), data, eval_fn=eval_fn, progress=False)
    assert result.metric == "eval_fn"
    assert result.float_metric == pytest.approx(0.0, abs=1e-9)
    assert result.quantized_metric < -1e-3
    assert result.ranked()[0].name == "4"
    worst = result["4"]
    assert worst.only_this_sqnr is None and worst.only_this_metric == worst.only_this
    assert worst.all_but_this_metric > result.quantized_metric
    assert worst.only_this_metric == pytest.approx(result.quantized_metric, rel=0.2)
    assert all(m is not model for m in seen)  # eval_fn sees the working copy


def test_eval_fn_with_a_forward_loop_as_calibration_data():
    model = activation_outlier(target=4)
    data = batches()

    def forward_loop(m):
        for x in data:
            m(x)

    def eval_fn(m):
        return -float(sum((m(x) - model(x)).pow(2).mean() for x in data))

    result = analyze_sensitivity(model, preset("x86"), forward_loop, eval_fn=eval_fn,
                                 progress=False)
    assert result.ranked()[0].name == "4"


def test_input_model_untouched_and_functional_ops_included():
    model = residual_net()
    before = copy.deepcopy(model.state_dict())
    result = analyze_sensitivity(model, preset("x86"), image_batches(), max_batches=2,
                                 progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.stem[1], nn.BatchNorm2d) and type(model.head) is nn.Linear
    add = result["lowbit_add"]
    assert add.type == "add" and add.params == 0 and add.bits is None
    assert {layer.name for layer in result.layers} == {"stem.0", "conv", "head", "lowbit_add"}
    rows = result.to_rows()
    assert list(rows) == [layer.name for layer in result.ranked()]
    assert all(isinstance(v, float) and v >= 0 for v in rows.values())
    text = result.to_markdown()
    assert "| rank | layer |" in text and all(f"`{name}`" in text for name in rows)


def test_fusion_is_not_error_and_toggling_restores_calibrated_modes():
    model = residual_net()
    data = image_batches()
    probe = make_probe(model, preset("x86"), data, max_batches=2, progress=False)
    assert probe.model.lowbit_state.fused  # BN was folded ...
    assert probe.measure(lambda name, role: True) == math.inf  # ... yet all-off is exact
    probe.set_off(lambda name, role: True)
    with torch.no_grad():  # the folded float model matches the original closely
        diff = (probe.model(data[0]) - model(data[0])).abs().max()
    probe.set_off(lambda name, role: False)
    assert diff < 1e-4
    modes = {id(q): q.mode for u in probe.units.values() for q in u.quantizers.values()}
    probe.measure(lambda name, role: name == "conv")
    assert modes == {id(q): q.mode for u in probe.units.values() for q in u.quantizers.values()}


def test_weight_quantizer_off_means_float_weight():
    probe = make_probe(mlp(), preset("w4-g32"), batches(2), progress=False)
    layer = probe.model.get_submodule("2")
    assert isinstance(layer, QuantLinear) and not bool(layer.converted)
    assert not torch.equal(layer.effective_weight(), layer.weight)
    probe.set_off(lambda name, role: name == "2")
    assert layer.weight_quantizer.mode == "off" and layer.effective_weight() is layer.weight
    probe.set_off(lambda name, role: False)
    assert layer.weight_quantizer.mode == "quantize"


def test_weight_role_only_sensitivity():
    probe = make_probe(activation_outlier(target=4), preset("x86"), batches(), progress=False)
    weights = measure_sensitivity(probe, roles=("weight",), progress=False)
    full = measure_sensitivity(probe, progress=False)
    # The damage is in layer 4's input, not its weights.
    assert weights["4"].all_but_this_sqnr < probe.quantized_metric + 1
    assert full["4"].all_but_this_sqnr > probe.quantized_metric + 20
    assert weights.roles == ("weight",)


def test_progress_bar_runs(capsys):
    result = analyze_sensitivity(mlp(), preset("w8"), batches(2), progress=True)
    assert len(result.layers) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": (x for x in batches(2))}, "one-shot iterator"),
        ({"data": lambda m: m(batches(1)[0])}, "forward_loop"),
        ({"data": [], "recipe": preset("w8")}, "no batch"),
        ({"data": batches(2), "max_batches": 0}, "max_batches"),
        ({"data": batches(2), "eval_fn": lambda m: "good"}, "must return a number"),
        ({"data": batches(2), "eval_fn": lambda m: math.nan}, "NaN"),
        ({"data": batches(2), "recipe": "x86"}, "Recipe"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, message):
    recipe = kwargs.pop("recipe", preset("x86"))
    with pytest.raises(SensitivityError, match=message) as info:
        analyze_sensitivity(mlp(), recipe, progress=False, **kwargs)
    assert isinstance(info.value, LowbitError)


def test_non_finite_float_outputs_are_refused():
    model = mlp()
    data = batches(2)
    data[1] = data[1].clone()
    data[1][0, 0] = math.inf
    with pytest.raises(LowbitError):
        analyze_sensitivity(model, preset("w8"), data, progress=False)


def test_smoothing_recipes_are_probed_as_quantize_returns_them():
    """The probe smooths like `quantize`: its all-quantized SQNR is the quantized model's own."""
    from lowbit.flows.api import quantize
    from lowbit.report.metrics import sqnr_db

    model, data = activation_outlier(target=4), batches()
    smoothed = preset("x86").with_(smooth_alpha=0.8)
    result = analyze_sensitivity(model, smoothed, data, progress=False)
    qmodel = quantize(model, smoothed, calibrate=data, progress=False)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in data])
        out = torch.cat([qmodel(b) for b in data])
    assert abs(result.quantized_metric - sqnr_db(ref, out)) < 0.5
    plain = analyze_sensitivity(model, preset("x86"), data, progress=False)
    assert result.quantized_metric > plain.quantized_metric + 10  # smoothing is what the probe saw

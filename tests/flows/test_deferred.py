"""Deferred observation during calibration: exactly what observing at once gives.

Each test calibrates one prepared model twice, with batches (deferred) and with a
forward_loop (observed at once, the reference), and compares every buffer bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit import QuantSpec
from lowbit.errors import InputError
from lowbit.flows.calibrate import CalibrationError, feed
from lowbit.flows.deferred import Deferral
from lowbit.flows.prepare import quantizer_modules


class InPlaceWrites(nn.Module):
    """In-place writes to observed tensors: always (ReLU), and where the data says (``gate``)."""

    def __init__(self, write_input: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.relu = nn.ReLU(inplace=True)
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, 32)
        self.write_input = write_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = bool(x[0, 0] > 0)
        if self.write_input:
            x.mul_(1.0)  # a write to the batch itself (same values, a new version)
        h = self.relu(self.fc1(x))  # writes fc1's observed output
        y = self.q(h) * self.k(h) + self.v(h)  # q, k and v observe one tensor
        out = self.fc2(y)
        if gate:
            out.add_(1.0)  # writes fc2's observed output, for some batches only
        return out


def _recipe(observer: str) -> lowbit.Recipe:
    spec = QuantSpec("int8", symmetric=False, observer=observer)
    return lowbit.preset("onnxruntime").with_(input=spec, output=spec)


def _prepared(observer: str = "histogram", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return lowbit.prepare(InPlaceWrites(**kwargs).eval(), _recipe(observer), graph="never")


def _batches(rows: tuple[int, ...], gates: tuple[bool, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for n, gate in zip(rows, gates, strict=True):
        x = torch.randn(n, 16, generator=gen)
        x[0, 0] = abs(x[0, 0]) + 0.1 if gate else -abs(x[0, 0]) - 0.1
        out.append(x)
    return out


def _calibrated(model: nn.Module, data, budget: int | None = None) -> tuple[nn.Module, Deferral]:
    quantizers = [q for _, role, q in quantizer_modules(model) if role != "weight"]
    for q in quantizers:
        q.mode = "observe"
    deferral = Deferral(quantizers) if budget is None else Deferral(quantizers, budget)
    with deferral:
        feed(model, data, progress=False, deferral=deferral)
    return model, deferral


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _reference(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    reference, _ = _calibrated(copy.deepcopy(model), lambda m: [m(x.clone()) for x in batches])
    return reference


def _id(model: nn.Module, *names: str) -> set[int]:
    return {id(model.get_submodule(name)) for name in names}


@pytest.mark.parametrize("observer", ["histogram", "minmax", "ema"])
def test_deferred_batches_observe_what_at_once_observes(observer):
    model = _prepared(observer)
    batches = _batches((2048, 2048, 2048, 2048), (False, False, True, False))
    reference = _reference(model, batches)
    deferred, deferral = _calibrated(model, [x.clone() for x in batches])
    _assert_same_state(deferred, reference)
    assert deferral.state == "defer"
    # fc1's output is written by the in-place ReLU in every batch: found in the first one,
    # copied after that. fc2's output is written in batch 2 only: batch 2 ran again.
    assert deferral.copied == _id(model, "fc1.output_quantizer", "fc2.output_quantizer")
    assert deferral.reruns == 1


def test_quantize_with_batches_equals_quantize_with_a_forward_loop():
    torch.manual_seed(0)
    model = InPlaceWrites().eval()
    batches = _batches((2048,) * 3, (True, False, True))
    recipe = _recipe("histogram")
    with_batches = lowbit.quantize(model, recipe, calibrate=[x.clone() for x in batches], graph="never",
                                   progress=False)
    with_loop = lowbit.quantize(model, recipe, calibrate=lambda m: [m(x.clone()) for x in batches],
                                graph="never", progress=False)
    _assert_same_state(with_batches, with_loop)
    assert not any("_deferral" in q.__dict__ for _, _, q in quantizer_modules(with_batches))


@pytest.mark.parametrize("budget_rows", [100, 3000])
def test_over_budget_observes_what_is_held_and_stops_deferring(budget_rows):
    # 100 rows: the first batch (learning) is over budget; 3000 rows: only the large third
    # batch is, in the middle of its forward pass (with fc2's written output held: a rerun)
    model = _prepared()
    batches = _batches((1024, 1024, 8192, 1024), (False, False, True, False))
    reference = _reference(model, batches)
    deferred, deferral = _calibrated(model, [x.clone() for x in batches], budget=budget_rows * 32 * 4)
    _assert_same_state(deferred, reference)
    assert deferral.state == "off"


def test_batch_that_cannot_run_again_is_an_error():
    model = _prepared(write_input=True)
    batches = _batches((256, 256), (False, True))
    with pytest.raises(CalibrationError, match=r"fc2:output.*forward_loop"):
        _calibrated(model, batches)


def test_errors_in_a_deferred_batch_name_the_layer_and_leave_no_trace():
    torch.manual_seed(0)
    model = InPlaceWrites().eval()
    batches = _batches((256, 256), (False, False))
    batches[1][5, 3] = float("nan")
    with pytest.raises(InputError, match="fc1:input"):
        lowbit.quantize(model, _recipe("histogram"), calibrate=batches, graph="never", progress=False)

    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return self.fc(x)

    prepared = lowbit.prepare(Fails().eval(), _recipe("histogram"), graph="never")
    with pytest.raises(CalibrationError, match=r"batch 1 failed.*boom"):
        lowbit.calibrate(prepared, [torch.randn(2, 4)] * 3, progress=False)
    assert not any("_deferral" in q.__dict__ for _, _, q in quantizer_modules(prepared))

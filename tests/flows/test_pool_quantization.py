"""Average pooling gets a quantized input (as ONNX Runtime runs QLinearGlobalAveragePool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit import runtime
from lowbit.nn import QuantPool
from lowbit.recipes import preset


class PoolNet(nn.Module):
    """Conv → ReLU → pool → Linear; the pool as a module or as a function."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = None if functional else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = F.adaptive_avg_pool2d(y, 1) if self.pool is None else self.pool(y)
        return self.head(y.flatten(1))


def _data():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(4)]


@pytest.mark.parametrize("functional", [False, True])
def test_global_pool_input_is_quantized(functional):
    torch.manual_seed(0)
    model = PoolNet(functional).eval()
    qmodel = lowbit.quantize(model, "x86", calibrate=_data(), progress=False)
    pools = [m for m in qmodel.modules() if isinstance(m, QuantPool)]
    state = qmodel.lowbit_state
    assert len(pools) == 1
    if functional:  # rewritten in the traced graph
        assert "avgpool" in state.functional.values()
    else:  # swapped in place like a Linear: the user's model keeps its type
        assert state.quantized["pool"] == "AdaptiveAvgPool2d" and type(qmodel) is PoolNet
    pool = pools[0]
    assert bool(pool.input_quantizer.frozen)
    x = _data()[0]
    with torch.no_grad():
        feature = F.relu(qmodel.conv(x))
        expected = pool.input_quantizer(feature).mean((2, 3), keepdim=True)
        torch.testing.assert_close(pool(feature), expected, rtol=0, atol=1e-6)


def test_recipe_without_avgpool_leaves_the_pool_float():
    torch.manual_seed(0)
    model = PoolNet(functional=False).eval()
    types = tuple(t for t in preset("x86").module_types if t != "avgpool")
    recipe = preset("x86").with_(module_types=types)
    qmodel = lowbit.quantize(model, recipe, calibrate=_data(), progress=False)
    assert not any(isinstance(m, QuantPool) for m in qmodel.modules())


def test_exported_pool_runs_as_an_integer_kernel_and_matches(tmp_path):
    torch.manual_seed(0)
    model = PoolNet(functional=True).eval()
    qmodel = lowbit.quantize(model, "onnxruntime", calibrate=_data(), progress=False)
    path = lowbit.export.onnx(qmodel, _data()[0], tmp_path / "pool.onnx")
    ops = runtime.optimized_ops(path)
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["QLinearConv"] == 1, ops
    x = _data()[1]
    out = runtime.run(runtime.session(path, threads=1), x)[0]
    with torch.no_grad():
        ref = qmodel(x).numpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("functional", [False, True])
def test_checkpoint_round_trip_rebuilds_the_quantized_pool(functional, tmp_path):
    from lowbit.export import load_quantized, save_checkpoint

    torch.manual_seed(0)
    qmodel = lowbit.quantize(PoolNet(functional).eval(), "x86", calibrate=_data(), progress=False)
    path = save_checkpoint(qmodel, tmp_path / "pool.safetensors")
    torch.manual_seed(1)  # other float weights: everything must come from the file
    loaded = load_quantized(PoolNet(functional).eval(), path)
    x = _data()[2]
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))


def test_preparing_twice_does_not_wrap_a_pool_again():
    from lowbit.flows import prepare

    model = prepare(PoolNet(functional=False).eval(), preset("x86"))
    again = prepare(model, preset("x86"))
    assert sum(isinstance(m, QuantPool) for m in again.modules()) == 1

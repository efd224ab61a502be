"""QATQuantizer: LSQ / LSQ+ gradients, fixed-scale tracking, freeze counters, scale repair."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.errors import ObserverError
from lowbit.nn.qat import QATError, QATQuantizer, lsq_init_scale
from lowbit.primitives.fake_quantize import fake_quantize, lsq_grad_scale
from lowbit.recipes import QuantSpec, RecipeError


def weight_quantizer(spec: QuantSpec, w: torch.Tensor, **kwargs) -> QATQuantizer:
    q = QATQuantizer(spec.with_(axis=0) if spec.granularity == "channel" else spec,
                     "w", role="weight", **kwargs)
    q.init_from(w)
    return q.train()


def test_lsq_scale_gradient_exists_equals_the_scaled_lsq_gradient_and_moves():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 16))
    q = weight_quantizer(QuantSpec("int4", "channel", learn="lsq"), w)
    assert isinstance(q.scale, nn.Parameter) and q.scale.shape == (8,)
    target = torch.randn(8, 16)
    ((q(w) - target) ** 2).sum().backward()
    assert q.scale.grad is not None and bool((q.scale.grad != 0).all())
    # Reference: fake_quantize's LSQ gradient with g = 1/sqrt(N·qmax), N = 16 per channel.
    s = q.scale.detach().clone().requires_grad_(True)
    ref = fake_quantize(w.detach(), s, torch.zeros(8, dtype=torch.int32), "int4", axis=0,
                        grad_scale=lsq_grad_scale(16, "int4"))
    ((ref - target) ** 2).sum().backward()
    torch.testing.assert_close(q.scale.grad, s.grad)
    assert math.isclose(lsq_grad_scale(16, "int4"), 1 / math.sqrt(16 * 7))
    before = q.scale.detach().clone()
    torch.optim.SGD([q.scale], lr=0.1).step()
    assert not torch.equal(before, q.scale.detach())


def test_lsq_learns_a_better_step_size_than_its_initialisation():
    torch.manual_seed(1)
    x = torch.randn(64, 32)
    q = QATQuantizer(QuantSpec("int4", learn="lsq"), "act", init="lsq").train()
    q(x)  # first training batch initialises
    opt = torch.optim.Adam([q.scale], lr=0.01)
    first = ((q(x) - x) ** 2).mean().item()
    for _ in range(100):
        opt.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        opt.step()
    assert ((q(x) - x) ** 2).mean().item() < 0.9 * first


def test_lsq_plus_learns_the_offset_of_an_asymmetric_activation():
    torch.manual_seed(2)
    x = torch.rand(256, 16) * 4 - 3  # in [-3, 1]: the zero point belongs at code 11.25 of 15
    q = QATQuantizer(QuantSpec("uint4", symmetric=False, learn="lsq+"), "act").train()
    q(x)
    with torch.no_grad():  # start from a poor offset
        q.zero_point.fill_(2.0)
    assert isinstance(q.zero_point, nn.Parameter)
    opt = torch.optim.Adam([q.zero_point], lr=0.1)
    first = ((q(x) - x) ** 2).mean().item()
    for _ in range(150):
        opt.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        opt.step()
    assert q.zero_point.grad is not None
    assert 8.5 < float(q.zero_point.detach()) < 13  # moved from 2 towards 11.25
    assert ((q(x) - x) ** 2).mean().item() < 0.1 * first


def test_fixed_scale_weight_follows_the_weight_until_frozen():
    w = nn.Parameter(torch.randn(4, 9))
    q = weight_quantizer(QuantSpec("int8", "channel"), w, freeze_after=2)
    for step in range(4):
        with torch.no_grad():
            w.mul_(1.5)
        out = q(w)
        expected = w.detach().abs().amax(1) / 127
        if step < 2:
            torch.testing.assert_close(q.scale, expected)
        else:
            assert not torch.allclose(q.scale, expected)
        assert bool(q.observer_frozen) == (step >= 1)  # flips right after the second step
        assert out.shape == w.shape
    assert int(q.step) == 4


def test_fixed_scale_activation_tracks_an_ema_until_frozen_after_n_steps():
    q = QATQuantizer(QuantSpec("uint8", symmetric=False, momentum=0.5), "act",
                     freeze_after=3).train()
    scales = []
    for i in range(6):
        q(torch.rand(8, 4) * (i + 1))
        scales.append(float(q.scale))
    assert scales[0] < scales[1] < scales[2]  # growing inputs: the range follows
    assert scales[3] == scales[4] == scales[5]  # frozen after 3 training steps
    assert int(q.step) == 6 and bool(q.observer_frozen)
    q.eval()  # eval never moves anything
    q(torch.rand(8, 4) * 100)
    assert float(q.scale) == scales[-1] and int(q.step) == 6


def test_uninitialised_activation_refuses_eval_and_initialises_on_the_first_training_batch():
    q = QATQuantizer(QuantSpec("int8", learn="lsq"), "layer:input")
    with pytest.raises(ObserverError, match="calibrate="):
        q.eval()(torch.randn(4, 4))
    x = torch.randn(32, 8)
    q.train()(x)
    assert bool(q.frozen)
    torch.testing.assert_close(q.scale.detach(), x.abs().max() / 127)


def test_lsq_initialisation_formula():
    x = torch.randn(4, 64)
    q = QATQuantizer(QuantSpec("int4", learn="lsq"), "a", init="lsq").train()
    q(x)
    torch.testing.assert_close(q.scale.detach(), 2 * x.abs().mean() / math.sqrt(7))
    assert float(lsq_init_scale(torch.tensor(0.0), QuantSpec("int4"))) == 1.0


@pytest.mark.parametrize("bad", [-1.0, 0.0, 1e30, float("nan"), float("inf")])
def test_a_collapsed_learned_scale_is_repaired_before_use(bad):
    x = torch.randn(16, 8)
    q = QATQuantizer(QuantSpec("int8", learn="lsq"), "a").train()
    q(x)
    good = float(q.scale.detach())
    with torch.no_grad():
        q.scale.fill_(bad)
    out = q(x)
    assert bool(torch.isfinite(out).all())
    scale = float(q.scale.detach())
    if not math.isfinite(bad):
        assert scale == good  # the last good value
    elif bad > good:
        assert scale == pytest.approx(good * 127)  # the ceiling: codes stay non-zero
        assert bool((out != 0).any())
    else:
        assert scale == pytest.approx(good * 1e-4)  # the floor
    assert int(q.recoveries) == 1


def _regression(q_in: QATQuantizer, layer: nn.Linear, x, y, opt, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = ((layer(q_in(x)) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("collapse", ["negative", "huge_lr"])
def test_training_recovers_after_the_scale_collapses(collapse):
    torch.manual_seed(3)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    layer = nn.Linear(8, 1)
    q_in = QATQuantizer(QuantSpec("int4", learn="lsq"), "in").train()
    q_in(x)
    opt = torch.optim.Adam([*layer.parameters(), q_in.scale], lr=0.02)
    before = _regression(q_in, layer, x, y, opt, 150)[-1]
    if collapse == "negative":  # what one bad step does: the step size crosses zero
        with torch.no_grad():
            q_in.scale.fill_(-0.5)
    else:  # a learning rate far too large for the scale
        sgd = torch.optim.SGD([q_in.scale], lr=1e6)
        _regression(q_in, layer, x, y, sgd, 3)
    collapsed = _regression(q_in, layer, x, y, opt, 1)[0]
    # The huge step throws the scale to the floor or to the ceiling (which one depends on
    # the sign of a near-zero gradient, i.e. on float summation order and thread count);
    # from the ceiling, Adam at lr 0.02 needs ~400 steps to walk back.
    after = _regression(q_in, layer, x, y, opt, 600)
    assert all(math.isfinite(v) for v in [collapsed, *after])
    assert int(q_in.recoveries) >= 1
    assert 0 < float(q_in.scale.detach()) < math.inf
    assert after[-1] < max(1.5 * before, 0.05)  # trained back to where it was


def test_a_learned_activation_scale_whose_shape_needs_data_must_come_from_calibration():
    q = QATQuantizer(QuantSpec("int8", "channel", axis=1, learn="lsq"), "conv:input").train()
    with pytest.raises(QATError, match="calibrate="):
        q(torch.randn(2, 3, 4, 4))


def test_learn_is_validated_and_round_trips_in_the_spec():
    spec = QuantSpec("uint8", symmetric=False, learn="lsq+")
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert "lsq+" in str(spec)
    with pytest.raises(RecipeError, match="learn"):
        QuantSpec("int8", learn="lsq+")  # symmetric: nothing to learn in the offset
    with pytest.raises(RecipeError, match="learn"):
        QuantSpec("int8", dynamic=True, learn="lsq")
    with pytest.raises(RecipeError, match="learn"):
        QuantSpec("int8", learn="pact")
    with pytest.raises(QATError):
        QATQuantizer(QuantSpec(), role="bias")


def test_a_non_finite_batch_does_not_poison_a_tracked_range():
    q = QATQuantizer(QuantSpec("uint8", symmetric=False), "act").train()
    q(torch.rand(8, 4))
    scale = float(q.scale)
    bad = torch.rand(8, 4)
    bad[0, 0] = float("nan")
    q(bad)
    assert float(q.scale) == scale and q.chosen_range() is not None

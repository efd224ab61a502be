"""Min-max, moving-average and EMA observers against slow plain-Python references."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from lowbit.errors import ObserverError
from lowbit.observers import EMAMinMaxObserver, MinMaxObserver, MovingAverageMinMaxObserver
from lowbit.primitives.granularity import per_channel, per_group, per_tensor, per_token
from lowbit.primitives.qparams import qparams_from_minmax


def batches(seed: int, n: int = 4, shape: tuple[int, ...] = (3, 5, 10)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + i) + 0.25 * i for i in range(n)]


def ref_ranges(x: torch.Tensor, gran) -> tuple[np.ndarray, np.ndarray]:
    """Per-group min / max by looping over every group's elements in Python."""
    a = x.numpy()
    if gran.kind == "tensor":
        vals = [float(v) for v in a.reshape(-1)]
        return np.array(min(vals)), np.array(max(vals))
    if gran.kind == "channel":
        moved = np.moveaxis(a, gran.axis, 0)
        lo = [min(float(v) for v in moved[c].reshape(-1)) for c in range(moved.shape[0])]
        hi = [max(float(v) for v in moved[c].reshape(-1)) for c in range(moved.shape[0])]
        return np.array(lo), np.array(hi)
    size = a.shape[-1] if gran.kind == "token" else gran.group_size
    n_groups = -(-a.shape[-1] // size)
    lo = np.empty((*a.shape[:-1], n_groups))
    hi = np.empty_like(lo)
    for index in itertools.product(*(range(d) for d in a.shape[:-1])):
        for j in range(n_groups):
            vals = [float(v) for v in a[index][j * size : (j + 1) * size]]
            lo[(*index, j)] = min(vals)
            hi[(*index, j)] = max(vals)
    return lo, hi


GRANULARITIES = [per_tensor(), per_channel(1), per_channel(-1), per_token(), per_group(4)]


@pytest.mark.parametrize("gran", GRANULARITIES, ids=str)
def test_minmax_matches_reference(gran):
    xs = batches(0)
    obs = MinMaxObserver(gran)
    for x in xs:
        obs(x)
    ranges = [ref_ranges(x, gran) for x in xs]
    lo = np.minimum.reduce([r[0] for r in ranges])
    hi = np.maximum.reduce([r[1] for r in ranges])
    np.testing.assert_array_equal(obs.min_val.numpy(), lo.astype(np.float32))
    np.testing.assert_array_equal(obs.max_val.numpy(), hi.astype(np.float32))
    assert int(obs.seen) == len(xs)


@pytest.mark.parametrize("gran", GRANULARITIES, ids=str)
def test_moving_average_matches_reference(gran):
    xs = batches(1)
    obs = MovingAverageMinMaxObserver(gran)
    for x in xs:
        obs(x)
    ranges = [ref_ranges(x, gran) for x in xs]
    lo = sum(r[0].astype(np.float64) for r in ranges) / len(xs)
    hi = sum(r[1].astype(np.float64) for r in ranges) / len(xs)
    np.testing.assert_array_equal(obs.min_val.numpy(), lo.astype(np.float32))
    np.testing.assert_array_equal(obs.max_val.numpy(), hi.astype(np.float32))


@pytest.mark.parametrize("gran", GRANULARITIES, ids=str)
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_ema_matches_reference(gran, momentum):
    xs = batches(2, n=6)
    obs = EMAMinMaxObserver(momentum, gran)
    for x in xs:
        obs(x)
    lo = hi = None
    for x in xs:
        b_lo, b_hi = ref_ranges(x, gran)
        if lo is None:
            lo, hi = b_lo, b_hi  # the first batch initialises
        else:
            lo = momentum * lo + (1 - momentum) * b_lo
            hi = momentum * hi + (1 - momentum) * b_hi
    np.testing.assert_allclose(obs.min_val.numpy(), lo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obs.max_val.numpy(), hi, rtol=1e-5, atol=1e-6)


def test_ema_rejects_bad_momentum():
    with pytest.raises(ObserverError, match="momentum"):
        EMAMinMaxObserver(1.0)


@pytest.mark.parametrize(
    ("gran", "scale_shape", "axis", "block"),
    [
        (per_tensor(), (), None, None),
        (per_channel(1), (5,), 1, None),
        (per_token(), (3, 5, 1), 2, 10),
        (per_group(4), (3, 5, 3), 2, 4),  # 10 = 4 + 4 + 2: a short last group
        (per_group(2, axis=1), (3, 3, 10), 1, 2),
    ],
    ids=str,
)
def test_qparams_layout(gran, scale_shape, axis, block):
    obs = MinMaxObserver(gran)
    for x in batches(3):
        obs(x)
    p = obs.compute_qparams("int8")
    assert tuple(p.scale.shape) == scale_shape
    assert (p.axis, p.block_size) == (axis, block)
    scale, zp = qparams_from_minmax(obs.min_val, obs.max_val, "int8")
    assert torch.equal(p.scale, scale) and torch.equal(p.zero_point, zp)


OBSERVER_CASES = [
    (MinMaxObserver, {}),
    (MinMaxObserver, {"granularity": per_channel(0)}),
    (MinMaxObserver, {"granularity": per_group(4)}),
    (MovingAverageMinMaxObserver, {"granularity": per_channel(2)}),
    (MovingAverageMinMaxObserver, {}),
    (EMAMinMaxObserver, {"momentum": 0.7, "granularity": per_token()}),
    (EMAMinMaxObserver, {}),
]


@pytest.mark.parametrize(("cls", "kwargs"), OBSERVER_CASES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_state_dict_round_trip_into_fresh_observer(cls, kwargs, symmetric):
    obs = cls(**kwargs)
    for x in batches(4):
        obs(x)
    buffer = io.BytesIO()
    torch.save(obs.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(**kwargs)
    fresh.load_state_dict(torch.load(buffer))
    a = obs.compute_qparams("uint8", symmetric=symmetric)
    b = fresh.compute_qparams("uint8", symmetric=symmetric)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)
    assert (a.axis, a.block_size) == (b.axis, b.block_size)
    # and it keeps observing as the original does
    extra = batches(5, n=1)[0]
    obs(extra)
    fresh(extra)
    assert torch.equal(obs.min_val, fresh.min_val) and torch.equal(obs.max_val, fresh.max_val)


@pytest.mark.parametrize(("cls", "kwargs"), OBSERVER_CASES)
def test_reset_forgets_everything(cls, kwargs):
    obs = cls(**kwargs)
    for x in batches(6):
        obs(x)
    obs.reset()
    assert not obs.has_data
    with pytest.raises(ObserverError, match="before the observer saw any data"):
        obs.compute_qparams("int8")
    fresh = cls(**kwargs)
    for x in batches(7, shape=(2, 4, 8)):  # a new shape is fine after reset
        obs(x)
        fresh(x)
    for key, value in fresh.state_dict().items():
        assert torch.equal(obs.state_dict()[key], value), key


def test_per_channel_ignores_other_dims_but_not_channel_count():
    obs = MinMaxObserver(per_channel(-1))
    obs(torch.randn(4, 8))
    obs(torch.randn(2, 3, 8))  # same channel count: fine
    with pytest.raises(ObserverError, match="8 channels before and 6 now"):
        obs(torch.randn(4, 6))


@pytest.mark.parametrize("gran", [per_token(), per_group(4)], ids=str)
def test_per_token_and_group_need_a_fixed_shape(gran):
    obs = MovingAverageMinMaxObserver(gran)
    obs(torch.randn(2, 8))
    with pytest.raises(ObserverError, match="first input's shape"):
        obs(torch.randn(3, 8))


def test_float64_input_rounds_the_range_outwards():
    x = torch.tensor([0.1, -0.30000000000000004], dtype=torch.float64)
    obs = MinMaxObserver()
    obs(x)
    assert obs.min_val.dtype == torch.float32
    assert float(obs.min_val) <= float(x.min()) and float(obs.max_val) >= float(x.max())


def test_forward_returns_input_and_repr_is_readable():
    obs = EMAMinMaxObserver()
    x = torch.tensor([1.0, -3.0])
    assert obs(x) is x
    text = repr(obs)
    assert "momentum=0.9" in text and "per-tensor" in text and "min=-3" in text

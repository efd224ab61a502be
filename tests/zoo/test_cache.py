"""The weights cache: location rules, atomic writes, unreadable files are retrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.zoo.cache import load_or_train, resolve_cache_dir


def test_location_rules(monkeypatch, tmp_path):
    assert resolve_cache_dir(tmp_path) == tmp_path
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "root"))
    assert resolve_cache_dir() == tmp_path / "root" / "zoo"
    monkeypatch.delenv("LOWBIT_CACHE")
    assert resolve_cache_dir() == Path.home() / ".cache" / "lowbit" / "zoo"


def set_weights(value):
    def train(model):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
    return train


def test_miss_then_hit(tmp_path):
    path = tmp_path / "sub" / "w.pt"
    assert load_or_train(nn.Linear(2, 2), path, set_weights(3.0)) is False
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    model = nn.Linear(2, 2)
    assert load_or_train(model, path, set_weights(5.0)) is True
    assert torch.all(model.weight == 3.0)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_mismatched_cache_is_retrained(tmp_path, content):
    path = tmp_path / "w.pt"
    if content is None:  # a valid file for another architecture
        torch.save(nn.Linear(3, 3).state_dict(), path)
    else:
        path.write_bytes(content)
    model = nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="retraining"):
        assert load_or_train(model, path, set_weights(4.0)) is False
    reloaded = nn.Linear(2, 2)
    assert load_or_train(reloaded, path, set_weights(9.0)) is True
    assert torch.all(reloaded.weight == 4.0)

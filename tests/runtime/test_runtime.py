"""lowbit.runtime: sessions, inputs, the optimized graph, timing helpers (no timing asserted)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import lowbit
from helpers.export_models import MLP
from lowbit import runtime
from lowbit.runtime import RuntimeLayerError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(5, 32)
    qmodel = lowbit.quantize(model, "onnxruntime", calibrate=[torch.randn(16, 32) for _ in range(2)],
                             progress=False)
    path = lowbit.export.onnx(qmodel, x, tmp_path_factory.mktemp("rt") / "mlp.onnx")
    with torch.no_grad():
        return path, x, qmodel(x).numpy()


def test_session_runs_torch_numpy_and_named_inputs(exported):
    path, x, ref = exported
    sess = runtime.session(path, threads=1)
    for inputs in (x, x.numpy(), [x], {"input": x}):
        out = runtime.run(sess, inputs)[0]
        assert out.shape == ref.shape and np.abs(out - ref).max() < 0.5
    assert runtime.session(path.read_bytes(), optimization="basic") is not None


def test_session_options():
    options = runtime.session_options(threads=2, optimization="extended", nbits_accuracy_level=0)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    with pytest.raises(RuntimeLayerError, match="optimization"):
        runtime.session_options(optimization="fast")
    with pytest.raises(RuntimeLayerError, match="threads"):
        runtime.session_options(threads=0)


def test_errors_say_what_is_wrong(exported, tmp_path):
    path, x, _ = exported
    with pytest.raises(RuntimeLayerError, match="no ONNX model"):
        runtime.session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeLayerError, match="cannot load"):
        runtime.session(bad)
    sess = runtime.session(path)
    with pytest.raises(RuntimeLayerError, match="takes 1 inputs"):
        runtime.run(sess, [x, x])
    with pytest.raises(RuntimeLayerError, match="no inputs named"):
        runtime.run(sess, {"images": x})
    with pytest.raises(RuntimeLayerError, match="could not run"):
        runtime.run(sess, torch.randn(5, 7))


def test_optimized_ops_show_the_integer_kernels(exported):
    path, _, _ = exported
    ops = runtime.optimized_ops(path)
    assert ops["QGemm"] == 3 and ops["Gemm"] == 0
    graph = runtime.optimized_graph(path)
    assert any(node.op_type == "QGemm" for node in graph.graph.node)


def test_timing_helpers(exported):
    path, x, _ = exported
    sess = runtime.session(path, threads=1)
    timing = runtime.time_session(sess, x, repeats=4, warmup=1)
    assert timing.repeats == 4 and timing.warmup == 1 and timing.minimum <= timing.median
    assert set(timing.to_dict()) == {"median_ms", "min_ms", "q1_ms", "q3_ms", "repeats", "warmup"}
    q1, q3 = timing.quartiles
    assert timing.minimum <= q1 <= timing.median <= q3
    calls = []
    result = runtime.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             repeats=3, warmup=1)
    assert sorted(result) == ["a", "b"] and calls == ["a", "b"] * 4  # round-robin
    assert runtime.time_fn(lambda: None, repeats=2, warmup=0).repeats == 2
    with pytest.raises(RuntimeLayerError, match="repeats"):
        runtime.time_fn(lambda: None, repeats=0)
    with pytest.raises(RuntimeLayerError, match="candidate"):
        runtime.compare({})


def test_compare_shuffles_rounds_and_settles():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    start = time.perf_counter()
    result = runtime.compare(fns, repeats=6, warmup=0, shuffle=True, settle=0.002)
    assert time.perf_counter() - start >= 24 * 0.002  # one pause before each timed run
    rounds = [calls[i:i + 4] for i in range(0, 24, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)  # each round runs every candidate once
    assert len({tuple(r) for r in rounds}) > 1  # in varying order
    assert all(t.repeats == 6 for t in result.values())
    with pytest.raises(RuntimeLayerError, match="settle"):
        runtime.compare(fns, settle=-1)

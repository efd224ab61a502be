"""Numbers that say how close a quantized model is to its float original.

- SQNR (signal-to-quantization-noise ratio) in dB: ``10·log10(Σref² / Σ(ref − q)²)``.
  Every 6 dB is about one bit: int8 done well gives 30–45 dB on a layer's output,
  under 15 dB the layer's output is mostly noise.
- cosine similarity, top-1 agreement and accuracy for logits;
- model size as a checkpoint stores it (low-bit codes at their packed width);
- `compare_outputs`: all of these between two models on the same batches.

Sums run in float64, so SQNR of large tensors does not lose the small error term.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.nn.float_cast import FloatKept
from lowbit.report.errors import ReportError
from lowbit.report.running import call_model, evaluating, take_batches


def flatten_outputs(out: Any) -> list[Tensor]:
    """Every tensor in a model output, depth first, in a stable order.

    Handles a tensor, tuples / lists, dicts (values in insertion order), Hugging
    Face ``ModelOutput`` (anything with ``to_tuple()``: its non-None fields) and
    dataclasses, nested to any depth. Non-tensors (None, ints, strings) are skipped.

    Args:
        out: what a model returned.

    Returns:
        The tensors, as a flat list.

    Example:
        >>> t = torch.zeros(2)
        >>> len(flatten_outputs({"logits": t, "aux": (t, None, [t]), "n": 3}))
        3
    """
    if isinstance(out, Tensor):
        return [out]
    if hasattr(out, "to_tuple") and callable(out.to_tuple):
        return flatten_outputs(tuple(out.to_tuple()))
    if isinstance(out, Mapping):
        items: Iterable[Any] = out.values()
    elif isinstance(out, (tuple, list)):
        items = out
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [getattr(out, f.name) for f in dataclasses.fields(out)]
    else:
        return []
    flat: list[Tensor] = []
    for item in items:
        flat.extend(flatten_outputs(item))
    return flat


def _check_same(reference: Tensor, approx: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(reference, Tensor) or not isinstance(approx, Tensor):
        raise ReportError(f"{what} takes two tensors, got {type(reference).__name__} and "
                          f"{type(approx).__name__}")
    if reference.shape != approx.shape:
        raise ReportError(
            f"{what}: shapes differ, {tuple(reference.shape)} vs {tuple(approx.shape)}; compare "
            "outputs of the same inputs"
        )
    if reference.numel() == 0:
        raise ReportError(f"{what}: the tensors are empty; there is nothing to compare")
    ref = reference.detach().to("cpu", torch.float64)
    app = approx.detach().to("cpu", torch.float64)
    for tensor, name in ((ref, "reference"), (app, "approximation")):
        if not torch.isfinite(tensor).all():
            raise ReportError(
                f"{what}: the {name} holds NaN or Inf; find where it first appears (e.g. with "
                "lowbit.report.layer_table, whose rows flag non-finite outputs)"
            )
    return ref, app


def sqnr_from_sums(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)`` with the edge cases spelled out.

    Identical tensors (noise 0) give +inf; a zero signal with noise gives -inf.
    """
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``reference``, in dB.

    Args:
        reference: the float tensor.
        approx: its quantized approximation, same shape.

    Returns:
        ``10·log10(Σref² / Σ(ref − approx)²)`` computed in float64; +inf when identical.

    Raises:
        ReportError: shapes differ, the tensors are empty, or either holds NaN / Inf.

    Example:
        >>> x = torch.ones(100)
        >>> round(sqnr_db(x, x * 1.1), 1)  # noise power 1 % of the signal
        20.0
    """
    ref, app = _check_same(reference, approx, "sqnr_db")
    return sqnr_from_sums(float(ref.pow(2).sum()), float((ref - app).pow(2).sum()))


def cosine_similarity(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Cosine similarity of ``a`` and ``b`` along ``dim`` (float64; 1 where both vectors are zero).

    Args:
        a, b: tensors of the same shape.
        dim: the axis holding the vectors.

    Returns:
        A float64 tensor with ``dim`` removed.

    Example:
        >>> round(cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item(), 4)
        0.7071
    """
    x, y = _check_same(a, b, "cosine_similarity")
    dot = (x * y).sum(dim)
    norms = x.norm(dim=dim) * y.norm(dim=dim)
    both_zero = (x.norm(dim=dim) == 0) & (y.norm(dim=dim) == 0)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    return torch.where(both_zero, torch.ones_like(cos), cos).clamp(-1.0, 1.0)


def _labels_of(logits: Tensor, what: str) -> Tensor:
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ReportError(f"{what} needs logits with classes on the last axis, got shape "
                          f"{tuple(logits.shape)}")
    return logits.detach().argmax(-1).reshape(-1).cpu()


def top1_agreement(ref_logits: Tensor, q_logits: Tensor) -> float:
    """Fraction of rows where both models pick the same class (argmax over the last axis).

    Example:
        >>> top1_agreement(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        0.5
    """
    if ref_logits.shape != q_logits.shape:
        raise ReportError(f"top1_agreement: shapes differ, {tuple(ref_logits.shape)} vs "
                          f"{tuple(q_logits.shape)}")
    a, b = _labels_of(ref_logits, "top1_agreement"), _labels_of(q_logits, "top1_agreement")
    return float((a == b).double().mean())


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy: fraction of rows whose argmax equals the label.

    Args:
        logits: ``(..., classes)``.
        labels: integer class indices with the leading shape of ``logits``.

    Returns:
        A float in [0, 1].

    Example:
        >>> accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
        0.5
    """
    predicted = _labels_of(logits, "accuracy")
    labels = labels.detach().reshape(-1).cpu()
    if labels.numel() != predicted.numel():
        raise ReportError(f"accuracy: {predicted.numel()} predictions but {labels.numel()} labels; "
                          "pass one label per row of logits")
    return float((predicted == labels.long()).double().mean())


# --- model size ------------------------------------------------------------------------
def _owner(model: nn.Module, key: str) -> tuple[nn.Module | None, str]:
    prefix, _, _ = key.rpartition(".")
    try:
        return (model.get_submodule(prefix) if prefix else model), prefix
    except AttributeError:
        return None, prefix


def _kept_bits(model: nn.Module) -> dict[str, int]:
    """Prefix -> bits of layers kept in FP16 / BF16 (their weights hold 16-bit values in fp32)."""
    kept = {}
    for name, module in model.named_modules():
        fmt = getattr(module, "fmt", None)
        if isinstance(module, FloatKept) and fmt is not None:
            kept[f"{name}." if name else ""] = int(fmt.bits)
    return kept


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model as a deployed checkpoint holds it.

    Counts every tensor ``state_dict()`` stores (parameters and persistent
    buffers: biases, scales, zero points, quantizer bookkeeping), each at its
    storage dtype, with two exceptions: ``weight_codes`` count
    ``ceil(numel · bits / 8)`` using the layer's weight format (int4 codes, held
    one per int8, count half a byte), and floating tensors inside a layer kept
    in FP16 / BF16 count 2 bytes per value. Non-persistent buffers (the
    dequantized weight cache of a converted layer) are not counted: a checkpoint
    does not store them.

    Args:
        model: a float or quantized model.

    Returns:
        The size in bytes.

    Example:
        >>> model_size_bytes(nn.Linear(10, 10))  # 110 float32 values
        440
    """
    kept = _kept_bits(model)
    total = 0
    for key, tensor in model.state_dict().items():
        if not isinstance(tensor, Tensor):
            continue
        bits = tensor.element_size() * 8
        if key.endswith("weight_codes"):
            owner, _ = _owner(model, key)
            quantizer = getattr(owner, "weight_quantizer", None)
            if quantizer is not None:
                bits = int(quantizer.fmt.bits)
        elif tensor.is_floating_point():
            for prefix, kept_bits in kept.items():
                if key.startswith(prefix):
                    bits = min(bits, kept_bits)
                    break
        total += math.ceil(tensor.numel() * bits / 8)
    return total


# --- two models on the same data -------------------------------------------------------
@dataclass(frozen=True)
class OutputFidelity:
    """How closely a quantized model's outputs follow the float model's.

    Attributes:
        sqnr_db: SQNR of all output tensors together, over all batches (dB).
        cosine_mean, cosine_min: cosine similarity per sample (each output
            flattened per row of the batch), mean and worst.
        top1_agreement: fraction of rows with the same argmax on the first
            output, or None when that output is not logits-like.
        max_abs_error: the largest ``|float − quantized|`` anywhere.
        batches: how many batches were compared.
    """

    sqnr_db: float
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None
    max_abs_error: float
    batches: int

    def to_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def _per_row(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def compare_outputs(
    model_a: nn.Module, model_b: nn.Module, data: Iterable[Any], max_batches: int | None = 8
) -> OutputFidelity:
    """Run both models on the same batches and measure how close ``model_b`` stays to ``model_a``.

    Both models run in eval mode without gradients; their training flags are
    restored afterwards.

    Args:
        model_a: the reference (float) model.
        model_b: the approximation (quantized) model.
        data: iterable of input batches (tensor, tuple of inputs, or dict of keyword inputs).
        max_batches: batches to use (None: all).

    Returns:
        An `OutputFidelity`.

    Raises:
        ReportError: no data, the models return different structures or shapes,
            or the float model's output holds NaN / Inf. NaN / Inf in the
            quantized output gives ``sqnr_db = -inf`` rather than an error:
            that is a finding, not bad input.

    Example:
        >>> m = nn.Linear(4, 3)
        >>> compare_outputs(m, m, [torch.randn(2, 4)]).sqnr_db
        inf
    """
    batches = take_batches(data, max_batches)
    signal = noise = 0.0
    cosines: list[Tensor] = []
    agree = rows = 0
    top1_possible = True
    max_abs = 0.0
    broken = False
    with evaluating(model_a, model_b):
        for batch in batches:
            ref = flatten_outputs(call_model(model_a, batch, "float"))
            out = flatten_outputs(call_model(model_b, batch, "quantized"))
            if len(ref) != len(out) or not ref:
                raise ReportError(
                    f"the models return {len(ref)} and {len(out)} tensors for the same batch; "
                    "compare a model with its own quantized version"
                )
            for i, (r, q) in enumerate(zip(ref, out, strict=True)):
                if r.shape != q.shape:
                    raise ReportError(f"output {i} has shape {tuple(r.shape)} in the float model but "
                                      f"{tuple(q.shape)} in the quantized one")
                r64, q64 = r.detach().to("cpu", torch.float64), q.detach().to("cpu", torch.float64)
                if not torch.isfinite(r64).all():
                    raise ReportError(f"output {i} of the float model holds NaN or Inf; the "
                                      "reference must be finite")
                if not torch.isfinite(q64).all():
                    broken = True
                    continue
                signal += float(r64.pow(2).sum())
                noise += float((r64 - q64).pow(2).sum())
                if r64.numel():
                    max_abs = max(max_abs, float((r64 - q64).abs().max()))
                    cosines.append(cosine_similarity(_per_row(r64), _per_row(q64)))
            first_r, first_q = ref[0], out[0]
            if top1_possible and first_r.is_floating_point() and first_r.dim() >= 1 \
                    and first_r.shape[-1] >= 2 and torch.isfinite(first_q).all():
                a, b = first_r.argmax(-1).reshape(-1), first_q.argmax(-1).reshape(-1)
                agree += int((a == b).sum())
                rows += a.numel()
            else:
                top1_possible = False
    cos = torch.cat(cosines) if cosines else torch.zeros(1, dtype=torch.float64)
    return OutputFidelity(
        sqnr_db=-math.inf if broken else sqnr_from_sums(signal, noise),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        top1_agreement=agree / rows if top1_possible and rows else None,
        max_abs_error=math.inf if broken else max_abs,
        batches=len(batches),
    )

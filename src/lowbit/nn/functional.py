"""Quantized stand-ins for operations that are not modules: matmul, add, cat, average pooling.

The flows layer swaps them into a traced graph (torch.fx) in place of
``torch.matmul`` / ``operator.add`` / ``torch.cat`` / average-pooling calls, so
that attention's activation × activation products, residual joins and pooled
features are quantized as the deployment runtime quantizes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.nn.quantizer import Quantizer
from lowbit.recipes.spec import QuantSpec


class QuantMatmul(nn.Module):
    """``a @ b`` with both operands quantized (activation × activation)."""

    def __init__(self, spec: QuantSpec, name: str = "") -> None:
        super().__init__()
        self.layer_name = name
        self.a_quantizer = Quantizer(spec, f"{name}:a")
        self.b_quantizer = Quantizer(spec, f"{name}:b")

    def quantizers(self) -> dict[str, Quantizer]:
        return {"a": self.a_quantizer, "b": self.b_quantizer}

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(self.a_quantizer(a), self.b_quantizer(b))


class QuantAdd(nn.Module):
    """``a + b`` with both operands quantized (a residual join in a QDQ graph).

    Runtimes add quantized operands (ONNX Runtime's QLinearAdd, PyTorch's quantized
    add, TensorRT's Conv+Add fusion), and the layer that produces an operand (the
    last conv of a residual branch) can only run as an integer kernel when its output
    is quantized. The sum is quantized where its consumer quantizes it (after a
    following ReLU), like every lowbit layer's output; pass ``output`` to quantize
    the sum itself too.
    """

    def __init__(self, spec: QuantSpec, name: str = "", *, output: QuantSpec | None = None) -> None:
        super().__init__()
        self.layer_name = name
        self.a_quantizer = Quantizer(spec, f"{name}:a")
        self.b_quantizer = Quantizer(spec, f"{name}:b")
        self.output_quantizer = Quantizer(output, f"{name}:output") if output is not None else None

    def quantizers(self) -> dict[str, Quantizer]:
        found = {"a": self.a_quantizer, "b": self.b_quantizer, "output": self.output_quantizer}
        return {role: q for role, q in found.items() if q is not None}

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        y = self.a_quantizer(a) + self.b_quantizer(b)
        return self.output_quantizer(y) if self.output_quantizer is not None else y


class QuantCat(nn.Module):
    """``torch.cat`` whose inputs share one scale and zero point.

    Runtimes concatenate quantized tensors without requantizing only when all
    inputs share the output's parameters, so one quantizer serves them all.
    """

    def __init__(self, spec: QuantSpec, name: str = "") -> None:
        super().__init__()
        self.layer_name = name
        self.shared_quantizer = Quantizer(spec, f"{name}:shared")

    def quantizers(self) -> dict[str, Quantizer]:
        return {"shared": self.shared_quantizer}

    def forward(self, tensors: list[Tensor], dim: int = 0) -> Tensor:
        if self.shared_quantizer.mode == "observe":
            for t in tensors:
                self.shared_quantizer(t)
            return torch.cat(tensors, dim)
        return torch.cat([self.shared_quantizer(t) for t in tensors], dim)


class QuantPool(nn.Module):
    """Average pooling of a quantized input (``pool`` is the original pooling module).

    ONNX Runtime runs ``DQ → GlobalAveragePool → Q`` as QLinearGlobalAveragePool,
    and the layer feeding the pool (MobileNetV2's last 1x1 conv, the widest of the
    network) can only run as an integer kernel when its output is quantized: it is
    quantized here, at the pool's input. The pooled result is quantized where its
    consumer (the classifier) quantizes it.
    """

    def __init__(self, spec: QuantSpec, name: str, pool: nn.Module) -> None:
        super().__init__()
        self.layer_name = name
        self.input_quantizer = Quantizer(spec, f"{name}:input")
        self.pool = pool

    def quantizers(self) -> dict[str, Quantizer]:
        return {"input": self.input_quantizer}

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.input_quantizer(x))

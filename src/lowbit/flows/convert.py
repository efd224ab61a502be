"""`convert`: freeze a calibrated model into its deployable simulated form.

Weights become low-bit codes plus scales (``weight_codes``); observers are
dropped; activation quantizers keep their frozen parameters. The outputs do not
change: a fake-quantized weight and its dequantized codes are bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.flows.prepare import quantizer_modules
from lowbit.flows.qat import finish_qat
from lowbit.nn.modules import QuantMixin


@torch.inference_mode(False)  # see lowbit.flows.api.quantize
def convert(model: nn.Module) -> nn.Module:
    """Quantize weights to codes and drop observers (in place).

    A QAT model (`lowbit.prepare_qat`) is first turned into the post-training
    types: folded Conv-BN layers become quantized convs, QAT quantizers plain ones.

    Example:
        >>> from lowbit.recipes import preset
        >>> from lowbit.flows.prepare import prepare
        >>> m = convert(prepare(nn.Sequential(nn.Linear(4, 4)), preset("w8")))
        >>> m[0].weight_codes.dtype
        torch.int8
    """
    model = finish_qat(model)
    for module in model.modules():
        if isinstance(module, QuantMixin):
            module.convert_weight()
    for _, _, quantizer in quantizer_modules(model):
        if bool(quantizer.frozen) or quantizer.spec.dynamic:
            quantizer.drop_observer()
    return model

"""`quantize`: the one call most users need (fuse → prepare → calibrate → correct → convert)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lowbit.flows.bias_correction import correct_bias
from lowbit.flows.calibrate import CalibrationData
from lowbit.flows.calibrate import calibrate as run_calibration
from lowbit.flows.convert import convert
from lowbit.flows.fuse import fuse
from lowbit.flows.prepare import prepare
from lowbit.flows.smooth import smooth
from lowbit.recipes import Recipe, preset


# Under a caller's torch.inference_mode, the buffers lowbit makes (scales, observer state)
# would be inference tensors, which cannot be written in place afterwards: lowbit's steps
# run with it off (the model's forward passes here too).
@torch.inference_mode(False)
def quantize(
    model: nn.Module,
    recipe: Recipe | str = "x86",
    calibrate: CalibrationData | None = None,
    *,
    inplace: bool = False,
    graph: str = "auto",
    max_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Quantize a trained float model as ``recipe`` says.

    Steps: fuse BN → prepare (swap in quantized layers) → smooth outliers (if
    ``recipe.smooth_alpha``) → calibrate → bias correction (if
    ``recipe.bias_correction``) → convert.

    Args:
        model: the float model. Left untouched unless ``inplace=True``.
        recipe: a `Recipe` or a preset name (see ``lowbit.recipes.list_presets()``).
        calibrate: ``forward_loop(model)`` or an iterable of batches; needed
            for static activation quantization and bias correction.
        inplace: modify ``model`` itself instead of a copy.
        graph: ``"auto"`` also quantizes residual adds / matmuls / cats when
            the model traces with torch.fx; ``"never"`` swaps modules only.
        max_batches: calibration batches to use (default: the recipe's, 100).
        progress: show progress bars.

    Returns:
        The quantized (simulated) model: weights held as low-bit codes, activations
        fake-quantized with frozen ranges. ``model.lowbit_state`` records what
        was done for reports.

    Example:
        >>> qmodel = quantize(model, "x86", calibrate=[x for x, _ in loader])  # doctest: +SKIP
    """
    if isinstance(recipe, str):
        recipe = preset(recipe)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    fused = fuse(model) if recipe.fuse else []
    model = prepare(model, recipe, graph=graph)
    model.lowbit_state.fused = fused
    batches = recipe.calibration_batches if max_batches is None else max_batches
    if recipe.smooth_alpha is not None and calibrate is not None:
        smooth(model, calibrate, recipe.smooth_alpha, max_batches=min(batches, 16), progress=progress)
    run_calibration(model, calibrate, max_batches=batches, progress=progress)
    if recipe.bias_correction and calibrate is not None:
        correct_bias(model, calibrate, max_batches=min(batches, 32), progress=progress)
    return convert(model)

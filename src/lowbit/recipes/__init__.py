"""Recipes: frozen configs that say what to quantize and how; they describe, never run.

- `QuantSpec`: how one tensor is quantized (format, granularity, symmetry,
  observer / range method, rounding); `LayerSpec`: the specs of one layer.
- `Rule`: a per-layer override chosen by module-name glob and type.
- `Recipe`: default specs, include / exclude globs and ordered rules; resolves
  each module with `Recipe.layer_spec`; saved and loaded as YAML or TOML.
- `preset(name)`: recipes matched to deployment backends (seed 003 §3.1);
  `list_presets()` names them.

Example:
    >>> from lowbit.recipes import preset
    >>> print(preset("x86").layer_spec("features.0.0", "Conv2d").input)
    uint8 per-tensor asym mse
"""

from __future__ import annotations

from lowbit.recipes.presets import PRESETS, list_presets, preset
from lowbit.recipes.recipe import DEFAULT_MODULE_TYPES, Recipe
from lowbit.recipes.rule import Rule, glob_match
from lowbit.recipes.spec import FLOAT_KEEPS, MODES, LayerSpec, QuantSpec, RecipeError

__all__ = [
    "DEFAULT_MODULE_TYPES",
    "FLOAT_KEEPS",
    "MODES",
    "PRESETS",
    "LayerSpec",
    "QuantSpec",
    "Recipe",
    "RecipeError",
    "Rule",
    "glob_match",
    "list_presets",
    "preset",
]

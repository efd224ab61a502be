"""`prepare`: put quantizers into a model as a recipe says.

Every Linear / Conv / ConvTranspose2d / Embedding the recipe selects is swapped
for its quantized version (same parameters, same names). When the model
traces with torch.fx and activations are quantized statically, residual adds,
concatenations and activation × activation matmuls are quantized too, as a
QDQ runtime quantizes them; when it does not trace (many Hugging Face models)
the module swap alone still quantizes every Linear / Conv, and the reason is
recorded for the report.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError
from lowbit.flows.fuse import FusedPair, set_submodule
from lowbit.nn.float_cast import KEEP_FORMATS, FloatKept
from lowbit.nn.functional import QuantAdd, QuantCat, QuantMatmul, QuantPool
from lowbit.nn.modules import QUANTIZED_MODULES, quantized_version
from lowbit.recipes.recipe import Recipe


class LowbitWarning(UserWarning):
    """Something lowbit chose not to do, and why (a layer kept in float, a rule that matched nothing)."""


ADD_TARGETS = (operator.add, operator.iadd, torch.add)
MATMUL_TARGETS = (operator.matmul, torch.matmul, torch.bmm)
CAT_TARGETS = (torch.cat, torch.concat)
# Average pooling, as a function (output size as the second argument) or as a module.
POOL_FUNCTIONS = {F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
                  F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d}
POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass
class QuantState:
    """What preparation did to a model, kept on it as ``model.lowbit_state`` for reports."""

    recipe: Recipe
    quantized: dict[str, str] = field(default_factory=dict)  # name -> module type
    kept: dict[str, str] = field(default_factory=dict)  # name -> fp32 / fp16 / bf16
    excluded: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)  # name -> module type
    functional: dict[str, str] = field(default_factory=dict)  # name -> add / matmul / cat
    fused: list[FusedPair] = field(default_factory=list)
    graph_note: str = ""
    disabled: dict[str, str] = field(default_factory=dict)  # name -> why it runs in float
    bias_corrected: list[str] = field(default_factory=list)
    functional_candidates: list[str] = field(default_factory=list)  # traced op names, quantized or not
    smoothed: list[str] = field(default_factory=list)


def _is_tensor_node(arg) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.op != "get_attr"


def _quantize_functional(model: nn.Module, recipe: Recipe, state: QuantState) -> nn.Module:
    """Trace ``model`` and route adds / matmuls / cats / average pools through quantizing modules."""
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as err:  # any tracing failure: module swap only
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        state.graph_note = (
            f"model does not trace with torch.fx ({first_line[:160]}); Linear / Conv layers are "
            "quantized, residual adds and activation matmuls stay float"
        )
        return model
    graph = traced.graph
    for node in list(graph.nodes):
        # With ``from __future__ import annotations`` torch.fx records the forward's type
        # hints as strings, and a GraphModule holding them cannot be pickled
        # (torch.save of the quantized model failed). The hints are decoration: drop them.
        if isinstance(node.type, str):
            node.type = None
        if node.op != "call_function":
            continue
        kind, module_cls = None, None
        if node.target in ADD_TARGETS and len(node.args) == 2 and all(map(_is_tensor_node, node.args)):
            kind, module_cls = "add", QuantAdd
        elif node.target in MATMUL_TARGETS and len(node.args) == 2 and all(map(_is_tensor_node, node.args)):
            kind, module_cls = "matmul", QuantMatmul
        elif node.target in CAT_TARGETS and node.args and isinstance(node.args[0], (list, tuple)):
            kind, module_cls = "cat", QuantCat
        elif (pool := _pool_of(node)) is not None:
            kind = "avgpool"
        if kind is None:
            continue
        state.functional_candidates.append(node.name)
        spec = recipe.layer_spec(node.name, kind)
        if spec is not None and spec.keep is not None:
            state.kept[node.name] = spec.keep
        if spec is None or spec.input is None or spec.input.dynamic:
            continue
        name = f"lowbit_{node.name}"
        if kind == "avgpool":
            traced.add_submodule(name, QuantPool(spec.input, name, pool))
        else:
            traced.add_submodule(name, module_cls(spec.input, name))
        with graph.inserting_after(node):
            if kind == "avgpool":
                new = graph.call_module(name, (node.args[0],))
            elif kind == "cat":
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                new = graph.call_module(name, (node.args[0], dim))
            else:
                new = graph.call_module(name, tuple(node.args))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        state.functional[name] = kind
    if not state.functional:
        return model
    graph.lint()
    traced.recompile()
    # A GraphModule keeps only the submodules its graph uses; keep the rest too, so
    # nothing of the user's model disappears (its Python methods do: pass graph="never").
    for name, child in model.named_children():
        if not hasattr(traced, name):
            traced.add_module(name, child)
    traced.train(model.training)
    return traced


def _pool_of(node: torch.fx.Node) -> nn.Module | None:
    """The pooling module equivalent to functional average pooling ``node``, else None.

    Pooling modules are swapped for `QuantPool` like Linear / Conv (no graph needed).
    """
    if not node.args or not _is_tensor_node(node.args[0]):
        return None
    if node.op == "call_function" and node.target in POOL_FUNCTIONS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        if len(node.args) + len(node.kwargs) != 2 or isinstance(size, torch.fx.Node) or size is None:
            return None
        return POOL_FUNCTIONS[node.target](size)
    return None


def _swap_pool(model: nn.Module, name: str, pool: nn.Module, recipe: Recipe, state: QuantState) -> None:
    """Quantize an average-pooling module's input (static recipes that include ``avgpool``)."""
    if recipe.mode != "static":
        return
    spec = recipe.layer_spec(name, "avgpool")
    if spec is None or spec.keep is not None or spec.input is None or spec.input.dynamic:
        return
    set_submodule(model, name, QuantPool(spec.input, name, pool))
    state.quantized[name] = type(pool).__name__


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


@torch.inference_mode(False)  # see lowbit.flows.api.quantize
def prepare(model: nn.Module, recipe: Recipe, *, graph: str = "auto") -> nn.Module:
    """Insert quantizers into ``model`` (in place where possible) as ``recipe`` says.

    Args:
        model: float model (eval mode for PTQ).
        recipe: what to quantize and how.
        graph: ``"auto"`` quantizes adds / matmuls / cats when the model traces
            with torch.fx and activations are static; ``"never"`` only swaps modules.

    Returns:
        The prepared model (a ``torch.fx.GraphModule`` when the graph was
        rewritten), with ``lowbit_state`` describing what was done.

    Raises:
        LowbitError: the recipe selects no layer at all.

    Example:
        >>> from lowbit.recipes import preset
        >>> m = prepare(nn.Sequential(nn.Linear(4, 4)), preset("w8"))
        >>> type(m[0]).__name__
        'QuantLinear'
    """
    if graph not in ("auto", "never"):
        raise LowbitError(f"graph must be 'auto' or 'never', got {graph!r}")
    state = getattr(model, "lowbit_state", None) or QuantState(recipe)
    state.recipe = recipe
    names = [name for name, _ in model.named_modules() if name]
    if graph == "auto" and recipe.mode == "static" and recipe.input is not None:
        model = _quantize_functional(model, recipe, state)
    elif recipe.mode != "static":
        state.graph_note = f"{recipe.mode} mode: adds and activation matmuls stay float"

    wrapped_pools = {id(m.pool) for m in model.modules() if isinstance(m, QuantPool)}  # already quantized
    for name, module in list(model.named_modules()):
        if not name or name.startswith("lowbit_"):
            continue
        type_name = type(module).__name__
        if type(module) in POOL_MODULES:
            if id(module) not in wrapped_pools:
                _swap_pool(model, name, module, recipe, state)
            continue
        if type(module) not in QUANTIZED_MODULES:
            if _has_own_parameters(module) and not isinstance(module, (FloatKept,)):
                state.unsupported[name] = type_name
            continue
        spec = recipe.layer_spec(name, type_name)
        if spec is None:
            state.excluded.append(name)
            continue
        if spec.keep is not None:
            state.kept[name] = spec.keep
            if spec.keep in KEEP_FORMATS:
                set_submodule(model, name, FloatKept(module, spec.keep, name))
            continue
        if spec.weight is None and spec.input is None and spec.output is None:
            state.excluded.append(name)
            continue
        quantized = quantized_version(module, spec, name)
        quantized.calibrate_weight()
        set_submodule(model, name, quantized)
        state.quantized[name] = type_name
    # Functional ops are named by their fx node (``add``, ``matmul_1``), so rules may name them too.
    op_names = [name.removeprefix("lowbit_") for name in state.functional] + state.functional_candidates
    for pattern in recipe.unmatched_patterns(names + op_names):
        warnings.warn(
            f"recipe pattern {pattern!r} matches no layer of this model; check the layer names "
            f"(e.g. {names[:3]}) with model.named_modules()",
            LowbitWarning,
            stacklevel=2,
        )
    if not state.quantized:
        raise LowbitError(
            "the recipe selected no layer to quantize: the model has no "
            f"{'/'.join(t.__name__ for t in QUANTIZED_MODULES)} layers matching its include "
            "rules. Check recipe.include / exclude against model.named_modules()"
        )
    model.lowbit_state = state
    return model


def quantizer_modules(model: nn.Module):
    """Yield ``(layer name, role, Quantizer)`` for every quantizer in ``model``."""
    for name, module in model.named_modules():
        quantizers = getattr(module, "quantizers", None)
        if callable(quantizers) and hasattr(module, "layer_name"):
            for role, quantizer in quantizers().items():
                yield name, role, quantizer

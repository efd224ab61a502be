"""Quantization-aware training: `prepare_qat` → the user's own training loop → `lowbit.convert`.

`prepare_qat` puts the same quantized layers into the model that post-training
quantization would (`prepare`), then makes them trainable:

1. Conv → BatchNorm pairs become `QuantConvBn2d` (1d / 3d): the BN is folded
   into the weight that gets quantized while batch statistics stay correct,
   and running statistics take over after ``freeze_bn_after`` steps
   (seed 003 §3.1; Jacob et al. / Krishnamoorthi 2018);
2. quantization sits where the deployment backend quantizes: after a fused
   activation (the next layer's input quantizer sees the ReLU output), and at
   the conv / BN output when the activation that follows is not fused by the
   backend (SiLU, GELU, Hardswish, ... : seed 003 §3.1 quantizes YOLOX's conv
   output, not the SiLU output). `FUSED_ACTIVATIONS` is the table;
3. every quantizer becomes a `QATQuantizer`: fake quantization with the
   straight-through estimator, LSQ / LSQ+ where the recipe's specs say
   ``learn="lsq"`` / ``"lsq+"`` (`qat_recipe` sets that for a whole recipe),
   rounding as the backend rounds (the spec's ``rounding``);
4. with ``calibrate``, activation parameters start from post-training
   calibration (seed 003 §3.2), merged across ``torch.distributed`` ranks.

`lowbit.convert` then folds, freezes and stores weights as codes: the
deployable model has the same types a post-training quantized one has
(`QuantConv2d`, `QuantLinear`, plain `Quantizer`s), and its eval output equals
the QAT model's eval output bit for bit.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.flows.calibrate import CalibrationData, feed
from lowbit.flows.fuse import FusedPair, _pairs_from_fx, _pairs_from_sequentials, set_submodule
from lowbit.flows.prepare import LowbitWarning, prepare, quantizer_modules
from lowbit.nn.modules import QUANTIZED_MODULES, QuantEmbedding, QuantMixin
from lowbit.nn.qat import QATError, QATQuantizer
from lowbit.nn.qat_convbn import CONV_BN_MODULES, _QuantConvBnNd, check_foldable
from lowbit.nn.quantizer import Quantizer
from lowbit.recipes import Recipe, preset
from lowbit.recipes.spec import QuantSpec

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU,
                nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish)
_CLAMPS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
# Activations each backend runs inside the conv / linear kernel (or on the quantized
# tensor without requantizing: clamps keep the grid). Any other activation after a
# layer means the layer's own output is quantized (seed 003 §3.1).
FUSED_ACTIVATIONS: dict[str, tuple[type[nn.Module], ...]] = {
    "x86": _CLAMPS,            # fbgemm / oneDNN: conv-relu fused, relu6 / hardtanh on int8
    "qnnpack": _CLAMPS,
    "mnn": _CLAMPS,            # MNN fuses conv-relu / relu6; SiLU runs separately
    "onnxruntime": _CLAMPS,    # QLinearConv absorbs Relu / Clip; others are own QLinear ops
    "tensorrt": _ACTIVATIONS,  # TensorRT fuses pointwise epilogues into the conv kernel
}
DEFAULT_FUSED = _CLAMPS
# Functional spellings of the same activations, for traced graphs.
_FUNCTIONS: dict[Any, type[nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.hardtanh: nn.Hardtanh,
    F.leaky_relu: nn.LeakyReLU, F.elu: nn.ELU, F.silu: nn.SiLU, F.gelu: nn.GELU,
    F.hardswish: nn.Hardswish, F.hardsigmoid: nn.Hardsigmoid, torch.sigmoid: nn.Sigmoid,
    F.sigmoid: nn.Sigmoid, torch.tanh: nn.Tanh, F.tanh: nn.Tanh, F.mish: nn.Mish,
}
_PASS_THROUGH = (nn.Identity, nn.modules.batchnorm._BatchNorm)


@dataclass
class QATState:
    """What `prepare_qat` did, kept on the model as ``model.lowbit_qat``."""

    recipe: Recipe
    init: str
    folded: list[FusedPair] = field(default_factory=list)
    output_quantized: dict[str, str] = field(default_factory=dict)  # layer -> activation type
    calibrated: bool = False
    freeze_bn_after: int | None = None
    freeze_observers_after: int | None = None


def qat_recipe(recipe: Recipe | str = "x86", *, weight: str = "lsq", activation: str = "lsq+"
               ) -> Recipe:
    """``recipe`` with learned quantizers: ``learn`` set on every weight / activation spec.

    Args:
        recipe: a `Recipe` or preset name.
        weight: ``"none"``, ``"lsq"`` for weight specs.
        activation: ``"none"``, ``"lsq"`` or ``"lsq+"`` for input / output specs;
            ``"lsq+"`` falls back to ``"lsq"`` on symmetric specs (their offset is fixed).

    Returns:
        The new recipe (rules' specs are changed too), named ``<name>-<weight>``.

    Example:
        >>> qat_recipe("x86").input.learn, qat_recipe("mnn").input.learn
        ('lsq+', 'lsq')
    """
    recipe = preset(recipe) if isinstance(recipe, str) else recipe
    if weight == "lsq+":
        raise QATError("weights are quantized symmetrically; use weight='lsq' (or 'none')")

    def learned(spec: Any, mode: str) -> Any:
        if not isinstance(spec, QuantSpec) or spec.dynamic:
            return spec
        if mode == "lsq+" and spec.symmetric:
            mode = "lsq"
        return spec.with_(learn=mode)

    rules = tuple(replace(r, weight=learned(r.weight, weight), input=learned(r.input, activation),
                          output=learned(r.output, activation)) for r in recipe.rules)
    return recipe.with_(
        name=f"{recipe.name}-{weight}", rules=rules, weight=learned(recipe.weight, weight),
        input=learned(recipe.input, activation), output=learned(recipe.output, activation),
    )


def _check_args(init: str, fold_bn: Any, freeze_bn_after: Any, freeze_observers_after: Any) -> None:
    if init not in ("ptq", "lsq"):
        raise QATError(f"init must be 'ptq' or 'lsq', got {init!r}")
    if not (fold_bn in ("auto", "none") or isinstance(fold_bn, (list, tuple))):
        raise QATError(f"fold_bn must be 'auto', 'none' or a list of conv names, got {fold_bn!r}")
    for name, value in (("freeze_bn_after", freeze_bn_after),
                        ("freeze_observers_after", freeze_observers_after)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise QATError(f"{name} must be a step count >= 0 or None (never), got {value!r}")


def _check_quantizable(model: nn.Module, recipe: Recipe) -> None:
    for name, module in model.named_modules():
        if name and type(module) in QUANTIZED_MODULES and \
                recipe.layer_spec(name, type(module).__name__) is not None:
            return
    kinds = "/".join(t.__name__ for t in QUANTIZED_MODULES)
    raise QATError(
        f"the model has no layer for quantization-aware training: no {kinds} that recipe "
        f"{recipe.name!r} selects. QAT trains the weights of quantized layers; check the "
        "model, or the recipe's include / exclude / module_types against model.named_modules()"
    )


def _bn_pairs(model: nn.Module, fold_bn: Any) -> list[tuple[str, str]]:
    if fold_bn == "none":
        return []
    pairs = _pairs_from_fx(model)
    if pairs is None:
        pairs = _pairs_from_sequentials(model)
    modules = dict(model.named_modules())
    pairs = [(c, b) for c, b in pairs if isinstance(modules[c], (nn.Conv1d, nn.Conv2d, nn.Conv3d))
             and not isinstance(modules[c], nn.ConvTranspose2d)]
    if fold_bn == "auto":
        return pairs
    by_conv = dict(pairs)
    for name in fold_bn:
        if name not in modules:
            raise QATError(f"fold_bn names {name!r}, which is not a module of this model; "
                           f"module names look like {[n for n in modules if n][:4]}")
        if name not in by_conv:
            check_foldable(modules[name], None, name)
    return [(name, by_conv[name]) for name in fold_bn]


def _fold_pairs(model: nn.Module, pairs: list[tuple[str, str]], freeze_bn_after: int | None
                ) -> list[FusedPair]:
    folded = []
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        new_type = CONV_BN_MODULES.get(type(conv))
        if new_type is None:  # the recipe leaves this conv in float: so does its BN
            continue
        bn = model.get_submodule(bn_name)
        set_submodule(model, conv_name, new_type.from_conv(conv, bn, name=conv_name,
                                                            freeze_bn_after=freeze_bn_after))
        set_submodule(model, bn_name, nn.Identity())
        folded.append(FusedPair(conv_name, bn_name))
    return folded


def _activation_type(node: Any, modules: dict[str, nn.Module]) -> type[nn.Module] | None:
    if node.op == "call_module":
        kind = type(modules.get(node.target))
        return kind if kind in _ACTIVATIONS else None
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target)
    return None


def _consumers_from_fx(model: nn.Module) -> dict[str, type[nn.Module]] | None:
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure: fall back to nn.Sequential order
        return None
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) not in QUANTIZED_MODULES:
            continue
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if user.op == "call_module" and isinstance(modules.get(user.target), _PASS_THROUGH):
                current = user
                continue
            kind = _activation_type(user, modules)
            if kind is not None:
                found[node.target] = kind
            break
    return found


def _consumers_from_sequentials(model: nn.Module) -> dict[str, type[nn.Module]]:
    found = {}
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for i, name in enumerate(names):
            if type(container._modules[name]) not in QUANTIZED_MODULES:
                continue
            for later in names[i + 1:]:
                child = container._modules[later]
                if isinstance(child, _PASS_THROUGH):
                    continue
                if type(child) in _ACTIVATIONS:
                    found[f"{prefix}.{name}" if prefix else name] = type(child)
                break
    return found


def activation_consumers(model: nn.Module) -> dict[str, type[nn.Module]]:
    """Float layers (Linear / Conv / ...) whose output goes (through BN) into an activation.

    Uses the torch.fx graph when the model traces, else `nn.Sequential` order.

    Example:
        >>> activation_consumers(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.SiLU()))
        {'0': <class 'torch.nn.modules.activation.SiLU'>}
    """
    found = _consumers_from_fx(model)
    return _consumers_from_sequentials(model) if found is None else found


def _place_output_quantizers(model: nn.Module, recipe: Recipe,
                             consumers: dict[str, type[nn.Module]]) -> dict[str, str]:
    """Quantize a layer's output where the activation after it is not fused by the backend."""
    fused = FUSED_ACTIVATIONS.get(recipe.backend or "", DEFAULT_FUSED)
    placed = {}
    for name, kind in consumers.items():
        layer = model.get_submodule(name)
        if kind in fused or not isinstance(layer, QuantMixin) or isinstance(layer, QuantEmbedding) \
                or layer.output_quantizer is not None:
            continue
        spec = layer.layer_spec.output or layer.layer_spec.input
        if spec is None or spec.dynamic:
            continue
        layer.output_quantizer = Quantizer(spec, f"{name}:output")
        layer.layer_spec = replace(layer.layer_spec, output=spec)
        placed[name] = kind.__name__
    return placed


def _swap_quantizers(model: nn.Module, init: str, freeze_after: int | None) -> None:
    for module in model.modules():
        if not hasattr(module, "layer_name"):
            continue
        for attr, child in list(module._modules.items()):
            if type(child) is Quantizer:
                role = "weight" if attr == "weight_quantizer" else "activation"
                setattr(module, attr, QATQuantizer.from_quantizer(
                    child, role, init=init, freeze_after=freeze_after))


def _calibrate(model: nn.Module, data: CalibrationData, max_batches: int | None,
               progress: bool) -> list[str]:
    static = [(f"{name}:{role}", q) for name, role, q in quantizer_modules(model)
              if role != "weight" and not q.spec.dynamic]
    for _, quantizer in static:
        quantizer.mode = "observe"
    was_training = model.training
    model.eval()
    try:
        feed(model, data, max_batches=max_batches, progress=progress, desc="QAT calibration")
    finally:
        model.train(was_training)
    for _, quantizer in static:  # every rank, same order: these are collectives
        quantizer.sync_stats()
    never_ran = []
    for name, quantizer in static:
        if quantizer.observer.has_data:
            quantizer.freeze()
        else:
            quantizer.mode = "off"
            never_ran.append(name)
    if never_ran:
        warnings.warn(
            f"{len(never_ran)} quantizers saw no calibration data and stay float: "
            f"{', '.join(never_ran[:8])}{' ...' if len(never_ran) > 8 else ''}. The calibration "
            "loop does not reach these layers", LowbitWarning, stacklevel=3)
    return never_ran


def prepare_qat(
    model: nn.Module,
    recipe: Recipe | str = "x86",
    calibrate: CalibrationData | None = None,
    *,
    inplace: bool = False,
    init: str = "ptq",
    fold_bn: str | list[str] = "auto",
    freeze_bn_after: int | None = None,
    freeze_observers_after: int | None = None,
    graph: str = "auto",
    max_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """Make a trained float model ready for quantization-aware training.

    Args:
        model: the float model (left untouched unless ``inplace=True``).
        recipe: a `Recipe` or preset name; specs with ``learn="lsq"`` / ``"lsq+"``
            get learned scales (see `qat_recipe`), the others fixed ones.
        calibrate: ``forward_loop(model)`` or an iterable of batches: activation
            parameters start from post-training calibration (seed 003 §3.2).
            Without it they start from the first training batch.
        inplace: modify ``model`` itself.
        init: ``"ptq"`` (what PTQ would choose) or ``"lsq"`` (2·mean|x|/sqrt(qmax)).
        fold_bn: ``"auto"`` folds every Conv → BatchNorm pair (none when the recipe
            says ``fuse=False``), ``"none"`` none, or a list of conv names that must
            each be followed by a BatchNorm.
        freeze_bn_after: training steps after which folded BNs use running statistics.
        freeze_observers_after: training steps after which fixed-scale parameters
            stop following the data (learned scales keep learning).
        graph: as in `prepare` (``"auto"`` also quantizes traced adds / cats / matmuls).
        max_batches: calibration batches (default: the recipe's ``calibration_batches``).
        progress: show a progress bar while calibrating.

    Returns:
        The model in training mode, with ``model.lowbit_qat`` (`QATState`) and
        ``model.lowbit_state``. Build the optimizer after this call: it creates
        the learned scales.

    Raises:
        QATError: no layer to quantize, a bad argument, or a ``fold_bn`` conv without BN.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        ...                   nn.Linear(64, 2))
        >>> qat = prepare_qat(m, qat_recipe("x86"), calibrate=[torch.randn(8, 1, 6, 6)])
        >>> type(qat[0]).__name__
        'QuantConvBn2d'
    """
    recipe = preset(recipe) if isinstance(recipe, str) else recipe
    _check_args(init, fold_bn, freeze_bn_after, freeze_observers_after)
    _check_quantizable(model, recipe)
    if not inplace:
        model = copy.deepcopy(model)
    pairs = _bn_pairs(model, "none" if fold_bn == "auto" and not recipe.fuse else fold_bn)
    consumers = activation_consumers(model)
    model = prepare(model, recipe, graph=graph)
    state = QATState(recipe, init, freeze_bn_after=freeze_bn_after,
                     freeze_observers_after=freeze_observers_after)
    state.folded = _fold_pairs(model, pairs, freeze_bn_after)
    model.lowbit_state.fused = list(state.folded)
    state.output_quantized = _place_output_quantizers(model, recipe, consumers)
    _swap_quantizers(model, init, freeze_observers_after)
    for module in model.modules():
        if isinstance(module, QuantMixin):
            module.calibrate_weight()
    if calibrate is not None:
        batches = recipe.calibration_batches if max_batches is None else max_batches
        for name in _calibrate(model, calibrate, batches or None, progress):
            model.lowbit_state.disabled[name] = "never ran during calibration"
        state.calibrated = True
    for _, _, quantizer in quantizer_modules(model):
        if quantizer.mode == "observe":
            quantizer.mode = "quantize"
    model.lowbit_qat = state
    return model.train()


def qat_layers(model: nn.Module) -> tuple[list[_QuantConvBnNd], list[QATQuantizer]]:
    """The folded Conv-BN modules and the QAT quantizers of ``model``.

    Example:
        >>> convbn, quantizers = qat_layers(qat)  # doctest: +SKIP
    """
    convbn = [m for m in model.modules() if isinstance(m, _QuantConvBnNd)]
    quantizers = [m for m in model.modules() if isinstance(m, QATQuantizer)]
    return convbn, quantizers


def qat_param_groups(model: nn.Module, *, weight_decay: float = 0.0,
                     quantizer_lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer groups: the model's parameters, and the learned quantizer parameters.

    Learned scales and offsets get no weight decay (it would shrink the step
    sizes towards zero) and, optionally, their own learning rate.

    Args:
        model: a QAT model (built before the optimizer: `prepare_qat` creates the scales).
        weight_decay: for the model's own parameters.
        quantizer_lr: learning rate of scales / offsets (None: the optimizer's).

    Returns:
        Two parameter groups for any ``torch.optim`` optimizer.

    Example:
        >>> opt = torch.optim.AdamW(qat_param_groups(qat, weight_decay=1e-4), lr=1e-3)  # doctest: +SKIP
    """
    _, quantizers = qat_layers(model)
    learned = {id(p) for q in quantizers for p in q.parameters(recurse=False)}
    own = [p for p in model.parameters() if id(p) not in learned]
    scales = [p for p in model.parameters() if id(p) in learned]
    group: dict[str, Any] = {"params": scales, "weight_decay": 0.0}
    if quantizer_lr is not None:
        group["lr"] = quantizer_lr
    return [{"params": own, "weight_decay": weight_decay}, group]


def freeze_bn(model: nn.Module) -> int:
    """Switch every folded BatchNorm to running statistics now; returns how many.

    Example:
        >>> freeze_bn(qat)  # e.g. after a few epochs, as seed 003 §3.1 does  # doctest: +SKIP
        3
    """
    convbn, _ = qat_layers(model)
    for module in convbn:
        module.freeze_bn()
    return len(convbn)


def freeze_observers(model: nn.Module) -> int:
    """Stop every fixed-scale quantizer from following the data now; returns how many.

    Learned (LSQ) scales are parameters and keep learning; set their learning
    rate to 0 (see `qat_param_groups`) to stop them.

    Example:
        >>> freeze_observers(qat)  # doctest: +SKIP
        7
    """
    _, quantizers = qat_layers(model)
    for quantizer in quantizers:
        quantizer.observer_frozen.fill_(True)
    return len(quantizers)


def qat_status(model: nn.Module) -> dict[str, Any]:
    """Counters of a QAT model: steps, frozen BNs / observers, learned scales, repairs.

    Example:
        >>> qat_status(qat)["quantizers"]  # doctest: +SKIP
        7
    """
    convbn, quantizers = qat_layers(model)
    learned = [q for q in quantizers if q.learn != "none"]
    return {
        "steps": max((int(q.step) for q in quantizers), default=0),
        "folded_bn": len(convbn),
        "bn_frozen": sum(bool(m.bn_frozen) for m in convbn),
        "quantizers": len(quantizers),
        "observers_frozen": sum(bool(q.observer_frozen) for q in quantizers),
        "learned": len(learned),
        "uninitialised": [q.name for q in quantizers if not bool(q.frozen) and q.mode != "off"],
        "scale_repairs": sum(int(q.recoveries) for q in learned),
    }


def finish_qat(model: nn.Module) -> nn.Module:
    """Turn QAT modules into the post-training types (in place; `lowbit.convert` calls this).

    Folded Conv-BN modules become quantized convs holding the folded weight and
    bias; `QATQuantizer`s become plain `Quantizer`s with their current parameters
    (LSQ+ offsets rounded). A model without QAT modules is returned unchanged.

    Returns:
        The model in eval mode (or the new module when ``model`` itself was a Conv-BN).

    Example:
        >>> deployable = lowbit.convert(qat)  # calls finish_qat first  # doctest: +SKIP
    """
    convbn, quantizers = qat_layers(model)
    if not convbn and not quantizers:
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, _QuantConvBnNd):
            if not name:
                model = module.to_conv()
            else:
                set_submodule(model, name, module.to_conv())
    for module in model.modules():
        for attr, child in list(module._modules.items()):
            if isinstance(child, QATQuantizer):
                weight = getattr(module, "weight", None) if attr == "weight_quantizer" else None
                setattr(module, attr, child.to_quantizer(weight))
    return model.eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DistributedDataParallel / torch.compile wrappers.

    Example:
        >>> unwrap(nn.parallel.DistributedDataParallel(qat)) is qat  # doctest: +SKIP
        True
    """
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


__all__ = [
    "DEFAULT_FUSED",
    "FUSED_ACTIVATIONS",
    "QATError",
    "QATState",
    "activation_consumers",
    "finish_qat",
    "freeze_bn",
    "freeze_observers",
    "prepare_qat",
    "qat_layers",
    "qat_param_groups",
    "qat_recipe",
    "qat_status",
    "unwrap",
]

"""`to_integer`: run a static-int8 lowbit model in integer-only arithmetic.

The simulated model quantizes a tensor exactly where a lowbit quantizer sits:
the input of each quantized Conv / Linear (``input_quantizer``), the output of
each residual add (``QuantAdd``) and the shared range of a concatenation.
The integer model keeps that picture:

- each Conv / Linear becomes `IntConv*d` / `IntLinear` (int8 weights, int32
  bias with scale ``s_in · s_w``, zero-point terms folded, exact int32 sums);
- its accumulator is requantized straight to its consumer's input codes (the
  consumer's ``input_quantizer`` parameters), with a following ReLU / ReLU6
  fused as a clamp of those codes; int8 tensors travel between layers;
- where the simulation leaves a Conv output in float until an add or a global
  average pool, the int32 accumulator goes there directly (the add requantizes
  both inputs, the pool sums and folds ``1/(H·W)`` into the next multiplier);
- any other op runs in float on dequantized inputs, and the report says so.

Ops are found in a torch.fx trace (quantized layers are leaves), so the real
data flow decides what fuses, not module order.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from lowbit.nn.float_cast import FloatKept
from lowbit.nn.functional import QuantAdd, QuantCat, QuantMatmul, QuantPool
from lowbit.nn.integer import (
    AccScale,
    CodeParams,
    IntAccumulating,
    IntConv1d,
    IntConv2d,
    IntConv3d,
    IntegerError,
    IntLinear,
    OutputStage,
    check_mode,
)
from lowbit.nn.integer_ops import Dequantize, IntAdd, IntClamp, IntGlobalAvgPool, QuantizeInput, Requantize
from lowbit.nn.integer_overflow import accumulator_bounds, avx2_u8s8_saturation
from lowbit.nn.integer_report import IntegerReport, OpRecord
from lowbit.nn.modules import QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear, QuantMixin
from lowbit.nn.quantizer import Quantizer

# The one dispatch table from lowbit's quantized layers to their integer versions.
INTEGER_LAYERS: dict[type[nn.Module], type[IntAccumulating]] = {
    QuantConv1d: IntConv1d,
    QuantConv2d: IntConv2d,
    QuantConv3d: IntConv3d,
    QuantLinear: IntLinear,
}
# No-ops at inference: the value passes unchanged.
ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
ALIAS_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
ALIAS_METHODS = ("contiguous", "detach")
# Layout ops and max pooling commute with a monotone per-channel requantization.
SHAPE_MODULES = (nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
SHAPE_FUNCTIONS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                   F.max_pool1d, F.max_pool2d, F.max_pool3d)
SHAPE_METHODS = ("flatten", "view", "reshape", "squeeze", "unsqueeze")
POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
POOL_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
Clamp = tuple[float, float]
# integer ops that end in an output stage (codes and a clamp) a following clamp can join
STAGED = (IntAccumulating, Requantize, IntAdd)


class _Tracer(fx.Tracer):
    """Keeps lowbit's quantized layers as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantMixin, QuantAdd, QuantCat, QuantMatmul, QuantPool, FloatKept, Quantizer)):
            return True
        return super().is_leaf_module(m, qualname)


Operand = tuple[fx.Node, CodeParams | AccScale]


@dataclass(eq=False)
class _Val:
    """A value of the integer graph: float, codes, an int32 accumulator, or a pending sum.

    ``"acc"`` and ``"sum"`` values are not yet requantized because the simulated
    model keeps them in float: a Conv output, or the sum of an add whose operands
    are quantized but whose result is not. They become codes only where a
    consumer quantizes them (one requantization per consumer's parameters, as
    the simulation quantizes once per consumer). They may carry a pending
    real-valued clamp (a ReLU not yet applied) and may be *deferred*: a layout
    op on ``parent``, emitted once it is known whether the consumer wants codes
    (requantize first, then the op on int8), floats or the value itself.
    """

    kind: str  # "float" | "codes" | "acc" | "sum"
    node: fx.Node | None = None
    codes: CodeParams | None = None
    acc: AccScale | None = None
    operands: tuple[Operand, Operand] | None = None  # "sum": the two integer operands
    source: str = ""  # the quantized model's node a "sum" comes from
    clamp: Clamp | None = None
    parent: _Val | None = None
    emit: Callable[[fx.Node], fx.Node] | None = None
    keeps_axis: bool = True


def _merge(a: Clamp | None, b: Clamp | None) -> Clamp | None:
    if a is None or b is None:
        return a or b
    return max(a[0], b[0]), min(a[1], b[1])


def _shape(node) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class IntegerModel(nn.Module):
    """A model that runs in integer-only arithmetic between its input and output.

    ``forward`` takes the float input, quantizes it, runs integer ops and returns
    dequantized float outputs. ``graph_module`` is the integer graph (a
    ``torch.fx.GraphModule`` of `lowbit.nn.integer` modules; print its ``code``);
    ``report()`` says which ops ran in integers and where floats remained.

    Its ``state_dict`` holds the integer tensors (weight codes, int32 biases,
    folded offsets); the structure and scales come from the quantized model, so
    save that model and call `to_integer` again after loading it.

    Example:
        >>> imodel = to_integer(qmodel, example)          # doctest: +SKIP
        >>> logits = imodel(images)                        # doctest: +SKIP
        >>> print(imodel.graph_module.code)                # doctest: +SKIP
    """

    def __init__(self, graph_module: fx.GraphModule, report: IntegerReport) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.requant = report.requant
        self._report = report

    def forward(self, *args):
        return self.graph_module(*args)

    def report(self) -> IntegerReport:
        """The `IntegerReport`: ops and their domain, accumulator bounds, AVX2 saturation."""
        for record in self._report.ops:
            module = self._module(record.name)
            if module is not None and hasattr(module, "describe") and record.domain != "float":
                record.detail = module.describe()
        return self._report

    def _module(self, node_name: str) -> nn.Module | None:
        for node in self.graph_module.graph.nodes:
            if node.name == node_name and node.op == "call_module":
                return self.graph_module.get_submodule(node.target)
        return None


class _Builder:
    """Walks the traced quantized graph once and emits the integer graph."""

    def __init__(self, qmodel: nn.Module, mode: str) -> None:
        self.qmodel = qmodel
        self.mode = mode
        self.modules = dict(qmodel.named_modules())
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[fx.Node, _Val] = {}
        self.cache: dict[tuple, fx.Node] = {}
        self.records: dict[str, OpRecord] = {}
        self.layers: dict[str, IntAccumulating] = {}
        self.count = 0

    # --- emission ----------------------------------------------------------------------
    def _module_node(self, module: nn.Module, args: tuple, domain: str, source: str,
                     label: str, detail: str = "") -> fx.Node:
        self.count += 1
        name = f"{label.lower()}_{self.count}"
        self.root.add_module(name, module)
        node = self.graph.call_module(name, args)
        self.records[node.name] = OpRecord(node.name, label, domain, source, detail)
        return node

    def _copy_node(self, node: fx.Node, args: tuple, kwargs: dict, domain: str, detail: str = "") -> fx.Node:
        """Emit ``node``'s own op (function, method or a copy of its module) on new args."""
        if node.op == "call_module":
            return self._module_node(copy.deepcopy(self.modules[node.target]), args, domain,
                                     node.target, type(self.modules[node.target]).__name__, detail)
        create = self.graph.call_function if node.op == "call_function" else self.graph.call_method
        new = create(node.target, args, kwargs)
        label = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")
        self.records[new.name] = OpRecord(new.name, label, domain, node.name, detail)
        return new

    # --- materialization ---------------------------------------------------------------
    def as_codes(self, val: _Val, params: CodeParams, clamp: Clamp | None = None) -> fx.Node:
        """``val`` as codes of ``params`` (Quantize / Requantize as needed)."""
        clamp = _merge(val.clamp, clamp)
        key = (id(val), "codes", params, clamp)
        if key not in self.cache:
            self.cache[key] = self._to_codes(val, params, clamp)
        return self.cache[key]

    def _to_codes(self, val: _Val, params: CodeParams, clamp: Clamp | None) -> fx.Node:
        if val.parent is not None:
            return val.emit(self.as_codes(val.parent, params, clamp))
        if val.kind == "float":
            return self._module_node(QuantizeInput(params), (val.node,), "boundary", "", "Quantize")
        if val.kind == "codes":
            if val.codes == params:
                return val.node
            requant = Requantize(val.codes, OutputStage.plain(params), self.mode)
            return self._module_node(requant, (val.node,), "int", "", "Requantize")
        stage = OutputStage.plain(params, *(clamp or (-math.inf, math.inf)))
        if val.kind == "sum":
            (a, sa), (b, sb) = val.operands
            return self._module_node(IntAdd(sa, sb, stage, self.mode), (a, b), "int", val.source, "IntAdd")
        return self._module_node(Requantize(val.acc, stage, self.mode), (val.node,), "int", "", "Requantize")

    def as_float(self, val: _Val, clamp: Clamp | None = None) -> fx.Node:
        """``val`` as a float tensor (Dequantize where it is integer)."""
        if val.kind == "float" and val.parent is None:
            return val.node
        clamp = _merge(val.clamp, clamp)
        key = (id(val), "float", clamp)
        if key in self.cache:
            return self.cache[key]
        if val.parent is not None:
            node = val.emit(self.as_float(val.parent, clamp))
        elif val.kind == "codes":
            node = self._module_node(Dequantize(val.codes), (val.node,), "boundary", "", "Dequantize")
        elif val.kind == "sum":
            node = self._sum_in_float(val, clamp)
        else:
            node = val.node
            if clamp is not None:
                node = self._module_node(IntClamp.for_acc(val.acc, *clamp), (node,), "int", "", "IntClamp")
            node = self._module_node(Dequantize(val.acc), (node,), "boundary", "", "Dequantize")
        self.cache[key] = node
        return node

    def _sum_in_float(self, val: _Val, clamp: Clamp | None) -> fx.Node:
        """A sum no consumer quantizes: dequantize both operands and add in float."""
        a, b = (self._module_node(Dequantize(s), (n,), "boundary", "", "Dequantize") for n, s in val.operands)
        node = self.graph.call_function(operator.add, (a, b))
        self.records[node.name] = OpRecord(node.name, "add", "float", val.source,
                                           "sum not quantized by its consumer")
        if clamp is not None:
            node = self.graph.call_function(torch.clamp, (node, clamp[0], clamp[1]))
            self.records[node.name] = OpRecord(node.name, "clamp", "float", val.source,
                                               "activation after the float sum")
        return node

    def operand(self, val: _Val, clamp: Clamp | None = None) -> Operand | None:
        """``val`` as an integer operand of an add / pool: codes, or the accumulator itself."""
        if val.kind == "codes":
            return val.node, val.codes
        if val.kind in ("float", "sum"):
            return None
        clamp = _merge(val.clamp, clamp)
        if val.parent is not None:
            inner = self.operand(val.parent, clamp)
            if inner is None or not val.keeps_axis:
                return None
            return val.emit(inner[0]), inner[1]
        key = (id(val), "acc", clamp)
        if key not in self.cache:
            node = val.node
            if clamp is not None:
                node = self._module_node(IntClamp.for_acc(val.acc, *clamp), (node,), "int", "", "IntClamp")
            self.cache[key] = node
        return self.cache[key], val.acc

    def _float_args(self, node: fx.Node) -> tuple[tuple, dict]:
        args = fx.node.map_arg(node.args, lambda n: self.as_float(self.env[n]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.as_float(self.env[n]))
        return args, kwargs

    def fallback(self, node: fx.Node, reason: str) -> _Val:
        """Run ``node`` in float on dequantized inputs."""
        args, kwargs = self._float_args(node)
        return _Val("float", self._copy_node(node, args, kwargs, "float", reason))

    # --- node handlers -----------------------------------------------------------------
    def convert(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self.env[node] = _Val("float", self.graph.placeholder(node.target))
        elif node.op == "get_attr":
            value = operator.attrgetter(node.target)(self.qmodel)
            name = node.target.replace(".", "_")
            setattr(self.root, name, copy.deepcopy(value))
            self.env[node] = _Val("float", self.graph.get_attr(name))
        elif node.op == "output":
            self.graph.output(fx.node.map_arg(node.args[0], lambda n: self.as_float(self.env[n])))
        elif node.op == "call_module":
            self.env[node] = self._call_module(node, self.modules[node.target])
        else:
            self.env[node] = self._call_function(node)

    def _call_module(self, node: fx.Node, module: nn.Module) -> _Val:
        if type(module) in INTEGER_LAYERS:
            return self._layer(node, module)
        if isinstance(module, QuantAdd):
            return self._add(node, module)
        if isinstance(module, QuantCat):
            return self._cat(node, module)
        if isinstance(module, QuantPool):
            return self._quant_pool(node, module)
        if isinstance(module, ALIAS_MODULES):
            return self.env[node.args[0]]
        if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
            low, high = (0.0, math.inf) if isinstance(module, nn.ReLU) else (module.min_val, module.max_val)
            return self._activation(node, (float(low), float(high)))
        if isinstance(module, SHAPE_MODULES):
            return self._shape_op(node)
        if isinstance(module, POOL_MODULES) and self._is_global(module.output_size):
            return self._pool(node, keepdim=True)
        hint = " (convert QAT models with lowbit.convert first)" if isinstance(module, QuantMixin) else ""
        return self.fallback(node, f"{type(module).__name__} has no integer version{hint}")

    def _call_function(self, node: fx.Node) -> _Val:
        target, args, kwargs = node.target, node.args, node.kwargs
        if target in ALIAS_FUNCTIONS and not kwargs.get("training", args[2] if len(args) > 2 else True):
            return self.env[args[0]]
        if target in ALIAS_METHODS:
            return self.env[args[0]]
        bounds = self._activation_bounds(node)
        if bounds is not None:
            return self._activation(node, bounds)
        if target in SHAPE_FUNCTIONS or target in SHAPE_METHODS:
            return self._shape_op(node)
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        if target in POOL_FUNCTIONS and self._is_global(size):
            return self._pool(node, keepdim=True)
        if target in (torch.mean, "mean"):
            keepdim = self._global_mean(node)
            if keepdim is not None:
                return self._pool(node, keepdim=keepdim)
        if target in ADD_FUNCTIONS:
            return self.fallback(node, "add without a lowbit quantizer (quantize with graph='auto')")
        return self.fallback(node, "no integer version")

    @staticmethod
    def _is_global(size) -> bool:
        sizes = size if isinstance(size, (tuple, list)) else (size,)
        return all(s == 1 for s in sizes)

    def _global_mean(self, node: fx.Node) -> bool | None:
        """keepdim when ``node`` is a mean over every dimension after the channel one, else None."""
        shape = _shape(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if shape is None or dims is None or len(shape) < 3:
            return None
        dims = {d % len(shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        if dims != set(range(2, len(shape))):
            return None
        return bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))

    @staticmethod
    def _activation_bounds(node: fx.Node) -> Clamp | None:
        target, args, kwargs = node.target, node.args, node.kwargs
        if target in (F.relu, torch.relu, torch.relu_, "relu", "relu_"):
            return 0.0, math.inf
        if target is F.relu6:
            return 0.0, 6.0
        if target is F.hardtanh:
            low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        elif target in (torch.clamp, torch.clip, "clamp", "clip"):
            low = args[1] if len(args) > 1 else kwargs.get("min")
            high = args[2] if len(args) > 2 else kwargs.get("max")
            low = -math.inf if low is None else low
            high = math.inf if high is None else high
        else:
            return None
        if not all(isinstance(v, (int, float)) for v in (low, high)):
            return None
        return float(low), float(high)

    def _layer(self, node: fx.Node, module: nn.Module) -> _Val:
        if len(node.args) != 1 or node.kwargs:
            return self.fallback(node, "called with extra arguments")
        try:
            build = INTEGER_LAYERS[type(module)].from_quantized
            layer = build(module, None, mode=self.mode, name=node.target)
        except IntegerError as err:
            return self.fallback(node, str(err))
        x = self.as_codes(self.env[node.args[0]], layer.input_params)
        new = self._module_node(layer, (x,), "int", node.target, type(layer).__name__)
        self.layers[new.name] = layer
        return _Val("acc", new, acc=layer.acc_scale)

    def _activation(self, node: fx.Node, bounds: Clamp) -> _Val:
        val = self.env[node.args[0]]
        if val.kind == "float":
            return self.fallback(node, "activation on a float tensor")
        if val.kind == "codes":
            clamp = IntClamp.for_codes(val.codes, *bounds)
            new = self._module_node(clamp, (val.node,), "int", node.name, "IntClamp")
            return _Val("codes", new, codes=val.codes)
        return replace(val, clamp=_merge(val.clamp, bounds))

    def _shape_op(self, node: fx.Node) -> _Val:
        """Layout ops and max pooling commute with quantization: on floats they are
        deferred too, so that a Quantize (elementwise) runs first and the op on int8."""
        val = self.env[node.args[0]]

        def emit(x: fx.Node) -> fx.Node:
            rest = fx.node.map_arg(node.args[1:], lambda n: self.as_float(self.env[n]))
            kwargs = fx.node.map_arg(node.kwargs, lambda n: self.as_float(self.env[n]))
            return self._copy_node(node, (x, *rest), kwargs, "int")

        if val.kind == "codes":
            return _Val("codes", emit(val.node), codes=val.codes)
        if val.kind in ("float", "sum"):
            return _Val(val.kind, parent=val, emit=emit)
        before, after = _shape(node.args[0]), _shape(node)
        axis = val.acc.axis
        keeps = axis is None or (before is not None and after is not None and (
            after[:2] == before[:2] if axis == 1 else after[-1:] == before[-1:]))
        return _Val("acc", acc=val.acc, parent=val, emit=emit, keeps_axis=keeps)

    def _pool(self, node: fx.Node, keepdim: bool) -> _Val:
        shape = _shape(node.args[0])
        operand = self.operand(self.env[node.args[0]])
        if shape is None or operand is None:
            return self.fallback(node, "pooling of a float tensor")
        x, source = operand
        if isinstance(source, AccScale) and source.axis not in (None, 1):
            return self.fallback(node, "pooling over the channel axis")
        pool = IntGlobalAvgPool(source, math.prod(shape[2:]), keepdim)
        new = self._module_node(pool, (x,), "int", node.name, "IntGlobalAvgPool")
        return _Val("acc", new, acc=pool.out_scale)

    def _quant_pool(self, node: fx.Node, module: QuantPool) -> _Val:
        """Global average pooling of the codes of the pool's input quantizer (ONNX
        Runtime's QLinearGlobalAveragePool): the producing conv requantizes to them."""
        pool = module.pool
        if not isinstance(pool, POOL_MODULES) or not self._is_global(pool.output_size):
            return self.fallback(node, f"{type(pool).__name__} is not a global average pool")
        shape = _shape(node.args[0])
        if shape is None or len(node.args) != 1 or node.kwargs:
            return self.fallback(node, "pooling of a tensor of unknown shape")
        try:
            params = CodeParams.from_quantizer(module.input_quantizer, f"{node.target} input")
        except IntegerError as err:
            return self.fallback(node, str(err))
        x = self.as_codes(self.env[node.args[0]], params)
        int_pool = IntGlobalAvgPool(params, math.prod(shape[2:]), True)
        new = self._module_node(int_pool, (x,), "int", node.target, "IntGlobalAvgPool")
        return _Val("acc", new, acc=int_pool.out_scale)

    def _add(self, node: fx.Node, module: QuantAdd) -> _Val:
        """A residual join: quantized operands (``a_quantizer`` / ``b_quantizer``) are
        requantized to their codes; an operand without one enters as it is (codes or
        the producing conv's accumulator). With an ``output_quantizer`` the sum becomes
        those codes; without one it stays a pending sum for its consumers to quantize."""
        if len(node.args) != 2 or node.kwargs:
            return self.fallback(node, "called with other than two operands")
        roles = (getattr(module, "a_quantizer", None), getattr(module, "b_quantizer", None))
        operands = []
        try:
            for arg, quantizer in zip(node.args, roles, strict=True):
                val = self.env[arg]
                if quantizer is None:
                    operands.append(self.operand(val))
                    continue
                params = CodeParams.from_quantizer(quantizer, f"{node.target} operand")
                operands.append((self.as_codes(val, params), params))
            quantizer = getattr(module, "output_quantizer", None)
            out = None if quantizer is None else CodeParams.from_quantizer(quantizer, f"{node.target} output")
        except IntegerError as err:
            return self.fallback(node, str(err))
        if any(o is None for o in operands):
            return self.fallback(node, "an operand of the add is float")
        if out is None:
            return _Val("sum", operands=tuple(operands), source=node.target)
        (a, sa), (b, sb) = operands
        add = IntAdd(sa, sb, OutputStage.plain(out), self.mode)
        return _Val("codes", self._module_node(add, (a, b), "int", node.target, "IntAdd"), codes=out)

    def _cat(self, node: fx.Node, module: QuantCat) -> _Val:
        try:
            params = CodeParams.from_quantizer(module.shared_quantizer, f"{node.name} inputs")
        except IntegerError as err:
            return self.fallback(node, str(err))
        tensors = [self.as_codes(self.env[n], params) for n in node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        new = self.graph.call_function(torch.cat, (tensors, dim))
        self.records[new.name] = OpRecord(new.name, "cat", "int", node.target, f"{params.fmt} codes")
        return _Val("codes", new, codes=params)

    # --- peephole fusion ---------------------------------------------------------------
    def fuse(self) -> None:
        """Fold a lone Requantize into its Conv / Linear, and a codes clamp into its producer."""
        for node in list(self.graph.nodes):
            if node.op != "call_module":
                continue
            module = getattr(self.root, node.target)
            producer = node.args[0] if node.args else None
            if not isinstance(producer, fx.Node) or producer.op != "call_module" or len(producer.users) != 1:
                continue
            source = getattr(self.root, producer.target)
            if isinstance(module, Requantize) and isinstance(source, IntAccumulating):
                if source.output is not None:
                    continue
                source.set_output(module.output)
            elif isinstance(module, IntClamp) and module.on_codes and isinstance(source, STAGED):
                if source.output is None:
                    continue
                source.output = source.output.narrowed(int(module.low), int(module.high))
            else:
                continue
            node.replace_all_uses_with(producer)
            self.graph.erase_node(node)
            del self.records[node.name]


def _trace(qmodel: nn.Module, inputs: tuple) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(qmodel)
    except Exception as err:  # any tracing failure: explain and stop
        raise IntegerError(
            f"the quantized model does not trace with torch.fx ({type(err).__name__}: "
            f"{str(err).strip()[:200]}); integer conversion needs its data flow. Wrap the "
            "traceable part (e.g. the backbone) in its own module and convert that"
        ) from err
    traced = fx.GraphModule(qmodel, graph)
    with torch.no_grad():
        ShapeProp(traced).propagate(*inputs)
    return traced


def to_integer(qmodel: nn.Module, example_input: Tensor | tuple, *,
               requant: str = "fixed_point") -> IntegerModel:
    """Convert a static-int8 lowbit model into integer-only modules.

    Args:
        qmodel: from ``lowbit.quantize(model, "x86" | "onnxruntime" | ..., calibrate=...)``:
            static per-tensor integer activations, per-tensor or per-channel
            integer weights. It is not modified.
        example_input: a batch (or a tuple of inputs) the model accepts; it fixes
            the shapes (e.g. the pooled size) and runs once through the result.
        requant: ``"fixed_point"`` (gemmlowp / TFLite integer multiplier and
            shift) or ``"float"`` (ONNX Runtime's float32 multipliers and its x86
            QLinearAdd: the model then computes exactly what ONNX Runtime computes
            for ``lowbit.export.onnx(qmodel, ...)``, every intermediate code equal).

    Returns:
        `IntegerModel`; ``.report()`` lists which ops ran in integers and where
        floats remained, with the accumulator-overflow and AVX2 saturation checks.

    Raises:
        IntegerError: unknown mode, a graph that does not trace, or no layer that
            can run in integers (the message says what to change).

    Example:
        >>> import lowbit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        >>> qmodel = lowbit.quantize(model, "x86", calibrate=[torch.randn(16, 4)], progress=False)
        >>> imodel = to_integer(qmodel, torch.randn(2, 4), requant="float")
        >>> imodel.report().fully_integer, [r.op for r in imodel.report().ops]
        (True, ['Quantize', 'IntLinear', 'IntLinear', 'Dequantize'])
    """
    mode = check_mode(requant)
    if not isinstance(qmodel, nn.Module):
        raise IntegerError(f"to_integer takes the quantized nn.Module, got {type(qmodel).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = qmodel.training
    qmodel.eval()
    try:
        traced = _trace(qmodel, inputs)
    finally:
        qmodel.train(was_training)
    builder = _Builder(qmodel, mode)
    for node in traced.graph.nodes:
        builder.convert(node)
    if not builder.layers:
        reasons = "; ".join(sorted({r.detail for r in builder.records.values() if r.domain == "float"}))
        raise IntegerError(
            "no layer of this model can run in integers"
            + (f" ({reasons[:300]})" if reasons else "")
            + ". Quantize it with a static recipe such as 'x86' or 'onnxruntime'"
        )
    builder.fuse()
    graph_module = fx.GraphModule(builder.root, builder.graph)
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    model = IntegerModel(graph_module, _report(builder, graph_module, mode))
    with torch.no_grad():
        model(*inputs)  # surface overflow or shape errors now, on the example
    return model


def _report(builder: _Builder, graph_module: fx.GraphModule, mode: str) -> IntegerReport:
    """Ops in execution order, accumulator bounds and AVX2 saturation of the live layers."""
    live = {n.name for n in graph_module.graph.nodes}
    report = IntegerReport(requant=mode, ops=[r for name, r in builder.records.items() if name in live])
    for name, layer in builder.layers.items():
        if name not in live:
            continue
        report.accumulators.append(accumulator_bounds(layer))
        bits = layer.input_params.format.bits
        if bits <= 8 and layer.weight_codes.dtype == torch.int8:
            report.saturation[layer.layer_name] = avx2_u8s8_saturation(layer.weight_codes, bits)
    state = getattr(builder.qmodel, "lowbit_state", None)
    if state is not None:
        report.notes.append(f"recipe: {state.recipe.name}")
    return report

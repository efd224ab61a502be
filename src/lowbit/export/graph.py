"""A small editor for ONNX graphs: producers, consumers, new names, constants, clean-up.

The QDQ passes only ever add nodes and initializers, rewire inputs, and drop
nodes; `GraphEditor.finish` then removes what no output needs and sorts the
nodes topologically, so passes never have to keep the node list ordered.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.export.errors import ExportError


class GraphEditor:
    """Mutable view of an ``onnx.ModelProto``'s main graph.

    Args:
        model: the model to edit (edited in place by `finish`).

    Example:
        >>> ed = GraphEditor(model)                       # doctest: +SKIP
        >>> scale = ed.constant("scale", np.float32(0.1))  # doctest: +SKIP
        >>> ed.finish()                                    # doctest: +SKIP
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self._names: set[str] = set(self.initializers)
        self._names.update(i.name for i in graph.input)
        for node in self.nodes:
            self._names.update(node.output)
            if node.name:
                self._names.add(node.name)
        self._constant_cache: dict[tuple, str] = {}

    # --- names and constants ---------------------------------------------------------
    def unique(self, hint: str) -> str:
        """A name not used yet in the graph, based on ``hint``."""
        base = hint.replace(":", "_").replace("/", "_").strip("_") or "t"
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def add_initializer(self, tensor: TensorProto) -> str:
        """Add ``tensor`` (its name made unique) and return the name used."""
        tensor.name = self.unique(tensor.name)
        self.initializers[tensor.name] = tensor
        return tensor.name

    def constant(self, hint: str, value: Any, dtype: Any = None) -> str:
        """An initializer holding ``value`` (numpy-convertible); equal constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constant_cache:
            self._constant_cache[key] = self.add_initializer(numpy_helper.from_array(array, hint))
        return self._constant_cache[key]

    def shared(self, tensor: TensorProto) -> str:
        """Add ``tensor`` unless an equal one (type, shape, bytes) exists; return its name."""
        nameless = TensorProto()
        nameless.CopyFrom(tensor)
        nameless.name = ""
        key = ("proto", nameless.SerializeToString(deterministic=True))
        if key not in self._constant_cache:
            self._constant_cache[key] = self.add_initializer(tensor)
        return self._constant_cache[key]

    def array(self, name: str) -> np.ndarray | None:
        """The value of initializer ``name`` (None when it is not a plain initializer)."""
        tensor = self.initializers.get(name)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception:  # types numpy cannot hold (int4, float8)
            return None

    # --- nodes -------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, *,
             name: str = "", domain: str = "", **attrs: Any) -> onnx.NodeProto:
        """Create and add a node; missing output names are generated."""
        hint = name or op
        if outputs is None:
            outputs = [self.unique(f"{hint}_out")]
        node = helper.make_node(op, inputs, outputs, name=self.unique(hint), domain=domain or None,
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return node

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {out: node for node in self.nodes for out in node.output}

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                if name:
                    found[name].append(node)
        return found

    def remove(self, *nodes: onnx.NodeProto) -> None:
        ids = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in ids]

    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.model.graph.output}

    # --- finishing ---------------------------------------------------------------------
    def finish(self) -> onnx.ModelProto:
        """Drop dead nodes and unused initializers, sort topologically, write back."""
        graph = self.model.graph
        needed = set(self.graph_outputs())
        producers = self.producers()
        stack = list(needed)
        while stack:
            name = stack.pop()
            node = producers.get(name)
            if node is None:
                continue
            for inp in node.input:
                if inp and inp not in needed:
                    needed.add(inp)
                    stack.append(inp)
        live = [n for n in self.nodes if any(o in needed for o in n.output)]
        ordered = _toposort(live, {i.name for i in graph.input} | set(self.initializers))
        used = {name for node in ordered for name in node.input}
        used |= self.graph_outputs()
        del graph.node[:]
        graph.node.extend(ordered)
        del graph.initializer[:]
        graph.initializer.extend(t for name, t in self.initializers.items() if name in used)
        graph_inputs = [i for i in graph.input if i.name in used or i.name not in self.initializers]
        del graph.input[:]
        graph.input.extend(graph_inputs)
        del graph.value_info[:]
        return self.model


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    producers = {out: i for i, node in enumerate(nodes) for out in node.output}
    ready: set[str] = set(available) | {""}
    done = [False] * len(nodes)
    ordered: list[onnx.NodeProto] = []
    waiting: dict[str, list[int]] = defaultdict(list)
    pending = [0] * len(nodes)
    queue: list[int] = []
    for i, node in enumerate(nodes):
        missing = {name for name in node.input if name not in ready and name in producers}
        pending[i] = len(missing)
        for name in missing:
            waiting[name].append(i)
        if not missing:
            queue.append(i)
    while queue:
        i = queue.pop(0)
        if done[i]:
            continue
        done[i] = True
        ordered.append(nodes[i])
        for out in nodes[i].output:
            for j in waiting.pop(out, []):
                pending[j] -= 1
                if pending[j] == 0:
                    queue.append(j)
    if len(ordered) != len(nodes):
        raise ExportError("internal: the rewritten ONNX graph has a cycle; please report this model")
    return ordered

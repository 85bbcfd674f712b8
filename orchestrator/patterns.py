"""Finding a plugin's computation in any ONNX graph by what it computes, not by tensor names.

A catalog entry may carry patterns (`PluginEntry.patterns`): objects that look at a graph and return
each place where the plugin's computation sits (a `Found`: the tensors that become the plugin's
inputs, the tensor its output replaces) or where it almost does (a `NearMatch`, with the reason it
cannot be replaced). The `replace_pattern` surgery edit asks the declared plugin's patterns and
puts one plugin node in place of each found subgraph.

This module is the machinery patterns are written in, the same for every plugin:

* `GraphView`: an onnx-graphsurgeon graph with static shapes from ONNX shape inference with data
  propagation (so reshapes whose target is computed from Shape nodes have known shapes too), the
  values of constant tensors, and opset-independent reading of node settings.
* Layouts: a tensor's axes as named factors (`Atoms`), followed through the ops that only move
  data (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Transpose) upward and downward, through
  scalar affine ops (x*a + b), and through the ops that take a part of a tensor (Split, Slice,
  Gather). Exporters differ in which of these ops they write and in what order; what the factors
  end up as does not depend on it, so a pattern states what it needs in factors.
* `replace`: the plugin node in place of a found subgraph, with the Reshape/Transpose nodes that
  bring each input to the plugin's layout and the output back to the replaced tensor's layout. The
  subgraph's own nodes are left to the graph's cleanup, which drops those nothing reads any more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Layout = tuple[tuple[str, ...], ...]  # per axis, the factors it holds (outermost first; size-1 factors left out)
ShapeRule = Callable[[list[tuple[int, ...]]], tuple[int, ...]]  # input shapes -> output shape

MOVES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})  # keep the element order
AFFINE = frozenset({"Mul", "Add", "Sub", "Div", "Neg"})
EVALUATED = frozenset({"Identity", "Cast", "Neg", "Add", "Sub", "Mul", "Div", "Concat", "Reshape", "Gather",
                       "Unsqueeze", "Squeeze", "Slice"})  # ops on constants that settings are computed with


class GraphView:
    """A graphsurgeon graph with the static shapes and constant values patterns read."""

    def __init__(self, graph: Any, shapes: dict[str, tuple[int, ...]]):
        self.graph = graph
        self.shapes = shapes
        self._constants: dict[str, Any] = {}
        self._consumers: dict[str, list[Any]] = {}
        for node in graph.nodes:
            for tensor in node.inputs:
                self._consumers.setdefault(tensor.name, []).append(node)

    @classmethod
    def of(cls, graph: Any, rules: Mapping[str, ShapeRule] | None = None) -> GraphView:
        """The graph as it stands, its shapes inferred with data propagation. `rules` give the output shape
        of ops outside ONNX's domains (which shape inference leaves untyped), by op type, e.g. an older
        exporter's contrib GridSample; inference runs again below them."""
        import onnx
        import onnx_graphsurgeon as gs

        model = gs.export_onnx(graph)
        for _ in range(16):  # each round types what the previous one's shapes let it
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
            view = cls(graph, _static_shapes(model))
            typed = _apply_rules(model, view.shapes, rules or {})
            typed = view._reshape_targets(model) or typed
            if not typed:
                break
        return view

    def _reshape_targets(self, model: Any) -> bool:
        """Type the outputs of Reshape nodes whose target shape is computed from constants and static shapes
        (Shape, Slice, Concat, ...) where shape inference did not follow it; True if any was typed."""
        import numpy as np
        import onnx

        types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info]}
        typed = False
        for node in self.graph.nodes:
            if node.op != "Reshape" or self.shape(node.outputs[0]) is not None:
                continue
            source, target = self.shape(node.inputs[0]), self.constant(node.inputs[1])
            if source is None or target is None or not types.get(node.inputs[0].name):
                continue
            dims = [int(d) for d in np.asarray(target).reshape(-1)]
            if not node.attrs.get("allowzero", 0):
                dims = [source[i] if d == 0 and i < len(source) else d for i, d in enumerate(dims)]
            known = int(np.prod([d for d in dims if d != -1]))
            if dims.count(-1) > 1 or known <= 0 or int(np.prod(source)) % known:
                continue
            dims = [int(np.prod(source)) // known if d == -1 else d for d in dims]
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(
                node.outputs[0].name, types[node.inputs[0].name], dims))
            self.shapes[node.outputs[0].name] = tuple(dims)
            self._constants.clear()  # a Shape of this output is known now
            typed = True
        return typed

    def shape(self, tensor: Any) -> tuple[int, ...] | None:
        return self.shapes.get(tensor.name)

    @staticmethod
    def producer(tensor: Any) -> Any | None:
        return tensor.inputs[0] if getattr(tensor, "inputs", None) else None

    def consumers(self, tensor: Any) -> list[Any]:
        return self._consumers.get(tensor.name, [])

    def is_output(self, tensor: Any) -> bool:
        return any(out.name == tensor.name for out in self.graph.outputs)

    def constant(self, tensor: Any, depth: int = 0) -> Any | None:
        """The value of a tensor the graph fixes (initializer, Constant node, or a few ops on them), else None."""
        if tensor.name not in self._constants:
            self._constants[tensor.name] = self._computed(tensor, depth)
        return self._constants[tensor.name]

    def _computed(self, tensor: Any, depth: int) -> Any | None:
        import numpy as np

        values = getattr(tensor, "values", None)
        if values is not None:
            return np.asarray(values)
        node = self.producer(tensor)
        if node is None or depth > 8:
            return None
        if node.op == "Constant":
            return _constant_node_value(node)
        if node.op == "Shape":
            shape = self.shape(node.inputs[0])
            return None if shape is None else np.array(shape, dtype=np.int64)[node.attrs.get("start", 0):
                                                                              node.attrs.get("end", len(shape))]
        if node.op not in EVALUATED:
            return None
        inputs = []
        for source in node.inputs:
            value = self.constant(source, depth + 1) if source.name else None
            if value is None and source.name:
                return None
            inputs.append(value)
        try:
            return _evaluate(node, inputs)
        except (ValueError, TypeError, IndexError, KeyError):
            return None

    def ints(self, node: Any, name: str, slot: int) -> list[int] | None:
        """An integer list setting given as attribute `name` (older opsets) or as constant input `slot` (newer)."""
        if name in node.attrs:
            value = node.attrs[name]
            return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]
        if len(node.inputs) > slot and node.inputs[slot].name:
            found = self.constant(node.inputs[slot])
            return None if found is None else [int(v) for v in found.reshape(-1)]
        return None


def _static_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        kind = value.type.tensor_type
        if kind.HasField("shape") and all(d.HasField("dim_value") for d in kind.shape.dim):
            shapes[value.name] = tuple(int(d.dim_value) for d in kind.shape.dim)
    for initializer in model.graph.initializer:
        shapes[initializer.name] = tuple(int(d) for d in initializer.dims)
    return shapes


def _apply_rules(model: Any, shapes: dict[str, tuple[int, ...]], rules: Mapping[str, ShapeRule]) -> bool:
    """Type the outputs of custom-domain nodes that a rule covers and whose inputs are known; True if any."""
    import onnx

    from orchestrator.onnx_graph import is_standard_domain

    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info]}
    typed = False
    for node in model.graph.node:
        rule = rules.get(node.op_type)
        if rule is None or is_standard_domain(node.domain) or not node.output or node.output[0] in shapes:
            continue
        inputs = [shapes.get(name) for name in node.input]
        if any(shape is None for shape in inputs) or not types.get(node.input[0]):
            continue
        shape = rule([s for s in inputs if s is not None])
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], types[node.input[0]],
                                                                         list(shape)))
        typed = True
    return typed


def _constant_node_value(node: Any) -> Any | None:
    import numpy as np

    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            return np.asarray(getattr(value, "values", value))
    return None


def _evaluate(node: Any, inputs: list[Any]) -> Any | None:
    """The few ops on constants that index and shape settings are computed with."""
    import numpy as np

    first: Any = inputs[0] if inputs else None
    simple: dict[str, Callable[[], Any]] = {
        "Identity": lambda: first,
        "Cast": lambda: first.astype(_numpy_type(node.attrs["to"])),
        "Neg": lambda: -first,
        "Add": lambda: first + inputs[1], "Sub": lambda: first - inputs[1],
        "Mul": lambda: first * inputs[1], "Div": lambda: first / inputs[1],
        "Concat": lambda: np.concatenate([np.atleast_1d(v) for v in inputs], axis=node.attrs.get("axis", 0)),
        "Reshape": lambda: first.reshape([int(v) for v in inputs[1]]),
        "Gather": lambda: np.take(first, inputs[1], axis=node.attrs.get("axis", 0)),
    }
    if node.op in simple:
        return np.asarray(simple[node.op]())
    if node.op == "Slice":
        return _sliced(node, inputs)
    if node.op in ("Unsqueeze", "Squeeze"):
        axes = node.attrs.get("axes", list(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None)
        if node.op == "Squeeze":
            return np.squeeze(first, axis=None if axes is None else tuple(int(a) for a in axes))
        return np.expand_dims(first, tuple(int(a) for a in axes or ()))
    return None


def _sliced(node: Any, inputs: list[Any]) -> Any:
    """Slice of a constant (settings as inputs from opset 10, as attributes before)."""
    data = inputs[0]
    settings: list[Any] = [node.attrs.get(key) for key in ("starts", "ends", "axes", "steps")] \
        if "starts" in node.attrs else [list(inputs[i]) if len(inputs) > i and inputs[i] is not None else None
                                        for i in range(1, 5)]
    starts, ends, axes, steps = settings
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(axes)
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _numpy_type(elem_type: int) -> Any:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


# ---------------------------------------------------------------------- factors and layouts

@dataclass
class Atoms:
    """Named factors of tensor axes (each of size > 1) and the finer factors some were split into."""

    sizes: dict[str, int] = field(default_factory=dict)
    parts: dict[str, tuple[str, str]] = field(default_factory=dict)

    def new(self, name: str, size: int) -> tuple[str, ...]:
        """The factor `name` of `size` (none for size 1); a ValueError when `name` already has another size."""
        if size == 1:
            return ()
        known = self.sizes.setdefault(name, size)
        if known != size:
            raise ValueError(f"{name} is {known} in one place and {size} in another")
        return (name,)

    def expand(self, atoms: Sequence[str]) -> tuple[str, ...]:
        found: list[str] = []
        for atom in atoms:
            found.extend(self.expand(self.parts[atom]) if atom in self.parts else [atom])
        return tuple(found)

    def size(self, atoms: Sequence[str]) -> int:
        total = 1
        for atom in self.expand(atoms):
            total *= self.sizes[atom]
        return total

    def split(self, atom: str, outer: int) -> tuple[str, str]:
        """Split `atom` into an outer factor of size `outer` and the inner rest."""
        first, rest = f"{atom}.0", f"{atom}.1"
        self.sizes[first], self.sizes[rest] = outer, self.sizes[atom] // outer
        self.parts[atom] = (first, rest)
        return first, rest

    def order(self, layout: Layout) -> tuple[str, ...]:
        """The factors of a layout in memory order, outermost first."""
        return self.expand([atom for axis in layout for atom in axis])

    def regroup(self, order: Sequence[str], shape: Sequence[int]) -> Layout | None:
        """The factors in `order`, cut into the axes of `shape` (splitting a factor where an axis cuts through
        it); None when the sizes do not line up."""
        pending = list(self.expand(order))
        axes = []
        for size in shape:
            axis: list[str] = []
            need = int(size)
            while need > 1:
                if not pending:
                    return None
                atom = pending[0]
                have = self.sizes[atom]
                if need % have == 0:
                    axis.append(pending.pop(0))
                    need //= have
                elif have % need == 0:
                    outer, pending[0] = self.split(atom, need)
                    axis.append(outer)
                    need = 1
                else:
                    return None
            axes.append(tuple(axis))
        return None if pending else tuple(axes)


def transposed(layout: Layout, perm: Sequence[int]) -> Layout:
    return tuple(layout[p] for p in perm)


def untransposed(layout: Layout, perm: Sequence[int]) -> Layout:
    axes: list[tuple[str, ...]] = [()] * len(layout)
    for index, p in enumerate(perm):
        axes[p] = layout[index]
    return tuple(axes)


def perm_of(node: Any, rank: int) -> list[int]:
    return [int(p) for p in node.attrs.get("perm", list(range(rank))[::-1])]


def layout_up(view: GraphView, atoms: Atoms, node: Any, out_layout: Layout) -> Layout | None:
    """The layout of a data-moving node's input 0, from its output's; None for any other node."""
    shape = view.shape(node.inputs[0]) if node.inputs else None
    if shape is None:
        return None
    if node.op in MOVES:
        return atoms.regroup(atoms.order(out_layout), shape)
    if node.op == "Transpose" and len(shape) == len(out_layout):
        return untransposed(out_layout, perm_of(node, len(shape)))
    return None


def layout_down(view: GraphView, atoms: Atoms, node: Any, in_layout: Layout) -> Layout | None:
    """The layout of a data-moving node's output, from its input 0's; None for any other node."""
    shape = view.shape(node.outputs[0])
    if shape is None:
        return None
    if node.op in MOVES:
        return atoms.regroup(atoms.order(in_layout), shape)
    if node.op == "Transpose" and len(shape) == len(in_layout):
        return transposed(in_layout, perm_of(node, len(shape)))
    return None


def affine_of(view: GraphView, node: Any, tensor: Any) -> tuple[Any, float, float] | None:
    """For an elementwise op of `tensor`'s producer with one scalar constant: (its other input x, a, b)
    where tensor = a*x + b; None for anything else."""
    import numpy as np

    if node.op not in AFFINE:
        return None
    if node.op == "Neg":
        return node.inputs[0], -1.0, 0.0
    constants = [view.constant(t) for t in node.inputs]
    slots = [i for i, value in enumerate(constants) if value is not None and np.asarray(value).size >= 1
             and np.all(np.asarray(value) == np.asarray(value).reshape(-1)[0])]
    if len(node.inputs) != 2 or len(slots) != 1:
        return None
    k = float(np.asarray(constants[slots[0]]).reshape(-1)[0])
    other = node.inputs[1 - slots[0]]
    if view.shape(other) != view.shape(tensor):  # the constant must not broadcast the tensor bigger
        return None
    rules = {"Mul": (k, 0.0), "Add": (1.0, k), "Sub": (1.0, -k) if slots[0] == 1 else (-1.0, k)}
    if node.op == "Div":
        return (other, 1.0 / k, 0.0) if slots[0] == 1 and k != 0 else None
    return other, *rules[node.op]


@dataclass(frozen=True)
class Step:
    """A tensor on a path traced upward: its layout, and start = scale * tensor + shift."""

    tensor: Any
    layout: Layout
    scale: float = 1.0
    shift: float = 0.0


def trace_up(view: GraphView, atoms: Atoms, start: Step, affine: bool = False) -> list[Step]:
    """The tensors `start` is computed from through data-moving ops (and, with `affine`, scalar affine
    ops), nearest first; it stops at the first other op, a graph input or a constant."""
    steps = [start]
    while True:
        here = steps[-1]
        node = view.producer(here.tensor)
        if node is None or view.constant(here.tensor) is not None:
            return steps
        layout = layout_up(view, atoms, node, here.layout)
        if layout is not None:
            steps.append(Step(node.inputs[0], layout, here.scale, here.shift))
            continue
        found = affine_of(view, node, here.tensor) if affine else None
        if found is None:
            return steps
        source, a, b = found
        steps.append(Step(source, here.layout, here.scale * a, here.scale * b + here.shift))


@dataclass(frozen=True)
class Part:
    """A part of `data` along `axis`: `length` elements from `start`, or (length None) the one index
    `start` with the axis removed."""

    data: Any
    axis: int
    start: int
    length: int | None


def part_of(view: GraphView, node: Any, tensor: Any) -> Part | None:
    """The part of its data input that a Split, Slice or Gather node's output `tensor` is; None otherwise."""
    data_shape = view.shape(node.inputs[0]) if node.inputs else None
    if data_shape is None:
        return None
    rank = len(data_shape)
    if node.op == "Split":
        axis = int(node.attrs.get("axis", 0)) % rank
        index = [out.name for out in node.outputs].index(tensor.name)
        shapes = [view.shape(out) for out in node.outputs[:index + 1]]
        sizes = [shape[axis] if shape is not None else None for shape in shapes]
        if any(size is None for size in sizes):
            return None
        return Part(node.inputs[0], axis, sum(int(size or 0) for size in sizes[:-1]), sizes[-1])
    if node.op == "Gather":
        index_value = view.constant(node.inputs[1])
        axis = int(node.attrs.get("axis", 0)) % rank
        if index_value is None or index_value.size != 1:
            return None
        position = int(index_value.reshape(-1)[0]) % data_shape[axis]
        return Part(node.inputs[0], axis, position, None if index_value.ndim == 0 else 1)
    if node.op == "Slice":
        return _slice_part(view, node, data_shape)
    return None


def _slice_part(view: GraphView, node: Any, data_shape: tuple[int, ...]) -> Part | None:
    """A Slice of one axis with step 1 (settings as attributes in opsets before 10, as inputs after)."""
    starts, ends = view.ints(node, "starts", 1), view.ints(node, "ends", 2)
    axes = view.ints(node, "axes", 3) or list(range(len(starts or [])))
    steps = view.ints(node, "steps", 4) or [1] * len(axes)
    if starts is None or ends is None or any(s != 1 for s in steps):
        return None
    cut = [(a % len(data_shape), s, e) for a, s, e in zip(axes, starts, ends, strict=True)]
    cut = [(a, s, e) for a, s, e in cut if not (s == 0 and e >= data_shape[a])]
    if len(cut) != 1:
        return None
    axis, start, end = cut[0]
    size = data_shape[axis]
    start = min(max(start + size if start < 0 else start, 0), size)
    end = min(max(end + size if end < 0 else end, 0), size)
    return Part(node.inputs[0], axis, start, max(end - start, 0))


def reduce_axes(view: GraphView, node: Any, rank: int) -> list[int] | None:
    """The axes a ReduceSum-like node reduces (attribute before opset 13, input after), non-negative."""
    axes = view.ints(node, "axes", 1)
    if axes is None:
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def broadcast_layout(atoms: Atoms, layout: Layout, shape: Sequence[int], other: Sequence[int]) -> Layout | None:
    """The layout of an operand of `other`'s shape broadcast against a tensor of `layout` and `shape`: its
    axes of equal size hold the same factors, its size-1 axes none; None where sizes differ otherwise."""
    if len(other) > len(shape):
        return None
    offset = len(shape) - len(other)
    axes = []
    for index, size in enumerate(other):
        if size == shape[offset + index]:
            axes.append(layout[offset + index])
        elif size == 1:
            axes.append(())
        else:
            return None
    return tuple(axes)


# ---------------------------------------------------------------------- what a pattern returns

@dataclass
class Operand:
    """One plugin input of a found subgraph: a graph tensor and the layout it was found in, brought to
    `order` (factors in memory order) and `shape`; or a constant `value`."""

    tensor: Any = None
    layout: Layout = ()
    order: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    value: Any = None
    dtype_of: int | None = None  # cast to the dtype of this input (e.g. a grid computed in float64)


@dataclass
class Found:
    """A subgraph that computes the plugin: its inputs, the tensor the plugin's output stands for (in
    `output_layout`) and the plugin output's factor order and shape."""

    inputs: list[Operand]
    output: Any
    output_layout: Layout
    output_order: tuple[str, ...]
    output_shape: tuple[int, ...]
    atoms: Atoms
    anchors: list[str]  # the nodes the pattern was found by, for the report
    stem: str  # the name the plugin node is given (made unique)


@dataclass
class NearMatch:
    """A place that looks like the pattern but cannot be replaced, and why."""

    anchors: list[str]
    reason: str


class Pattern(Protocol):
    """How one plugin's computation looks in a graph (see PluginEntry.patterns)."""

    looks_for: str  # what it looks for, in a sentence: said when nothing matches
    anchor_op: str  # the op every occurrence has, to say when the graph has none
    shape_rules: Mapping[str, ShapeRule]  # output shapes of custom-domain ops it reads (see GraphView.of)

    def find(self, view: GraphView) -> list[Found | NearMatch]: ...


# ---------------------------------------------------------------------- replacing

@dataclass(frozen=True)
class Move:
    """A Reshape or Transpose on the way from one layout to another."""

    op: str
    shape: tuple[int, ...]  # the output's shape
    perm: tuple[int, ...] = ()


def moves(atoms: Atoms, source_shape: Sequence[int], source: Layout, order: Sequence[str],
          shape: Sequence[int]) -> list[Move]:
    """The Reshape/Transpose nodes (none, one, or reshape-transpose-reshape) that bring a tensor of `source`
    layout to the factor order `order` and shape `shape`."""
    have = atoms.order(source)
    want = atoms.expand(order)
    if sorted(have) != sorted(want):
        raise ValueError(f"factors {have} cannot be brought to {want}")
    found: list[Move] = []
    current = tuple(source_shape)
    if have != want:
        sizes = tuple(atoms.sizes[a] for a in have)
        if current != sizes:
            found.append(Move("Reshape", sizes))
        perm = tuple(have.index(a) for a in want)
        current = tuple(atoms.sizes[a] for a in want)
        found.append(Move("Transpose", current, perm))
    if current != tuple(shape):
        found.append(Move("Reshape", tuple(shape)))
    return found


def emit(graph: Any, unique: Callable[[str], str], tensor: Any, steps: list[Move], stem: str,
         into: Any = None) -> Any:
    """Append the nodes of `steps` reading `tensor`; the last writes `into` when given. Returns the result."""
    import numpy as np
    import onnx_graphsurgeon as gs

    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        out = into if last and into is not None else gs.Variable(unique(f"{stem}_{step.op.lower()}"),
                                                                 dtype=tensor.dtype, shape=list(step.shape))
        if step.op == "Transpose":
            node = gs.Node("Transpose", unique(f"{stem}_Transpose"), {"perm": list(step.perm)}, [tensor], [out])
        else:
            target = gs.Constant(unique(f"{stem}_shape"), np.array(step.shape, dtype=np.int64))
            node = gs.Node("Reshape", unique(f"{stem}_Reshape"), {}, [tensor, target], [out])
        graph.nodes.append(node)
        tensor = out
    return tensor


def cast_like(graph: Any, unique: Callable[[str], str], tensor: Any, like: Any, stem: str) -> Any:
    """`tensor` in the dtype of `like` (a Cast node when they differ and both are known)."""
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs

    if tensor.dtype is None or like.dtype is None or np.dtype(tensor.dtype) == np.dtype(like.dtype):
        return tensor
    out = gs.Variable(unique(f"{stem}_cast"), dtype=like.dtype, shape=tensor.shape)
    to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(like.dtype))
    graph.nodes.append(gs.Node("Cast", unique(f"{stem}_Cast"), {"to": to}, [tensor], [out]))
    return out


def replace(view: GraphView, found: Found, op: str, domain: str, attrs: dict[str, Any],
            unique: Callable[[str], str], input_names: Sequence[str]) -> tuple[Any, dict[str, list[int]] | None]:
    """Put one `op` node in place of a found subgraph: it computes `found.output` from then on, and the
    nodes that computed it are left for cleanup. Returns the node, and how its output maps onto the
    replaced tensor (see output_mapping)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    name = unique(found.stem)
    inputs = []
    for slot, operand in enumerate(found.inputs):
        label = f"{name}_{input_names[slot]}"
        if operand.value is not None:
            inputs.append(gs.Constant(unique(label), np.asarray(operand.value)))
            continue
        shape = view.shape(operand.tensor)
        steps = moves(found.atoms, shape or (), operand.layout, operand.order, operand.shape)
        tensor = emit(view.graph, unique, operand.tensor, steps, label)
        if operand.dtype_of is not None:
            tensor = cast_like(view.graph, unique, tensor, inputs[operand.dtype_of], label)
        inputs.append(tensor)
    end = found.output
    end_shape = view.shape(end) or ()
    plugin_layout = found.atoms.regroup(found.output_order, found.output_shape)
    assert plugin_layout is not None
    back = moves(found.atoms, found.output_shape, plugin_layout, found.atoms.order(found.output_layout), end_shape)
    producer = view.producer(end)
    if producer is not None:
        producer.outputs = [t if t is not end else gs.Variable(unique(f"{end.name}_replaced"))
                            for t in producer.outputs]
    own = end if not back else gs.Variable(unique(f"{name}_output"), dtype=end.dtype or inputs[0].dtype,
                                           shape=list(found.output_shape))
    node = gs.Node(op, name, attrs, inputs, [own], domain=domain)
    view.graph.nodes.append(node)
    if back:
        emit(view.graph, unique, own, back, f"{name}_output", into=end)
    return node, output_mapping(found)


def output_mapping(found: Found) -> dict[str, list[int]] | None:
    """How the plugin's output becomes the replaced tensor's element order: reshaped to `factors` (one axis
    per factor), then transposed by `perm`; None when the element orders are the same."""
    have = found.atoms.expand(found.output_order)
    want = found.atoms.order(found.output_layout)
    if have == want:
        return None
    return {"factors": [found.atoms.sizes[a] for a in have], "perm": [have.index(a) for a in want]}


# ---------------------------------------------------------------------- checking a replacement

REFERENCE_RUNTIME = "onnxruntime"  # runs the graph a surgery replaced subgraphs of (a tool in verify's key)

def as_replaced(output: Any, mapping: Mapping[str, list[int]] | None) -> Any:
    """A plugin node's output in the element order of the tensor it replaced (see output_mapping)."""
    if mapping is None:
        return output
    return output.reshape(mapping["factors"]).transpose(mapping["perm"])


def original_values(model_path: Any, feeds: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The values of tensors `names` in the graph at `model_path` (the one a surgery replaced subgraphs of),
    run on ONNX Runtime with them as extra outputs."""
    import importlib

    import onnx

    ort = importlib.import_module(REFERENCE_RUNTIME)
    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    typed = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(typed.get(name) or onnx.helper.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    accepted = {i.name for i in session.get_inputs()}
    values = session.run(list(names), {name: value for name, value in feeds.items() if name in accepted})
    return dict(zip(names, values, strict=True))

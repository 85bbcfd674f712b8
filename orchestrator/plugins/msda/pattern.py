"""Multi-scale deformable attention as exporters write it without the plugin: GridSample per level.

The pure-PyTorch formulation (Deformable DETR's CPU fallback, RT-DETR, D-FINE, DEIM, mmcv's
`multi_scale_deformable_attn_pytorch`, ...) becomes, for every level l:

    value [N, S, M, D] --Split/Slice--> [N, H_l*W_l, M, D] --reshape/transpose--> [N*M, D, H_l, W_l]
    2*loc - 1 [N, Lq, M, L, P, 2] --Gather/Slice level l, transpose--> grid [N*M, Lq, P, 2]
    GridSample(bilinear, zeros, align_corners 0) -> [N*M, D, Lq, P]

then the levels stacked or concatenated, multiplied by the attention weights [N, Lq, M, L, P]
(rearranged to [N*M, 1, Lq, L*P]) and summed over levels and points, and the result rearranged to
[N, Lq, M*D]. The pattern follows each tensor's factors (N, M, D, Lq, L, P, H_l, W_l) through
whatever Reshape, Transpose, Squeeze, Unsqueeze, Split, Slice and Gather nodes an exporter wrote, so
opsets, TorchScript's or dynamo's node orders, a split by Slice or Split, and weights applied to the
stacked levels or to each level before the levels are added up all look the same to it. It
recovers spatial_shapes and level_start_index from the static shapes (the plugin takes them as int32
constants), and says why a place that has GridSample nodes is not this attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orchestrator.patterns import (
    MOVES,
    Atoms,
    Found,
    GraphView,
    Layout,
    NearMatch,
    Operand,
    Part,
    ShapeRule,
    Step,
    affine_of,
    broadcast_layout,
    layout_down,
    part_of,
    reduce_axes,
    trace_up,
)

OP = "MultiscaleDeformableAttnPlugin_TRT"
SAMPLER_DOMAINS = ("", "ai.onnx", "com.microsoft")  # ONNX's GridSample (opset 16+), ONNX Runtime's before it
BILINEAR = ("bilinear", "linear")  # opset 20 renamed the mode
SHAPE_READERS = ("Shape", "Size")  # read a tensor's (static) shape only: no use of its values


class Miss(Exception):
    """The GridSample nodes at hand are not multi-scale deformable attention the plugin can compute."""


@dataclass
class Level:
    """One GridSample: the level's map size, where its tokens start in value, and the traced inputs."""

    node: Any
    size: tuple[int, int]
    start: int
    value: Step  # the value tensor the level's tokens are a part of, its level axis as factor S
    grid: Step  # the grid traced up to the part op that picks the level
    grid_part: Part
    position: int = -1  # the level's index along L in the sampling locations


@dataclass
class Flow:
    """Samples on their way down to the result: which levels they hold (in the order along L), whether
    the attention weights are applied, and which factors are summed over."""

    layout: Layout
    levels: tuple[int, ...]
    weighted: bool = False
    summed: frozenset[str] = frozenset()


@dataclass
class Roles:
    """The factors of the plugin's axes, as found (a size-1 axis has none)."""

    n: tuple[str, ...]
    m: tuple[str, ...]
    d: tuple[str, ...]
    q: tuple[str, ...]
    p: tuple[str, ...]
    xy: tuple[str, ...]
    levels: tuple[str, ...] = ()
    weights: list[tuple[tuple[int, ...], Step]] = field(default_factory=list)


class GridSampleAttention:
    """The pattern of PluginEntry.patterns for MultiscaleDeformableAttnPlugin_TRT."""

    looks_for = ("multi-scale deformable attention written with GridSample: per level a Split or Slice of value "
                 "[N, S, M, D] reshaped to [N*M, D, H, W], GridSample (bilinear, zeros, align_corners 0) at "
                 "2*locations - 1, the levels stacked or concatenated, multiplied by attention weights and summed "
                 "over levels and points")
    anchor_op = "GridSample"
    shape_rules: ClassVar[dict[str, ShapeRule]] = {
        "GridSample": lambda shapes: (*shapes[0][:2], *shapes[1][1:3]),  # [N, C, H_out, W_out]
    }

    def find(self, view: GraphView) -> list[Found | NearMatch]:
        """Every group of GridSample nodes that sample the levels of one value tensor at one tensor of
        locations (one attention call): found, or why not."""
        groups: dict[str, list[Any]] = {}
        results: list[Found | NearMatch] = []
        for node in view.graph.nodes:
            if node.op != "GridSample" or (node.domain or "") not in SAMPLER_DOMAINS:
                continue
            source = part_source(view, node.inputs[0])
            if source is None:
                results.append(NearMatch([node.name], f"GridSample '{node.name}' does not sample a part (Split or "
                                         "Slice) of a value tensor through reshapes and transposes"))
            else:  # one attention call: the levels of one value tensor, sampled at one tensor of locations
                grids = part_source(view, node.inputs[1])
                groups.setdefault(f"{source.name}\n{grids.name if grids is not None else ''}", []).append(node)
        for nodes in groups.values():
            try:
                results.append(attention(view, nodes))
            except Miss as miss:
                results.append(NearMatch([n.name for n in nodes], str(miss)))
        return results


def part_source(view: GraphView, tensor: Any) -> Any | None:
    """The tensor `tensor` is a part of (a Split, Slice or Gather) through data-moving and scalar affine ops."""
    for _ in range(32):
        producer = view.producer(tensor)
        if producer is None:
            return None
        if producer.op in ("Split", "Slice", "Gather"):
            return producer.inputs[0]
        if producer.op in MOVES or producer.op == "Transpose":
            tensor = producer.inputs[0]
            continue
        affine = affine_of(view, producer, tensor)
        if affine is None:
            return None
        tensor = affine[0]
    return None


def attention(view: GraphView, nodes: list[Any]) -> Found:
    """The plugin's inputs and the replaced tensor for one group of GridSample nodes; Miss with the reason."""
    import numpy as np

    points = [(view.shape(n.inputs[1]) or (0, 0, 0))[2] for n in nodes]
    if len(set(points)) > 1:
        raise Miss(f"the levels sample different numbers of points ({', '.join(map(str, points))}); {OP} samples "
                   "the same P points at every level")
    atoms = Atoms()
    try:
        levels = [level(view, atoms, node, index) for index, node in enumerate(nodes)]
        roles, value = value_operand(view, atoms, levels)
        locations = locations_operand(view, atoms, levels, roles)
        end, end_layout = reduction(view, atoms, levels, roles)
        weights = weights_operand(view, atoms, levels, roles)
    except ValueError as exc:  # two sizes of one factor
        raise Miss(f"the shapes do not fit together: {exc}") from None
    ordered = sorted(levels, key=lambda lvl: lvl.position)
    spatial = np.array([lvl.size for lvl in ordered], dtype=np.int32)
    starts = np.array([lvl.start for lvl in ordered], dtype=np.int32)
    tokens = value.shape[1]
    if int((spatial[:, 0] * spatial[:, 1]).sum()) != tokens:
        raise Miss(f"value has {tokens} tokens but the levels {spatial.tolist()} cover "
                   f"{int((spatial[:, 0] * spatial[:, 1]).sum())}; {OP} needs S = sum of H*W")
    n, lq, m, d = value.shape[0], atoms.size(roles.q), value.shape[2], value.shape[3]
    return Found([value, Operand(value=spatial), Operand(value=starts), locations, weights], end, end_layout,
                 roles.n + roles.q + roles.m + roles.d, (n, lq, m, d), atoms, [node.name for node in nodes],
                 _stem(nodes))


def _stem(nodes: list[Any]) -> str:
    """The plugin node's name: the GridSample nodes' common scope (TorchScript names nodes by module path)."""
    names = [node.name or "" for node in nodes]
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[:prefix.rfind("/") + 1] + OP if "/" in prefix else OP


def level(view: GraphView, atoms: Atoms, node: Any, index: int) -> Level:
    """One GridSample: its settings checked, its value input traced to the part of value it samples and its
    grid input to the part op that picks its level."""
    x, grid = view.shape(node.inputs[0]), view.shape(node.inputs[1])
    if x is None or grid is None or len(x) != 4 or len(grid) != 4 or grid[3] != 2:
        raise Miss(f"GridSample '{node.name}' has no static 4-d shapes (input {x}, grid {grid}); the pattern "
                   "needs static shapes")
    mode, padding = _text(node.attrs.get("mode", "bilinear")), _text(node.attrs.get("padding_mode", "zeros"))
    corners = int(node.attrs.get("align_corners", 0))
    if mode not in BILINEAR or padding != "zeros" or corners:
        raise Miss(f"GridSample '{node.name}' samples with mode {mode}, padding {padding}, align_corners {corners}; "
                   f"{OP} samples bilinear, zero outside the map, align_corners 0")
    b, c, h, w = x
    batch, channels = atoms.new("B", b), atoms.new("C", c)
    queries, points, xy = atoms.new("Q", grid[1]), atoms.new("P", grid[2]), atoms.new("xy", 2)
    height, width = atoms.new(f"H{index}", h), atoms.new(f"W{index}", w)
    top = trace_up(view, atoms, Step(node.inputs[0], (batch, channels, height, width)))[-1]
    producer = view.producer(top.tensor)
    part = part_of(view, producer, top.tensor) if producer is not None else None
    if part is None or part.length is None:
        found = f"{producer.op} '{producer.name}'" if producer is not None else "a graph input"
        raise Miss(f"the value sampled by GridSample '{node.name}' is not a Split or Slice of value (tracing it "
                   f"upward ends at {found})")
    if atoms.expand(top.layout[part.axis]) != atoms.expand(height + width):
        raise Miss(f"the tokens GridSample '{node.name}' samples are not its {h}x{w} map row by row")
    tokens = atoms.new("S", (view.shape(part.data) or ())[part.axis])
    value = Step(part.data, (*top.layout[:part.axis], tokens, *top.layout[part.axis + 1:]))
    grid_top = trace_up(view, atoms, Step(node.inputs[1], (batch, queries, points, xy)), affine=True)[-1]
    picker = view.producer(grid_top.tensor)
    grid_part = part_of(view, picker, grid_top.tensor) if picker is not None else None
    if grid_part is None:
        raise Miss(f"the sampling grid of GridSample '{node.name}' is not one level (a Gather, Slice or Split) of "
                   "sampling locations shared by the levels")
    return Level(node, (h, w), part.start, value, grid_top, grid_part)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def value_operand(view: GraphView, atoms: Atoms, levels: list[Level]) -> tuple[Roles, Operand]:
    """value as the plugin takes it, [N, S, M, D]: the tensor the levels' tokens are split from, or the first
    one above it (through data-moving ops) laid out so; and which factors are N, M and D."""
    first = levels[0]
    if any(atoms.order(lvl.value.layout) != atoms.order(first.value.layout) for lvl in levels[1:]):
        raise Miss("the levels' tokens are laid out differently in value")
    batch, channels = ("B",) if "B" in atoms.sizes else (), ("C",) if "C" in atoms.sizes else ()
    queries, points = ("Q",) if "Q" in atoms.sizes else (), ("P",) if "P" in atoms.sizes else ()
    d = atoms.expand(channels)
    for step in trace_up(view, atoms, first.value):
        order = atoms.order(step.layout)
        at = order.index("S")
        n, rest = order[:at], order[at + 1:]
        m = rest[:len(rest) - len(d)]
        if rest[len(m):] == d and n + m == atoms.expand(batch):
            roles = Roles(n, m, d, queries, points, ("xy",))
            shape = (atoms.size(n), atoms.sizes["S"], atoms.size(m), atoms.size(d))
            return roles, Operand(step.tensor, step.layout, (*n, "S", *m, *d), shape)
    raise Miss(f"value is not laid out [N, S, M, D] (the levels are split from it as "
               f"{atoms.order(first.value.layout)}, with B = N*M and C = D as GridSample reads it)")


def join_levels(view: GraphView, atoms: Atoms, tops: list[Step], parts: list[Part], points: tuple[str, ...],
                what: str) -> tuple[Step, list[int]]:
    """Per-level tensors that are parts of one tensor along one axis: that tensor with its level axis as
    factor L (and P, where each part holds a level's points), and each part's level index."""
    data, axis = parts[0].data, parts[0].axis
    if any(p.data.name != data.name or p.axis != axis for p in parts) or \
            any(atoms.order(t.layout) != atoms.order(tops[0].layout) for t in tops):
        raise Miss(f"the levels' {what} are not parts of one tensor along one axis")
    if any((t.scale, t.shift) != (tops[0].scale, tops[0].shift) for t in tops):
        raise Miss(f"the levels' {what} are scaled differently")
    size = (view.shape(data) or ())[axis]
    top = tops[0]
    inner = atoms.expand(top.layout[axis]) if all(p.length is not None for p in parts) else ()
    if all(p.length is None for p in parts) or (all(p.length == 1 for p in parts) and not inner):
        positions, level_axis = [p.start for p in parts], atoms.new("L", size)
    elif inner == atoms.expand(points) and all(p.length == atoms.size(points) for p in parts):
        step = atoms.size(points)
        if any(p.start % step for p in parts):
            raise Miss(f"the levels' {what} do not start at multiples of the {step} points")
        positions, level_axis = [p.start // step for p in parts], atoms.new("L", size // step) + points
    else:
        raise Miss(f"each level's {what} is a part of {[p.length for p in parts]} elements along an axis of "
                   f"{size}, not one level")
    if sorted(positions) != list(range(len(parts))) or atoms.size(level_axis[:1]) != len(parts):
        raise Miss(f"the {len(parts)} levels take {what} {sorted(positions)} of {atoms.size(level_axis[:1])}")
    removed = 1 if parts[0].length is not None else 0
    layout = (*top.layout[:axis], level_axis, *top.layout[axis + removed:])
    return Step(data, layout, top.scale, top.shift), positions


def _pick(atoms: Atoms, steps: list[Step], target: tuple[str, ...]) -> Step:
    """The nearest step already in the target's element order, else the nearest one."""
    want = atoms.expand(target)
    return next((step for step in steps if atoms.order(step.layout) == want), steps[0])


def locations_operand(view: GraphView, atoms: Atoms, levels: list[Level], roles: Roles) -> Operand:
    """sampling_locations [N, Lq, M, L, P, 2]: the tensor the grids are 2*loc - 1 of; sets each level's position."""
    joined, positions = join_levels(view, atoms, [lvl.grid for lvl in levels], [lvl.grid_part for lvl in levels],
                                    roles.p, "sampling grids")
    for lvl, position in zip(levels, positions, strict=True):
        lvl.position = position
    roles.levels = ("L",) if "L" in atoms.sizes else ()
    steps = [s for s in trace_up(view, atoms, joined, affine=True)
             if math.isclose(s.scale, 2.0) and math.isclose(s.shift, -1.0)]
    if not steps:
        raise Miss(f"the sampling grids are not 2*locations - 1 (they are {joined.scale:g}*x + {joined.shift:g} of "
                   "the last tensor before them)")
    target = roles.n + roles.q + roles.m + roles.levels + roles.p + roles.xy
    shape = (atoms.size(roles.n), atoms.size(roles.q), atoms.size(roles.m), len(levels), atoms.size(roles.p), 2)
    chosen = _pick(atoms, steps, target)
    return Operand(chosen.tensor, chosen.layout, target, shape, dtype_of=0)  # ONNX allows a float64 grid


def weights_operand(view: GraphView, atoms: Atoms, levels: list[Level], roles: Roles) -> Operand:
    """attention_weights [N, Lq, M, L, P]: what multiplies the samples, for all levels at once or per level."""
    target = roles.n + roles.q + roles.m + roles.levels + roles.p
    shape = (atoms.size(roles.n), atoms.size(roles.q), atoms.size(roles.m), len(levels), atoms.size(roles.p))
    if len(roles.weights) == 1:
        order, found = roles.weights[0]
        if list(order) != sorted(order):
            raise Miss(f"the levels are stacked in the order {list(order)} of their sampling locations; the "
                       "weights cannot be told apart per level")
        joined = found
    else:
        by_position = sorted(roles.weights, key=lambda entry: entry[0])
        tops, parts = [], []
        for _, found in by_position:
            top = trace_up(view, atoms, found)[-1]
            producer = view.producer(top.tensor)
            part = part_of(view, producer, top.tensor) if producer is not None else None
            if part is None:
                raise Miss(f"the weights of one level ('{found.tensor.name}') are not a part of one weights tensor")
            tops.append(top)
            parts.append(part)
        joined, positions = join_levels(view, atoms, tops, parts, roles.p, "attention weights")
        if positions != [entry[0][0] for entry in by_position]:
            raise Miss("each level's weights are taken from another level's place in the weights tensor")
    chosen = _pick(atoms, trace_up(view, atoms, joined), target)
    return Operand(chosen.tensor, chosen.layout, target, shape, dtype_of=0)


def reduction(view: GraphView, atoms: Atoms, levels: list[Level], roles: Roles) -> tuple[Any, Layout]:
    """Follow the samples down to the tensor where the weighted sum over levels and points is complete;
    the replaced tensor is that one, or the first after it (through data-moving ops) laid out [N, Lq, M*D]."""
    flows = {lvl.node.outputs[0].name: Flow((("B",) if "B" in atoms.sizes else (), roles.d, roles.q, roles.p),
                                            (lvl.position,)) for lvl in levels}
    tensors = {lvl.node.outputs[0].name: lvl.node.outputs[0] for lvl in levels}
    everything = frozenset(atoms.expand(roles.levels + roles.p))
    frontier, stalled = list(flows), 0
    while frontier:
        name = frontier.pop(0)
        flow, tensor = flows[name], tensors[name]
        if len(flow.levels) == len(levels) and flow.weighted and flow.summed >= everything:
            return _end(view, atoms, tensor, flow.layout, roles)
        made = follow(view, atoms, tensor, flow, flows, roles)
        if made is None:
            frontier.append(name)
            stalled += 1
            if stalled > len(frontier):
                node = view.consumers(tensor)[0]
                raise Miss(f"{node.op} '{node.name}' joins the samples with a tensor that is not a level's samples")
            continue
        stalled = 0
        for out, new in made:
            if out.name not in flows:
                flows[out.name], tensors[out.name] = new, out
                frontier.append(out.name)
    raise Miss("the samples are never summed over the levels")


def follow(view: GraphView, atoms: Atoms, tensor: Any, flow: Flow, flows: dict[str, Flow],
           roles: Roles) -> list[tuple[Any, Flow]] | None:
    """The flow one node further down (None: the node waits for other levels' samples)."""
    users = [user for user in view.consumers(tensor) if user.op not in SHAPE_READERS]
    missing = "summed over the levels and points" if flow.weighted else "weighted"
    if view.is_output(tensor) or not users:
        raise Miss(f"the samples in '{tensor.name}' leave the graph before they are {missing}")
    if len(users) > 1:
        raise Miss(f"the samples in '{tensor.name}' are used by {len(users)} nodes before they are {missing}")
    node = users[0]
    out = node.outputs[0]
    if node.op in MOVES or node.op == "Transpose":
        layout = layout_down(view, atoms, node, flow.layout)
        if layout is None:
            raise Miss(f"{node.op} '{node.name}' moves the samples' elements in a way the pattern cannot follow")
        return [(out, Flow(layout, flow.levels, flow.weighted, flow.summed))]
    if node.op in ("Concat", "Add", "Sum"):
        inputs = [t for t in node.inputs if t.name]
        if any(t.name not in flows for t in inputs):
            return None
        joined = stack(view, atoms, node, [flows[t.name] for t in inputs], roles) if node.op == "Concat" \
            else added(node, [flows[t.name] for t in inputs], atoms, roles)
        return [(out, joined)]
    if node.op == "Mul":
        return [(out, weighted(view, atoms, node, tensor, flow, roles))]
    if node.op == "ReduceSum":
        return [(out, summed(view, atoms, node, tensor, flow, roles))]
    raise Miss(f"the samples go to {node.op} '{node.name}', where multi-scale deformable attention stacks the "
               "levels, multiplies by the attention weights or sums")


def stack(view: GraphView, atoms: Atoms, node: Any, inputs: list[Flow], roles: Roles) -> Flow:
    """The levels' samples concatenated: along a new axis (stack) or along the points."""
    rank = len(inputs[0].layout)
    axis = int(node.attrs.get("axis", 0)) % rank
    if any(len(f.levels) != 1 for f in inputs) or any((f.weighted, f.summed) != (inputs[0].weighted,
                                                                                 inputs[0].summed) for f in inputs):
        raise Miss(f"Concat '{node.name}' joins samples that are not one level each, alike")
    rest = [f.layout[:axis] + f.layout[axis + 1:] for f in inputs]
    if any(atoms.order(r) != atoms.order(rest[0]) for r in rest):
        raise Miss(f"Concat '{node.name}' joins samples laid out differently")
    held = {atoms.expand(f.layout[axis]) for f in inputs}
    level_axis = atoms.new("L", len(inputs))
    if held == {()}:
        joined = level_axis
    elif held == {atoms.expand(roles.p)}:
        joined = level_axis + roles.p
    else:
        raise Miss(f"Concat '{node.name}' joins the levels along an axis that holds {sorted(held)}, neither a new "
                   "axis nor the points")
    roles.levels = level_axis
    layout = (*inputs[0].layout[:axis], joined, *inputs[0].layout[axis + 1:])
    return Flow(layout, tuple(f.levels[0] for f in inputs), inputs[0].weighted, inputs[0].summed)


def added(node: Any, inputs: list[Flow], atoms: Atoms, roles: Roles) -> Flow:
    """Levels' weighted sums over their points added up: the sum over the levels."""
    if any(not f.weighted or not f.summed >= set(atoms.expand(roles.p)) for f in inputs):
        raise Miss(f"{node.op} '{node.name}' adds the levels' samples before each is weighted and summed over "
                   "its points")
    if any(atoms.order(f.layout) != atoms.order(inputs[0].layout) for f in inputs):
        raise Miss(f"{node.op} '{node.name}' adds samples laid out differently")
    levels = tuple(p for f in inputs for p in f.levels)
    if len(set(levels)) != len(levels):
        raise Miss(f"{node.op} '{node.name}' adds one level twice")
    summed = frozenset(inputs[0].summed | set(atoms.expand(roles.levels)))
    return Flow(inputs[0].layout, levels, True, summed)


def weighted(view: GraphView, atoms: Atoms, node: Any, tensor: Any, flow: Flow, roles: Roles) -> Flow:
    """The samples times the attention weights: the other operand holds every factor of the samples but D."""
    other = node.inputs[1] if node.inputs[0] is tensor else node.inputs[0]
    if flow.weighted or flow.summed:
        raise Miss(f"Mul '{node.name}' multiplies samples that are already "
                   f"{'weighted' if flow.weighted else 'summed'}")
    shape, other_shape = view.shape(tensor), view.shape(other)
    layout = broadcast_layout(atoms, flow.layout, shape or (), other_shape or ()) if shape and other_shape else None
    if layout is None or view.shape(node.outputs[0]) != shape:
        raise Miss(f"Mul '{node.name}' multiplies the samples {shape} by {other_shape}, which is no per-point weight")
    expected = set(atoms.order(flow.layout)) - set(atoms.expand(roles.d))
    if set(atoms.order(layout)) != expected:
        raise Miss(f"Mul '{node.name}' multiplies the samples by a tensor over {sorted(atoms.order(layout))}, not "
                   "one weight per head, query, level and point")
    roles.weights.append((flow.levels, Step(other, layout)))
    return Flow(flow.layout, flow.levels, True, flow.summed)


def summed(view: GraphView, atoms: Atoms, node: Any, tensor: Any, flow: Flow, roles: Roles) -> Flow:
    """The weighted samples summed over levels and points (one ReduceSum or several)."""
    rank = len(flow.layout)
    axes = reduce_axes(view, node, rank)
    if axes is None:
        raise Miss(f"ReduceSum '{node.name}' reduces over axes the pattern cannot read")
    removed = {a for axis in axes for a in atoms.expand(flow.layout[axis])}
    allowed = set(atoms.expand(roles.levels + roles.p))
    if not flow.weighted:
        raise Miss(f"ReduceSum '{node.name}' sums the samples before the attention weights are applied")
    if not removed <= allowed:
        raise Miss(f"ReduceSum '{node.name}' sums over {sorted(removed - allowed)}, not only levels and points")
    keep = int(node.attrs.get("keepdims", 1))
    layout = tuple(() if i in axes else axis for i, axis in enumerate(flow.layout)) if keep else \
        tuple(axis for i, axis in enumerate(flow.layout) if i not in axes)
    return Flow(layout, flow.levels, True, flow.summed | removed)


def _end(view: GraphView, atoms: Atoms, tensor: Any, layout: Layout, roles: Roles) -> tuple[Any, Layout]:
    """The replaced tensor: the first tensor from `tensor` on (through data-moving ops only it uses) that is
    laid out as the plugin's output, N, Lq, M, D; `tensor` itself when none is."""
    want = atoms.expand(roles.n + roles.q + roles.m + roles.d)
    if set(atoms.order(layout)) != set(want):
        raise Miss(f"after the sums, '{tensor.name}' holds {sorted(atoms.order(layout))}, not N, Lq, M, D")
    current, current_layout = tensor, layout
    for _ in range(16):
        if atoms.order(current_layout) == want:
            return current, current_layout
        users = [user for user in view.consumers(current) if user.op not in SHAPE_READERS]
        if len(users) != 1 or view.is_output(current) or not (users[0].op in MOVES or users[0].op == "Transpose"):
            break
        moved = layout_down(view, atoms, users[0], current_layout)
        if moved is None:
            break
        current, current_layout = users[0].outputs[0], moved
    return tensor, layout

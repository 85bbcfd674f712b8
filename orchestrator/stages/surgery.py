"""surgery: onnx-graphsurgeon edits applied in order to the exported graph.

Edits: rename_op, set_attrs, remove_attrs, insert_cast (chosen inputs, or every plugin input that
breaks the plugin's dtype contract), replace_subgraph (everything between start and end tensors
becomes one node, e.g. an attention written in plain PyTorch, exported as dozens of GridSample/Reshape
nodes, becomes one plugin node), and cleanup (fold constants, remove dead nodes,
toposort). An edit that matches nothing is an error that names the edit and what it looked for;
after every edit the graph must still pass onnx.checker's full check with strict shape inference,
else the error names the edit that broke it.

Writes model.onnx (shape-inferred) and surgery.json: what each edit did, and the node diff
(removed, added and changed nodes, op counts before and after) that `show --stage surgery` prints.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import environment
from orchestrator.errors import UserError
from orchestrator.onnx_graph import describe_graph, is_standard_domain, value_dims
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node


@dataclass(frozen=True)
class Edit:
    """One surgery edit: its kind (rename_op, replace_subgraph, replace_pattern, ...) and its fields as written."""

    kind: str
    spec: Mapping[str, object] | None  # None: an edit written without fields (`- cleanup:`)

    def keyed(self) -> dict[str, object]:
        return {self.kind: dict(self.spec) if self.spec is not None else None}


@dataclass(frozen=True)
class SurgerySettings:
    """The edits in order (the plugins' `subgraph` edits first, then the pipeline's surgery list), and the
    plugins' resolved contracts, which type the nodes the edits make."""

    edits: tuple[Edit, ...]
    contracts: tuple[Mapping[str, object], ...]

    @classmethod
    def from_keyed(cls, config: Mapping[str, Any]) -> SurgerySettings:
        edits = tuple(Edit(kind, spec) for edit in config["surgery"] for kind, spec in edit.items())
        return cls(edits, tuple(config["contracts"]))

    def keyed(self) -> dict[str, Any]:
        return {"surgery": [edit.keyed() for edit in self.edits], "contracts": [dict(c) for c in self.contracts]}


class NoMatch(UserError):
    """A tensor match or node match found nothing (replace_subgraph with `every` stops on it)."""


@dataclass
class Context:
    """What an edit may use: the declared plugins, and shared inserted tensors (one Cast per source and dtype)."""

    graph: Any
    contracts: dict[str, dict[str, Any]]  # op -> resolved plugin declaration
    where: str  # the edit's field in the pipeline, for errors
    made: dict[tuple[str, str], Any] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    inserted: set[str] = field(default_factory=set)  # names of the nodes this edit made
    record: dict[str, Any] = field(default_factory=dict)  # what the edit adds to its entry in surgery.json

    def unique(self, stem: str) -> str:
        taken = self.names or {n.name for n in self.graph.nodes} | set(self.graph.tensors())
        self.names = taken
        name, count = stem, 0
        while name in taken:
            count += 1
            name = f"{stem}_{count}"
        taken.add(name)
        return name

    def error(self, message: str, hint: str | None = None) -> UserError:
        return UserError(message, field=self.where, hint=hint)


# ---------------------------------------------------------------------- matching

def _dtype_name(tensor: Any) -> str | None:
    import numpy as np

    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return None
    try:
        return str(np.dtype(dtype))
    except TypeError:
        import onnx

        try:
            return str(onnx.helper.tensor_dtype_to_np_dtype(int(dtype)))
        except (TypeError, ValueError, KeyError):
            return None


def _static_shape(tensor: Any) -> tuple[int, ...] | None:
    shape = getattr(tensor, "shape", None)
    if shape is None or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def find_nodes(ctx: Context, op: str, name: str | None = None, exact_name: bool = False) -> list[Any]:
    """Nodes of op type `op` (and whose name matches `name`), in graph order."""
    found = [n for n in ctx.graph.nodes if n.op == op]
    if name is not None:
        found = [n for n in found if (n.name == name if exact_name else re.search(name, n.name or ""))]
    return found


def _no_nodes(ctx: Context, op: str, name: str | None, what: str) -> NoMatch:
    ops = sorted({n.op for n in ctx.graph.nodes})
    close = difflib.get_close_matches(op, ops, n=3)
    if name is not None and op in ops:
        named = [n.name for n in ctx.graph.nodes if n.op == op][:5]
        return NoMatch(f"{what}: no {op} node whose name matches '{name}' (e.g. {', '.join(named)})",
                       field=ctx.where)
    hint = f"did you mean {', '.join(close)}?" if close else f"ops in the graph: {', '.join(ops[:25])}"
    return NoMatch(f"{what}: the graph has no {op} node", field=ctx.where, hint=hint)


def resolve_tensor(ctx: Context, match: Any, what: str) -> Any:
    """The graph tensor a tensor match (see the schema's tensor_match) points at."""
    tensors = ctx.graph.tensors()
    if isinstance(match, str):
        if match not in tensors:
            close = difflib.get_close_matches(match, list(tensors), n=3)
            raise NoMatch(f"{what}: no tensor '{match}' in the graph", field=ctx.where,
                          hint=f"did you mean {', '.join(close)}?" if close else None)
        return tensors[match]
    if "derive" in match:
        source = resolve_tensor(ctx, match["from"], f"{what} (derive from)")
        return derive(ctx, match["derive"], source)
    nodes = find_nodes(ctx, match["op"], match.get("name"))
    index = match.get("index", 0)
    label = f"{match['op']} node #{index}" + (f" named like '{match['name']}'" if match.get("name") else "")
    if index >= len(nodes):
        if not nodes:
            raise _no_nodes(ctx, match["op"], match.get("name"), what)
        raise NoMatch(f"{what}: looked for {label}; the graph has {len(nodes)} such node(s)", field=ctx.where)
    node = nodes[index]
    if "input" in match:
        slot, side = match["input"], node.inputs
    else:
        slot, side = match.get("output", 0), node.outputs
    kind = "input" if "input" in match else "output"
    if slot >= len(side):
        raise NoMatch(f"{what}: {label} ('{node.name}') has {len(side)} {kind}s, not {kind} {slot}", field=ctx.where)
    tensor = side[slot]
    for step in match.get("then", []):
        consumers = [c for c in tensor.outputs if c.op == step]
        if len(consumers) != 1:
            users = ", ".join(f"{c.op} '{c.name}'" for c in tensor.outputs) or "nothing"
            raise NoMatch(f"{what}: from {label}, tensor '{tensor.name}' goes to {len(consumers)} {step} node(s), "
                          f"not one (it is used by {users})", field=ctx.where)
        tensor = consumers[0].outputs[0]
    return tensor


def derive(ctx: Context, rule: str, source: Any) -> Any:
    """A tensor computed from `source` by inserted nodes: the declared plugin's own derivation rule, written
    as ONNX (shared between uses within one edit)."""
    from orchestrator import plugins as catalog
    from orchestrator.plugins.derive import Inexpressible, OnnxOps

    key = (f"derive:{rule}", source.name)
    if key in ctx.made:
        return ctx.made[key]
    entries = [catalog.lookup(op, declared.get("catalog")) for op, declared in ctx.contracts.items()]
    entries += [catalog.lookup(op) for op in catalog.BUILTIN if op not in ctx.contracts]  # declared ones first
    owners = [entry for entry in entries if rule in entry.derivations]
    if not owners:
        known = sorted({name for entry in entries for name in entry.derivations})
        raise ctx.error(f"unknown derivation '{rule}'; the catalog's plugins have: {', '.join(known) or 'none'}")
    ops = OnnxOps(ctx.graph, ctx.unique)
    try:
        derived = owners[0].derivation(rule).run(ops, [source])
    except Inexpressible as exc:
        raise ctx.error(f"derivation '{rule}' from '{source.name}': {exc}") from None
    ctx.made[key] = derived
    return derived


def cast(ctx: Context, tensor: Any, to: str) -> Any:
    """`tensor` cast to `to`, through one Cast node per (tensor, dtype) however many nodes use it."""
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs

    key = (f"cast:{to}", tensor.name)
    if key not in ctx.made:
        out = gs.Variable(ctx.unique(f"{tensor.name}_{to}"), dtype=np.dtype(to), shape=getattr(tensor, "shape", None))
        to_enum = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(to))
        ctx.graph.nodes.append(gs.Node("Cast", ctx.unique(f"Cast_{to}"), {"to": to_enum}, [tensor], [out]))
        ctx.made[key] = out
    return ctx.made[key]


# ---------------------------------------------------------------------- edits

def _attr_value(name: str, value: Any, ctx: Context) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, list) and value:
        kinds = {type(int(v) if isinstance(v, bool) else v) for v in value}
        if len(kinds) == 1 and kinds <= {int, float, str}:
            return [int(v) if isinstance(v, bool) else v for v in value]
    raise ctx.error(f"attribute '{name}': {json.dumps(value)} is not a string, number, or list of one kind of them")


def edit_rename_op(ctx: Context, spec: dict[str, Any]) -> str:
    nodes = [n for n in ctx.graph.nodes if n.op == spec["from"]
             and ("from_domain" not in spec or (n.domain or "") == spec["from_domain"])]
    if not nodes:
        what = f"rename_op {spec['from']}" + (f" (domain '{spec['from_domain']}')" if "from_domain" in spec else "")
        if "from_domain" in spec and find_nodes(ctx, spec["from"]):
            domains = sorted({n.domain or "" for n in find_nodes(ctx, spec["from"])})
            raise NoMatch(f"{what}: the {spec['from']} nodes are in domain(s) {', '.join(map(repr, domains))}",
                          field=ctx.where)
        raise _no_nodes(ctx, spec["from"], None, what)
    for node in nodes:
        node.op = spec["to"]
        if "domain" in spec:
            node.domain = spec["domain"]
    domain = f" (domain {spec['domain']})" if "domain" in spec else ""
    return f"renamed {len(nodes)} {spec['from']} node(s) to {spec['to']}{domain}"


def _selected(ctx: Context, spec: dict[str, Any], what: str) -> list[Any]:
    nodes = find_nodes(ctx, spec["op"], spec.get("name"), exact_name=True)
    if not nodes:
        raise _no_nodes(ctx, spec["op"], spec.get("name"), what)
    return nodes


def edit_set_attrs(ctx: Context, spec: dict[str, Any]) -> str:
    nodes = _selected(ctx, spec, f"set_attrs on {spec['op']}")
    values = {name: _attr_value(name, value, ctx) for name, value in spec["attrs"].items()}
    for node in nodes:
        node.attrs.update(values)
    return f"set {', '.join(values)} on {len(nodes)} {spec['op']} node(s)"


def edit_remove_attrs(ctx: Context, spec: dict[str, Any]) -> str:
    nodes = _selected(ctx, spec, f"remove_attrs on {spec['op']}")
    for name in spec["attrs"]:
        if not any(name in node.attrs for node in nodes):
            present = sorted({a for node in nodes for a in node.attrs})
            raise NoMatch(f"remove_attrs: none of the {len(nodes)} {spec['op']} node(s) has attribute '{name}'",
                          field=ctx.where, hint=f"they have: {', '.join(present) or 'no attributes'}")
    for node in nodes:
        for name in spec["attrs"]:
            node.attrs.pop(name, None)
    return f"removed {', '.join(spec['attrs'])} from {len(nodes)} {spec['op']} node(s)"


def edit_insert_cast(ctx: Context, spec: dict[str, Any]) -> str:
    if spec.get("contract"):
        return _contract_casts(ctx, spec)
    if "op" not in spec or "inputs" not in spec or "to" not in spec:
        raise ctx.error("insert_cast needs op, inputs and to (or contract: true)")
    nodes = _selected(ctx, spec, f"insert_cast on {spec['op']}")
    count = 0
    for node in nodes:
        for slot in spec["inputs"]:
            if slot >= len(node.inputs):
                raise NoMatch(f"insert_cast: {spec['op']} node '{node.name}' has {len(node.inputs)} inputs, "
                              f"no input {slot}", field=ctx.where)
            node.inputs[slot] = cast(ctx, node.inputs[slot], spec["to"])
            count += 1
    return f"cast {count} input(s) of {len(nodes)} {spec['op']} node(s) to {spec['to']}"


def _contract_casts(ctx: Context, spec: dict[str, Any]) -> str:
    ops = [spec["op"]] if "op" in spec else list(ctx.contracts)
    unknown = [op for op in ops if op not in ctx.contracts]
    if unknown:
        raise ctx.error(f"insert_cast (contract): {unknown[0]} is not a plugin declared in export.plugins "
                        f"({', '.join(ctx.contracts)}), so it has no contract")
    nodes = [n for n in ctx.graph.nodes if n.op in ops and (spec.get("name") is None or n.name == spec["name"])]
    if not nodes:
        raise NoMatch(f"insert_cast (contract): the graph has no {' or '.join(ops)} node", field=ctx.where)
    casts = []
    for node in nodes:
        plugin = ctx.contracts[node.op]
        for slot, tensor in enumerate(node.inputs):
            if slot >= len(plugin["contract"]):
                break
            accepted = plugin["contract"][slot]["dtypes"]
            dtype = _dtype_name(tensor)
            if dtype is None or dtype in accepted:
                continue
            target = plugin["dtypes"].get(plugin["inputs"][slot]) or accepted[0]
            node.inputs[slot] = cast(ctx, tensor, target)
            casts.append(f"{plugin['inputs'][slot]} {dtype}->{target}")
    if not casts:
        raise NoMatch(f"insert_cast (contract): every input of the {len(nodes)} {' / '.join(ops)} node(s) already "
                      "fits the contract; nothing to cast", field=ctx.where)
    shown = sorted(Counter(casts).items())
    return f"cast {len(casts)} plugin input(s): " + ", ".join(f"{what} x{n}" if n > 1 else what for what, n in shown)


def edit_cleanup(ctx: Context, spec: dict[str, Any]) -> str:
    before = len(ctx.graph.nodes)
    if spec.get("fold_constants", True):
        ctx.graph.fold_constants()
    ctx.graph.cleanup()
    if spec.get("toposort", True):
        ctx.graph.toposort()
    after = len(ctx.graph.nodes)
    folded = " with constants folded" if spec.get("fold_constants", True) else ""
    return f"cleaned up{folded}: {before} -> {after} nodes"


def _shifted(match: Any, offset: int) -> Any:
    """The same tensor match, `offset` nodes further along each node match (the next occurrence)."""
    if isinstance(match, str):
        return match
    if "derive" in match:
        return {**match, "from": _shifted(match["from"], offset)}
    return {**match, "index": match.get("index", 0) + offset}


def _has_node_match(match: Any) -> bool:
    if isinstance(match, str):
        return False
    return _has_node_match(match["from"]) if "derive" in match else True


def edit_replace_subgraph(ctx: Context, spec: dict[str, Any]) -> str:
    """Find every occurrence first (the k-th occurrence: the k-th node of each node match), then replace each."""
    every = spec.get("every", False) and any(_has_node_match(m) for m in [*spec["inputs"], *spec["outputs"]])
    occurrences: list[tuple[list[Any], list[Any]]] = []
    while True:
        offset = len(occurrences)
        try:
            starts = [resolve_tensor(ctx, _shifted(m, offset), f"replace_subgraph input {i}")
                      for i, m in enumerate(spec["inputs"])]
            ends = [resolve_tensor(ctx, _shifted(m, offset), f"replace_subgraph output {i}")
                    for i, m in enumerate(spec["outputs"])]
        except NoMatch:
            if occurrences:
                break
            raise
        occurrences.append((starts, ends))
        if not every or offset > len(ctx.graph.nodes):
            break
    notes: set[str] = set()
    replaced = []
    for starts, ends in occurrences:
        replaced.append(_replace_once(ctx, spec, starts, ends, notes))
        ctx.graph.cleanup().toposort()
    count = len(replaced)
    text = (f"replaced {count} subgraph{'s' if count != 1 else ''} ({', '.join(map(str, replaced))} nodes) "
            f"by {spec['op']}")
    return text + (f"; {'; '.join(sorted(notes))}" if notes else "")


def _region(ctx: Context, starts: list[Any], ends: list[Any]) -> list[Any]:
    """The nodes between the start and end tensors that depend on a start tensor; checked to be self-contained."""
    start_names = {t.name for t in starts}
    for tensor in ends:
        if tensor.name in start_names:
            raise ctx.error(f"replace_subgraph: '{tensor.name}' is both a start and an end tensor")
    graph_inputs = {t.name for t in ctx.graph.inputs}
    visited: dict[int, Any] = {}
    stack = list(ends)
    while stack:
        tensor = stack.pop()
        if tensor.name in start_names:
            continue
        if not tensor.inputs:
            if tensor.name in graph_inputs:
                raise ctx.error(f"replace_subgraph: the subgraph also reads graph input '{tensor.name}', which is "
                                "not one of its start tensors", hint="add it to inputs, or check the start tensors")
            continue
        node = tensor.inputs[0]
        if id(node) not in visited:
            visited[id(node)] = node
            stack.extend(node.inputs)
    position = {id(n): i for i, n in enumerate(ctx.graph.nodes)}
    region: dict[int, Any] = {}
    for node in sorted(visited.values(), key=lambda n: position.get(id(n), -1)):
        if any(t.name in start_names or (t.inputs and id(t.inputs[0]) in region) for t in node.inputs):
            region[id(node)] = node
    for tensor in ends:
        if not tensor.inputs or id(tensor.inputs[0]) not in region:
            raise ctx.error(f"replace_subgraph: end tensor '{tensor.name}' does not depend on the start tensors "
                            f"({', '.join(sorted(start_names))})")
    end_names = {t.name for t in ends}
    outputs = {t.name for t in ctx.graph.outputs}
    for node in region.values():
        for tensor in node.outputs:
            if tensor.name in end_names:
                continue
            outside = [c for c in tensor.outputs if id(c) not in region]
            if outside or tensor.name in outputs:
                user = f"{outside[0].op} '{outside[0].name}'" if outside else "the graph's outputs"
                raise ctx.error(f"replace_subgraph: '{tensor.name}', computed inside the subgraph (by {node.op} "
                                f"'{node.name}'), is also used outside it by {user}",
                                hint="move the end tensors so that they cover every value leaving the subgraph")
    return list(region.values())


def _replace_once(ctx: Context, spec: dict[str, Any], starts: list[Any], ends: list[Any], notes: set[str]) -> int:
    import numpy as np
    import onnx_graphsurgeon as gs

    region = _region(ctx, starts, ends)
    if any(node.name in ctx.inserted for node in region):
        raise ctx.error("replace_subgraph: two occurrences overlap (the subgraph holds a node inserted for an "
                        "earlier one); check the start and end tensors")
    plugin = ctx.contracts.get(spec["op"])
    domain = spec.get("domain") or (plugin["domain"] if plugin else "trt.plugins")
    entry, inputs, attrs = _plugin_inputs(ctx, plugin, list(starts), notes)
    attrs.update({name: _attr_value(name, value, ctx) for name, value in spec.get("attrs", {}).items()})
    for node in region:
        node.inputs.clear()
        node.outputs.clear()
    end = ends[0]
    produced = list(ends)
    added = []
    plugin_shape, reshape = _output_shape(ctx, spec, entry, inputs, end)
    name = ctx.unique(spec["op"])
    if reshape is not None:
        own = gs.Variable(ctx.unique(f"{name}_output"), dtype=end.dtype, shape=plugin_shape)
        produced[0] = own
        target = gs.Constant(ctx.unique(f"{name}_shape"), np.array(reshape, dtype=np.int64))
        added.append(gs.Node("Reshape", ctx.unique(f"{name}_Reshape"), {}, [own, target], [end]))
    elif plugin_shape is not None and len(ends) == 1:
        end.shape = list(plugin_shape)
    ctx.graph.nodes.insert(0, gs.Node(spec["op"], name, attrs, inputs, produced, domain=domain))
    ctx.graph.nodes.extend(added)
    ctx.inserted.update([name, *(node.name for node in added)])
    return len(region)


def _plugin_inputs(ctx: Context, plugin: dict[str, Any] | None, inputs: list[Any],
                   notes: set[str]) -> tuple[Any, list[Any], dict[str, Any]]:
    """For a declared plugin: its catalog entry, the start tensors with integer ones cast to the declared
    dtypes (export.plugins[].dtypes), and its node's attributes. Nothing of that for another op."""
    from orchestrator import plugins as catalog

    if plugin is None:
        return None, inputs, {}
    entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
    if len(inputs) != len(entry.inputs):
        raise ctx.error(f"replace_subgraph: {plugin['op']} takes {len(entry.inputs)} inputs "
                        f"({', '.join(entry.input_names())}); {len(inputs)} start tensors are given")
    attrs = {"plugin_version": plugin["version"], "plugin_namespace": plugin["namespace"],
             **plugin.get("attributes", {})}
    for slot, tensor in enumerate(inputs):
        wanted = plugin["dtypes"].get(plugin["inputs"][slot])
        dtype = _dtype_name(tensor)
        if wanted and dtype and wanted != dtype and dtype.startswith(("int", "uint")):
            inputs[slot] = cast(ctx, tensor, wanted)
            notes.add(f"{plugin['inputs'][slot]} cast {dtype}->{wanted}")
    return entry, inputs, attrs


def _output_shape(ctx: Context, spec: dict[str, Any], entry: Any, inputs: list[Any],
                  end: Any) -> tuple[tuple[int, ...] | None, list[int] | None]:
    """The plugin output's shape by its catalog rule (None when unknown), and the reshape to the end tensor's
    shape it needs (output_reshape, or found from the static shapes; None when it needs none)."""
    import numpy as np

    plugin_shape = None
    shapes = [_static_shape(t) for t in inputs]
    if entry is not None and all(s is not None for s in shapes):
        plugin_shape = tuple(int(d) for d in entry.output_shape(shapes))
    reshape = spec.get("output_reshape")
    end_shape = _static_shape(end)
    if reshape is None and plugin_shape is not None and end_shape is not None and plugin_shape != end_shape:
        if int(np.prod(plugin_shape)) != int(np.prod(end_shape)):
            raise ctx.error(f"replace_subgraph: {spec['op']} gives {list(plugin_shape)}, which cannot be reshaped to "
                            f"the end tensor's {list(end_shape)}")
        reshape = list(end_shape)
    if reshape is None and entry is not None and plugin_shape is None:
        raise ctx.error(f"replace_subgraph: the shape of the {spec['op']} output is unknown (the start tensors' "
                        "shapes are not all static), so it cannot be told whether it needs a reshape to the end "
                        "tensor", hint="give output_reshape, e.g. [0, 0, -1] to merge the output's last two axes")
    return plugin_shape, reshape


def edit_replace_pattern(ctx: Context, spec: dict[str, Any]) -> str:
    """Every subgraph that a pattern of the plugin's catalog entry finds becomes one plugin node (inputs
    brought to the plugin's layout, the output to the replaced tensor's); near-matches are reported."""
    from orchestrator import patterns
    from orchestrator import plugins as catalog

    op = spec["op"]
    declared = ctx.contracts.get(op)
    entry = catalog.lookup(op, (declared or {}).get("catalog"))
    if not entry.patterns:
        raise ctx.error(f"replace_pattern: the catalog entry of {op} has no pattern to look for",
                        hint="replace_subgraph names the subgraph by its start and end tensors instead")
    view = patterns.GraphView.of(ctx.graph, {op: rule for p in entry.patterns for op, rule in p.shape_rules.items()})
    results = [result for pattern in entry.patterns for result in pattern.find(view)]
    found = [r for r in results if isinstance(r, patterns.Found)]
    near = [r for r in results if isinstance(r, patterns.NearMatch)]
    if not found:
        raise _no_pattern(ctx, op, entry.patterns, near)
    attrs = {"plugin_version": declared["version"] if declared else entry.versions[0],
             "plugin_namespace": declared["namespace"] if declared else "",
             **(declared or {}).get("attributes", {})}
    domain = spec.get("domain") or (declared["domain"] if declared else "trt.plugins")
    before = {id(n) for n in ctx.graph.nodes}
    replaced = []
    for match in found:
        node, mapping = patterns.replace(view, match, op, domain, attrs, ctx.unique, entry.input_names())
        ctx.inserted.add(node.name)
        replaced.append({"node": node.name, "op": op, "output": node.outputs[0].name, "original": match.output.name,
                         "mapping": mapping, "anchors": match.anchors})
    ctx.graph.cleanup()
    removed = len(before - {id(n) for n in ctx.graph.nodes})
    ctx.record = {"replaced": replaced, "near_matches": [{"anchors": n.anchors, "reason": n.reason} for n in near]}
    text = (f"replaced {len(replaced)} subgraph{'s' if len(replaced) != 1 else ''} ({removed} nodes) by {op}: "
            + ", ".join(f"{r['node']} (for {_span(r['anchors'])})" for r in replaced))
    if near:
        text += (f"; {len(near)} near-match{'es' if len(near) != 1 else ''} left as they are: "
                 + "; ".join(f"{_span(n.anchors)}: {n.reason}" for n in near))
    return text


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} nodes)"


def _no_pattern(ctx: Context, op: str, found_by: tuple[Any, ...], near: list[Any]) -> NoMatch:
    """Nothing to replace: what was looked for, and why each place that looked like it is not it."""
    looked = "; or ".join(pattern.looks_for for pattern in found_by)
    if near:
        reasons = "; ".join(f"{_span(n.anchors)}: {n.reason}" for n in near)
        return NoMatch(f"replace_pattern {op}: no subgraph computes {looked}. Near-matches: {reasons}",
                       field=ctx.where)
    anchors = sorted({pattern.anchor_op for pattern in found_by})
    ops = sorted({n.op for n in ctx.graph.nodes})
    return NoMatch(f"replace_pattern {op}: no subgraph computes {looked}; the graph has no "
                   f"{' or '.join(anchors)} node", field=ctx.where, hint=f"ops in the graph: {', '.join(ops[:25])}")


EDITS: dict[str, Callable[[Context, dict[str, Any]], str]] = {
    "rename_op": edit_rename_op,
    "set_attrs": edit_set_attrs,
    "remove_attrs": edit_remove_attrs,
    "insert_cast": edit_insert_cast,
    "replace_subgraph": edit_replace_subgraph,
    "replace_pattern": edit_replace_pattern,
    "cleanup": edit_cleanup,
}


# ---------------------------------------------------------------------- validity and the diff

def type_plugin_outputs(model: Any, contracts: dict[str, dict[str, Any]]) -> bool:
    """Give declared plugin nodes' outputs the type their catalog entry says (input 0's dtype, the output
    shape rule), where shape inference cannot know it (e.g. a renamed custom op). True if any was added."""
    import onnx

    from orchestrator import plugins as catalog

    graph = model.graph
    typed = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        typed.setdefault(init.name, onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    added = False
    for node in graph.node:
        plugin = contracts.get(node.op_type)
        if plugin is None or not node.output or not node.input:
            continue
        out = typed.get(node.output[0])
        if out is not None and out.type.tensor_type.elem_type and out.type.tensor_type.HasField("shape"):
            continue
        first = typed.get(node.input[0])
        if first is None or not first.type.tensor_type.elem_type:
            continue
        shape = None
        sizes = _known_sizes(node, typed)
        if sizes:
            entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
            try:
                shape = list(entry.output_shape(sizes))  # type: ignore[arg-type]
            except (TypeError, ValueError, IndexError):
                shape = None
        if out is not None and out in graph.value_info:
            graph.value_info.remove(out)
        if out is None or out not in graph.output:
            graph.value_info.append(onnx.helper.make_tensor_value_info(
                node.output[0], first.type.tensor_type.elem_type, shape))
            added = True
    return added


def _known_sizes(node: Any, typed: dict[str, Any]) -> list[tuple[int | None, ...]]:
    """Each input's sizes (None where symbolic or unknown); empty when an input's rank is unknown."""
    sizes = []
    for name in node.input:
        dims = value_dims(typed[name]) if name in typed else None
        if dims is None:
            return []
        sizes.append(tuple(d if isinstance(d, int) else None for d in dims))
    return sizes


def finish(graph: Any, template: Any, field: str, kind: str, contracts: dict[str, dict[str, Any]]) -> Any:
    """Export the edited graph; declare its custom domains; full check with strict shape inference."""
    import onnx
    import onnx_graphsurgeon as gs

    try:
        model = gs.export_onnx(graph)
    except Exception as exc:  # noqa: BLE001 - graphsurgeon refuses what it cannot write
        raise UserError(f"after {kind}, the graph cannot be written: {str(exc)[:300]}", field=field) from None
    model.ir_version = template.ir_version
    present = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node if not is_standard_domain(n.domain)} - present):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        if type_plugin_outputs(model, contracts):
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        message = str(exc).strip().splitlines()
        raise UserError(f"after {kind}, the graph is no longer valid: {' '.join(message[:3])[:400]}",
                        field=field) from None
    return model


def node_table(model: Any) -> list[dict[str, Any]]:
    return [{"name": n.name or f"<{n.op_type} -> {', '.join(n.output)}>", "op": n.op_type, "domain": n.domain}
            for n in model.graph.node]


def diff(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """Removed, added and changed nodes (by name), and the op counts that changed."""
    old = {n["name"]: n for n in before}
    new = {n["name"]: n for n in after}
    changed = [{"name": name, "before": f"{old[name]['op']}", "after": f"{new[name]['op']}",
                "domain": [old[name]["domain"], new[name]["domain"]]}
               for name in old if name in new and (old[name]["op"], old[name]["domain"]) !=
               (new[name]["op"], new[name]["domain"])]
    ops_before = Counter(n["op"] for n in before)
    ops_after = Counter(n["op"] for n in after)
    ops = {op: [ops_before.get(op, 0), ops_after.get(op, 0)] for op in sorted(set(ops_before) | set(ops_after))
           if ops_before.get(op, 0) != ops_after.get(op, 0)}
    return {"removed": [n for n in before if n["name"] not in new], "added": [n for n in after if n["name"] not in old],
            "changed": changed, "ops": ops, "nodes": [len(before), len(after)]}


def run(call: StageCall) -> StageResult:
    import onnx
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.ERROR
    source = call.inputs["onnx"].path / "model.onnx"
    original = onnx.load(str(source))
    model = onnx.shape_inference.infer_shapes(original)
    before = node_table(model)
    settings: SurgerySettings = call.settings
    contracts = {str(plugin["op"]): dict(plugin) for plugin in settings.contracts}
    edits = settings.edits
    fields = call.unkeyed.get("fields") or [f"surgery[{i}]" for i in range(len(edits))]
    reports = []
    for index, edit in enumerate(edits):
        kind, spec = edit.kind, edit.spec
        where = fields[index] if fields[index].startswith("export.") else f"{fields[index]}.{kind}"
        call.progress(f"{kind} ({index + 1}/{len(edits)})")
        graph = gs.import_onnx(model)
        ctx = Context(graph, contracts, where)
        summary = EDITS[kind](ctx, dict(spec or {}))
        if kind not in ("cleanup",):
            graph.cleanup().toposort()
        model = finish(graph, original, where, where, contracts)
        reports.append({"edit": kind, "field": where, "summary": summary, **ctx.record})
    onnx.save(model, str(call.out / "model.onnx"))
    changes = diff(before, node_table(model))
    info = describe_graph(model)
    record = {"edits": reports, "diff": changes, "graph": info}
    (call.out / "surgery.json").write_text(json.dumps(record, indent=1))
    plugin_nodes = len(info["plugin_nodes"])
    summary = (f"{len(edits)} edit{'s' if len(edits) != 1 else ''}: {len(changes['removed'])} nodes removed, "
               f"{len(changes['added'])} added, {len(changes['changed'])} changed; {changes['nodes'][0]} -> "
               f"{changes['nodes'][1]} nodes, {plugin_nodes} plugin node{'s' if plugin_nodes != 1 else ''}")
    return StageResult(summary, {"edits": reports, "ops": changes["ops"], "nodes": changes["nodes"],
                                 "removed": len(changes["removed"]), "added": len(changes["added"]),
                                 "changed": len(changes["changed"]), "plugin_nodes": plugin_nodes})


def _edits(ctx: PlanContext, data: Mapping[str, Any], plugins: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
    """The edits of the surgery stage, and the field each comes from.

    With `export.plugin_nodes: surgery`, each plugin's `subgraph` becomes a replace_subgraph
    edit (every occurrence), ahead of the pipeline's own `surgery` list (config/checks.py has made sure
    that something makes each plugin's node).
    """
    export = data["export"]
    edits: list[Any] = []
    fields: list[str] = []
    if export.get("plugin_nodes") == "surgery" and not export.get("onnx"):
        for index, plugin in enumerate(plugins):
            if plugin.get("subgraph"):
                edits.append({"replace_subgraph": {"every": True, **plugin["subgraph"], "op": plugin["op"],
                                                   "domain": plugin["domain"]}})
                fields.append(f"export.plugins[{index}].subgraph")
    for index, edit in enumerate(data.get("surgery") or []):
        edits.append(edit)
        fields.append(f"surgery[{index}]")
    return edits, fields

def plan(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned | None:
    """The surgery's key: its edits and the plugins' contracts; no surgery stage when there is nothing to edit."""
    plugins = [dict(p) for p in variant.plugins]
    edits, fields = _edits(ctx, variant.data, plugins)
    if not edits:
        return None
    settings = SurgerySettings.from_keyed({"surgery": edits, "contracts": plugins})
    return Planned(settings, {"onnx": planned["export"]}, {},
                   environment.tools("onnx", "onnx-graphsurgeon", "onnxruntime"), {"fields": fields})


STAGE = Stage(
    "surgery", version=2, plan=plan, run=run,
    outputs=("model.onnx", "surgery.json"),
)

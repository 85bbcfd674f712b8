"""ONNX graph helpers shared by the stages and the backends: one definition of each.

What a plugin node is (its op is a declared plugin, or its domain is not one of ONNX's own), what
a graph value's dtype and shape are as shape inference left them, a node's attributes as plain
values, and the description of a graph (inputs, outputs, plugin nodes) that export and surgery
write down. onnx is imported only by the functions that read a graph.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

# ONNX's own operator sets. Any other domain (trt.plugins, com.microsoft, a user's) is not a standard
# op: TensorRT's parser looks such a node up as a plugin, so the stages treat it as one.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

Dim = int | str | None  # a known size, a symbolic dimension's name, or unknown


def is_standard_domain(domain: str) -> bool:
    return domain in STANDARD_DOMAINS


def is_plugin_node(node: Any, plugin_ops: Iterable[str] = ()) -> bool:
    """Whether an ONNX node is a plugin node: a declared plugin's op, or any op outside ONNX's domains."""
    return node.op_type in set(plugin_ops) or not is_standard_domain(node.domain)


def plugin_nodes(model: Any, plugin_ops: Iterable[str] = ()) -> list[Any]:
    """The graph's plugin nodes (see is_plugin_node), in graph order."""
    ops = set(plugin_ops)
    return [node for node in model.graph.node if is_plugin_node(node, ops)]


def dtype_name(elem_type: int) -> str:
    """An ONNX element type as a NumPy dtype name ('float32', 'int64', …)."""
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type).name)


def value_dims(value: Any) -> tuple[Dim, ...] | None:
    """A ValueInfo's shape: a known size, a symbolic dim's name or None per axis; None when the rank is unknown."""
    kind = value.type.tensor_type
    if not kind.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim)


def value_meta(value: Any) -> dict[str, Any]:
    """A ValueInfo as {name, dtype, shape} ('unknown' dtype where it has none; an unknown rank is [])."""
    elem_type = value.type.tensor_type.elem_type
    return {"name": value.name, "dtype": dtype_name(elem_type) if elem_type else "unknown",
            "shape": list(value_dims(value) or ())}


def initializer_meta(initializer: Any) -> dict[str, Any]:
    """An initializer (a TensorProto) as {name, dtype, shape}."""
    return {"name": initializer.name, "dtype": dtype_name(initializer.data_type), "shape": list(initializer.dims)}


def node_attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values, bytes decoded to text (plugin_version, plugin_namespace, …)."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in attrs.items()}


def describe_graph(model: Any) -> dict[str, Any]:
    """Inputs, outputs, plugin nodes (any op outside ONNX's domains) and the casts in front of them."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    value_types = {v.name: value_meta(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    for init in graph.initializer:
        value_types.setdefault(init.name, initializer_meta(init))
    nodes = []
    for node in plugin_nodes(model):
        casts = []
        for index, name in enumerate(node.input):
            producer = producers.get(name)
            if producer is not None and producer.op_type == "Cast":
                to = next(a.i for a in producer.attribute if a.name == "to")
                casts.append({"input": index, "to": dtype_name(to)})
        nodes.append({"name": node.name, "op": node.op_type, "domain": node.domain,
                      "attributes": node_attributes(node),
                      "inputs": [value_types.get(i, {"name": i}) for i in node.input],
                      "outputs": [value_types.get(o, {"name": o}) for o in node.output], "casts": casts})
    initializers = {i.name for i in graph.initializer}
    return {"inputs": [value_meta(v) for v in graph.input if v.name not in initializers],
            "outputs": [value_meta(v) for v in graph.output], "plugin_nodes": nodes,
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "node_count": len(graph.node)}


def named_by(op_type: str, name: str, entries: Sequence[str]) -> bool:
    """Whether one of `entries` names a node: its op type, its name, or a glob over node names (the rule of
    build.keep_fp32, the same on every backend)."""
    return any(entry in (op_type, name) or fnmatch.fnmatchcase(name, entry) for entry in entries)

"""The plugin graph as TensorRT builds it: quantized or not, which outputs a plugin makes, its fp16 copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.onnx_graph import is_plugin_node

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_quantized(model: Any) -> bool:
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def plugin_outputs(model: Any, plugin_ops: set[str]) -> dict[str, str]:
    """Graph outputs that a plugin node produces directly: {output name: op}."""
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        if node is not None and is_plugin_node(node, plugin_ops):
            found[output.name] = node.op_type
    return found


# ---------------------------------------------------------------------------------------------------------------
# The float16 graph for strongly typed releases


def cast_float_graph(model: Any, target: str = "float16") -> tuple[Any, list[str]]:
    """A copy of `model` whose float32 tensors are `target`: inputs, outputs, weights, constants, casts.

    On a strongly typed TensorRT the graph's types are the precision, so an fp16 build of the plugin
    graph is this graph. Returns the copy and the graph inputs that changed type.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    if target != "float16":
        raise ValueError(f"only float16 graphs are made, not {target}")
    new = TensorProto.FLOAT16
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph

    def retype(values: Any) -> list[str]:
        changed = []
        for value in values:
            kind = value.type.tensor_type
            if kind.elem_type == TensorProto.FLOAT:
                kind.elem_type = new
                changed.append(value.name)
        return changed

    def half_tensor(tensor: Any) -> Any:
        array = numpy_helper.to_array(tensor).astype(np.float16)
        return numpy_helper.from_array(array, tensor.name)

    def walk(g: Any) -> None:
        for index, initializer in enumerate(g.initializer):
            if initializer.data_type == TensorProto.FLOAT:
                g.initializer[index].CopyFrom(half_tensor(initializer))
        retype(g.value_info)
        for node in g.node:
            for attribute in node.attribute:
                if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = new
                elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                    attribute.t.CopyFrom(half_tensor(attribute.t))
                elif node.op_type == "Constant" and attribute.name in ("value_float", "value_floats"):
                    values = [attribute.f] if attribute.name == "value_float" else list(attribute.floats)
                    array = np.asarray(values if attribute.name == "value_floats" else values[0], dtype=np.float16)
                    replacement = onnx.helper.make_attribute("value", numpy_helper.from_array(array))
                    attribute.CopyFrom(replacement)
                for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    walk(sub)
                    retype(sub.input)
                    retype(sub.output)

    walk(graph)
    changed = retype(graph.input)
    retype(graph.output)
    return copy, changed


def graph_to_build(model: Any, graph: Path, out: Path, cast_graph: str | None) -> tuple[Path, Any]:
    """The graph file the build parses and its model: `graph` itself, or its cast copy written to `out`
    (model.fp16.onnx) where the precision plan casts the graph."""
    import onnx

    if not cast_graph:
        return graph, model
    cast, _ = cast_float_graph(model, cast_graph)
    written = out / "model.fp16.onnx"
    onnx.save(cast, str(written))
    return written, cast

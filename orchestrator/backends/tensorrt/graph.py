"""The plugin graph as TensorRT builds it: quantized or not, which outputs a plugin makes, which nodes a
float16 build keeps in float32, and its float16 copy for strongly typed releases.

One declaration (`precision: fp16` with `build.keep_fp32`) means the same on every release: the
nodes `fp32_nodes` picks stay float32, through the graph cast on 11.x and through per-layer precision
constraints on 10.x (precision.py). The cast itself is onnxconverter-common's float16 converter; what
TensorRT's ONNX parser needs beyond it is restored and then checked (`cast_problems`): graph inputs and
outputs keep their types, Resize/Upsample scales stay float32 constants (the parser reads no other
type there), and a plugin node's TENSOR attributes stay float32 (the parser would hand the plugin
FLOAT16 fields).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.onnx_graph import is_plugin_node, named_by

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# Kept in float32 by every float16 build: normalisations and softmax overflow or lose their sums in
# half (TensorRT itself warns about LayerNorm in FP16). BatchNormalization is not among them: TensorRT
# folds it into the convolution before it.
NORMALISATIONS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
                  "LpNormalization")
SOFTMAX = ("Softmax", "LogSoftmax")
KEPT_BY_DEFAULT = NORMALISATIONS + SOFTMAX
# Inputs the ONNX parser reads only as float32 constants: Resize's roi and scales, Upsample's scales.
FLOAT32_CONSTANT_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16
FP16_MAX = 65504.0
FP16_SMALLEST = 2.0**-24  # the smallest positive (subnormal) float16


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


def node_name(node: Any, index: int) -> str:
    """A node's name; an unnamed node is called by its op and place, as the float16 copy names it."""
    return str(node.name) or f"{node.op_type}_{index}"


# ---------------------------------------------------------------------------------------------------------------
# Which nodes stay float32


def decomposed_layer_norms(model: Any) -> list[list[str]]:
    """LayerNorms exported as elementwise ops (opset < 17): the nodes of each, by name.

    Matched on the computation itself: d = x - ReduceMean(x); Div(d, Sqrt(ReduceMean(d·d or d^2) + eps))
    (or d · Reciprocal(Sqrt(...))). The affine Mul/Add after it is safe in half and is left out.
    """
    nodes = list(model.graph.node)
    producer = {out: (index, node) for index, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[tuple[int, Any]]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append((index, node))
    found = []
    for index, sqrt in enumerate(nodes):
        if sqrt.op_type == "Sqrt":
            chain = _layer_norm_chain(index, sqrt, producer, consumers)
            if chain:
                found.append([node_name(node, at) for at, node in chain])
    return found


def _layer_norm_chain(index: int, sqrt: Any, producer: Mapping[str, tuple[int, Any]],
                      consumers: Mapping[str, list[tuple[int, Any]]]) -> list[tuple[int, Any]]:
    """The LayerNorm around one Sqrt node, walking up to x - ReduceMean(x) and down to the division; [] if none."""
    def made_by(name: str, *ops: str) -> tuple[int, Any] | None:
        found = producer.get(name)
        return found if found is not None and found[1].op_type in ops else None

    add = made_by(sqrt.input[0], "Add")
    if add is None:
        return []
    variance = made_by(add[1].input[0], "ReduceMean") or made_by(add[1].input[1], "ReduceMean")
    square = made_by(variance[1].input[0], "Pow", "Mul") if variance else None
    if variance is None or square is None or (square[1].op_type == "Mul" and
                                              square[1].input[0] != square[1].input[1]):
        return []
    centred = made_by(square[1].input[0], "Sub")
    mean = made_by(centred[1].input[1], "ReduceMean") if centred else None
    if centred is None or mean is None or mean[1].input[0] != centred[1].input[0]:
        return []
    divide = _divide_by(sqrt, centred[1].output[0], consumers)
    return [mean, centred, square, variance, add, (index, sqrt), *divide] if divide else []


def _divide_by(sqrt: Any, centred: str, consumers: Mapping[str, list[tuple[int, Any]]]) -> list[tuple[int, Any]]:
    """The node(s) dividing the centred value by the square root: Div, or Reciprocal then Mul."""
    for at, user in consumers.get(sqrt.output[0], []):
        if user.op_type == "Div" and list(user.input) == [centred, sqrt.output[0]]:
            return [(at, user)]
        if user.op_type == "Reciprocal":
            for mul_at, mul in consumers.get(user.output[0], []):
                if mul.op_type == "Mul" and centred in mul.input:
                    return [(at, user), (mul_at, mul)]
    return []


def fp32_nodes(model: Any, keep_fp32: Sequence[str] = (), defaults: bool = True) -> dict[str, str]:
    """The nodes a float16 build keeps in float32, by name (see node_name), each with why.

    `defaults`: normalisations (also decomposed LayerNorms) and softmax. Each `keep_fp32` entry is an op
    type (a plugin's op too), a node name, or a glob over node names ('/decoder/*'); one that matches no
    node is a UserError, since a typo would otherwise build a different engine than the YAML says.
    """
    nodes = [(node_name(node, index), node) for index, node in enumerate(model.graph.node)]
    kept: dict[str, str] = {}
    if defaults:
        for name, node in nodes:
            if node.op_type in KEPT_BY_DEFAULT:
                kept[name] = node.op_type
        for chain in decomposed_layer_norms(model):
            kept.update({name: "LayerNorm (decomposed)" for name in chain if name not in kept})
    for position, entry in enumerate(keep_fp32):
        matched = [name for name, node in nodes if named_by(node.op_type, name, [entry])]
        if not matched:
            ops = sorted({node.op_type for _, node in nodes})
            raise UserError(f"build.keep_fp32 entry '{entry}' is no op type or node name of the graph",
                            field=f"build.keep_fp32[{position}]",
                            hint=f"op types in the graph: {', '.join(ops)}; node names may use * and ?")
        for name in matched:
            kept.setdefault(name, f"keep_fp32 '{entry}'")
    return kept


def node_outputs(model: Any, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The output tensors of the named nodes (how a TensorRT layer is traced back to its node)."""
    wanted = set(names)
    return {node_name(node, index): tuple(node.output) for index, node in enumerate(model.graph.node)
            if node_name(node, index) in wanted}


# ---------------------------------------------------------------------------------------------------------------
# The float16 graph for strongly typed releases


def cast_float_graph(model: Any, kept: Mapping[str, str] | None = None,
                     plugin_ops: Iterable[str] = ()) -> Any:
    """A float16 copy of `model` for a strongly typed TensorRT, with `kept` nodes in float32 (default:
    `fp32_nodes(model)`), graph inputs and outputs as they were, and what the parser needs restored.

    onnxconverter-common converts; around it, what it leaves wrong is put right (a Constant's value_float,
    a Cast to float32 outside the kept nodes, a kept node reading another kept node's output through a
    float16 Cast, a graph output behind a kept node), and the result is checked: a UserError when it still
    breaks one of TensorRT's needs or does not type-check.
    """
    import onnx

    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        raise UserError("a float16 graph for a strongly typed TensorRT needs onnxconverter-common, which is not "
                        "installed", field="build.precision",
                        hint='pip install -c constraints.txt -e ".[tensorrt]" (or pip install onnxconverter-common)'
                        ) from None
    original = onnx.ModelProto()
    original.CopyFrom(model)
    for index, node in enumerate(original.graph.node):
        node.name = node_name(node, index)
    keep = dict(fp32_nodes(original) if kept is None else kept)
    blocked = set(keep) | {n.name for n in original.graph.node if n.op_type in FLOAT32_CONSTANT_INPUTS}
    source = onnx.ModelProto()
    source.CopyFrom(original)
    _prepare(source, blocked)
    half = convert_float_to_float16(source, min_positive_val=FP16_SMALLEST, max_finite_val=FP16_MAX,
                                    keep_io_types=True, op_block_list=[], node_block_list=sorted(blocked),
                                    check_fp16_ready=False)
    plugins = set(plugin_ops)
    _feed_kept_float32(half, blocked)
    _restore_outputs(half, original)
    _restore_constant_inputs(half, original)
    _restore_plugin_attributes(half, original, plugins)
    _drop_dead_nodes(half)
    problems = cast_problems(original, half, plugins, keep)
    if problems:
        raise UserError("the float16 graph breaks what TensorRT's parser needs: " + "; ".join(problems),
                        field="build.precision", hint="keep the nodes named in build.keep_fp32, or build fp32")
    return half


def _prepare(model: Any, blocked: set[str]) -> None:
    """What the converter reads wrongly, said its way: a Constant's value_float(s) as a value tensor, and a
    Cast to float32 outside the kept nodes as a Cast to float16 (the converter leaves `to` as it is)."""
    import numpy as np
    from onnx import helper, numpy_helper

    retyped = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name in ("value_float", "value_floats"):
                    values = attribute.f if attribute.name == "value_float" else list(attribute.floats)
                    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.float32))
                    attribute.CopyFrom(helper.make_attribute("value", tensor))
        elif node.op_type == "Cast" and node.name not in blocked:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == FLOAT:
                    attribute.i = FLOAT16
                    retyped.add(node.output[0])
    for value in [v for v in model.graph.value_info if v.name in retyped]:
        model.graph.value_info.remove(value)


def tensor_types(model: Any) -> dict[str, int]:
    """Each tensor's element type as the graph says it: a Cast's `to`, else its value_info, initializer or
    graph input (the converter's value_info is stale behind nodes it kept in float32, its Casts are not)."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                          *model.graph.output]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
        elif node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def _feed_kept_float32(half: Any, blocked: set[str]) -> None:
    """Every float16 input of a kept node reads float32: the value before the converter's Cast to float16
    where that was float32 already, else a new Cast."""
    from onnx import helper

    types = tensor_types(half)
    producers = {out: node for node in half.graph.node for out in node.output}
    added = []
    for node in half.graph.node:
        if node.name not in blocked:
            continue
        for slot, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT16:
                continue
            cast = producers.get(name)
            if cast is not None and cast.op_type == "Cast" and types.get(cast.input[0]) == FLOAT:
                node.input[slot] = cast.input[0]
                continue
            widened = f"{node.name}_fp32_in_{slot}"
            added.append(helper.make_node("Cast", [name], [widened], name=f"{widened}_cast", to=FLOAT))
            node.input[slot] = widened
    for cast in added:  # inserted before their readers, keeping the graph in topological order
        reader = next(i for i, n in enumerate(half.graph.node) if cast.output[0] in n.input)
        half.graph.node.insert(reader, cast)


def _restore_outputs(half: Any, original: Any) -> None:
    """A graph output the converter left float16 (it does so behind a node kept in float32) gets its type back:
    the float32 value before its Cast to float16 becomes the output; nodes that read the float16 value still do."""
    types = {v.name: v.type.tensor_type.elem_type for v in original.graph.output}
    producers = {out: node for node in half.graph.node for out in node.output}
    for output in half.graph.output:
        kind = output.type.tensor_type
        cast = producers.get(output.name)
        if kind.elem_type == types.get(output.name) or types.get(output.name) != FLOAT or cast is None \
                or cast.op_type != "Cast" or cast.input[0] not in producers:
            continue
        single, halved = cast.input[0], f"{output.name}_fp16"
        for node in half.graph.node:
            node.input[:] = [halved if name == output.name else name for name in node.input]
            node.input[:] = [output.name if name == single else name for name in node.input]
            node.output[:] = [output.name if name == single else name for name in node.output]
        cast.output[:] = [halved]
        stale = [v for v in half.graph.value_info if v.name in (output.name, single)]
        for value in stale:
            half.graph.value_info.remove(value)
        kind.elem_type = FLOAT


def _constant_values(model: Any) -> dict[str, Any]:
    """Every tensor the graph holds as a constant (an initializer, or a Constant node's value)."""
    found = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    found[node.output[0]] = attribute.t
    return found


def _restore_constant_inputs(half: Any, original: Any) -> None:
    """Resize/Upsample roi and scales read their float32 constants again (the converter made them float16,
    or a Cast of a float16 constant), from new initializers holding the original values."""
    from onnx import numpy_helper

    constants = _constant_values(original)
    originals = {node.name: node for node in original.graph.node}
    for node in half.graph.node:
        before = originals.get(node.name)
        for slot in FLOAT32_CONSTANT_INPUTS.get(node.op_type, ()):
            if before is None or slot >= len(before.input) or before.input[slot] not in constants:
                continue
            tensor = constants[before.input[slot]]
            if tensor.data_type != FLOAT:
                continue
            name = f"{node.name}_fp32_input_{slot}"
            if name not in {init.name for init in half.graph.initializer}:
                half.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor), name))
            node.input[slot] = name


def _restore_plugin_attributes(half: Any, original: Any, plugin_ops: set[str]) -> None:
    """A plugin node's TENSOR attributes as they were: the parser makes a PluginField of each in its own type,
    and the plugin's creator reads the type it declares, not the graph's precision."""
    originals = {node.name: node for node in original.graph.node}
    for node in half.graph.node:
        before = originals.get(node.name)
        if before is None or not is_plugin_node(node, plugin_ops):
            continue
        tensors = {a.name: a for a in before.attribute if a.type == 4}  # AttributeProto.TENSOR
        for attribute in node.attribute:
            if attribute.name in tensors:
                attribute.CopyFrom(tensors[attribute.name])


def _drop_dead_nodes(half: Any) -> None:
    """Remove nodes nothing reads any more (casts of constants that the restored inputs replaced)."""
    graph = half.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def cast_problems(original: Any, half: Any, plugin_ops: Iterable[str] = (),
                  kept: Iterable[str] = ()) -> list[str]:
    """What in the float16 copy TensorRT's parser or a plugin would not take, compared with the original:
    changed graph I/O types, Resize scales that are no float32 constant, float16 plugin fields, a kept node
    reading or writing float16, and a graph that no longer type-checks."""
    problems = []
    for kind in ("input", "output"):
        before = {v.name: v.type.tensor_type.elem_type for v in getattr(original.graph, kind)}
        for value in getattr(half.graph, kind):
            if value.name in before and value.type.tensor_type.elem_type != before[value.name]:
                problems.append(f"graph {kind} '{value.name}' changed type")
    constants = _constant_values(half)
    types = tensor_types(half)
    wanted = set(kept)
    for node in half.graph.node:
        for slot in FLOAT32_CONSTANT_INPUTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name and (name not in constants or constants[name].data_type != FLOAT):
                problems.append(f"{node.op_type} '{node.name}' input {slot} is not a float32 constant")
        if is_plugin_node(node, plugin_ops):
            problems += [f"plugin node '{node.name}' attribute '{a.name}' is float16" for a in node.attribute
                         if a.type == 4 and a.t.data_type == FLOAT16]
        if node.name in wanted:
            problems += [f"node '{node.name}' kept in float32 reads or writes float16 '{name}'"
                         for name in [*node.input, *node.output] if name and types.get(name) == FLOAT16]
    return problems + _type_problems(half, plugin_ops)


def _type_problems(half: Any, plugin_ops: Iterable[str]) -> list[str]:
    """ONNX's type inference over the copy, from its inputs (what a plugin node makes is taken as declared)."""
    import onnx

    check = onnx.ModelProto()
    check.CopyFrom(half)
    made_by_plugins = {out for node in check.graph.node if is_plugin_node(node, plugin_ops) for out in node.output}
    for value in [v for v in check.graph.value_info if v.name not in made_by_plugins]:
        check.graph.value_info.remove(value)
    try:
        onnx.shape_inference.infer_shapes(check, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        return [f"the graph does not type-check ({str(exc).strip().splitlines()[0][:200]})"]
    return []


def graph_to_build(model: Any, graph: Path, out: Path, cast_graph: str | None, keep_fp32: Sequence[str] = (),
                   plugin_ops: Iterable[str] = ()) -> tuple[Path, Any]:
    """The graph file the build parses and its model: `graph` itself, or its float16 copy written to `out`
    (model.fp16.onnx) where the precision plan casts the graph (nodes in `keep_fp32` stay float32)."""
    import onnx

    if not cast_graph:
        return graph, model
    if cast_graph != "float16":
        raise ValueError(f"only float16 graphs are made, not {cast_graph}")
    cast = cast_float_graph(model, fp32_nodes(model, keep_fp32), plugin_ops)
    written = out / "model.fp16.onnx"
    onnx.save(cast, str(written))
    return written, cast

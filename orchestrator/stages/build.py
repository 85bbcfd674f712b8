"""build: preflight the plugin graph against the catalog, then build it with the chosen backend.

The preflight checks every plugin node (op, plugin_version, plugin_namespace, input count, ranks
and dtypes from ONNX shape inference) against its catalog entry and the pipeline's declaration,
and refuses a precision the backend or the plugin cannot run, before any backend work starts. A
hand-made ONNX that feeds int64 index tensors to the plugin is caught here.

Every build also writes trtexec.txt: the equivalent trtexec command line, to reproduce by hand.
"""

from __future__ import annotations

from typing import Any

from orchestrator import backends
from orchestrator import plugins as catalog
from orchestrator.errors import UserError
from orchestrator.stages import StageCall, StageResult


def plugin_nodes(model: Any, declared_ops: set[str]) -> list[Any]:
    standard = {"", "ai.onnx", "ai.onnx.ml"}
    return [n for n in model.graph.node if n.op_type in declared_ops or n.domain not in standard]


def preflight(model: Any, declared: list[dict[str, Any]], precision: str, backend: str) -> list[dict[str, Any]]:
    """Check each plugin node; return what was checked. Raise UserError naming the node and the mismatch."""
    import onnx

    by_op = {p["op"]: p for p in declared}
    types = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        kind = value.type.tensor_type
        if kind.elem_type:
            types[value.name] = (onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name,
                                 tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
                                 if kind.HasField("shape") else None)
    for init in model.graph.initializer:
        types[init.name] = (onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name, tuple(init.dims))
    checked = []
    nodes = plugin_nodes(model, set(by_op))
    if not nodes:
        raise UserError("the graph has no plugin node; expected " + ", ".join(sorted(by_op)), field="export.plugins")
    for node in nodes:
        label = f"plugin node '{node.name or node.output[0]}' ({node.op_type})"
        plugin = by_op.get(node.op_type)
        if plugin is None:
            raise UserError(f"{label}: op is not declared in export.plugins (declared: {', '.join(by_op)})",
                            field="export.plugins")
        entry = catalog.lookup(node.op_type, plugin.get("catalog"))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        version = attrs.get("plugin_version", b"1")
        version = version.decode() if isinstance(version, bytes) else str(version)
        namespace = attrs.get("plugin_namespace", b"")
        namespace = namespace.decode() if isinstance(namespace, bytes) else str(namespace)
        if version not in entry.versions:
            raise UserError(f"{label}: plugin_version '{version}' is not one of {', '.join(entry.versions)}",
                            field="export.plugins")
        if version != plugin["version"] or namespace != plugin["namespace"]:
            raise UserError(f"{label}: has plugin_version '{version}', namespace '{namespace}'; the pipeline "
                            f"declares version '{plugin['version']}', namespace '{plugin['namespace']}'",
                            field="export.plugins")
        shapes, dtypes = [], []
        for name in node.input:
            if name not in types:
                raise UserError(f"{label}: the type of input '{name}' is unknown after shape inference",
                                field="export.plugins")
            dtypes.append(types[name][0])
            shapes.append(types[name][1] or ())
        problems = entry.contract_problems(shapes, dtypes, list(node.input))
        if problems:
            wrong_integers = any(" must be int" in problem for problem in problems)
            raise UserError(f"{label}: " + "; ".join(problems), field="export.plugins",
                            hint="cast integer inputs to int32 in the graph (the export does this), or add a "
                                 "surgery step: insert_cast: {contract: true}" if wrong_integers else None)
        # The TensorRT backends check precision themselves, naming TensorRT's limits as well as the plugin's.
        if backend not in ("tensorrt", "trtexec") and precision not in ("fp32", "tf32", "best") \
                and precision not in entry.precisions:
            raise UserError(f"precision {precision}: {entry.op} runs only {', '.join(entry.precisions)}",
                            field="build.precision")
        checked.append({"node": node.name, "op": node.op_type, "version": version, "namespace": namespace,
                        "dtypes": dtypes})
    if backend == "onnxruntime":
        from orchestrator.backends.onnxruntime import PRECISIONS

        if precision not in PRECISIONS:
            raise UserError(f"precision {precision}: the onnxruntime backend runs {', '.join(PRECISIONS)} "
                            "(TensorRT is needed for others)", field="build.precision")
    return checked


def run(call: StageCall) -> StageResult:
    import onnx

    settings = call.config["build"]
    backend = settings["backend"]
    graph_path = call.inputs["graph"].path / "model.onnx"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph_path)))
    declared = call.config["plugins"]
    checked = preflight(model, declared, settings["precision"], backend)
    from orchestrator.backends import trtexec

    command = trtexec.equivalent_command(call, model)
    (call.out / "trtexec.txt").write_text(" ".join(command) + "\n")
    if backend == "onnxruntime":
        built = backends.module("onnxruntime").build(model, call.out, settings["precision"], declared, call.progress)
        reason = call.paths.get("backend_reason")
        summary = f"onnxruntime{f' ({reason})' if reason else ''}, {built['summary']}"
    else:
        built = backends.module(backend).build(call, graph_path, model, checked)
        summary = built["summary"]
    return StageResult(summary, {"backend": backend, "preflight": checked, **built,
                                 "trtexec": " ".join(command)})

"""The embedded default backend: the unchanged plugin graph on the CPU.

ONNX Runtime runs the standard nodes; each plugin node runs the catalog's reference kernel. The
graph is cut at plugin nodes into ONNX Runtime segments, and the kernels are called directly in
between, so tensors cross from one to the other without copies (onnxruntime-extensions' Python
ops copy outputs at ~40 MB/s, slower than the work itself).

A segment that only changes how its tensors are viewed (Reshape, Flatten, Squeeze, Unsqueeze,
Identity to static shapes) or casts them runs as NumPy array operations instead: a reshape is then
a view rather than ONNX Runtime's copy, and no session call is paid for two casts. ONNX Runtime's
threads stop spinning when a session call returns (`session.force_spinning_stop`), so they leave
the cores to the kernel that runs next.

Build writes segments/*.onnx and runplan.json; `Runner` executes that plan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import plugins as catalog
from orchestrator.errors import UserError

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
PRECISIONS = ("fp32", "fp16")


def is_plugin(node: Any, plugin_ops: set[str]) -> bool:
    return node.op_type in plugin_ops or node.domain not in STANDARD_DOMAINS


def _used_names(node: Any) -> list[str]:
    """A node's inputs, plus outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    names = [n for n in node.input if n]
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for graph in graphs:
            inner = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for sub in graph.node:
                for name in _used_names(sub):
                    if name not in inner:
                        names.append(name)
                inner.update(sub.output)
    return names


def partition(model: Any, plugin_ops: set[str]) -> list[dict[str, Any]]:
    """Cut the (topologically sorted) graph into runs of standard nodes and single plugin nodes."""
    steps: list[dict[str, Any]] = []
    current: list[Any] = []
    for node in model.graph.node:
        if is_plugin(node, plugin_ops):
            if current:
                steps.append({"type": "onnx", "nodes": current})
                current = []
            steps.append({"type": "plugin", "nodes": [node]})
        else:
            current.append(node)
    if current:
        steps.append({"type": "onnx", "nodes": current})
    initializers = {i.name for i in model.graph.initializer}
    graph_outputs = [o.name for o in model.graph.output]
    for index, step in enumerate(steps):
        produced = {o for n in step["nodes"] for o in n.output if o}
        consumed = []
        for node in step["nodes"]:
            for name in _used_names(node):
                if name not in produced and name not in consumed:
                    consumed.append(name)
        step["initializers"] = [n for n in consumed if n in initializers]
        step["inputs"] = [n for n in consumed if n not in initializers]
        later = {n for s in steps[index + 1:] for node in s["nodes"] for n in _used_names(node)}
        if step["type"] == "plugin":
            step["outputs"] = list(step["nodes"][0].output)
        else:
            step["outputs"] = [o for n in step["nodes"] for o in n.output if o and (o in later or o in graph_outputs)]
    return steps


def _value_infos(model: Any) -> dict[str, Any]:
    graph = model.graph
    return {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}


def _segment_model(model: Any, step: dict[str, Any], infos: dict[str, Any]) -> Any:
    import onnx

    initializers = {i.name: i for i in model.graph.initializer}
    missing = [n for n in [*step["inputs"], *step["outputs"]] if n not in infos]
    if missing:
        raise UserError(f"ONNX shape inference left the type of {', '.join(missing[:3])} unknown; "
                        "cannot cut the graph there", field="build")
    graph = onnx.helper.make_graph(
        step["nodes"], f"{model.graph.name}_segment", [infos[n] for n in step["inputs"]],
        [infos[n] for n in step["outputs"]], [initializers[n] for n in step["initializers"]])
    opsets = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS]
    segment = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="orchestrate")
    segment.ir_version = model.ir_version
    return segment


VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _array_ops(step: dict[str, Any], infos: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The segment as NumPy operations (reshape to a static shape, cast), or None if it is more than that.

    Only the first input of each node is data; shapes and axes come from shape inference, so a
    Constant node may feed them. Segment outputs must come from the reshapes and casts themselves.
    """
    import numpy as np
    import onnx

    ops: list[dict[str, Any]] = []
    constants: set[str] = set()
    for node in step["nodes"]:
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        if node.op_type not in VIEW_OPS | {"Cast"} or len(node.output) != 1 or any(
                name in constants for name in node.input[:1]):
            return None
        info = infos.get(node.output[0])
        if info is None:
            return None
        meta = _tensor_meta(info)
        if node.op_type == "Cast":
            try:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
                    next(a.i for a in node.attribute if a.name == "to")))
            except (StopIteration, KeyError, TypeError, ValueError):
                return None
            if dtype.kind not in "biuf":
                return None
            ops.append({"op": "cast", "input": node.input[0], "output": node.output[0], "dtype": dtype.name})
        else:
            shape = meta["shape"]
            if not all(isinstance(d, int) and d >= 0 for d in shape) or not info.type.tensor_type.HasField("shape"):
                return None
            ops.append({"op": "reshape", "input": node.input[0], "output": node.output[0], "shape": shape})
    if not ops or any(name in constants for name in step["outputs"]):
        return None
    return ops


def _tensor_meta(info: Any) -> dict[str, Any]:
    import onnx

    kind = info.type.tensor_type
    return {"name": info.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name,
            "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim]}


def build(model: Any, out: Path, precision: str, declared: list[dict[str, Any]], progress: Any) -> dict[str, Any]:
    """Write the segments and run plan for `model` (already shape-inferred and preflighted)."""
    import onnx

    entries = {p["op"]: catalog.lookup(p["op"], p.get("catalog")) for p in declared}
    steps = partition(model, set(entries))
    infos = _value_infos(model)
    folder = out / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    plan_steps = []
    for index, step in enumerate(steps):
        if step["type"] == "onnx" and (ops := _array_ops(step, infos)) is not None:
            plan_steps.append({"type": "arrays", "ops": ops, "inputs": step["inputs"], "outputs": step["outputs"],
                               "nodes": len(step["nodes"])})
        elif step["type"] == "onnx":
            progress(f"segment {index}")
            segment = _segment_model(model, step, infos)
            file = folder / f"segment_{index:02d}.onnx"
            onnx.save(segment, str(file))
            plan_steps.append({"type": "onnx", "file": f"segments/{file.name}", "inputs": step["inputs"],
                               "outputs": step["outputs"], "nodes": len(step["nodes"])})
        else:
            node = step["nodes"][0]
            entry = entries.get(node.op_type) or catalog.lookup(node.op_type)
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            plan_steps.append({"type": "plugin", "op": node.op_type, "name": node.name, "kernel": entry.kernel,
                               "inputs": list(node.input), "outputs": list(node.output), "attributes": attrs})
    needed_until: dict[str, int] = {}
    for index, step in enumerate(plan_steps):
        for name in step["inputs"]:
            needed_until[name] = index
    graph_outputs = [o.name for o in model.graph.output]
    for index, step in enumerate(plan_steps):
        step["free"] = sorted(n for n, last in needed_until.items() if last == index and n not in graph_outputs)
    initializers = {i.name for i in model.graph.initializer}
    runplan = {
        "precision": precision,
        "inputs": [_tensor_meta(i) for i in model.graph.input if i.name not in initializers],
        "outputs": [_tensor_meta(o) for o in model.graph.output],
        "steps": plan_steps,
    }
    (out / "runplan.json").write_text(json.dumps(runplan, indent=1))
    runner = Runner(out)  # load every segment once: a graph ONNX Runtime cannot run fails the build
    runner.close()
    segments = sum(s["type"] == "onnx" for s in plan_steps)
    array_steps = sum(s["type"] == "arrays" for s in plan_steps)
    kernels = sorted({s["kernel"].rsplit(":", 1)[-1] for s in plan_steps if s["type"] == "plugin"})
    plugin_nodes = sum(s["type"] == "plugin" for s in plan_steps)
    arrays_text = f", {array_steps} reshape/cast step{'s' if array_steps != 1 else ''} in NumPy" if array_steps else ""
    return {"summary": f"{segments} ONNX Runtime segment{'s' if segments != 1 else ''}{arrays_text}, {plugin_nodes} "
                       f"plugin node{'s' if plugin_nodes != 1 else ''} -> reference kernel {', '.join(kernels)}",
            "segments": segments, "array_steps": array_steps, "plugin_nodes": plugin_nodes}


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[Any]


class Runner:
    """Executes a run plan: ONNX Runtime sessions and reference kernels, in order."""

    def __init__(self, artifact: Path, threads: int = 0):
        import onnxruntime as ort

        self.plan = json.loads((artifact / "runplan.json").read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.steps: list[tuple[dict[str, Any], Any]] = []
        for step in self.plan["steps"]:
            if step["type"] == "onnx":
                try:
                    session = ort.InferenceSession(str(artifact / step["file"]), options,
                                                   providers=["CPUExecutionProvider"])
                except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                    raise UserError(f"ONNX Runtime cannot run {step['file']}: {str(exc)[:300]}",
                                    field="build") from None
                self.steps.append((step, session))
            elif step["type"] == "arrays":
                self.steps.append((step, _array_function(step["ops"], step["outputs"])))
            else:
                entry_kernel = _load_kernel(step["kernel"])
                self.steps.append((step, entry_kernel))
        self.half = self.plan.get("precision") == "fp16"

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(**meta) for meta in self.plan["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(**meta) for meta in self.plan["outputs"]]

    def run(self, feeds: dict[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        """The graph outputs, plus the intermediate tensors named in `keep` (e.g. plugin node outputs)."""
        import numpy as np

        env = dict(feeds)
        kept: dict[str, Any] = {}
        for step, target in self.steps:
            if step["type"] == "onnx":
                values = target.run(step["outputs"], {n: env[n] for n in step["inputs"]})
            elif step["type"] == "arrays":
                values = target({n: env[n] for n in step["inputs"]})
            else:
                arguments = [env[n] for n in step["inputs"]]
                if self.half:
                    arguments = [a.astype(np.float16) if a.dtype == np.float32 else a for a in arguments]
                values = target(arguments, step["attributes"])
                if self.half:
                    values = [v.astype(np.float32) if v.dtype == np.float16 else v for v in values]
            env.update(zip(step["outputs"], values, strict=True))
            kept.update({name: env[name] for name in keep if name in step["outputs"]})
            for name in step["free"]:
                env.pop(name, None)
        return {**kept, **{meta["name"]: env[meta["name"]] for meta in self.plan["outputs"]}}

    def close(self) -> None:
        self.steps.clear()


def single_session(model: Any, entries: dict[str, catalog.PluginEntry], threads: int = 0) -> Any:
    """One ONNX Runtime session for the whole plugin graph, the plugins as onnxruntime-extensions ops.

    The alternative to the partitioned `Runner` for code that wants a single session: each plugin
    node is moved into the domain its entry registers (see `PluginEntry.register_onnxruntime_extensions`).
    onnxruntime-extensions returns a Python op's outputs through Python lists, so this is slower.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    domains = set()
    for node in rewritten.graph.node:
        if is_plugin(node, set(entries)):
            entry = entries.get(node.op_type) or catalog.lookup(node.op_type)
            node.domain = entry.register_onnxruntime_extensions()
            domains.add(node.domain)
    present = {o.domain for o in rewritten.opset_import}
    rewritten.opset_import.extend(onnx.helper.make_opsetid(d, 1) for d in sorted(domains - present))
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(rewritten.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _array_function(ops: list[dict[str, Any]], outputs: list[str]) -> Any:
    """An array step as a function of its inputs (by name) returning its outputs."""
    import numpy as np

    def run(values: dict[str, Any]) -> list[Any]:
        for op in ops:
            value = values[op["input"]]
            if op["op"] == "cast":
                values[op["output"]] = np.asarray(value).astype(op["dtype"], copy=False)
            else:
                values[op["output"]] = np.reshape(value, op["shape"])
        return [values[name] for name in outputs]

    return run


def _load_kernel(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)

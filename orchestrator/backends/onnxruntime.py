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

Initializers and Constant values belong to no segment: a segment that reads one gets it as its own
initializer, and those that plugin kernels, NumPy steps or the graph's outputs read are written to
constants/ and held by the runner as read-only arrays, so any cut of a valid graph runs.

Build writes segments/*.onnx, constants/*.npy and runplan.json; `Runner` executes that plan. The
plan is data (a build artifact may come from a remote cache): a plugin step names its op, domain and
plugin version, and the runner takes the kernel from the plugin catalog installed here, a built-in
entry or the catalog path the pipeline declares for that op (`Trusted`). A plan that is not what
`build` writes, or names anything to import, is refused (`plan_problem`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator import environment
from orchestrator import plugins as catalog
from orchestrator.backends.base import (
    Backend,
    BuildRequest,
    Built,
    DeclaredPlugin,
    PluginNodeRun,
    RunnerBase,
    TensorSpec,
    Trusted,
)
from orchestrator.errors import UserError
from orchestrator.onnx_graph import is_plugin_node, is_standard_domain, named_by, node_attributes, value_meta

PRECISIONS = ("fp32", "fp16")
SEGMENT_FILE = re.compile(r"segments/[A-Za-z0-9_-]+\.onnx")
CONSTANT_FILE = re.compile(r"constants/[0-9]+\.npy")
ARRAY_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                "float32", "float64"}


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


def constant_tensors(model: Any) -> dict[str, Any]:
    """Every tensor the graph fixes by itself, by name: its initializers and its Constant nodes' values
    (as TensorProtos). A cut can then hand them to any step: an ONNX Runtime segment gets them as its
    own initializers, a plugin kernel or NumPy step as arrays (dynamo folds a plugin's constant index
    inputs into initializers that feed it directly)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    found = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        if attribute.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attribute.t)
        elif attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
            kind = np.float32 if "float" in attribute.name else np.int64
            tensor = numpy_helper.from_array(np.array(onnx.helper.get_attribute_value(attribute), kind))
        else:
            continue  # strings and sparse values stay Constant nodes in their segment
        if tensor.data_type == onnx.TensorProto.STRING:
            continue
        tensor.name = node.output[0]
        found[tensor.name] = tensor
    return found


def _is_hoisted(node: Any, constants: dict[str, Any]) -> bool:
    return node.op_type == "Constant" and len(node.output) == 1 and node.output[0] in constants


def partition(model: Any, plugin_ops: set[str], constants: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Cut the (topologically sorted) graph into runs of standard nodes and single plugin nodes.

    Each step lists what it reads from outside (`inputs`: graph inputs and what earlier steps made;
    `constants`: initializers and Constant values, which belong to no step) and what it must hand on
    (`outputs`: what a later step or the graph's outputs use). Constant nodes whose values are in
    `constants` are left out of the steps.
    """
    constants = {i.name: i for i in model.graph.initializer} if constants is None else constants
    steps: list[dict[str, Any]] = []
    current: list[Any] = []
    for node in model.graph.node:
        if _is_hoisted(node, constants):
            continue
        if is_plugin_node(node, plugin_ops):
            if current:
                steps.append({"type": "onnx", "nodes": current})
                current = []
            steps.append({"type": "plugin", "nodes": [node]})
        else:
            current.append(node)
    if current:
        steps.append({"type": "onnx", "nodes": current})
    graph_outputs = {o.name for o in model.graph.output}
    later: set[str] = set(graph_outputs)
    for step in reversed(steps):  # what each step must hand on: what a later step or the graph uses
        produced = [o for n in step["nodes"] for o in n.output if o]
        consumed = list(dict.fromkeys(n for node in step["nodes"] for n in _used_names(node) if n not in produced))
        step["constants"] = [n for n in consumed if n in constants]
        step["inputs"] = [n for n in consumed if n not in constants]
        step["outputs"] = list(step["nodes"][0].output) if step["type"] == "plugin" else \
            [o for o in produced if o in later]
        later.update(consumed)
    return steps


def _value_infos(model: Any) -> dict[str, Any]:
    graph = model.graph
    return {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}


def _segment_model(model: Any, step: dict[str, Any], infos: dict[str, Any], constants: dict[str, Any]) -> Any:
    import onnx

    missing = [n for n in [*step["inputs"], *step["outputs"]] if n not in infos]
    if missing:
        raise UserError(f"ONNX shape inference left the type of {', '.join(missing[:3])} unknown; "
                        "cannot cut the graph there", field="build")
    graph = onnx.helper.make_graph(
        step["nodes"], f"{model.graph.name}_segment", [infos[n] for n in step["inputs"]],
        [infos[n] for n in step["outputs"]], [constants[n] for n in step["constants"]])
    opsets = [o for o in model.opset_import if is_standard_domain(o.domain)]
    segment = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="orchestrate")
    segment.ir_version = model.ir_version
    return segment


VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _array_ops(step: dict[str, Any], infos: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The segment as NumPy operations (reshape to a static shape, cast), or None if it is more than that.

    Only the first input of each node is data; shapes and axes come from shape inference, so any
    constant may feed them. The data may itself be a constant: the runner holds those as arrays.
    """
    import numpy as np
    import onnx

    ops: list[dict[str, Any]] = []
    for node in step["nodes"]:
        if node.op_type not in VIEW_OPS | {"Cast"} or len(node.output) != 1 or not node.input:
            return None
        info = infos.get(node.output[0])
        if info is None:
            return None
        meta = value_meta(info)
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
    return ops or None


def _plugin_step(node: Any) -> dict[str, Any]:
    """A plugin node as the runner needs it: which plugin it is (op, domain, version) and its attributes;
    the kernel is looked up in the catalog when the plan runs, never written down here."""
    attrs = node_attributes(node)
    return {"type": "plugin", "op": node.op_type, "domain": node.domain,
            "version": str(attrs.get("plugin_version", "1")), "name": node.name, "inputs": list(node.input),
            "outputs": list(node.output), "attributes": attrs}


def _plan_steps(model: Any, steps: list[dict[str, Any]], constants: dict[str, Any], folder: Path,
                progress: Any) -> list[dict[str, Any]]:
    """The run plan's steps: ONNX Runtime segments (written to `folder`), NumPy steps and kernels.

    Plugin and NumPy steps list the constants they read among their inputs: the runner holds those
    as arrays. A segment whose outputs nothing uses is dropped.
    """
    import onnx

    infos = _value_infos(model)
    plan_steps = []
    for index, step in enumerate(steps):
        if step["type"] == "plugin":
            plan_steps.append(_plugin_step(step["nodes"][0]))
        elif not step["outputs"]:
            continue
        elif (ops := _array_ops(step, infos)) is not None:
            data = [op["input"] for op in ops if op["input"] in step["constants"]]
            plan_steps.append({"type": "arrays", "ops": ops, "inputs": [*step["inputs"], *dict.fromkeys(data)],
                               "outputs": step["outputs"], "nodes": len(step["nodes"])})
        else:
            progress(f"segment {index}")
            file = folder / f"segment_{index:02d}.onnx"
            onnx.save(_segment_model(model, step, infos, constants), str(file))
            plan_steps.append({"type": "onnx", "file": f"segments/{file.name}", "inputs": step["inputs"],
                               "outputs": step["outputs"], "nodes": len(step["nodes"])})
    return plan_steps


def _write_constants(out: Path, names: list[str], constants: dict[str, Any]) -> list[dict[str, Any]]:
    """The constants the runner must hold, as constants/NNN.npy (names may hold any character)."""
    import numpy as np
    from onnx import numpy_helper

    written = []
    if names:
        (out / "constants").mkdir(exist_ok=True)
    for index, name in enumerate(names):
        array = np.asarray(numpy_helper.to_array(constants[name]))
        file = f"constants/{index:03d}.npy"
        np.save(out / file, array, allow_pickle=False)
        written.append({"name": name, "file": file, "dtype": array.dtype.name, "shape": list(array.shape)})
    return written


def _mark_frees(plan_steps: list[dict[str, Any]], keep: set[str]) -> None:
    """Each step's `free`: the tensors no later step reads, dropped once it ran (not those in `keep`)."""
    needed_until: dict[str, int] = {}
    for index, step in enumerate(plan_steps):
        for name in step["inputs"]:
            needed_until[name] = index
    for index, step in enumerate(plan_steps):
        step["free"] = sorted(n for n, last in needed_until.items() if last == index and n not in keep)


def build(model: Any, out: Path, precision: str, declared: list[dict[str, Any]], progress: Any,
          keep_fp32: Sequence[str] = ()) -> dict[str, Any]:
    """Write the segments and run plan for `model` (already shape-inferred and preflighted); at fp16, the plugin
    nodes `keep_fp32` names (by op, node name or glob over names, as on TensorRT) run their fp32 kernel."""
    entries = {p["op"]: catalog.lookup(p["op"], p.get("catalog")) for p in declared}
    constants = constant_tensors(model)
    steps = partition(model, set(entries), constants)
    folder = out / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    plan_steps = _plan_steps(model, steps, constants, folder, progress)
    graph_outputs = [o.name for o in model.graph.output]
    held = [n for s in plan_steps if s["type"] != "onnx" for n in s["inputs"] if n in constants]
    held = list(dict.fromkeys([*held, *(n for n in graph_outputs if n in constants)]))
    _mark_frees(plan_steps, set(graph_outputs))
    for step in plan_steps:
        if step["type"] == "plugin" and named_by(step["op"], step["name"], keep_fp32):
            step["fp32"] = True
    runplan = {
        "precision": precision,
        "inputs": [value_meta(i) for i in model.graph.input if i.name not in constants],
        "outputs": [value_meta(o) for o in model.graph.output],
        "constants": _write_constants(out, held, constants),
        "steps": plan_steps,
    }
    (out / "runplan.json").write_text(json.dumps(runplan, indent=1))
    runner = Runner(out, trusted=Trusted(tuple(declared)))  # load every segment once: a graph ONNX Runtime
    runner.close()                                          # cannot run fails the build
    kernels = {(entries.get(s["op"]) or catalog.lookup(s["op"])).kernel for s in plan_steps if s["type"] == "plugin"}
    return _summary(plan_steps, kernels)


def _summary(plan_steps: list[dict[str, Any]], kernel_paths: set[str]) -> dict[str, Any]:
    segments = sum(s["type"] == "onnx" for s in plan_steps)
    array_steps = sum(s["type"] == "arrays" for s in plan_steps)
    kernels = sorted({path.rsplit(":", 1)[-1] for path in kernel_paths})
    plugin_nodes = sum(s["type"] == "plugin" for s in plan_steps)
    arrays_text = f", {array_steps} reshape/cast step{'s' if array_steps != 1 else ''} in NumPy" if array_steps else ""
    return {"summary": f"{segments} ONNX Runtime segment{'s' if segments != 1 else ''}{arrays_text}, {plugin_nodes} "
                       f"plugin node{'s' if plugin_nodes != 1 else ''} -> reference kernel {', '.join(kernels)}",
            "segments": segments, "array_steps": array_steps, "plugin_nodes": plugin_nodes}


class Runner(RunnerBase):
    """Executes a run plan: ONNX Runtime sessions and reference kernels, in order.

    The kernels are the catalog's (built-in entries, and the catalog paths `trusted` holds for the
    pipeline's own plugins), looked up by the op each plugin step names.
    """

    def __init__(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None):
        import numpy as np
        import onnxruntime as ort

        self.plan = read_plan(artifact)
        trusted = trusted or Trusted()
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
                self.steps.append((step, kernel(step, trusted)))
        self.half = self.plan.get("precision") == "fp16"
        self.constants = {c["name"]: _read_only(np.load(artifact / c["file"], allow_pickle=False))
                          for c in self.plan.get("constants", [])}

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(**meta) for meta in self.plan["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(**meta) for meta in self.plan["outputs"]]

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        """The graph outputs, plus the intermediate tensors named in `keep` (e.g. plugin node outputs)."""
        import numpy as np

        env = {**feeds, **self.constants}
        kept: dict[str, Any] = {}
        for step, target in self.steps:
            if step["type"] == "onnx":
                values = target.run(step["outputs"], {n: env[n] for n in step["inputs"]})
            elif step["type"] == "arrays":
                values = target({n: env[n] for n in step["inputs"]})
            else:
                arguments = [env[n] for n in step["inputs"]]
                half = self.half and not step.get("fp32")
                if half:
                    arguments = [a.astype(np.float16) if a.dtype == np.float32 else a for a in arguments]
                values = target(arguments, step["attributes"])
                if half:
                    values = [v.astype(np.float32) if v.dtype == np.float16 else v for v in values]
            env.update(zip(step["outputs"], values, strict=True))
            kept.update({name: env[name] for name in keep if name in step["outputs"]})
            for name in step["free"]:
                env.pop(name, None)
        return {**kept, **{meta["name"]: env[meta["name"]] for meta in self.plan["outputs"]}}

    def plugin_nodes(self) -> list[PluginNodeRun]:
        """Every plugin node: the runner calls their kernels itself, so it can hand their outputs back."""
        return [PluginNodeRun(step["name"], step["op"], tuple(step["outputs"]))
                for step in self.plan["steps"] if step["type"] == "plugin"]

    def close(self) -> None:
        self.steps.clear()


_REGISTERED: set[str] = set()  # ops registered with onnxruntime-extensions in this process


def register_python_op(entry: catalog.PluginEntry) -> str:
    """Register the entry's kernel as an onnxruntime-extensions Python op named its op; return its ONNX domain.

    The op takes each input's first contract dtype (float32 for float inputs) and the attributes
    plugin_version, plugin_namespace and `attributes`. Registering twice is a no-op.
    """
    from onnxruntime_extensions import PyCustomOpDef, default_opset_domain, onnx_op

    domain: str = default_opset_domain()
    if entry.op in _REGISTERED:
        return domain
    types = {"float32": PyCustomOpDef.dt_float, "float16": PyCustomOpDef.dt_float16,
             "int32": PyCustomOpDef.dt_int32, "int64": PyCustomOpDef.dt_int64, "int8": PyCustomOpDef.dt_int8,
             "uint8": PyCustomOpDef.dt_uint8, "bool": PyCustomOpDef.dt_bool}
    attribute_types = {"int": PyCustomOpDef.dt_int64, "float": PyCustomOpDef.dt_float,
                       "string": PyCustomOpDef.dt_string}
    first = [contract.dtypes[0] for contract in entry.inputs]
    attrs = {"plugin_version": PyCustomOpDef.dt_string, "plugin_namespace": PyCustomOpDef.dt_string}
    attrs.update({name: attribute_types[kind] for name, kind in entry.attributes.items()})
    kernel = entry.load_kernel()

    def run(*arrays: Any, **attributes: Any) -> Any:
        return kernel(list(arrays), attributes)[0]

    onnx_op(op_type=entry.op, inputs=[types[d] for d in first], outputs=[types[entry.output_dtype(first)]],
            attrs=attrs)(run)
    _REGISTERED.add(entry.op)
    return domain


def single_session(model: Any, entries: dict[str, catalog.PluginEntry], threads: int = 0) -> Any:
    """One ONNX Runtime session for the whole plugin graph, the plugins as onnxruntime-extensions ops.

    The alternative to the partitioned `Runner` for code that wants a single session: each plugin
    node is moved into the domain `register_python_op` registers for its entry.
    onnxruntime-extensions returns a Python op's outputs through Python lists, so this is slower.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    domains = set()
    for node in rewritten.graph.node:
        if is_plugin_node(node, set(entries)):
            entry = entries.get(node.op_type) or catalog.lookup(node.op_type)
            node.domain = register_python_op(entry)
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


def _read_only(array: Any) -> Any:
    """A constant is shared by every run: no kernel may change it in place."""
    array.flags.writeable = False
    return array


def kernel(step: dict[str, Any], trusted: Trusted) -> Callable[[list[Any], dict[str, Any]], list[Any]]:
    """The catalog's kernel for a plugin step: the built-in entry for its op, or the user's entry at the
    catalog path the pipeline declares for it, checked to run the step's plugin version."""
    declared = trusted.plugin(step["op"]) or {}
    entry = catalog.lookup(step["op"], declared.get("catalog"))
    if step["version"] not in entry.versions:
        raise UserError(f"plugin node '{step['name']}' ({step['op']}) has plugin_version {step['version']}; its "
                        f"catalog entry runs {', '.join(entry.versions)}", field="export.plugins")
    return entry.load_kernel()


def read_plan(artifact: Path) -> dict[str, Any]:
    """The artifact's runplan.json, refused (a UserError) unless it is a plan `build` writes."""
    try:
        plan = json.loads((artifact / "runplan.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {artifact / 'runplan.json'}: {exc}", field="build") from None
    problem = plan_problem(plan)
    if problem:
        raise UserError(f"{artifact / 'runplan.json'} is not a run plan the build writes ({problem}); it is not run",
                        field="build", hint="build it again: --force build")
    return plan  # type: ignore[no-any-return]


def plan_problem(plan: Any) -> str:
    """What makes `plan` other than a run plan `build` writes, or ''.

    The runner acts on nothing else: each file it names is a segment or constant of the artifact,
    each step has a known type, and a plugin step is an op, its version and plain attributes. A plan
    that names a kernel to import is refused outright: kernels come from the catalog installed here.
    """
    if not isinstance(plan, dict):
        return "not a mapping"
    if plan.get("precision") not in PRECISIONS:
        return f"precision {plan.get('precision')!r} is not one of {', '.join(PRECISIONS)}"
    for part in ("inputs", "outputs"):
        if not isinstance(plan.get(part), list) or not all(_tensor_meta_ok(m) for m in plan[part]):
            return f"its {part} are not tensor descriptions"
    constants = plan.get("constants", [])
    if not isinstance(constants, list) or not all(_tensor_meta_ok(c, frozenset({"file"})) and isinstance(
            c["file"], str) and CONSTANT_FILE.fullmatch(c["file"]) for c in constants):
        return "its constants are not files constants/NNN.npy"
    if not isinstance(plan.get("steps"), list):
        return "it has no steps"
    for index, step in enumerate(plan["steps"]):
        problem = _step_problem(step)
        if problem:
            return f"step {index}: {problem}"
    return ""


def _tensor_meta_ok(meta: Any, extra: frozenset[str] = frozenset()) -> bool:
    return isinstance(meta, dict) and set(meta) == {"name", "dtype", "shape", *extra} \
        and isinstance(meta["name"], str) and isinstance(meta["dtype"], str) and isinstance(meta["shape"], list) \
        and all(d is None or isinstance(d, int | str) for d in meta["shape"])


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _step_problem(step: Any) -> str:
    """What is wrong with one step of a run plan, or ''."""
    if not isinstance(step, dict) or not all(_names(step.get(k)) for k in ("inputs", "outputs", "free")):
        return "not a step with lists of input, output and freed tensor names"
    kind = step.get("type")
    if kind == "onnx":
        file = step.get("file")
        return "" if isinstance(file, str) and SEGMENT_FILE.fullmatch(file) else "its file is not segments/NAME.onnx"
    if kind == "arrays":
        ops = step.get("ops")
        return "" if isinstance(ops, list) and ops and all(_array_op_ok(op) for op in ops) else \
            "its operations are not reshapes and casts"
    if kind != "plugin":
        return f"unknown step type {kind!r}"
    if "kernel" in step:
        return (f"it names a kernel to import ({str(step['kernel'])[:80]!r}); kernels come from the plugin "
                "catalog installed here")
    if not all(isinstance(step.get(k), str) for k in ("op", "domain", "version", "name")):
        return "a plugin step names its op, domain, version and node name"
    if not isinstance(step.get("fp32", False), bool):
        return "a plugin step's fp32 is true or false"
    attributes = step.get("attributes")
    if not isinstance(attributes, dict) or not all(_plain(v) for v in attributes.values()):
        return "a plugin step's attributes are numbers, strings or lists of them"
    return ""


def _array_op_ok(op: Any) -> bool:
    if not isinstance(op, dict) or not isinstance(op.get("input"), str) or not isinstance(op.get("output"), str):
        return False
    if op.get("op") == "cast":
        return op.get("dtype") in ARRAY_DTYPES
    shape = op.get("shape")
    return op.get("op") == "reshape" and isinstance(shape, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _plain(value: Any) -> bool:
    """An attribute value as build writes one: a number or a string, or a list of those."""
    if isinstance(value, list):
        return all(isinstance(v, int | float | str) for v in value)
    return isinstance(value, int | float | str)


class OnnxRuntimeBackend(Backend):
    """The unchanged plugin graph on the CPU: ONNX Runtime segments and the catalog's reference kernels."""

    name = "onnxruntime"
    title = "ONNX Runtime"
    precisions = PRECISIONS

    def unavailable(self) -> str | None:
        return None if environment.importable("onnxruntime") else "missing: pip install onnxruntime"

    def key_tools(self, gpu_type: str | None) -> dict[str, str]:
        return environment.tools("onnxruntime", "onnx", "numpy", "numba")

    def key_modules(self, plugins: Sequence[DeclaredPlugin]) -> list[str]:
        """The module of each plugin's reference kernel: the kernel computes the artifact's results."""
        return [catalog.lookup(p.op, p.catalog).kernel_module for p in plugins]

    def check_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision}: the onnxruntime backend runs {', '.join(PRECISIONS)} "
                            "(TensorRT is needed for others)", field="build.precision")

    def build(self, request: BuildRequest) -> Built:
        record = build(request.model, request.out, request.precision, [p.as_config() for p in request.plugins],
                       request.progress, request.keep_fp32)
        reason = request.chosen_because
        return Built(f"onnxruntime{f' ({reason})' if reason else ''}, {record['summary']}", record)

    def open(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None) -> Runner:
        return Runner(artifact, threads, trusted)

    def artifact_problem(self, folder: Path) -> str:
        """A run plan from elsewhere is checked before it is published, so a malformed one never reaches a stage."""
        plan = folder / "runplan.json"
        if not plan.is_file():
            return ""
        try:
            problem = plan_problem(json.loads(plan.read_text()))
        except ValueError:
            problem = "not valid JSON"
        return f"runplan.json: {problem}" if problem else ""


BACKEND = OnnxRuntimeBackend()

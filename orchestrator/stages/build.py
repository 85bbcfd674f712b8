"""build: preflight the plugin graph against the catalog, then build it with the chosen backend.

The preflight checks every plugin node (op, plugin_version, plugin_namespace, input count, ranks
and dtypes from ONNX shape inference) against its catalog entry and the pipeline's declaration,
and refuses a precision the backend or the plugin cannot run, before any backend work starts. A
hand-made ONNX that feeds int64 index tensors to the plugin is caught here.

Only what is known is compared: whole-model exports leave dims (even ranks) unknown, and such a
graph may run fine. Where the graph fixes an input's values (a constant index tensor), the
entry's value rules see them, so a layout the plugin would read out of bounds is refused too.

Every build also writes the equivalent command line of TensorRT's own builder program
(`backends.COMMAND_FILE`), to reproduce it by hand. The backend is seen only through its `Backend`
(backends/base.py): which precisions it refuses, what its key names, and the build itself, from a
typed `BuildRequest`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node

from typing import Any

from orchestrator import backends
from orchestrator import plugins as catalog
from orchestrator.backends.base import Backend, BuildRequest, CheckedNode, DeclaredPlugin
from orchestrator.errors import UserError
from orchestrator.onnx_graph import dtype_name, named_by, node_attributes, plugin_nodes, value_dims
from orchestrator.plugins import Dims
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant


@dataclass(frozen=True)
class BuildSettings:
    """The build section as keyed, with the backend `auto` resolved to (plugin libraries are keyed by
    content and threads by nothing, so neither is here), and the declared plugins the graph's nodes name."""

    backend: str
    precision: str
    workspace: int | str  # bytes, or a size such as '4GiB'
    timing_cache: bool
    profiles: tuple[Mapping[str, Mapping[str, Sequence[int]]], ...]  # {input: {min, opt, max}} each
    plugins: tuple[DeclaredPlugin, ...]
    gpu_type: str | None = None
    keep_fp32: tuple[str, ...] | None = None  # None: not given (keyed only when given, as written)

    @classmethod
    def from_keyed(cls, config: Mapping[str, Any]) -> BuildSettings:
        """From the keyed JSON, as a build's manifest holds it."""
        section = config["build"]
        return cls(section["backend"], section["precision"], section["workspace"], section["timing_cache"],
                   tuple(copy.deepcopy(list(section["profiles"]))),
                   tuple(DeclaredPlugin.from_config(p) for p in config["plugins"]), section.get("gpu_type"),
                   tuple(section["keep_fp32"]) if "keep_fp32" in section else None)

    def keyed(self) -> dict[str, Any]:
        section = {"precision": self.precision, "workspace": self.workspace, "timing_cache": self.timing_cache,
                   "profiles": copy.deepcopy(list(self.profiles)),
                   **({"gpu_type": self.gpu_type} if self.gpu_type is not None else {}), "backend": self.backend,
                   **({"keep_fp32": list(self.keep_fp32)} if self.keep_fp32 is not None else {})}
        return {"build": section, "plugins": [p.as_config() for p in self.plugins]}


def tensor_types(model: Any) -> dict[str, tuple[str, Dims | None]]:
    """Every typed tensor's dtype and shape as shape inference left it.

    A dim shape inference could not fix is None and a symbolic one keeps its name, and a shape of
    unknown rank is None, so that the contract check compares only what is known (whole-model
    exports leave many dims unknown, and such a graph may run fine).
    """
    types: dict[str, tuple[str, Dims | None]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.type.tensor_type.elem_type:
            types[value.name] = (dtype_name(value.type.tensor_type.elem_type), value_dims(value))
    for init in model.graph.initializer:
        types[init.name] = (dtype_name(init.data_type), tuple(init.dims))
    return types


STATIC_ELEMENTS = 1 << 16  # larger tensors (weights) are never evaluated: index tensors are tiny
STATIC_NODES = 32
NONDETERMINISTIC = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                    "Multinomial")


def _constant_cone(name: str, producers: dict[str, Any], initializers: dict[str, Any]) -> list[Any] | None:
    """The nodes computing `name` from initializers alone, or None where a graph input, a non-standard
    or random op, a subgraph, a large initializer or more than STATIC_NODES nodes are involved."""
    import onnx

    seen: dict[int, Any] = {}
    stack = [name]
    while stack:
        current = stack.pop()
        if current in initializers:
            if onnx.helper.tensor_dtype_to_np_dtype(initializers[current].data_type).kind not in "biuf" or \
                    _elements(initializers[current].dims) > STATIC_ELEMENTS:
                return None
            continue
        node = producers.get(current)
        if node is None:
            return None  # a graph input: not fixed by the graph
        if id(node) in seen:
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None
        seen[id(node)] = node
        if len(seen) > STATIC_NODES:
            return None
        stack.extend(i for i in node.input if i)
    return list(seen.values())


def _elements(dims: Any) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


def static_values(model: Any, names: list[str]) -> dict[str, Any]:
    """The values of those of `names` the graph fixes without any input: initializers, Constant outputs
    and short chains of standard ops over them (e.g. the export's Cast of a constant index tensor to
    int32), evaluated with ONNX's reference evaluator. Tensors that are not fixed are left out."""
    from onnx import numpy_helper

    graph = model.graph
    fed = {i.name for i in graph.input}  # an initializer that is also an input is only a default
    initializers = {i.name: i for i in graph.initializer if i.name not in fed}
    producers = {o: n for n in graph.node for o in n.output if o}
    order = {id(n): index for index, n in enumerate(graph.node)}
    found: dict[str, Any] = {}
    for name in dict.fromkeys(n for n in names if n):
        cone = _constant_cone(name, producers, initializers)
        if cone is None:
            continue
        if not cone:
            found[name] = numpy_helper.to_array(initializers[name])
            continue
        cone.sort(key=lambda n: order[id(n)])
        value = _evaluate(model, cone, initializers, name)
        if value is not None:
            found[name] = value
    return found


def _evaluate(model: Any, cone: list[Any], initializers: dict[str, Any], name: str) -> Any:
    """`name` computed by the nodes of `cone` (in graph order), or None where the evaluator cannot."""
    import onnx

    leaves = {i for n in cone for i in n.input if i in initializers}
    piece = onnx.helper.make_model(
        onnx.helper.make_graph(cone, "static", [], [onnx.ValueInfoProto(name=name)],
                               [initializers[i] for i in sorted(leaves)]),
        opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
    piece.ir_version = model.ir_version
    try:
        from onnx.reference import ReferenceEvaluator

        results = ReferenceEvaluator(piece).run([name], {})
    except Exception:  # noqa: BLE001 - an op the evaluator cannot run only leaves the value unknown
        return None
    value = results[0] if isinstance(results, list) else results.get(name)
    return value if getattr(value, "size", STATIC_ELEMENTS + 1) <= STATIC_ELEMENTS else None


def _cast_hint(entry: catalog.PluginEntry, dtypes: list[str], names: list[str]) -> str | None:
    """What to do about inputs of the wrong dtype: integers and floats are cast in the graph (by the
    export, or a surgery step); float64 comes e.g. from TorchScript exporting torch.linspace as double."""
    by_name = dict(zip(entry.input_names(), dtypes, strict=True))
    hints = []
    if any(c.is_integer and d not in c.dtypes for c, d in zip(entry.inputs, dtypes, strict=True)):
        hints.append("cast integer inputs to int32 in the graph (the export does this), or add a surgery step: "
                     "insert_cast: {contract: true}")
    floats: dict[str, tuple[str, str]] = {}  # graph tensor -> (contract input, dtype to cast to)
    for contract, dtype, name in zip(entry.inputs, dtypes, names, strict=True):
        if not contract.is_integer and dtype not in contract.dtypes and dtype.startswith(("float", "bfloat")):
            same = by_name.get(contract.same_dtype_as or "")
            floats[name] = (contract.name, same if same in contract.dtypes else contract.dtypes[0])
    if floats:
        wanted = ", ".join(f"{contract}: {dtype}" for contract, dtype in floats.values())
        hints.append(f"cast {', '.join(floats)} to the contract dtype before the plugin: declare "
                     f"export.plugins[].dtypes: {{{wanted}}} (the export casts float plugin inputs to it), "
                     "or add a surgery step: insert_cast: {contract: true}")
    return "; ".join(hints) or None


def _plugin_attributes(node: Any) -> tuple[str, str]:
    attrs = node_attributes(node)
    return str(attrs.get("plugin_version", "1")), str(attrs.get("plugin_namespace", ""))


def _check_node(model: Any, node: Any, plugin: DeclaredPlugin, types: dict[str, tuple[str, Dims | None]],
                precision: str, backend: Backend, keep_fp32: Sequence[str] = ()) -> dict[str, Any]:
    """One plugin node against its catalog entry and declaration: what was checked, or a UserError."""
    label = f"plugin node '{node.name or node.output[0]}' ({node.op_type})"
    entry = catalog.lookup(node.op_type, plugin.catalog)
    version, namespace = _plugin_attributes(node)
    if version not in entry.versions:
        raise UserError(f"{label}: plugin_version '{version}' is not one of {', '.join(entry.versions)}",
                        field="export.plugins")
    if version != plugin.version or namespace != plugin.namespace:
        raise UserError(f"{label}: has plugin_version '{version}', namespace '{namespace}'; the pipeline "
                        f"declares version '{plugin.version}', namespace '{plugin.namespace}'",
                        field="export.plugins")
    unknown = [name for name in node.input if name not in types]
    if unknown:
        raise UserError(f"{label}: the type of input '{unknown[0]}' is unknown after shape inference",
                        field="export.plugins")
    names = list(node.input)
    dtypes = [types[name][0] for name in names]
    fixed = static_values(model, names)
    problems = entry.contract_problems([types[name][1] for name in names], dtypes, names,
                                       values=[fixed.get(name) for name in names])
    if problems:
        hint = _cast_hint(entry, dtypes, names) if len(names) == len(entry.inputs) else None
        raise UserError(f"{label}: " + "; ".join(problems), field="export.plugins", hint=hint)
    if not named_by(node.op_type, node.name, keep_fp32):  # a plugin kept in float32 runs fp32 at any precision
        backend.check_plugin_precision(precision, entry.op, entry.precisions)
    return {"node": node.name, "op": node.op_type, "version": version, "namespace": namespace, "dtypes": dtypes}


def preflight(model: Any, declared: Sequence[DeclaredPlugin | Mapping[str, Any]], precision: str, backend: str,
              libraries: Sequence[str] = (), keep_fp32: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Check each plugin node; return what was checked. Raise UserError naming the node and the mismatch.

    `declared`: the build's plugins, or their declarations as JSON (op, version, namespace, catalog)."""
    chosen = backends.get(backend)
    plugins = [p if isinstance(p, DeclaredPlugin) else DeclaredPlugin.from_config(p) for p in declared]
    by_op = {p.op: p for p in plugins}
    types = tensor_types(model)
    nodes = plugin_nodes(model, set(by_op))
    if not nodes:
        raise UserError("the graph has no plugin node; expected " + ", ".join(sorted(by_op)), field="export.plugins")
    checked = []
    for node in nodes:
        plugin = by_op.get(node.op_type)
        if plugin is None:
            raise UserError(f"plugin node '{node.name or node.output[0]}' ({node.op_type}): op is not declared in "
                            f"export.plugins (declared: {', '.join(by_op)})", field="export.plugins")
        checked.append(_check_node(model, node, plugin, types, precision, chosen, keep_fp32))
    for plugin in plugins:
        chosen.check_plugin(plugin, libraries)
    chosen.check_graph(model)
    chosen.check_precision(precision)
    return checked


def run(call: StageCall) -> StageResult:
    import onnx

    settings: BuildSettings = call.settings
    graph_path = call.inputs["graph"].path / "model.onnx"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph_path)))
    checked = preflight(model, settings.plugins, settings.precision, settings.backend,
                        [str(p) for p in call.unkeyed.get("plugin_libraries", [])], settings.keep_fp32 or ())
    request = build_request(call, graph_path, model, checked)
    command = backends.write_equivalent_command(request)
    built = backends.get(request.backend).build(request)
    return StageResult(built.summary, {"backend": request.backend, "preflight": checked, **built.record, **command})


def build_request(call: StageCall, graph_path: Path, model: Any, checked: list[dict[str, Any]]) -> BuildRequest:
    """What the backend builds from: the build's typed settings, the checked plugin nodes,
    and where things are."""
    settings: BuildSettings = call.settings
    return BuildRequest(
        graph=graph_path, model=model, out=call.out, backend=settings.backend, precision=settings.precision,
        workspace=settings.workspace, timing_cache=settings.timing_cache, profiles=settings.profiles,
        gpu_type=settings.gpu_type, plugins=settings.plugins, keep_fp32=settings.keep_fp32 or (),
        plugin_nodes=tuple(CheckedNode(n["node"], n["op"], n["version"], n["namespace"]) for n in checked),
        plugin_libraries=tuple(str(p) for p in call.unkeyed.get("plugin_libraries", [])),
        threads=call.unkeyed.get("threads", 0), shared_dir=call.shared_dir, progress=call.progress,
        chosen_because=call.unkeyed.get("backend_reason"))


def plan(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned:
    """The build's key: the build section, the resolved backend's tools, the plugins and their libraries."""
    data, plugins = variant.data, [dict(p) for p in variant.plugins]
    graph = planned.get("surgery") or planned["export"]
    build = data["build"]
    backend, reason = backends.resolve(build["backend"])
    chosen = backends.get(backend)
    problem = chosen.planning_problem()
    if problem is not None:
        raise ctx.error(problem[0], "build.backend", hint=problem[1])
    declared = tuple(DeclaredPlugin.from_config(p) for p in plugins)
    settings = BuildSettings(backend, build["precision"], build["workspace"], build["timing_cache"],
                             tuple(copy.deepcopy(build["profiles"])), declared, build.get("gpu_type"),
                             tuple(build["keep_fp32"]) if "keep_fp32" in build else None)
    files: dict[str, str] = {}
    libraries = []
    for index, library in enumerate(build["plugin_libraries"]):
        path = ctx.spec.resolve_path(library)
        files[f"library:{Path(library).name}#{index}"] = ctx.file_digest(path, f"build.plugin_libraries[{index}]")
        ctx.origins[f"library:{Path(library).name}#{index}"] = str(path)
        libraries.append(str(path))
    for module in chosen.key_modules(declared):
        label, digest = ctx.module_digest(module, "build.backend")
        files[f"kernel:{label}"] = digest
    tools = chosen.key_tools(build.get("gpu_type"))
    paths = {"plugin_libraries": libraries, "threads": build["threads"],
             "backend_reason": reason if build["backend"] == "auto" else None}
    return Planned(settings, {"graph": graph}, files, tools, paths)


STAGE = Stage(
    "build", version=4, plan=plan, run=run,
    outputs=backends.outputs(),
)

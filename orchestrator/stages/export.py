"""export: the plugin graph as ONNX, the declared callable replaced by a plugin node.

scope 'call' builds the seed's one-call test model around the captured call; scope 'model'
exports the whole model, every call of each plugin's `replace` callable becoming one plugin node.
The callable is swapped (for the duration of the export only, also inside a library the user cannot
edit) for a function that computes inputs the call does not take (`derive`), casts integer inputs
to the plugin's contract dtypes (so the plugin never reads int64 as int32, the cause of all-zero
outputs), emits the plugin node (op, domain, plugin_version, plugin_namespace, with its output type
and shape set), and reshapes the plugin's own output back to what the model used (the catalog
entry's result_shape). Arguments the plugin does not take are dropped.

Two exporters:
  * torchscript (default): an autograd.Function whose `symbolic` is the plugin node. While tracing,
    the stand-in still computes the real result (untraced), so traced shapes and values are true.
  * dynamo: the plugin is a `torch.library.custom_op` while exporting, translated to the plugin node
    by an onnxscript Op with an explicit OpSchema in `custom_translation_table`. A model that
    branches on tensor values (Python loops over a tensor's values) cannot be traced symbolically;
    it is then exported with `torch.export.draft_export`, which fixes those values to the captured
    ones, as the TorchScript tracer does.

With `plugin_nodes: surgery` nothing is swapped: the model is exported as written and the surgery
stage makes the plugin nodes.

Writes model.onnx and export.json (graph inputs/outputs, plugin nodes, casts, how it was exported).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import arguments, environment, imports
from orchestrator import plugins as catalog
from orchestrator.errors import UserError
from orchestrator.onnx_graph import describe_graph
from orchestrator.planning import contracts, sources
from orchestrator.plugins.derive import Inexpressible, TorchOps
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant
from orchestrator.tensors import torch_dtype_name
from orchestrator.torch_model import (
    ModelSettings,
    ModuleStack,
    build_model,
    flatten_outputs,
    name_inputs,
    resolve_module,
)

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node

ONNX_ATTR_SUFFIX = {bool: "i", int: "i", float: "f", str: "s"}


@dataclass(frozen=True)
class Derivation:
    """How a plugin input the call does not pass is computed: a rule of the plugin's catalog entry, from
    the call's arguments or other derived inputs (`given`: one name, or a list, as written)."""

    rule: str
    given: str | tuple[str, ...]

    @property
    def sources(self) -> list[str]:
        return list(self.given) if isinstance(self.given, tuple) else [self.given]

    def keyed(self) -> dict[str, Any]:
        return {"rule": self.rule, "from": list(self.given) if isinstance(self.given, tuple) else self.given}


@dataclass(frozen=True)
class InputContract:
    """One plugin input as its catalog entry takes it: rank and dtypes."""

    name: str
    rank: int
    dtypes: tuple[str, ...]

    def keyed(self) -> dict[str, Any]:
        return {"name": self.name, "rank": self.rank, "dtypes": list(self.dtypes)}


@dataclass(frozen=True)
class Plugin:
    """One declared plugin with its catalog contract resolved (planning/contracts.py): the node it
    becomes, which arguments feed it and how, and the callable it stands for."""

    op: str
    domain: str
    version: str
    namespace: str
    inputs: tuple[str, ...]  # the call's arguments (or derived inputs) feeding it, in the plugin's order
    dtypes: Mapping[str, str]  # plugin input -> the dtype it is cast to
    contract: tuple[InputContract, ...]
    replace: str | None = None
    catalog: str | None = None  # the user's PluginEntry; None: the built-in one
    attributes: Mapping[str, object] = field(default_factory=dict)  # the plugin's own fields (schema: any object)
    require: Mapping[str, object] = field(default_factory=dict)  # argument -> the value the plugin assumes
    derive: Mapping[str, Derivation] = field(default_factory=dict)
    subgraph: Mapping[str, object] | None = None  # where the surgery stage finds the plugin's code (keyed here)

    @classmethod
    def from_keyed(cls, given: Mapping[str, Any]) -> Plugin:
        derive = {name: Derivation(rule["rule"], rule["from"] if isinstance(rule["from"], str) else
                                   tuple(rule["from"])) for name, rule in given["derive"].items()}
        return cls(given["op"], given["domain"], given["version"], given["namespace"], tuple(given["inputs"]),
                   dict(given["dtypes"]), tuple(InputContract(c["name"], c["rank"], tuple(c["dtypes"]))
                                                for c in given["contract"]),
                   given.get("replace"), given.get("catalog"), copy.deepcopy(dict(given["attributes"])),
                   copy.deepcopy(dict(given["require"])), derive,
                   copy.deepcopy(dict(given["subgraph"])) if "subgraph" in given else None)

    def keyed(self) -> dict[str, Any]:
        optional = {"replace": self.replace, "catalog": self.catalog, "subgraph": copy.deepcopy(self.subgraph)}
        return {"op": self.op, "domain": self.domain, "version": self.version, "namespace": self.namespace,
                "inputs": list(self.inputs), "dtypes": dict(self.dtypes),
                "contract": [c.keyed() for c in self.contract], "attributes": copy.deepcopy(dict(self.attributes)),
                "require": copy.deepcopy(dict(self.require)),
                "derive": {name: rule.keyed() for name, rule in self.derive.items()},
                **{name: value for name, value in optional.items() if value is not None}}


@dataclass(frozen=True)
class ExportSettings:
    """The export section (its plugins typed, a given graph's file keyed by content instead), and for a
    model built again (a whole model, or a method's `self`) the model section and python_path as written."""

    exporter: str
    opset: int
    scope: str  # "call" or "model"
    plugin_nodes: str  # "call", or "surgery": exported as written, the surgery stage makes the nodes
    plugins: tuple[Plugin, ...]
    dynamic_axes: Mapping[str, Mapping[str, str]]  # tensor -> axis (as text) -> its name
    constants: tuple[str, ...]
    model: ModelSettings | None = None
    python_path: tuple[str, ...] = ()

    @classmethod
    def from_keyed(cls, config: Mapping[str, Any]) -> ExportSettings:
        section = config["export"]
        return cls(section["exporter"], section["opset"], section["scope"], section["plugin_nodes"],
                   tuple(Plugin.from_keyed(p) for p in section["plugins"]),
                   {name: dict(axes) for name, axes in section["dynamic_axes"].items()}, tuple(section["constants"]),
                   ModelSettings.from_keyed(config["model"]) if "model" in config else None,
                   tuple(config.get("python_path", ())))

    def keyed(self) -> dict[str, Any]:
        keyed: dict[str, Any] = {"export": {
            "exporter": self.exporter, "opset": self.opset, "scope": self.scope, "plugin_nodes": self.plugin_nodes,
            "dynamic_axes": {name: dict(axes) for name, axes in self.dynamic_axes.items()},
            "constants": list(self.constants), "plugins": [p.keyed() for p in self.plugins]}}
        if self.model is not None:
            keyed["model"] = self.model.keyed()
        if self.python_path:
            keyed["python_path"] = list(self.python_path)
        return keyed

    @property
    def swaps(self) -> bool:
        """Whether the export makes the plugin nodes (else the surgery stage does)."""
        return self.plugin_nodes != "surgery"


def _attributes(plugin: Plugin) -> dict[str, Any]:
    """The plugin node's attributes: plugin_version, plugin_namespace and the plugin's own fields."""
    attrs: dict[str, Any] = {"plugin_version": plugin.version, "plugin_namespace": plugin.namespace}
    for name, value in plugin.attributes.items():
        sample = value[0] if isinstance(value, list) and value else value
        if type(sample) not in ONNX_ATTR_SUFFIX:
            raise UserError(f"attribute '{name}' has a {type(value).__name__} value; use numbers or strings",
                            field="export.plugins.attributes")
        attrs[name] = value
    return attrs


def _attr_kwargs(plugin: Plugin) -> dict[str, Any]:
    attrs = _attributes(plugin)
    return {f"{name}_{ONNX_ATTR_SUFFIX[type(v[0] if isinstance(v, list) and v else v)]}": v
            for name, v in attrs.items()}


def derive_inputs(plugin: Plugin, entry: catalog.PluginEntry, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the call's arguments by name) with the plugin's derived inputs added, by the catalog's rules.

    A source names the call's argument when the call has one of that name, else another derived input,
    so rules chain (one derived input computed from another that was derived from a Python list).
    """
    derived: dict[str, Any] = {}
    pending = dict(plugin.derive)
    while pending:
        ready = {name: rule for name, rule in pending.items()
                 if all(src in values or src in derived for src in rule.sources)}
        if not ready:
            missing = sorted({src for rule in pending.values() for src in rule.sources
                              if src not in values and src not in derived and src not in pending})
            raise UserError(f"derive reads {', '.join(missing) or 'a cycle of derived inputs'}, which the call "
                            f"does not pass (it passes {', '.join(values)})", field="export.plugins.derive")
        for name, rule in ready.items():
            sources = [values[src] if src in values else derived[src] for src in rule.sources]
            try:
                derived[name] = entry.derivation(rule.rule).run(TorchOps(), sources)
            except Inexpressible as exc:
                raise UserError(f"{entry.op} cannot express this call: {exc}", field=f"export.plugins.derive.{name}",
                                hint="the call is computed by the model as written where the plugin cannot "
                                     "stand for it; leave this callable out of export.plugins") from None
            del pending[name]
    return {**values, **derived}


def _check_required(plugin: Plugin, entry: catalog.PluginEntry, values: dict[str, Any]) -> None:
    """Arguments whose value the plugin's computation assumes (export.plugins[].require), e.g. method: default."""
    for name, wanted in plugin.require.items():
        if name in values and values[name] != wanted:
            raise UserError(f"the call passes {name}={values[name]!r}; {entry.op} computes only {name}={wanted!r}",
                            field=f"export.plugins.require.{name}",
                            hint="the plugin cannot stand for this call; leave this callable out of export.plugins")


class _Binder:
    """Maps a call of the replaced callable to the plugin's inputs (by name, derived, cast to the contract)."""

    def __init__(self, plugin: Plugin, entry: catalog.PluginEntry, original: Callable[..., Any]):
        try:
            self.signature: inspect.Signature | None = inspect.signature(original)
        except (TypeError, ValueError):
            self.signature = None
        self.plugin = plugin
        self.entry = entry
        self.names = list(plugin.inputs)
        self.derive = plugin.derive
        self.passed = [n for n in self.names if n not in self.derive]

    def _values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[inspect.BoundArguments | None,
                                                                              dict[str, Any]]:
        if self.signature is None:
            return None, dict(zip(self.passed, args, strict=False)) | kwargs
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UserError(f"the model calls the replaced callable in a way its signature does not accept: "
                            f"{exc}", field="export.plugins.replace",
                            hint="replace the function the model actually calls") from None
        bound.apply_defaults()
        return bound, dict(bound.arguments)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Any]]:
        """(the call's arguments with plugin inputs cast, the plugin's input tensors in order)."""
        bound, values = self._values(args, kwargs)
        missing = [n for n in self.passed if n not in values]
        if missing:
            raise UserError(f"the replaced call has no argument(s) {', '.join(missing)}; plugin inputs are mapped "
                            f"by name ({', '.join(self.names)}); name others in export.plugins[].derive",
                            field="export.plugins.inputs")
        _check_required(self.plugin, self.entry, values)
        tensors = derive_inputs(self.plugin, self.entry, values)
        inputs = contract_inputs(self.plugin, self.entry, [tensors[name] for name in self.names])
        for name, tensor in zip(self.names, inputs, strict=True):
            if bound is not None and name in self.passed and name in bound.arguments:
                bound.arguments[name] = tensor
        if bound is None:  # no signature: the call gets the inputs it passed, by name
            return {n: t for n, t in zip(self.names, inputs, strict=True) if n in self.passed}, inputs
        return bound, inputs

    @staticmethod
    def call(original: Callable[..., Any], bound: Any) -> Any:
        if isinstance(bound, inspect.BoundArguments):
            return original(*bound.args, **bound.kwargs)
        return original(**bound)


def contract_inputs(plugin: Plugin, entry: catalog.PluginEntry, tensors: list[Any]) -> list[Any]:
    """The plugin's inputs cast to its dtype contract: declared dtypes (export.plugins[].dtypes), and float
    inputs of a dtype the plugin does not take (float64 from torch.linspace) to the dtype of the input they
    must match, else the contract's first."""
    import torch

    declared = plugin.dtypes
    result: list[Any] = []
    for contract, name, tensor in zip(entry.inputs, plugin.inputs, tensors, strict=True):
        wanted = declared.get(name) if contract.is_integer else None
        current = torch_dtype_name(tensor.dtype)
        if wanted is None and tensor.is_floating_point() and current not in contract.dtypes:
            twin = entry.input_names().index(contract.same_dtype_as) if contract.same_dtype_as else None
            twin_dtype = torch_dtype_name(result[twin].dtype) if twin is not None else None
            wanted = twin_dtype if twin_dtype in contract.dtypes else contract.dtypes[0]
        if wanted is not None and current != wanted:
            tensor = tensor.to(getattr(torch, wanted))
        result.append(tensor)
    return result


# ---------------------------------------------------------------------- TorchScript: autograd.Function symbolic

def plugin_function(plugin: Plugin, entry: catalog.PluginEntry,
                    shapes: list[list[list[int | None] | None]] | None = None) -> Any:
    """An autograd.Function whose forward computes the real output and whose symbolic is the plugin node.

    The symbolic appends each node's input shapes (None where an axis is dynamic) to `shapes`: the
    exporter writes no types for them, and with dynamic axes ONNX shape inference cannot always
    recover them.
    """
    import torch

    op_name = f"{plugin.domain}::{plugin.op}"
    attrs = _attr_kwargs(plugin)

    class PluginNode(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, compute: Callable[..., Any], *inputs: Any) -> Any:
            with _untraced():  # the node's output is recorded; how it was computed is not
                return compute(*inputs)

        @staticmethod
        def symbolic(g: Any, compute: Any, *inputs: Any) -> Any:
            node = g.op(op_name, *inputs, **attrs)
            sizes = [i.type().varyingSizes() if i.type().dim() is not None else None for i in inputs]
            if shapes is not None:
                shapes.append(sizes)
            if all(s is not None for s in sizes):  # dynamic axes leave None in the sizes; the rule keeps them
                with contextlib.suppress(TypeError, ValueError, IndexError):
                    shape = list(entry.output_shape([tuple(s or ()) for s in sizes]))
                    node.setType(inputs[0].type().with_sizes(shape))
            return node

    PluginNode.__name__ = f"{plugin.op}Node"
    return PluginNode


def make_replacement(plugin: Plugin, entry: catalog.PluginEntry, original: Callable[..., Any],
                     shapes: list[list[list[int | None] | None]] | None = None) -> Any:
    """The function that stands in for `original` during a TorchScript export (see plugin_function for `shapes`)."""
    import torch

    node = plugin_function(plugin, entry, shapes)
    binder = _Binder(plugin, entry, original)

    def replacement(*args: Any, **kwargs: Any) -> Any:
        bound, inputs = binder.bind(args, kwargs)
        with _untraced(), torch.no_grad():
            real = binder.call(original, bound)
        result_shape = tuple(int(d) for d in real.shape)
        plugin_shape = tuple(int(d) for d in entry.output_shape([tuple(int(d) for d in t.shape) for t in inputs]))
        out = node.apply(lambda *_: real.reshape(plugin_shape), *inputs)
        return out if plugin_shape == result_shape else reshape_like(out, plugin_shape, result_shape)

    return replacement


def reshape_like(out: Any, plugin_shape: tuple[int, ...], result_shape: tuple[int, ...]) -> Any:
    """The plugin's output in the shape the model used, keeping the leading dimensions they share symbolic
    (traced from the tensor), so dynamic axes stay dynamic: [N, Lq, M, D] -> [N, Lq, -1]."""
    shared = 0
    while shared < min(len(plugin_shape), len(result_shape)) and plugin_shape[shared] == result_shape[shared]:
        shared += 1
    if shared == len(result_shape) - 1:
        return out.reshape(*[out.shape[i] for i in range(shared)], -1)
    return out.reshape(result_shape)


class _untraced:
    """Run the real computation without recording it in the TorchScript trace (only its result is used)."""

    def __enter__(self) -> None:
        import torch

        self.state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch._C._set_tracing_state(self.state)


# ---------------------------------------------------------------------- dynamo: custom op + onnxscript translation

_CUSTOM_OPS: dict[str, Any] = {}  # qualified name -> the registered custom op (one registration per process)
_REAL: dict[str, Callable[..., Any]] = {}  # qualified name -> the real computation of the current export
_SHAPES: dict[str, Callable[..., Any]] = {}  # qualified name -> output shape rule of the current export


def _custom_op(plugin: Plugin | Mapping[str, Any], count: int) -> tuple[str, Any]:
    """The torch.library custom op standing for the plugin (its implementation is looked up per export);
    only the op names it, so the plugin may be given as declared (keyed JSON) too."""
    import torch

    op = plugin.op if isinstance(plugin, Plugin) else str(plugin["op"])
    stem = "".join(c if c.isalnum() else "_" for c in op).lower()
    qualified = f"orchestrate::{stem}_{count}"
    if qualified not in _CUSTOM_OPS:
        schema = "(" + ", ".join(f"Tensor i{k}" for k in range(count)) + ") -> Tensor"

        def real(*inputs: Any) -> Any:
            return _REAL[qualified](*inputs)

        def fake(*inputs: Any) -> Any:
            return inputs[0].new_empty(_SHAPES[qualified]([tuple(t.shape) for t in inputs]))

        registered = torch.library.custom_op(qualified, real, mutates_args=(), schema=schema)
        registered.register_fake(fake)
        _CUSTOM_OPS[qualified] = registered
    return qualified, _CUSTOM_OPS[qualified]


def _op_schema(plugin: Plugin, count: int, attrs: dict[str, Any]) -> Any:
    from onnx import defs

    types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)", "tensor(int32)",
             "tensor(int64)", "tensor(int8)", "tensor(uint8)", "tensor(bool)"]
    kinds = {str: defs.OpSchema.AttrType.STRING, int: defs.OpSchema.AttrType.INT,
             float: defs.OpSchema.AttrType.FLOAT, bool: defs.OpSchema.AttrType.INT}
    lists = {str: defs.OpSchema.AttrType.STRINGS, int: defs.OpSchema.AttrType.INTS,
             float: defs.OpSchema.AttrType.FLOATS, bool: defs.OpSchema.AttrType.INTS}
    attributes = []
    for name, value in attrs.items():
        if isinstance(value, list):
            attributes.append(defs.OpSchema.Attribute(name, lists[type(value[0])], ""))
        else:
            attributes.append(defs.OpSchema.Attribute(name, kinds[type(value)], ""))
    return defs.OpSchema(
        plugin.op, plugin.domain, 1,
        inputs=[defs.OpSchema.FormalParameter(f"i{k}", f"T{k}") for k in range(count)],
        outputs=[defs.OpSchema.FormalParameter("output", "T0")],
        type_constraints=[(f"T{k}", types, "") for k in range(count)],
        attributes=attributes)


def _translation(plugin: Plugin, count: int) -> Callable[..., Any]:
    """The onnxscript function that writes the plugin node (an Op with an explicit schema on the plugin's domain)."""
    from onnxscript import values

    attrs = {k: (int(v) if isinstance(v, bool) else v) for k, v in _attributes(plugin).items()}
    op = values.Op(values.Opset(plugin.domain, 1), plugin.op, _op_schema(plugin, count, attrs))

    def translate(*inputs: Any) -> Any:
        return op(*inputs, **attrs)

    translate.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f"i{k}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in range(count)])
    return translate


def make_dynamo_replacement(plugin: Plugin, entry: catalog.PluginEntry, original: Callable[..., Any],
                            table: dict[Any, Any]) -> Any:
    """The stand-in for `original` during a dynamo export: the plugin's custom op, registered in `table`."""
    import torch

    binder = _Binder(plugin, entry, original)
    count = len(plugin.inputs)
    qualified, custom = _custom_op(plugin, count)
    _REAL[qualified] = _real_computation(plugin, entry, original, binder)
    _SHAPES[qualified] = entry.output_shape
    namespace, name = qualified.split("::")
    table[getattr(getattr(torch.ops, namespace), name).default] = _translation(plugin, count)

    def replacement(*args: Any, **kwargs: Any) -> Any:
        _, inputs = binder.bind(args, kwargs)
        out = custom(*inputs)
        if entry.result_shape is not None:
            return out.reshape(entry.result_shape(tuple(out.shape)))
        return out

    return replacement


def _real_computation(plugin: Plugin, entry: catalog.PluginEntry, original: Callable[..., Any],
                      binder: _Binder) -> Callable[..., Any]:
    """What the custom op computes when run for real: the replaced callable where the plugin's inputs
    cover its parameters, else the catalog's reference kernel."""
    import torch

    parameters = []
    if binder.signature is not None:
        parameters = [p for p in binder.signature.parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in parameters if p.default is p.empty]
    covered = bool(parameters) and all(name in binder.passed for name in required)
    kernel = None if covered else kernel_callable(plugin, entry, with_derived=True)

    def compute(*inputs: Any) -> Any:
        plugin_shape = tuple(int(d) for d in entry.output_shape([tuple(t.shape) for t in inputs]))
        if covered:
            values = dict(zip(plugin.inputs, inputs, strict=True))
            result = original(**{p.name: values[p.name] for p in parameters if p.name in values})
        else:
            assert kernel is not None
            result = kernel(*inputs)
        return torch.as_tensor(result).reshape(plugin_shape).clone()

    return compute


# ---------------------------------------------------------------------- the reference kernel as a callable

def kernel_callable(plugin: Plugin, entry: catalog.PluginEntry,
                    with_derived: bool = False) -> Callable[..., Any]:
    """Without a `replace` callable, the catalog's reference kernel computes the real result.

    Its parameters are the inputs a call passes (derived ones are computed), or all plugin inputs
    with `with_derived`.
    """
    import numpy as np
    import torch

    kernel = entry.load_kernel()
    attrs = dict(plugin.attributes)
    names = list(plugin.inputs)
    derive = plugin.derive
    sources = [src for rule in derive.values() for src in rule.sources if src not in names]
    taken = list(names) if with_derived else [n for n in names if n not in derive] + list(dict.fromkeys(sources))

    def compute(*args: Any, **kwargs: Any) -> Any:
        given = dict(zip(taken, args, strict=False)) | kwargs
        if not with_derived:
            given = derive_inputs(plugin, entry, given)
        tensors = contract_inputs(plugin, entry, [given[name] for name in names])
        outputs = kernel([np.asarray(t.detach().cpu().numpy()) for t in tensors], attrs)
        result = torch.from_numpy(np.ascontiguousarray(outputs[0])).to(tensors[0].device)
        return result.reshape(entry.result_shape(tuple(result.shape))) if entry.result_shape else result

    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in taken]
    compute.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return compute


# ---------------------------------------------------------------------- the stage

def run(call: StageCall) -> StageResult:
    settings: ExportSettings = call.settings
    capture = call.inputs["capture"]
    out = call.out / "model.onnx"
    if call.unkeyed.get("onnx"):
        return _use_given(call, Path(call.unkeyed["onnx"]), out)
    record = json.loads((capture.path / "capture.json").read_text())
    table: dict[Any, Any] = {}  # dynamo: custom op -> onnxscript translation
    shapes: dict[str, list[Any]] = {}  # TorchScript: op -> each plugin node's input shapes, in graph order
    with imports.search_path(list(call.unkeyed.python_path)):
        if settings.scope == "model":
            module, args, input_names, output_names, what = _whole_model(call, settings, record)
        else:
            module, args, input_names, output_names, what = _one_call(call, settings, record, table, shapes)
        output_names = [f"{name}_output" if name in input_names else name for name in output_names]
        with _swapped(settings, table, shapes):
            call.progress(f"exporting ({settings.exporter})")
            if settings.exporter == "dynamo":
                strategy = _dynamo_export(module, args, out, settings, input_names, output_names, table)
            else:
                _torch_export(module, args, out, settings, input_names, output_names)
                strategy = "torch.onnx.export (TorchScript)"
    return _finish(call, out, settings, what, strategy, record, shapes)


@contextlib.contextmanager
def _swapped(settings: ExportSettings, table: dict[Any, Any], shapes: dict[str, list[Any]]) -> Iterator[None]:
    """Every plugin's `replace` callable swapped for its stand-in (scope model; scope call uses the first)."""
    plugins = settings.plugins if settings.scope == "model" and settings.swaps else ()
    with contextlib.ExitStack() as stack:
        for index, plugin in enumerate(plugins):
            where = f"export.plugins[{index}].replace"
            assert plugin.replace is not None  # a whole-model export replaces a callable (the schema's checks)
            entry = catalog.lookup(plugin.op, plugin.catalog)
            original = imports.resolve(plugin.replace, where)
            stand_in = _stand_in(plugin, entry, original, settings.exporter, table, shapes)
            stack.enter_context(imports.swap_callable(plugin.replace, stand_in, where))
        yield


def _stand_in(plugin: Plugin, entry: catalog.PluginEntry, original: Callable[..., Any], exporter: str,
              table: dict[Any, Any], shapes: dict[str, list[Any]]) -> Any:
    if exporter == "dynamo":
        return make_dynamo_replacement(plugin, entry, original, table)
    return make_replacement(plugin, entry, original, shapes.setdefault(plugin.op, []))


def _use_given(call: StageCall, source: Path, out: Path) -> StageResult:
    import onnx

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the user's file
        raise UserError(f"'{source}' is not an ONNX model: {type(exc).__name__}: {str(exc)[:200]}",
                        field="export.onnx") from None
    shutil.copyfile(source, out)
    info = describe_graph(model)
    (call.out / "export.json").write_text(json.dumps(info, indent=1))
    return StageResult(f"given ONNX {source.name}, {_plugin_summary(info, call.unkeyed.get('plugin_notes', []))}",
                       info)


def _one_call(call: StageCall, settings: ExportSettings, record: dict[str, Any], table: dict[Any, Any],
              shapes: dict[str, list[Any]]) -> tuple[Any, tuple[Any, ...], list[str], list[str], str]:
    """The seed's test model: the plugin call alone, fed the captured tensors."""
    import numpy as np
    import torch

    plugin = settings.plugins[0]
    entry = catalog.lookup(plugin.op, plugin.catalog)
    if plugin.replace:
        original = imports.resolve(plugin.replace, "export.plugins[0].replace")
    else:  # plugin_nodes 'surgery' needs a replace callable here (config/checks.py)
        original = kernel_callable(plugin, entry)
    if not settings.swaps:
        function = original
    elif settings.exporter == "dynamo":
        function = make_dynamo_replacement(plugin, entry, original, table)
    else:
        function = make_replacement(plugin, entry, original, shapes.setdefault(plugin.op, []))
    names = [n for n in plugin.inputs if n not in plugin.derive]
    inputs = {name: torch.from_numpy(np.load(call.inputs["capture"].path / meta["file"]))
              for name, meta in record["inputs"].items()}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UserError(f"the capture has no tensor(s) {', '.join(missing)} for the plugin inputs; it has "
                        f"{', '.join(inputs)}", field="export.plugins[0].inputs")
    modules = _recorded_modules(call, settings, record)
    extras = {name: arguments.decode(value, modules.__getitem__) for name, value in record.get("extras", {}).items()}
    constants = {name: tensor for name, tensor in inputs.items() if name not in names}
    order = [a["name"] for a in record.get("args", [])] or names
    if not plugin.replace:  # the reference kernel takes the plugin inputs and the derivations' sources
        accepted = set(inspect.signature(original).parameters)
        order = [name for name in order if name in accepted] or names

    class OneCall(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.recorded = torch.nn.ModuleDict({str(i): m for i, m in enumerate(modules.values())})

        def forward(self, *tensors: Any) -> Any:
            values = {**constants, **extras, **dict(zip(names, tensors, strict=True))}
            return function(**{name: values[name] for name in order if name in values})

    return OneCall(), tuple(inputs[n] for n in names), names, list(record["outputs"])[:1], "one call"


def _model(call: StageCall, settings: ExportSettings) -> tuple[Any, Any]:
    """The user's model and its forward arguments, built again from the keyed model section."""
    assert settings.model is not None  # keyed wherever the export builds the model
    return build_model(settings.model, list(call.unkeyed.python_path))


def _recorded_modules(call: StageCall, settings: ExportSettings, record: dict[str, Any]) -> dict[str, Any]:
    """The modules the recorded call received (`self` of a method), from a freshly built model."""
    paths = sorted({path for value in record.get("extras", {}).values() for path in arguments.modules_in(value)})
    if not paths:
        return {}
    call.progress("building the model (the call is a method of one of its modules)")
    model, _ = _model(call, settings)
    return {path: resolve_module(model, path, "capture.module") if path else model for path in paths}


def _whole_model(call: StageCall, settings: ExportSettings,
                 record: dict[str, Any]) -> tuple[Any, tuple[Any, ...], list[str], list[str], str]:
    """The user's model, called with its captured arguments; tensor arguments become graph inputs."""
    import torch

    call.progress("building the model")
    model, raw_inputs = _model(call, settings)
    inputs = name_inputs(model, raw_inputs)
    frozen = _frozen_inputs(list(settings.constants), inputs.tensors)
    names = [name for name in inputs.tensors if name not in frozen]

    class WholeModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            result = inputs.call(self.model, {**frozen, **dict(zip(names, tensors, strict=True))})
            return tuple(tensor for _, tensor in flatten_outputs(result))

    outputs = list(record["outputs"])
    what = f"whole {type(model).__name__}" + (f", {', '.join(frozen)} frozen as constants" if frozen else "")
    return WholeModel().eval(), tuple(inputs.tensors[n] for n in names), names, outputs, what


def _frozen_inputs(wanted: list[str], tensors: dict[str, Any]) -> dict[str, Any]:
    """The model inputs export.constants names, with their captured values: they become constants of the
    graph, so what the model computes from them alone (text masks from input_ids) folds away."""
    unknown = [name for name in wanted if name not in tensors]
    if unknown:
        raise UserError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a tensor input of the "
                        f"model (its tensor inputs: {', '.join(tensors)})", field="export.constants")
    if len(wanted) == len(tensors):
        raise UserError("every model input would be a constant; the graph needs at least one input",
                        field="export.constants")
    return {name: tensors[name] for name in wanted}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters warn and log at length (deprecations, draft_export reports); the stage line says what matters."""
    import torch  # noqa: F401 - its loggers exist once it is imported

    names = [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in ("torch", "onnxscript")]
    loggers = [logging.getLogger(name) for name in ["torch", "onnxscript", *names]]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torch_export(module: Any, args: tuple[Any, ...], out: Path, settings: ExportSettings, input_names: list[str],
                  output_names: list[str]) -> None:
    import torch

    dynamic_axes = {name: {int(axis): label for axis, label in axes.items()}
                    for name, axes in settings.dynamic_axes.items()} or None
    with _quiet(), torch.no_grad():
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(module, args, str(out), opset_version=settings.opset, input_names=input_names,
                                  output_names=output_names, dynamic_axes=dynamic_axes, dynamo=False,
                                  do_constant_folding=True)
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            raise _unsupported(str(exc), settings, lambda op: _module_using(module, args, op)) from None


def _unsupported(text: str, settings: ExportSettings, locate: Callable[[str], str | None]) -> UserError:
    """An op the exporter cannot write: name it, the module that used it, and the ways out."""
    found = re.search(r"operator '([^']+)'", text)
    op = found.group(1) if found else "an operator"
    module = locate(op) if found else None
    where = "" if not module else f" (used in {module})" if " " in module else f" (used in module '{module}')"
    return UserError(f"the {settings.exporter} exporter cannot write {op} at opset {settings.opset}{where}",
                     field="export.exporter",
                     hint="ways out: another opset (export.opset), the other exporter (export.exporter), or, where "
                          "the op only depends on some model inputs (text masks from input_ids), freeze those inputs "
                          "as constants with export.constants")


def _module_using(module: Any, args: tuple[Any, ...], op: str) -> str | None:
    """The innermost module running when the model first calls the aten op `op` (one eager forward)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    stack = ModuleStack(module)
    seen: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not seen and func._schema.name == op:
                seen.append(stack.names[-1] if stack.names else "")
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Watch():
            module(*args)
    except Exception:  # noqa: BLE001 - locating the op is a courtesy; the error stands without it
        return None
    finally:
        stack.close()
    if not seen:
        return None
    return "the model's own forward" if seen[0] in ("", "model") else seen[0].removeprefix("model.")


def _dynamic_shapes(settings: ExportSettings, input_names: list[str]) -> tuple[Any, ...] | None:
    """export.dynamic_axes as torch.export dynamic shapes (one Dim per axis name, shared across inputs)."""
    import torch

    declared = settings.dynamic_axes
    if not any(name in declared for name in input_names):
        return None
    dims: dict[str, Any] = {}
    shapes = []
    for name in input_names:
        axes = declared.get(name, {})
        shapes.append({int(axis): dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
                      or None)
    return (tuple(shapes),)  # the wrapper's forward takes *tensors: one argument, a tuple


def _dynamo_export(module: Any, args: tuple[Any, ...], out: Path, settings: ExportSettings, input_names: list[str],
                   output_names: list[str], table: dict[Any, Any]) -> str:
    """torch.export (draft_export when the model branches on tensor values), then torch.onnx.export."""
    import torch

    dynamic = _dynamic_shapes(settings, input_names)
    strategy = "torch.export"
    with _quiet(), torch.no_grad():
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # a failed attempt prints its partial graph there
                program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        except Exception as exc:  # noqa: BLE001 - data-dependent control flow, mostly; draft_export decides
            try:
                program = torch.export.draft_export(module, args, dynamic_shapes=dynamic)
            except Exception:  # noqa: BLE001 - report the first failure, which names the user's code
                raise RuntimeError(f"torch.export could not trace the model: {str(exc)[:2000]}") from exc
            strategy = "torch.export.draft_export (values the model branches on fixed to the captured ones)"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(program, (), str(out), opset_version=settings.opset, input_names=input_names,
                                  output_names=output_names, custom_translation_table=table, dynamo=True,
                                  external_data=False, verbose=False, optimize=True)
        except Exception as exc:  # an op with no ONNX function is named; anything else stays a crash
            missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", str(exc))
            if missing is None:
                raise
            raise _unsupported(f"operator '{missing.group(1)}'", settings,
                               lambda op: _program_module(program, op)) from None
    return strategy


def _program_module(program: Any, op: str) -> str | None:
    """Where an exported program calls `op`: the innermost module and the source line torch.export recorded."""
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(op.replace("::", ".")):
            stack = node.meta.get("nn_module_stack") or {}
            path = next(reversed(stack.values()))[0] if stack else ""
            trace = (node.meta.get("stack_trace") or "").strip().splitlines()
            line = next((t.strip() for t in reversed(trace) if t.strip().startswith("File ")), "")
            module = f"module '{path.removeprefix('model.')}'" if path and path != "model" else "the model's forward"
            return f"{module}, {line}" if line else module
    return None


def _finish(call: StageCall, out: Path, settings: ExportSettings, what: str, strategy: str,
            record: dict[str, Any], shapes: dict[str, list[Any]]) -> StageResult:
    import onnx

    model = onnx.load(str(out))
    domains = {p.domain for p in settings.plugins} if settings.swaps else set()
    present = {o.domain for o in model.opset_import}
    for domain in sorted(domains - present):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    _name_dynamic_axes(model, settings, record)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    if settings.swaps and _cast_float_inputs(model, settings.plugins):
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    _declare_plugin_input_shapes(model, shapes)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"the {settings.exporter} exporter wrote an invalid model at opset {settings.opset}: "
                        f"{first}", field="export.opset",
                        hint="dynamo builds at opset 18 and converts down, which can leave newer attributes behind: "
                             "ask for opset 18 or more, or use exporter: torchscript" if settings.exporter ==
                        "dynamo" else "try another opset, or exporter: dynamo") from None
    onnx.save(model, str(out))
    info = describe_graph(model)
    opset = info["opset"].get("ai.onnx", settings.opset)
    info.update(exporter=settings.exporter, strategy=strategy, scope=settings.scope, opset_requested=settings.opset)
    counts = record.get("call_counts") or {}
    nodes = len(info["plugin_nodes"])
    calls = sum(counts.values())
    (call.out / "export.json").write_text(json.dumps(info, indent=1))
    text = f"{settings.exporter} opset {opset}"
    if opset != settings.opset:
        text += f" ({settings.opset} asked; the exporter could not convert)"
    text += f", {what}, {_plugin_summary(info, call.unkeyed.get('plugin_notes', []))}"
    if settings.scope == "model" and settings.swaps and counts:
        text += f" ({calls} call{'s' if calls != 1 else ''} in the captured forward)" if calls == nodes else \
            f"; the captured forward made {calls} call(s), the graph has {nodes} plugin node(s)"
    if strategy.startswith("torch.export.draft_export"):
        text += "; draft_export"
    return StageResult(text, info)


def _cast_float_inputs(model: Any, plugins: tuple[Plugin, ...]) -> int:
    """Cast float plugin inputs of a dtype the plugin does not take (TorchScript writes torch.linspace as
    double even where the traced tensor was float32) to the contract's dtype, in the graph; the count cast."""
    import numpy as np
    import onnx
    from onnx import helper

    entries = {p.op: catalog.lookup(p.op, p.catalog) for p in plugins}
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    floats = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
              onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}
    casts = []
    for node in model.graph.node:
        entry = entries.get(node.op_type)
        if entry is None or len(node.input) != len(entry.inputs):
            continue
        dtypes = [floats.get(types.get(name, 0)) for name in node.input]
        for index, contract in enumerate(entry.inputs):
            dtype = dtypes[index]
            if dtype is None or contract.is_integer or dtype in contract.dtypes:
                continue
            twin = entry.input_names().index(contract.same_dtype_as) if contract.same_dtype_as else None
            wanted = dtypes[twin] if twin is not None and dtypes[twin] in contract.dtypes else contract.dtypes[0]
            cast_name = f"{node.input[index]}_as_{wanted}"
            casts.append((node, helper.make_node("Cast", [node.input[index]], [cast_name],
                                                 name=f"{node.name or node.op_type}/Cast_{contract.name}",
                                                 to=helper.np_dtype_to_tensor_dtype(np.dtype(wanted)))))
            node.input[index] = cast_name
    for node, cast in casts:
        position = list(model.graph.node).index(node)
        model.graph.node.insert(position, cast)
    return len(casts)


def _name_dynamic_axes(model: Any, settings: ExportSettings, record: dict[str, Any]) -> None:
    """Check that every declared dynamic axis came out dynamic, and give it its declared name."""
    declared = settings.dynamic_axes
    if not declared:
        return
    graph = model.graph
    values = {v.name: v for v in [*graph.input, *graph.output]}
    known = set(values) | set(record.get("inputs", {})) | set(record.get("outputs", {}))
    renames: dict[str, str] = {}
    fixed = []
    for name, axes in declared.items():
        if name not in known:
            raise UserError(f"'{name}' is neither an input nor an output of the exported graph (inputs: "
                            f"{', '.join(v.name for v in graph.input)}; outputs: "
                            f"{', '.join(v.name for v in graph.output)})", field=f"export.dynamic_axes.{name}")
        if name not in values:
            continue  # an input the graph does not use
        dims = values[name].type.tensor_type.shape.dim
        for axis, label in axes.items():
            if int(axis) >= len(dims):
                raise UserError(f"'{name}' has {len(dims)} axes; there is no axis {axis}",
                                field=f"export.dynamic_axes.{name}")
            dim = dims[int(axis)]
            if dim.HasField("dim_value"):
                fixed.append(f"{name} axis {axis} ({label}) came out fixed at {dim.dim_value}")
            elif dim.dim_param and dim.dim_param != label:
                renames[dim.dim_param] = label
    if fixed:
        hint = ("torch.export treats an axis of size 1 in the captured inputs as a constant: capture with that axis "
                "of size 2 or more (model.inputs_kwargs), or use exporter: torchscript"
                if settings.exporter == "dynamo" else None)
        raise UserError("; ".join(fixed), field="export.dynamic_axes", hint=hint)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _declare_plugin_input_shapes(model: Any, shapes: dict[str, list[Any]]) -> None:
    """Give plugin inputs whose shape inference left the shape unknown the shape the exporter traced
    (dynamic axes unknown), so the build can check them against the contract."""
    import onnx

    typed = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    seen: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in shapes:
            continue
        index = seen[node.op_type] = seen.get(node.op_type, -1) + 1
        if index >= len(shapes[node.op_type]):
            continue
        for name, sizes in zip(node.input, shapes[node.op_type][index], strict=False):
            info = typed.get(name)
            if sizes is None or info is None or info.type.tensor_type.HasField("shape"):
                continue
            shape = info.type.tensor_type.shape
            shape.SetInParent()
            for size in sizes:
                dim = shape.dim.add()
                if size is not None:
                    dim.dim_value = size
    onnx.checker.check_model(model)


def _plugin_summary(info: dict[str, Any], notes: Sequence[str] = ()) -> str:
    """The plugin nodes and casts, then the planner's notes on plugin versions (why `auto` chose one, warnings)."""
    nodes = info["plugin_nodes"]
    ops = sorted({n["op"] for n in nodes})
    text = f"{len(nodes)} plugin node{'s' if len(nodes) != 1 else ''} {', '.join(ops)}" if nodes else "no plugin node"
    integer = sorted({c["to"] for n in nodes for c in n["casts"] if not c["to"].startswith(("float", "bfloat"))})
    floats = sorted({c["to"] for n in nodes for c in n["casts"] if c["to"].startswith(("float", "bfloat"))})
    if integer:
        text += f", integer inputs cast to {', '.join(integer)}"
    if floats:
        text += f", float inputs cast to {', '.join(floats)}"
    return text + "".join(f"; {note}" for note in notes)


def plan(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned:
    """The export's key: the export section with the plugins' contracts, the callables it swaps, the model."""
    data, plugins = variant.data, [{k: v for k, v in p.items() if k != contracts.NOTE} for p in variant.plugins]
    export = data["export"]
    files = _plugin_sources(ctx, plugins)
    env: dict[str, str | None] = {}
    paths: dict[str, Any] = {}
    notes = [p[contracts.NOTE] for p in variant.plugins if p.get(contracts.NOTE)]
    if notes:  # why `version: auto` chose a version, deprecations: for the summary, in no key
        paths["plugin_notes"] = notes
    if export.get("onnx"):
        onnx_path = ctx.spec.resolve_path(export["onnx"])
        files["onnx"] = ctx.file_digest(onnx_path, "export.onnx")
        ctx.origins["onnx"] = str(onnx_path)
        paths["onnx"] = str(onnx_path)
        _check_onnx(ctx, onnx_path, export["onnx"])
    model = None
    if data.get("model") and not data["capture"].get("from_dir"):  # scope call: a method's `self` is rebuilt
        model = ModelSettings.from_keyed(data["model"])
        env = ctx.env_digests(data["model"])
        files.update(ctx.model_sources(data["model"]))
        files.update(ctx.paths_digests(data["model"].get("sources", []), "model.sources"))
    tools = environment.tools("onnx") if export.get("onnx") else environment.tools("torch", "onnx")
    if export["exporter"] == "dynamo":
        tools |= environment.tools("onnxscript")
    settings = ExportSettings(
        export["exporter"], export["opset"], export["scope"], export["plugin_nodes"],
        tuple(Plugin.from_keyed(p) for p in plugins),
        {name: dict(axes) for name, axes in export["dynamic_axes"].items()}, tuple(export["constants"]), model,
        ctx.keyed_python_path())
    return Planned(settings, {"capture": planned["capture"]}, files, tools, paths, env)


def _plugin_sources(ctx: PlanContext, plugins: list[dict[str, Any]]) -> dict[str, str]:
    """The digests of the callables the export swaps and of the users' catalog entries; a callable that
    lacks a parameter the plugin's inputs name is an error here."""
    files: dict[str, str] = {}
    for index, plugin in enumerate(plugins):
        if plugin.get("replace"):
            where = f"export.plugins[{index}].replace"
            label, digest = ctx.source_digest(plugin["replace"], where)
            files[label] = digest
            parameters = sources.parameters(Path(ctx.origins[label]), imports.split(plugin["replace"])[1])
            missing = [name for name in plugin["inputs"] if parameters is not None and name not in parameters
                       and name not in plugin.get("derive", {})]
            if missing:
                raise ctx.error(
                    f"'{plugin['replace']}' takes ({', '.join(parameters or [])}); the plugin's inputs are passed "
                    f"to it by name and it has no parameter {', '.join(missing)}", where,
                    hint="name the callable's parameters in export.plugins[].inputs, in the plugin's order; "
                         "compute the others with export.plugins[].derive")
            if parameters is not None:
                contracts.check_sources(ctx.spec, plugin, parameters, f"export.plugins[{index}].derive")
        if plugin.get("catalog"):  # a user's own PluginEntry: its output-shape rule shapes the export
            label, digest = ctx.source_digest(plugin["catalog"], f"export.plugins[{index}].catalog")
            files[label] = digest
    return files


def _check_onnx(ctx: PlanContext, path: Path, value: str) -> None:
    """Refuse a file that is not an ONNX model now, before any stage runs (the graph is not checked)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - whatever the parser says, the user's file is not ONNX
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ctx.error(f"'{value}' is not an ONNX model ({detail})", "export.onnx") from None


STAGE = Stage(
    "export", version=4, plan=plan, run=run,
    outputs=("model.onnx", "export.json"),
)

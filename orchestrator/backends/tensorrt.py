"""The TensorRT backend: build an engine with the Python API and run it (TensorRT 8.6, 10.x, 11.x).

Which API to call is decided from what the installed `tensorrt` module offers, not from its version
string: the network flags (EXPLICIT_BATCH only where implicit batch still exists), the workspace
call (`set_memory_pool_limit` or `max_workspace_size`), the build call (`build_serialized_network`
or `build_engine`), the precision (builder flags where they exist; on strongly typed releases,
which have no FP16 flag, the graph's float tensors are cast instead), the plugin registry lookup
(`get_creator` or `get_plugin_creator`) and the I/O API (named tensors, or bindings).

Everything that decides is a plain function of plain data (`ApiFeatures` holds the names the module
offers), so it is tested without TensorRT; only the thin layer at the end of this file calls it.

Build writes engine.plan, engine.json (inputs, outputs, which outputs a plugin produced, plugin
libraries) and build.log. `Runner` loads them for verify and bench, with device buffers from
pycuda, or from torch when pycuda is absent, and times runs with CUDA events.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import environment
from orchestrator import plugins as catalog
from orchestrator.backends import Trusted
from orchestrator.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import tensorrt as trt

    from orchestrator.stages import StageCall

# ---------------------------------------------------------------------------------------------------------------
# What the installed module offers

API_OWNERS = ("NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType", "Builder", "IBuilderConfig",
              "IPluginRegistry", "OnnxParser", "ParserError", "ICudaEngine", "IExecutionContext")


@dataclass(frozen=True)
class ApiFeatures:
    """The attribute and enum member names of the installed tensorrt module, by owner ("" = the module)."""

    version: str
    names: Mapping[str, frozenset[str]]

    @classmethod
    def of_module(cls, trt: Any) -> ApiFeatures:
        names: dict[str, frozenset[str]] = {"": frozenset(dir(trt))}
        for owner in API_OWNERS:
            kind = getattr(trt, owner, None)
            if kind is not None:
                members = getattr(kind, "__members__", None) or {}
                names[owner] = frozenset(dir(kind)) | frozenset(members)
        return cls(str(getattr(trt, "__version__", "unknown")), names)

    @classmethod
    def from_names(cls, version: str, names: Mapping[str, Sequence[str]]) -> ApiFeatures:
        return cls(version, {owner: frozenset(values) for owner, values in names.items()})

    def has(self, owner: str, name: str) -> bool:
        return name in self.names.get(owner, frozenset())

    @property
    def strongly_typed(self) -> bool:
        """No FP16 builder flag (TensorRT 11): precision follows the graph's types, not builder flags."""
        return not self.has("BuilderFlag", "FP16")

    @property
    def network_flags(self) -> tuple[str, ...]:
        """EXPLICIT_BATCH where implicit batch still exists (8.x); 10.x ignores the flag and 11.x lacks it."""
        if self.has("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") and self.has("Builder", "max_batch_size"):
            return ("EXPLICIT_BATCH",)
        return ()

    @property
    def workspace_api(self) -> str:
        if self.has("IBuilderConfig", "set_memory_pool_limit") and self.has("MemoryPoolType", "WORKSPACE"):
            return "set_memory_pool_limit"
        if self.has("IBuilderConfig", "max_workspace_size"):
            return "max_workspace_size"
        return "none"

    @property
    def build_api(self) -> str:
        if self.has("Builder", "build_serialized_network"):
            return "build_serialized_network"
        return "build_engine"

    @property
    def creator_lookup(self) -> str:
        """`get_creator` finds IPluginV3 creators too; `get_plugin_creator` (8.6) only V2 ones."""
        return "get_creator" if self.has("IPluginRegistry", "get_creator") else "get_plugin_creator"

    @property
    def creator_listing(self) -> str:
        return "all_creators" if self.has("IPluginRegistry", "all_creators") else "plugin_creator_list"

    @property
    def io_api(self) -> str:
        if self.has("ICudaEngine", "num_io_tensors") and self.has("IExecutionContext", "execute_async_v3"):
            return "named"
        return "bindings"

    @property
    def parse_api(self) -> str:
        return "parse_from_file" if self.has("OnnxParser", "parse_from_file") else "parse"

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "builder precision flags"
        return (f"TensorRT {self.version}: {typing}, workspace via {self.workspace_api}, {self.build_api}, "
                f"{self.creator_lookup}, {self.io_api} I/O")


# ---------------------------------------------------------------------------------------------------------------
# Precision

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class PrecisionPlan:
    """How one YAML precision is realised: builder flags to set or clear, or a cast of the graph's floats."""

    precision: str
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    cast_graph: str | None = None  # dtype the graph's float32 tensors become (strongly typed releases)

    def describe(self) -> str:
        parts = [f"+{f}" for f in self.set_flags] + [f"-{f}" for f in self.clear_flags]
        if self.cast_graph:
            parts.append(f"graph cast to {self.cast_graph}")
        return f"{self.precision} ({', '.join(parts) or 'defaults'})"


def _plugins_text(plugin_precisions: Mapping[str, Sequence[str]], precision: str | None) -> str:
    if not plugin_precisions:
        return "no catalog plugin limits it"
    parts = []
    for op, precisions in sorted(plugin_precisions.items()):
        verb = "runs" if precision is None or precision in precisions else "runs only"
        parts.append(f"{op} {verb} {', '.join(precisions)}")
    return "; ".join(parts)


def precision_plan(precision: str, features: ApiFeatures, plugin_precisions: Mapping[str, Sequence[str]],
                   quantized: bool = False) -> PrecisionPlan:
    """Builder flags (or a graph cast) for `precision`; a UserError naming TensorRT and the plugins if impossible.

    tf32 and fp32 keep float32 storage, so every plugin that runs fp32 runs them. `best` enables every
    float precision the installed TensorRT offers (INT8 only for a graph with Q/DQ nodes, since
    orchestrate does not calibrate); on a strongly typed release it casts to fp16 when every plugin
    runs fp16.
    """
    label = f"TensorRT {features.version}"
    flags = features.names.get("BuilderFlag", frozenset())
    storage = {"tf32": "fp32", "best": None}.get(precision, precision)
    refusing = {op: p for op, p in plugin_precisions.items() if storage not in (None, "fp32") and storage not in p}

    trt_problem: str | None = None
    plan = PrecisionPlan(precision)
    tf32 = ("TF32",) if "TF32" in flags else ()
    if precision == "fp32":
        plan = PrecisionPlan(precision, clear_flags=tf32)
    elif precision == "tf32":
        if tf32:
            plan = PrecisionPlan(precision, set_flags=tf32)
        else:
            trt_problem = f"{label} has no TF32 builder flag"
    elif precision == "int8":
        if not quantized:
            trt_problem = (f"{label} needs a quantized graph (QuantizeLinear/DequantizeLinear nodes) for int8; "
                           "orchestrate does not calibrate")
        elif not features.strongly_typed:
            plan = PrecisionPlan(precision, set_flags=("INT8",)) if "INT8" in flags else plan
            trt_problem = None if "INT8" in flags else f"{label} has no INT8 builder flag"
    elif precision == "best":
        every_plugin_fp16 = all("fp16" in p for p in plugin_precisions.values())
        if features.strongly_typed:
            plan = PrecisionPlan(precision, cast_graph="float16" if every_plugin_fp16 else None)
        else:
            wanted = ["FP16", "BF16"] + (["INT8"] if quantized else [])
            plan = PrecisionPlan(precision, set_flags=tuple(f for f in wanted if f in flags))
    elif precision in ("fp16", "bf16"):
        flag = precision.upper()
        if flag in flags:
            plan = PrecisionPlan(precision, set_flags=(flag,))
        elif features.strongly_typed and precision == "fp16":
            plan = PrecisionPlan(precision, cast_graph="float16")
        elif features.strongly_typed:
            trt_problem = (f"{label} is strongly typed (no {flag} builder flag), so {precision} needs a {precision} "
                           "graph, which orchestrate makes only for fp16")
        else:
            trt_problem = f"{label} has no {flag} builder flag"
    else:
        trt_problem = f"{label} has no mapping for precision '{precision}'"

    if trt_problem or refusing:
        trt_text = trt_problem or f"{label} supports it"
        raise UserError(f"precision {precision}: {trt_text}; {_plugins_text(plugin_precisions, storage)}",
                        field="build.precision",
                        hint="fp32 and fp16 are what MultiscaleDeformableAttnPlugin_TRT runs" if refusing else None)
    return plan


def is_quantized(model: Any) -> bool:
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


# ---------------------------------------------------------------------------------------------------------------
# Optimization profiles

Dims = tuple[int | None, ...]  # None: a dynamic dimension


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max


def graph_input_dims(model: Any) -> dict[str, Dims]:
    """Each graph input (initializers excluded) with its static dims, None where a dim is dynamic."""
    initializers = {i.name for i in model.graph.initializer}
    found: dict[str, Dims] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        found[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return found


def _shown(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def resolve_profiles(profiles: Sequence[Mapping[str, Mapping[str, Sequence[int]]]],
                     inputs: Mapping[str, Dims]) -> list[dict[str, ShapeRange]]:
    """The optimization profiles to build: the YAML's, checked against the graph, or the captured shapes.

    With no profile, every input must have static dims (the shapes the graph was exported with, which
    are the captured ones). A profile may leave out inputs whose dims are all static.
    """
    if not profiles:
        dynamic = {name: dims for name, dims in inputs.items() if None in dims}
        if dynamic:
            listed = ", ".join(f"{name} {_shown(dims)}" for name, dims in dynamic.items())
            example = next(iter(dynamic))
            raise UserError(f"the graph has dynamic input dims ({listed}); give their ranges in build.profiles",
                            field="build.profiles",
                            hint=f"profiles: [{{{example}: {{min: [...], opt: [...], max: [...]}}}}]")
        return [{name: ShapeRange(*(tuple(int(d or 0) for d in dims),) * 3) for name, dims in inputs.items()}]
    resolved = []
    for index, profile in enumerate(profiles):
        where = f"build.profiles[{index}]"
        unknown = [name for name in profile if name not in inputs]
        if unknown:
            raise UserError(f"no graph input named {', '.join(repr(n) for n in unknown)}; inputs are "
                            f"{', '.join(inputs)}", field=f"{where}.{unknown[0]}")
        ranges: dict[str, ShapeRange] = {}
        for name, dims in inputs.items():
            if name not in profile:
                if None in dims:
                    raise UserError(f"input '{name}' has dynamic dims {_shown(dims)} but the profile gives no range "
                                    "for it", field=where)
                static = tuple(int(d or 0) for d in dims)
                ranges[name] = ShapeRange(static, static, static)
                continue
            given = profile[name]
            shape_range = ShapeRange(*(tuple(int(v) for v in given[k]) for k in ("min", "opt", "max")))
            for label, shape in (("min", shape_range.min), ("opt", shape_range.opt), ("max", shape_range.max)):
                if len(shape) != len(dims):
                    raise UserError(f"{label} {list(shape)} has rank {len(shape)}; input '{name}' has rank "
                                    f"{len(dims)} {_shown(dims)}", field=f"{where}.{name}.{label}")
                for axis, (wanted, fixed) in enumerate(zip(shape, dims, strict=True)):
                    if fixed is not None and wanted != fixed:
                        raise UserError(f"{label} {list(shape)} sets axis {axis} to {wanted}, but the graph fixes it "
                                        f"at {fixed} {_shown(dims)}", field=f"{where}.{name}.{label}")
            if not all(a <= b <= c for a, b, c in zip(shape_range.min, shape_range.opt, shape_range.max, strict=True)):
                raise UserError(f"input '{name}': need min <= opt <= max on every axis, got min "
                                f"{list(shape_range.min)}, opt {list(shape_range.opt)}, max {list(shape_range.max)}",
                                field=f"{where}.{name}")
            ranges[name] = shape_range
        resolved.append(ranges)
    return resolved


def needs_profiles(inputs: Mapping[str, Dims], configured: bool) -> bool:
    """A static network builds without a profile; a dynamic one (or an explicit request) needs one."""
    return configured or any(None in dims for dims in inputs.values())


# ---------------------------------------------------------------------------------------------------------------
# Plugin creators and parser errors


@dataclass(frozen=True, order=True)
class Creator:
    name: str
    version: str
    namespace: str = ""

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" + (f" (namespace '{self.namespace}')" if self.namespace else "")


def missing_creator_error(missing: Sequence[Mapping[str, str]], available: Sequence[Creator], trt_version: str,
                          libraries: Sequence[str]) -> UserError:
    """A UserError for plugin nodes whose (name, version, namespace) has no registered creator.

    It lists the creators that do exist under the same or a similar name and says which library
    provides the plugin (the catalog entry's `library`), and which libraries were loaded.
    """
    names = sorted({c.name for c in available})
    lines = []
    hint = None
    field_name = "build.plugin_libraries"
    for node in missing:
        op, version, namespace = node["op"], node["version"], node.get("namespace", "")
        text = (f"plugin node '{node.get('node') or op}' needs creator {Creator(op, version, namespace)}, which "
                f"TensorRT {trt_version} does not have registered")
        same = sorted(c for c in available if c.name == op)
        similar = [c for c in sorted(available) if c.name in difflib.get_close_matches(op, names, n=3, cutoff=0.6)
                   and c.name != op]
        if same:
            text += f"; registered under that name: {', '.join(str(c) for c in same)}"
            field_name = "export.plugins"
            hint = (f"set export.plugins[].version to '{same[0].version}' and namespace to '{same[0].namespace}' "
                    "(a registered creator), or load a library that has the one requested")
        elif similar:
            text += f"; similar names registered: {', '.join(str(c) for c in similar[:5])}"
        else:
            text += f"; none of the {len(available)} registered creators has a similar name"
        entry = catalog.builtin(op)
        provider = entry.library if entry is not None else "the plugin's own library (build.plugin_libraries)"
        text += f". It comes from {provider}"
        lines.append(text)
    loaded = ", ".join(libraries) if libraries else "none besides NVIDIA's libnvinfer_plugin"
    if hint is None:
        hint = ("NVIDIA's plugins are initialised with init_libnvinfer_plugins; any other plugin library must be "
                "listed in build.plugin_libraries")
    return UserError("; ".join(lines) + f" (plugin libraries loaded: {loaded})", field=field_name, hint=hint)


def parser_error_lines(errors: Sequence[Mapping[str, Any]], nodes: Sequence[tuple[str, str]]) -> list[str]:
    """One line per ONNX parser error, naming the node and its op.

    TensorRT 10 reports the node's name and operator itself; 8.6 reports only its index, which is
    looked up in the graph's node list (name, op_type).
    """
    lines = []
    for error in errors:
        index = int(error.get("node", -1))
        name, op = str(error.get("node_name") or ""), str(error.get("node_operator") or "")
        if 0 <= index < len(nodes):
            name = name or nodes[index][0]
            op = op or nodes[index][1]
        where = f"node {index}" if index >= 0 else "graph"
        if name or op:
            where += f" '{name or '?'}' ({op or '?'})"
        desc = str(error.get("desc", "")).strip()
        code = str(error.get("code", "")).rsplit(".", 1)[-1]
        lines.append(f"{where}: {desc}" + (f" [{code}]" if code else ""))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Tensors: dtypes, casts and the plugin output rule

TRT_TO_NUMPY = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3fn", "INT4": "int4",
                "FP4": "float4_e2m1fn"}


def numpy_dtype_name(trt_dtype: Any) -> str:
    """The NumPy dtype name for a TensorRT DataType (or its name: 'FLOAT', 'DataType.HALF')."""
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1].upper()
    if name not in TRT_TO_NUMPY:
        raise ValueError(f"TensorRT data type {trt_dtype} has no NumPy equivalent")
    return TRT_TO_NUMPY[name]


def cast_for_engine(name: str, array: Any, dtype: str) -> np.ndarray:
    """`array` as the dtype the engine takes, refusing casts that would change values.

    An int64 capture fed to an int32 input is cast (not reinterpreted, the cause of all-zero
    plugin outputs), but only when every value fits; a float fed to an integer input must hold
    whole numbers.
    """
    import numpy as np

    source = np.asarray(array)
    target = np.dtype(dtype)
    if source.dtype == target:
        return np.ascontiguousarray(source)
    if target.kind in "iu" and source.size:
        if source.dtype.kind == "f" and not np.all(np.isfinite(source) & (source == np.round(source))):
            raise UserError(f"input '{name}' is {source.dtype} with fractional values; the engine takes {target}",
                            field="capture")
        if source.dtype.kind in "iuf":
            info = np.iinfo(target)
            low, high = source.min(), source.max()
            if low < info.min or high > info.max:
                raise UserError(f"input '{name}' holds {source.dtype} values in [{low}, {high}], outside {target}'s "
                                f"range; the engine takes {target}", field="capture")
    return np.ascontiguousarray(source.astype(target))


def plugin_outputs(model: Any, plugin_ops: set[str]) -> dict[str, str]:
    """Graph outputs that a plugin node produces directly: {output name: op}."""
    standard = {"", "ai.onnx", "ai.onnx.ml"}
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        if node is not None and (node.op_type in plugin_ops or node.domain not in standard):
            found[output.name] = node.op_type
    return found


def result_shape(op: str | None, shape: Sequence[int]) -> tuple[int, ...] | None:
    """The shape the model uses for a plugin's output, by the catalog's rule (None: no rule applies)."""
    if op is None:
        return None
    entry = catalog.builtin(op)
    if entry is None or entry.result_shape is None:
        return None
    try:
        return tuple(entry.result_shape(tuple(shape)))
    except (ValueError, TypeError, IndexError):
        return None


def as_captured(array: Any, op: str | None, captured_shape: Sequence[int]) -> Any:
    """A plugin output in the captured layout (MSDA: [N, Lq, M, D] -> [N, Lq, M*D]), when the rule gives it."""
    wanted = tuple(captured_shape)
    if tuple(array.shape) == wanted:
        return array
    rule = result_shape(op, array.shape)
    if rule == wanted:
        return array.reshape(wanted)
    return array


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


# ---------------------------------------------------------------------------------------------------------------
# Timing cache location


def timing_cache_file(shared_dir: Path, trt_version: str, gpu: str) -> Path:
    """Where builds with this TensorRT for this GPU (`environment.build_gpu()`) share their timing cache."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", f"trt{trt_version}-{gpu}").strip("-")
    digest = hashlib.sha256(f"{trt_version}|{gpu}".encode()).hexdigest()[:8]
    return shared_dir / "tensorrt-timing" / f"{label[:80]}-{digest}" / "timing.cache"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------------------
# Device buffers: pycuda, or torch when pycuda is absent


def buffer_library(pycuda_importable: bool, torch_cuda: bool) -> str:
    if pycuda_importable:
        return "pycuda"
    if torch_cuda:
        return "torch"
    raise UserError("running a TensorRT engine needs CUDA buffers from pycuda or from torch with CUDA; neither is "
                    "available here", field="build.backend", hint="pip install pycuda")


@dataclass
class DeviceArray:
    """One device allocation: its address for TensorRT, and what it holds."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    handle: Any = field(repr=False, default=None)


class TorchCudaBuffers:
    """Device memory, copies, a stream and CUDA events from torch."""

    library = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch

        self.torch: Any = torch  # torch's own annotations leave parts of torch.cuda untyped
        self.device = torch.device("cuda", device)
        self.torch.cuda.init()
        self.stream = self.torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def _dtype(self, dtype: str) -> Any:
        return getattr(self.torch, dtype)

    def empty(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        with self.torch.cuda.stream(self.stream):
            tensor = self.torch.empty(tuple(shape), dtype=self._dtype(dtype), device=self.device)
        return DeviceArray(int(tensor.data_ptr()), tuple(shape), dtype, tensor)

    def upload(self, array: Any) -> DeviceArray:
        import numpy as np

        host = self.torch.from_numpy(np.array(array, copy=True, order="C"))
        with self.torch.cuda.stream(self.stream):
            tensor = host.to(self.device, non_blocking=False)
        return DeviceArray(int(tensor.data_ptr()), tuple(host.shape), str(np.asarray(array).dtype), tensor)

    def download(self, buffer: DeviceArray) -> Any:
        with self.torch.cuda.stream(self.stream):
            tensor = buffer.handle
            if buffer.dtype == "bfloat16":
                tensor = tensor.float()
            host = tensor.to("cpu")
        self.stream.synchronize()
        return host.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def seconds_between(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3

    def close(self) -> None:
        self.stream.synchronize()


class PyCudaBuffers:
    """Device memory, copies, a stream and CUDA events from pycuda, in the device's primary context."""

    library = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.context = cuda.Device(device).retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def empty(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        import numpy as np

        if dtype == "bfloat16":
            raise UserError("the engine has a bfloat16 tensor, which pycuda buffers cannot hold; use torch",
                            field="build.precision")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        allocation = self.cuda.mem_alloc(max(nbytes, 1))
        return DeviceArray(int(allocation), tuple(shape), dtype, allocation)

    def upload(self, array: Any) -> DeviceArray:
        import numpy as np

        host = np.ascontiguousarray(array)
        buffer = self.empty(host.shape, str(host.dtype))
        self.cuda.memcpy_htod_async(buffer.handle, host, self.stream)
        self.stream.synchronize()
        return buffer

    def download(self, buffer: DeviceArray) -> Any:
        import numpy as np

        host = np.empty(buffer.shape, dtype=np.dtype(buffer.dtype))
        self.cuda.memcpy_dtoh_async(host, buffer.handle, self.stream)
        self.stream.synchronize()
        return host

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def seconds_between(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end)) / 1e3

    def close(self) -> None:
        self.stream.synchronize()
        self.context.pop()


def open_buffers(device: int = 0) -> TorchCudaBuffers | PyCudaBuffers:
    torch_cuda = False
    if environment.importable("torch"):
        import torch

        torch_cuda = bool(torch.cuda.is_available())
    library = buffer_library(environment.importable("pycuda"), torch_cuda)
    return PyCudaBuffers(device) if library == "pycuda" else TorchCudaBuffers(device)


# ---------------------------------------------------------------------------------------------------------------
# The thin layer that calls TensorRT


def require_tensorrt() -> None:
    """A UserError (exit 2) when `import tensorrt` would fail; the callers then import it typed."""
    if not environment.importable("tensorrt"):
        raise UserError("backend 'tensorrt' needs the tensorrt Python package, which is not importable",
                        field="build.backend",
                        hint="pip install tensorrt (from NVIDIA's index), or use backend: onnxruntime")


SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


def make_logger(log_path: Path | None = None) -> Any:
    """A TensorRT logger that keeps warnings and errors for messages, and writes INFO and up to `log_path`."""
    import tensorrt as trt

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []
            self.stream = log_path.open("a") if log_path is not None else None

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = str(severity).rsplit(".", 1)[-1]
            if level in SEVERITIES[:3]:
                self.messages.append((level, msg))
            if self.stream is not None and level in SEVERITIES[:4]:
                self.stream.write(f"[{level}] {msg}\n")
                self.stream.flush()

        def errors(self, limit: int = 8) -> str:
            found = [m for level, m in self.messages if level in SEVERITIES[:2]]
            return "\n".join(found[-limit:]) or "(TensorRT logged no error)"

    return CollectingLogger()


def register_plugins(logger: Any, libraries: Sequence[str], namespaces: Sequence[str]) -> Any:
    """NVIDIA's plugins (in every namespace the graph uses), then the user's libraries; returns the registry."""
    import tensorrt as trt

    for namespace in sorted(set(namespaces) | {""}):
        trt.init_libnvinfer_plugins(logger, namespace)
    registry = trt.get_plugin_registry()
    for library in libraries:
        handle = None
        if hasattr(registry, "load_library"):
            try:
                handle = registry.load_library(str(library))
            except (RuntimeError, TypeError, ValueError):
                handle = None
        if handle is None:  # libraries that register their creators when loaded (REGISTER_TENSORRT_PLUGIN)
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise UserError(f"cannot load plugin library '{library}': {exc}",
                                field="build.plugin_libraries") from None
    return registry


def registered_creators(registry: Any, features: ApiFeatures) -> list[Creator]:
    listing = getattr(registry, features.creator_listing, None) or []
    found = []
    for creator in listing:
        name = getattr(creator, "name", None)
        if name:
            found.append(Creator(str(name), str(getattr(creator, "plugin_version", "")),
                                 str(getattr(creator, "plugin_namespace", ""))))
    return sorted(set(found))


def has_creator(registry: Any, features: ApiFeatures, op: str, version: str, namespace: str) -> bool:
    lookup = getattr(registry, features.creator_lookup)
    return lookup(op, version, namespace) is not None


def check_creators(registry: Any, features: ApiFeatures, checked: Sequence[Mapping[str, Any]],
                   libraries: Sequence[str]) -> None:
    """Preflight: every plugin node's (name, version, namespace) resolves in the registry."""
    missing = [dict(node) for node in checked
               if not has_creator(registry, features, node["op"], node["version"], node.get("namespace", ""))]
    if missing:
        raise missing_creator_error(missing, registered_creators(registry, features), features.version, libraries)


def _dims(value: Any) -> tuple[int, ...]:
    return tuple(int(value[i]) for i in range(len(value)))


@dataclass
class IoTensor:
    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]  # -1 where dynamic
    index: int = 0


def engine_io(engine: trt.ICudaEngine, features: ApiFeatures) -> list[IoTensor]:
    """The engine's inputs and outputs, through the named-tensor API or (without it) the bindings API."""
    import tensorrt as trt

    found = []
    if features.io_api == "named":
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            found.append(IoTensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                  numpy_dtype_name(engine.get_tensor_dtype(name)),
                                  _dims(engine.get_tensor_shape(name)), index))
    else:
        legacy: Any = engine
        for index in range(legacy.num_bindings):
            found.append(IoTensor(legacy.get_binding_name(index), bool(legacy.binding_is_input(index)),
                                  numpy_dtype_name(legacy.get_binding_dtype(index)),
                                  _dims(legacy.get_binding_shape(index)), index))
    return found


def plugin_entries(plugins: Sequence[Mapping[str, Any]]) -> dict[str, catalog.PluginEntry | None]:
    found: dict[str, catalog.PluginEntry | None] = {}
    for plugin in plugins:
        try:
            found[plugin["op"]] = catalog.lookup(plugin["op"], plugin.get("catalog"))
        except UserError:
            found[plugin["op"]] = None  # not in the catalog: only TensorRT limits its precision
    return found


def graph_io(model: Any) -> dict[str, list[dict[str, Any]]]:
    import onnx

    def meta(value: Any) -> dict[str, Any]:
        kind = value.type.tensor_type
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]}

    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": [meta(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [meta(v) for v in model.graph.output]}


def build(call: StageCall, graph_path: Path, model: Any, checked: list[dict[str, Any]]) -> dict[str, Any]:
    """Parse the plugin graph, build engine.plan with the YAML's precision, profiles and timing cache."""
    import onnx
    from filelock import FileLock

    from orchestrator.backends.trtexec import parse_size, short_version

    settings = call.config["build"]
    require_tensorrt()
    import tensorrt as trt

    features = ApiFeatures.of_module(trt)
    entries = plugin_entries(call.config["plugins"])
    plan = precision_plan(settings["precision"], features,
                          {op: e.precisions for op, e in entries.items() if e is not None}, is_quantized(model))
    inputs = graph_input_dims(model)
    profiles = resolve_profiles(settings["profiles"], inputs)
    graph_file = graph_path
    if plan.cast_graph:
        half, _ = cast_float_graph(model, plan.cast_graph)
        graph_file = call.out / "model.fp16.onnx"
        onnx.save(half, str(graph_file))

    logger = make_logger(call.out / "build.log")
    libraries = [str(p) for p in call.paths.get("plugin_libraries", [])]
    namespaces = sorted({str(node.get("namespace", "")) for node in checked})
    registry = register_plugins(logger, libraries, namespaces)
    check_creators(registry, features, checked, libraries)

    builder = trt.Builder(logger)
    flags = 0
    for name in features.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    call.progress("parsing the graph")
    if features.parse_api == "parse_from_file":
        parsed = parser.parse_from_file(str(graph_file))
    else:
        parsed = parser.parse(graph_file.read_bytes(), str(graph_file.parent))
    if not parsed:
        errors = []
        for index in range(parser.num_errors):
            error: Any = parser.get_error(index)
            errors.append({"desc": error.desc(), "code": error.code(), "node": error.node(),
                           "node_name": error.node_name() if hasattr(error, "node_name") else "",
                           "node_operator": error.node_operator() if hasattr(error, "node_operator") else ""})
        nodes = [(n.name, n.op_type) for n in model.graph.node]
        raise UserError("TensorRT's ONNX parser rejected the graph: " + "; ".join(parser_error_lines(errors, nodes)),
                        field="build", hint="a plugin node needs plugin_version/plugin_namespace attributes that "
                        "match a registered creator; `orchestrate doctor` lists the catalog's creators")

    config = builder.create_builder_config()
    workspace = parse_size(settings["workspace"])
    if features.workspace_api == "set_memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    elif features.workspace_api == "max_workspace_size":
        legacy_config: Any = config
        legacy_config.max_workspace_size = workspace
    for flag in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if needs_profiles(inputs, bool(settings["profiles"])):
        for ranges in profiles:
            profile = builder.create_optimization_profile()
            for name, shape_range in ranges.items():
                profile.set_shape(name, trt.Dims(list(shape_range.min)), trt.Dims(list(shape_range.opt)),
                                  trt.Dims(list(shape_range.max)))
            config.add_optimization_profile(profile)

    cache_file = None
    cache_state = "off"
    if settings.get("timing_cache") and call.shared_dir is not None:
        cache_file = timing_cache_file(call.shared_dir, short_version(features.version), environment.build_gpu())
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_file) + ".lock"):
            existing = cache_file.read_bytes() if cache_file.exists() else b""
        cache_state = "reused" if existing else "new"
        try:
            cache = config.create_timing_cache(existing)
            usable = cache is not None and config.set_timing_cache(cache, False)
        except (RuntimeError, TypeError, ValueError):
            usable = False
        if not usable:  # a cache this TensorRT cannot read: start a new one, which replaces it afterwards
            config.set_timing_cache(config.create_timing_cache(b""), False)
            cache_state = "unreadable, started anew"

    call.progress("building the engine")
    started = time.perf_counter()
    serialized: bytes | None
    if features.build_api == "build_serialized_network":
        host = builder.build_serialized_network(network, config)
        serialized = bytes(host) if host is not None else None
    else:
        legacy_builder: Any = builder
        engine = legacy_builder.build_engine(network, config)
        serialized = bytes(engine.serialize()) if engine is not None else None
    seconds = time.perf_counter() - started
    if serialized is None:
        raise RuntimeError(f"TensorRT {features.version} could not build the engine:\n{logger.errors()}")
    (call.out / "engine.plan").write_bytes(serialized)

    if cache_file is not None:
        with FileLock(str(cache_file) + ".lock"):  # read-merge-write: keep what other builds added meanwhile
            built_cache = config.get_timing_cache()
            if cache_file.exists():
                with contextlib.suppress(RuntimeError, TypeError, ValueError):  # unreadable: ours replaces it
                    built_cache.combine(config.create_timing_cache(cache_file.read_bytes()), True)
            write_atomically(cache_file, bytes(built_cache.serialize()))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise RuntimeError(f"TensorRT {features.version} built an engine it cannot load:\n{logger.errors()}")
    io = engine_io(engine, features)
    ops = {node["op"] for node in checked}
    description = {
        "backend": "tensorrt", "tensorrt": features.version, "api": features.describe(),
        "precision": plan.describe(), "graph": graph_file.name if graph_file != graph_path else "model.onnx",
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in io if t.is_input],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in io if not t.is_input],
        "plugin_outputs": plugin_outputs(model, ops), "libraries": libraries, "namespaces": namespaces,
        "profiles": [{n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in p.items()}
                     for p in profiles],
    }
    (call.out / "engine.json").write_text(json.dumps(description, indent=1))
    count = len(checked)
    summary = (f"TensorRT {features.version} engine, {plan.describe()}, {count} plugin node{'s' if count != 1 else ''} "
               f"{', '.join(sorted(ops))} (creator found), {len(serialized) / 1e6:.1f} MB in {seconds:.1f} s, "
               f"timing cache {cache_state}")
    return {"summary": summary, "backend": "tensorrt", "tensorrt": features.version, "api": features.describe(),
            "precision_plan": plan.describe(), "engine_bytes": len(serialized), "build_seconds": seconds,
            "timing_cache": cache_state}


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[Any]
    plugin: str | None = None  # the plugin op that produces this output directly


class Runner:
    """Runs engine.plan on the GPU: named-tensor I/O (bindings on releases without it), CUDA-event timing."""

    def __init__(self, artifact_dir: Path, threads: int = 0, trusted: Trusted | None = None) -> None:
        self.description = json.loads((artifact_dir / "engine.json").read_text())
        require_tensorrt()
        import tensorrt as trt

        self.features = ApiFeatures.of_module(trt)
        self.logger = make_logger()
        # engine.json is data: a library it names is loaded only if its bytes are one the pipeline declares.
        libraries = [(trusted or Trusted()).library(str(p)) for p in self.description.get("libraries", [])]
        register_plugins(self.logger, libraries, self.description.get("namespaces", []))
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine((artifact_dir / "engine.plan").read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT {self.features.version} cannot load engine.plan (built with TensorRT "
                               f"{self.description.get('tensorrt')}):\n{self.logger.errors()}")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.io = engine_io(engine, self.features)
        self.buffers = open_buffers()
        self.device: dict[str, DeviceArray] = {}

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.dtype, [d if d >= 0 else None for d in t.shape]) for t in self.io if t.is_input]

    @property
    def outputs(self) -> list[TensorSpec]:
        producers = self.description.get("plugin_outputs", {})
        return [TensorSpec(t.name, t.dtype, [d if d >= 0 else None for d in t.shape], producers.get(t.name))
                for t in self.io if not t.is_input]

    def result_shape(self, name: str, shape: Sequence[int]) -> tuple[int, ...] | None:
        """The shape the model uses for output `name` (the catalog's rule for the plugin that made it)."""
        return result_shape(self.description.get("plugin_outputs", {}).get(name), shape)

    def _bind(self, feeds: Mapping[str, Any]) -> None:
        self.device.clear()
        context: Any = self.context
        named = self.features.io_api == "named"
        for tensor in self.io:
            if not tensor.is_input:
                continue
            if tensor.name not in feeds:
                raise UserError(f"the engine takes an input '{tensor.name}' that was not given", field="capture")
            array = cast_for_engine(tensor.name, feeds[tensor.name], tensor.dtype)
            accepted = (context.set_input_shape(tensor.name, tuple(array.shape)) if named
                        else context.set_binding_shape(tensor.index, tuple(array.shape)))
            if accepted is False:
                raise UserError(f"input '{tensor.name}' has shape {list(array.shape)}, outside the engine's "
                                f"optimization profile", field="build.profiles")
            self.device[tensor.name] = self.buffers.upload(array)
        for tensor in self.io:
            if tensor.is_input:
                continue
            shape = _dims(context.get_tensor_shape(tensor.name) if named else context.get_binding_shape(tensor.index))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output '{tensor.name}' still has a dynamic shape {list(shape)} after setting "
                                   "the input shapes")
            self.device[tensor.name] = self.buffers.empty(shape, tensor.dtype)
        if named:
            for tensor in self.io:
                context.set_tensor_address(tensor.name, self.device[tensor.name].ptr)

    def _execute(self) -> None:
        context: Any = self.context
        if self.features.io_api == "named":
            ok = context.execute_async_v3(self.buffers.stream_handle)
        else:
            bindings = [self.device[t.name].ptr for t in sorted(self.io, key=lambda t: t.index)]
            ok = context.execute_async_v2(bindings, self.buffers.stream_handle)
        if not ok:
            raise RuntimeError(f"TensorRT could not run the engine:\n{self.logger.errors()}")

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        self._bind(feeds)
        self._execute()
        return {t.name: self.buffers.download(self.device[t.name]) for t in self.io if not t.is_input}

    def bench(self, feeds: Mapping[str, Any], warmup: int, iterations: int, max_seconds: float) -> list[float]:
        """GPU time per run (CUDA events around each enqueue), inputs already on the device."""
        self._bind(feeds)
        for _ in range(warmup):
            self._execute()
        self.buffers.synchronize()
        timings: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(timings) < iterations and (not timings or time.perf_counter() < deadline):
            start, end = self.buffers.event(), self.buffers.event()
            self.buffers.record(start)
            self._execute()
            self.buffers.record(end)
            timings.append(self.buffers.seconds_between(start, end))
        return timings

    def close(self) -> None:
        self.buffers.synchronize()
        self.device.clear()
        del self.context  # TensorRT objects go before the buffers' CUDA context is released
        del self.engine
        self.buffers.close()


# ---------------------------------------------------------------------------------------------------------------
# What `orchestrate doctor` says about this backend


def doctor_lines() -> list[str]:
    """Why the TensorRT backend can or cannot run here: module, API generation, creators, CUDA buffers."""
    lines = []
    if environment.importable("tensorrt"):  # (when it is not, the backends list already says so)
        try:
            import tensorrt as trt

            features = ApiFeatures.of_module(trt)
            lines.append(f"  tensorrt API             {features.describe()}")
            registry = register_plugins(make_logger(), [], [""])
            for op in catalog.BUILTIN:
                entry = catalog.builtin(op)
                versions = entry.versions if entry is not None else ("1",)
                state = ", ".join(f"v{v} {'registered' if has_creator(registry, features, op, v, '') else 'missing'}"
                                  for v in versions)
                lines.append(f"  creator {op}: {state}")
        except (RuntimeError, OSError, AttributeError, TypeError) as exc:
            lines.append(f"  tensorrt API             import failed: {type(exc).__name__}: {exc}")
    pycuda = environment.importable("pycuda")
    torch_cuda = "not checked"
    if environment.importable("torch"):
        import torch

        torch_cuda = "available" if torch.cuda.is_available() else "no CUDA device or CPU-only build"
    try:
        library = buffer_library(pycuda, torch_cuda == "available")
        lines.append(f"  CUDA buffers             {library} (pycuda {'installed' if pycuda else 'not installed'}, "
                     f"torch CUDA {torch_cuda})")
    except UserError:
        lines.append(f"  CUDA buffers             unavailable: pycuda not installed, torch CUDA {torch_cuda}")
    return lines

"""Building an engine with TensorRT's Python API: parse the plugin graph, configure the builder (workspace,
precision flags, optimization profiles, the shared timing cache), build, and describe the engine.

Build writes engine.plan, engine.json (inputs, outputs, which outputs a plugin produced, plugin
libraries and namespaces, profiles, shape-tensor inputs) and build.log; the runner loads them. A
shape-tensor input (one whose values set other tensors' shapes, as the parser finds) gets a profile
range of its values, not of its dims.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import environment
from orchestrator.backends.base import BuildRequest, Built
from orchestrator.backends.tensorrt.api import (
    ApiFeatures,
    LogSink,
    capturing,
    process_logger,
    require_tensorrt,
    short_version,
)
from orchestrator.backends.tensorrt.cache import open_timing_cache, save_timing_cache, timing_cache_file
from orchestrator.backends.tensorrt.creators import check_creators, parser_error_lines, register_plugins
from orchestrator.backends.tensorrt.graph import graph_to_build, is_quantized, plugin_outputs
from orchestrator.backends.tensorrt.precision import PrecisionPlan, hold_kept_layers, plugin_precisions, precision_plan
from orchestrator.backends.tensorrt.runner import IoTensor, engine_io
from orchestrator.backends.tensorrt.settings import (
    Dims,
    ShapeRange,
    graph_input_dims,
    needs_profiles,
    parse_size,
    require_ordered,
    resolve_profiles,
)
from orchestrator.errors import UserError

if TYPE_CHECKING:
    import tensorrt as trt


def build(request: BuildRequest) -> Built:
    """Parse the plugin graph, build engine.plan with the YAML's precision, profiles and timing cache."""
    require_tensorrt()
    import tensorrt as trt

    features = ApiFeatures.of_module(trt)
    plan = precision_plan(request.precision, features, plugin_precisions(request.plugins),
                          is_quantized(request.model), request.keep_fp32)
    inputs = graph_input_dims(request.model)
    graph_file, _ = graph_to_build(request.model, request.graph, request.out, plan.cast_graph, request.keep_fp32,
                                   {node.op for node in request.plugin_nodes})

    with LogSink(request.out / "build.log") as sink, capturing(sink):
        logger = process_logger()
        libraries = list(request.plugin_libraries)
        namespaces = sorted({node.namespace for node in request.plugin_nodes})
        registry = register_plugins(logger, libraries, namespaces)
        check_creators(registry, features, request.plugin_nodes, libraries, request.catalogs())

        builder = trt.Builder(logger)
        network = parse_graph(builder, features, graph_file, request)
        shape_inputs = network_shape_inputs(network)
        profiles = build_profiles(request.profiles, inputs, shape_inputs)
        config = builder.create_builder_config()
        configure(config, features, plan, parse_size(request.workspace))
        hold_kept_layers(network, config, features, plan, request.model, request.keep_fp32)
        if needs_profiles(inputs, bool(request.profiles)) or shape_inputs:
            add_profiles(builder, config, profiles, shape_inputs)
        cache_file = None
        cache_state = "off"
        if request.timing_cache and request.shared_dir is not None:
            cache_file = timing_cache_file(request.shared_dir, short_version(features.version),
                                           environment.build_gpu())
            cache_state = open_timing_cache(config, cache_file)

        request.progress("building the engine")
        started = time.perf_counter()
        serialized = serialize(builder, network, config, features, sink)
        seconds = time.perf_counter() - started
        (request.out / "engine.plan").write_bytes(serialized)
        if cache_file is not None:
            save_timing_cache(config, cache_file)
        io = loaded_io(logger, sink, serialized, features)
    description = describe(request, features, plan, graph_file, io, profiles, namespaces)
    (request.out / "engine.json").write_text(json.dumps(description, indent=1))
    return summarise(request, features, plan, len(serialized), seconds, cache_state)


def network_shape_inputs(network: trt.INetworkDefinition) -> list[str]:
    """The network's shape-tensor inputs (their values set other tensors' shapes), as the parser found them."""
    found = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if tensor.is_shape_tensor:
            found.append(tensor.name)
    return found


def value_range(given: Mapping[str, Sequence[int]] | None, name: str, dims: Dims, where: str) -> ShapeRange:
    """The range of a shape-tensor input's values (one per element), checked: min <= opt <= max each."""
    if given is None:
        raise UserError(f"input '{name}' is a shape tensor (its values set the shapes of other tensors): the "
                        "profile must give the range of its values", field=where,
                        hint=f"{name}: {{min: [...], opt: [...], max: [...]}} (values, not dims)")
    if None in dims:
        raise UserError(f"shape-tensor input '{name}' has dynamic dims {list(dims)}; TensorRT needs them fixed",
                        field=where)
    count = math.prod(int(d or 0) for d in dims)
    shape_range = ShapeRange(*(tuple(int(v) for v in given[k]) for k in ("min", "opt", "max")))
    for label, values in (("min", shape_range.min), ("opt", shape_range.opt), ("max", shape_range.max)):
        if len(values) != count:
            raise UserError(f"{label} {list(values)} gives {len(values)} values; shape-tensor input '{name}' "
                            f"{list(dims)} holds {count}", field=f"{where}.{name}.{label}")
    require_ordered(shape_range, f"shape-tensor input '{name}'", "for every value", f"{where}.{name}")
    return shape_range


def build_profiles(profiles: Sequence[Mapping[str, Mapping[str, Sequence[int]]]], inputs: Mapping[str, Dims],
                   shape_inputs: Sequence[str]) -> list[dict[str, ShapeRange]]:
    """The profiles to build (settings.resolve_profiles), where a shape-tensor input's range is of its values."""
    if not shape_inputs:
        return resolve_profiles(profiles, inputs)
    if not profiles:
        value_range(None, shape_inputs[0], inputs.get(shape_inputs[0], ()), "build.profiles")
    others = {name: dims for name, dims in inputs.items() if name not in shape_inputs}
    resolved = resolve_profiles([{n: r for n, r in p.items() if n not in shape_inputs} for p in profiles], others)
    for index, (profile, ranges) in enumerate(zip(profiles, resolved, strict=True)):
        for name in shape_inputs:
            ranges[name] = value_range(profile.get(name), name, inputs.get(name, ()), f"build.profiles[{index}]")
    return resolved


def parse_graph(builder: trt.Builder, features: ApiFeatures, graph_file: Path,
                request: BuildRequest) -> trt.INetworkDefinition:
    """The network TensorRT's ONNX parser makes of `graph_file`; a UserError naming each node it rejects."""
    import tensorrt as trt

    flags = 0
    for name in features.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, process_logger())
    request.progress("parsing the graph")
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
        nodes = [(n.name, n.op_type) for n in request.model.graph.node]
        raise UserError("TensorRT's ONNX parser rejected the graph: " + "; ".join(parser_error_lines(errors, nodes)),
                        field="build", hint="a plugin node needs plugin_version/plugin_namespace attributes that "
                        "match a registered creator; `orchestrate doctor` lists the catalog's creators")
    return network


def configure(config: trt.IBuilderConfig, features: ApiFeatures, plan: PrecisionPlan, workspace: int) -> None:
    """The workspace limit, through whichever call this TensorRT has, and the precision plan's builder flags."""
    import tensorrt as trt

    if features.workspace_api == "set_memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    elif features.workspace_api == "max_workspace_size":
        legacy_config: Any = config
        legacy_config.max_workspace_size = workspace
    for flag in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))


def add_profiles(builder: trt.Builder, config: trt.IBuilderConfig, profiles: Sequence[Mapping[str, ShapeRange]],
                 shape_inputs: Sequence[str] = ()) -> None:
    """One optimization profile each: dims ranges, and for shape-tensor inputs the ranges of their values."""
    import tensorrt as trt

    for index, ranges in enumerate(profiles):
        profile = builder.create_optimization_profile()
        for name, shape_range in ranges.items():
            if name in shape_inputs:
                profile.set_shape_input(name, list(shape_range.min), list(shape_range.opt), list(shape_range.max))
            else:
                profile.set_shape(name, trt.Dims(list(shape_range.min)), trt.Dims(list(shape_range.opt)),
                                  trt.Dims(list(shape_range.max)))
        if config.add_optimization_profile(profile) < 0:
            raise UserError(f"TensorRT refused optimization profile {index}: {profiles_json([ranges])[0]}",
                            field=f"build.profiles[{index}]")


def serialize(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
              features: ApiFeatures, sink: LogSink) -> bytes:
    """The built engine's bytes, through `build_serialized_network` or (before it) `build_engine`."""
    serialized: bytes | None
    if features.build_api == "build_serialized_network":
        host = builder.build_serialized_network(network, config)
        serialized = bytes(host) if host is not None else None
    else:
        legacy_builder: Any = builder
        engine = legacy_builder.build_engine(network, config)
        serialized = bytes(engine.serialize()) if engine is not None else None
    if serialized is None:
        raise RuntimeError(f"TensorRT {features.version} could not build the engine:\n{sink.errors()}")
    return serialized


def loaded_io(logger: Any, sink: LogSink, serialized: bytes, features: ApiFeatures) -> list[IoTensor]:
    """The engine's inputs and outputs, read from the engine as loaded back (so a build that cannot load fails)."""
    import tensorrt as trt

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise RuntimeError(f"TensorRT {features.version} built an engine it cannot load:\n{sink.errors()}")
    return engine_io(engine, features)


def describe(request: BuildRequest, features: ApiFeatures, plan: PrecisionPlan, graph_file: Path,
             io: Sequence[IoTensor], profiles: Sequence[Mapping[str, ShapeRange]],
             namespaces: Sequence[str]) -> dict[str, Any]:
    """engine.json: what the runner needs to load and run the engine, and how it was built."""
    return {
        "backend": "tensorrt", "tensorrt": features.version, "api": features.describe(),
        "precision": plan.describe(), "graph": graph_file.name if graph_file != request.graph else "model.onnx",
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in io if t.is_input],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in io if not t.is_input],
        "plugin_outputs": plugin_outputs(request.model, {node.op for node in request.plugin_nodes}),
        "libraries": list(request.plugin_libraries), "namespaces": list(namespaces),
        "profiles": profiles_json(profiles),
        "shape_inputs": [t.name for t in io if t.is_input and t.host],  # their profile ranges are of values
    }


def profiles_json(profiles: Sequence[Mapping[str, ShapeRange]]) -> list[dict[str, dict[str, list[int]]]]:
    return [{n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in p.items()} for p in profiles]


def summarise(request: BuildRequest, features: ApiFeatures, plan: PrecisionPlan, size: int, seconds: float,
              cache_state: str) -> Built:
    count = len(request.plugin_nodes)
    ops = sorted({node.op for node in request.plugin_nodes})
    summary = (f"TensorRT {features.version} engine, {plan.describe()}, {count} plugin node{'s' if count != 1 else ''} "
               f"{', '.join(ops)} (creator found), {size / 1e6:.1f} MB in {seconds:.1f} s, "
               f"timing cache {cache_state}")
    return Built(summary, {"summary": summary, "backend": "tensorrt", "tensorrt": features.version,
                           "api": features.describe(), "precision_plan": plan.describe(), "engine_bytes": size,
                           "build_seconds": seconds, "timing_cache": cache_state})

"""How one YAML precision is realised on a TensorRT generation: builder flags, or a cast of the graph.

The plugins' own limits come from their catalog entries (built in, or the user's entry the pipeline
declares), so a refusal names TensorRT's limits and each plugin's. The nodes a float16 build keeps in
float32 (graph.fp32_nodes: normalisations, softmax, `build.keep_fp32`) stay float32 on every release:
through the graph cast where TensorRT is strongly typed (11.x), through per-layer precision with
OBEY_PRECISION_CONSTRAINTS where it has builder flags (8.6, 10.x). `kept_layers` decides which layers
from their names, types and outputs; `constrain_layers` is the thin call into TensorRT.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator import plugins as catalog
from orchestrator.backends.base import DeclaredPlugin
from orchestrator.backends.tensorrt.api import ApiFeatures
from orchestrator.backends.tensorrt.graph import fp32_nodes, node_name, node_outputs
from orchestrator.errors import UserError

if TYPE_CHECKING:
    import tensorrt as trt

HALF_FLAGS = ("FP16", "BF16")  # builder flags that let TensorRT pick half layers (the kept ones are held to FP32)

@dataclass(frozen=True)
class PrecisionPlan:
    """How one YAML precision is realised: builder flags to set or clear, or a cast of the graph's floats."""

    precision: str
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    cast_graph: str | None = None  # dtype the graph's float32 tensors become (strongly typed releases)

    @property
    def constrains_layers(self) -> bool:
        """Whether the kept nodes' layers are held to FP32 by builder constraints (half flags, no graph cast)."""
        return self.cast_graph is None and any(flag in HALF_FLAGS for flag in self.set_flags)

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
                   quantized: bool = False, keep_fp32: Collection[str] = ()) -> PrecisionPlan:
    """Builder flags (or a graph cast) for `precision`; a UserError naming TensorRT and the plugins if impossible.

    tf32 and fp32 keep float32 storage, so every plugin that runs fp32 runs them. `best` enables every
    float precision the installed TensorRT offers (INT8 only for a graph with Q/DQ nodes, since
    orchestrate does not calibrate); on a strongly typed release it casts to fp16 when every plugin
    runs fp16. A plugin named in `keep_fp32` (build.keep_fp32) runs float32 whatever the precision, so
    its own limits do not refuse it.
    """
    plugin_precisions = {op: p for op, p in plugin_precisions.items() if op not in keep_fp32}
    label = f"TensorRT {features.version}"
    storage = {"tf32": "fp32", "best": None}.get(precision, precision)
    refusing = {op: p for op, p in plugin_precisions.items() if storage not in (None, "fp32") and storage not in p}
    plan, trt_problem = _realised(precision, features, plugin_precisions, quantized)
    if trt_problem or refusing:
        trt_text = trt_problem or f"{label} supports it"
        raise UserError(f"precision {precision}: {trt_text}; {_plugins_text(plugin_precisions, storage)}",
                        field="build.precision", hint=_refusal_hint(refusing) if refusing else None)
    return plan


def _refusal_hint(refusing: Mapping[str, Sequence[str]]) -> str:
    """What the refusing plugins run, as their catalog entries say ('fp32 and fp16 are what X runs')."""
    return "; ".join(f"{' and '.join(p)} {'are' if len(p) > 1 else 'is'} what {op} runs"
                     for op, p in sorted(refusing.items()))


def _realised(precision: str, features: ApiFeatures, plugin_precisions: Mapping[str, Sequence[str]],
              quantized: bool) -> tuple[PrecisionPlan, str | None]:
    """The plan TensorRT can carry out for `precision`, and why it cannot (None: it can)."""
    label = f"TensorRT {features.version}"
    flags = features.names.get("BuilderFlag", frozenset())
    tf32 = ("TF32",) if "TF32" in flags else ()
    if precision == "fp32":
        return PrecisionPlan(precision, clear_flags=tf32), None
    if precision == "tf32":
        return (PrecisionPlan(precision, set_flags=tf32), None) if tf32 else \
            (PrecisionPlan(precision), f"{label} has no TF32 builder flag")
    if precision == "int8":
        if not quantized:
            return PrecisionPlan(precision), (f"{label} needs a quantized graph (QuantizeLinear/DequantizeLinear "
                                              "nodes) for int8; orchestrate does not calibrate")
        if features.strongly_typed:
            return PrecisionPlan(precision), None
        return (PrecisionPlan(precision, set_flags=("INT8",)), None) if "INT8" in flags else \
            (PrecisionPlan(precision), f"{label} has no INT8 builder flag")
    if precision == "best":
        if features.strongly_typed:
            every_plugin_fp16 = all("fp16" in p for p in plugin_precisions.values())
            return PrecisionPlan(precision, cast_graph="float16" if every_plugin_fp16 else None), None
        wanted = ["FP16", "BF16"] + (["INT8"] if quantized else [])
        return PrecisionPlan(precision, set_flags=tuple(f for f in wanted if f in flags)), None
    if precision in ("fp16", "bf16"):
        flag = precision.upper()
        if flag in flags:
            return PrecisionPlan(precision, set_flags=(flag,)), None
        if features.strongly_typed and precision == "fp16":
            return PrecisionPlan(precision, cast_graph="float16"), None
        if features.strongly_typed:
            return PrecisionPlan(precision), (f"{label} is strongly typed (no {flag} builder flag), so {precision} "
                                              f"needs a {precision} graph, which orchestrate makes only for fp16")
        return PrecisionPlan(precision), f"{label} has no {flag} builder flag"
    return PrecisionPlan(precision), f"{label} has no mapping for precision '{precision}'"


def plugin_precisions(plugins: Sequence[DeclaredPlugin]) -> dict[str, tuple[str, ...]]:
    """The precisions each declared plugin runs, from its catalog entry (the user's where declared).

    A plugin with no catalog entry is left out: only TensorRT limits its precision.
    """
    found: dict[str, tuple[str, ...]] = {}
    for plugin in plugins:
        try:
            found[plugin.op] = tuple(catalog.lookup(plugin.op, plugin.catalog).precisions)
        except UserError:
            continue
    return found


# ---------------------------------------------------------------------------------------------------------------
# Per-layer FP32 on releases with builder precision flags


@dataclass(frozen=True)
class LayerInfo:
    """A layer of the parsed network, as the choice of kept layers reads it."""

    name: str
    kind: str  # its LayerType's name: "NORMALIZATION", "SOFTMAX", "PLUGIN_V2", "PLUGIN_V3", ...
    outputs: tuple[tuple[str, str], ...]  # (tensor name, DataType name: "FLOAT", "HALF", "INT32", ...)


FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
DEFAULT_LAYER_KINDS = ("NORMALIZATION", "SOFTMAX")  # what the parser makes of the ops kept by default


def _made_by(layer: str, node: str) -> bool:
    """Whether a layer name is a node's: the parser names a node's layer after it, and makes further ones
    unique with a '_<n>' suffix."""
    return layer == node or (layer.startswith(f"{node}_") and layer[len(node) + 1:].isdigit())


def kept_layers(layers: Sequence[LayerInfo], kept_nodes: Mapping[str, Sequence[str]],
                graph_nodes: Collection[str] = (), defaults: bool = True) -> dict[int, tuple[int, ...]]:
    """The layers held to FP32, by index, each with the outputs (by index) whose type is set to FLOAT.

    A layer is a kept node's when it carries the node's name (or that name made unique, unless another
    node of the graph, `graph_nodes`, has that very name) or writes one of the node's outputs; with
    `defaults`, every normalisation and softmax layer too. Only layers with a float output are held (a
    constant or shape layer of a kept node computes no float), and only float outputs are retyped.
    """
    outputs_of = {output for outputs in kept_nodes.values() for output in outputs}
    others = set(graph_nodes) - set(kept_nodes)
    chosen: dict[int, tuple[int, ...]] = {}
    for index, layer in enumerate(layers):
        floats = tuple(slot for slot, (_, dtype) in enumerate(layer.outputs) if dtype in FLOAT_TYPES)
        if not floats:
            continue
        named = layer.name not in others and any(_made_by(layer.name, node) for node in kept_nodes)
        writes = any(name in outputs_of for name, _ in layer.outputs)
        if named or writes or (defaults and layer.kind in DEFAULT_LAYER_KINDS):
            chosen[index] = floats
    return chosen


def describe_layer(layer: trt.ILayer) -> LayerInfo:
    outputs = []
    for slot in range(layer.num_outputs):
        tensor = layer.get_output(slot)
        outputs.append((tensor.name, str(tensor.dtype).rsplit(".", 1)[-1]))
    return LayerInfo(layer.name, str(layer.type).rsplit(".", 1)[-1], tuple(outputs))


def constrain_layers(network: trt.INetworkDefinition, config: trt.IBuilderConfig, features: ApiFeatures,
                     kept_nodes: Mapping[str, Sequence[str]], graph_nodes: Collection[str] = (),
                     defaults: bool = True) -> int:
    """Hold the kept nodes' layers to FP32 (precision and float output types) and make the builder obey;
    returns how many layers. Only where builder flags pick precisions (not on strongly typed releases)."""
    import tensorrt as trt

    layers = [network.get_layer(index) for index in range(network.num_layers)]
    chosen = kept_layers([describe_layer(layer) for layer in layers], kept_nodes, graph_nodes, defaults)
    for index, slots in chosen.items():
        layers[index].precision = trt.float32
        for slot in slots:
            layers[index].set_output_type(slot, trt.float32)
    if chosen and features.has("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"):
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return len(chosen)


def hold_kept_layers(network: trt.INetworkDefinition, config: trt.IBuilderConfig, features: ApiFeatures,
                     plan: PrecisionPlan, model: Any, keep_fp32: Sequence[str]) -> int:
    """Where the plan picks half layers by builder flags: the layers of the nodes kept in float32 (graph.fp32_nodes
    of the parsed `model`) held to FP32; how many."""
    if not plan.constrains_layers:
        return 0
    kept = fp32_nodes(model, keep_fp32)
    names = [node_name(node, index) for index, node in enumerate(model.graph.node)]
    return constrain_layers(network, config, features, node_outputs(model, kept), names)

"""How one YAML precision is realised on a TensorRT generation: builder flags, or a cast of the graph.

The plugins' own limits come from their catalog entries (built in, or the user's entry the pipeline
declares), so a refusal names TensorRT's limits and each plugin's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator import plugins as catalog
from orchestrator.backends.base import DeclaredPlugin
from orchestrator.backends.tensorrt.api import ApiFeatures
from orchestrator.errors import UserError


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

"""bench: time the built artifact on the captured inputs.

Warm-up runs, then timed runs until the iteration count or the time budget is reached (at least
one). Reports min / median / p90 / p99 latency, throughput, bytes in and out and the bandwidth
those bytes imply at the median latency. Writes bench.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator import environment

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node

import json
from dataclasses import dataclass

from orchestrator import backends
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant
from orchestrator.tensors import feeds_for


@dataclass(frozen=True)
class BenchSettings:
    """The bench section: warm-up runs, timed iterations and the time budget they stop at."""

    warmup: int
    iterations: int
    max_seconds: float

    @classmethod
    def from_keyed(cls, config: Mapping[str, Any]) -> BenchSettings:
        section = config["bench"]
        return cls(section["warmup"], section["iterations"], section["max_seconds"])

    def keyed(self) -> dict[str, Any]:
        return {"bench": {"warmup": self.warmup, "iterations": self.iterations, "max_seconds": self.max_seconds}}


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def run(call: StageCall) -> StageResult:
    settings: BenchSettings = call.settings
    build, capture = call.inputs["build"], call.inputs["capture"]
    backend = build.manifest["result"]["backend"]
    runner = backends.open_built(build, call.unkeyed.get("threads", 0))
    feeds = feeds_for(runner.inputs, capture.path)
    timed = runner.bench(feeds, settings.warmup, settings.iterations, settings.max_seconds, call.progress)
    timings, outputs = timed.seconds, timed.outputs
    runner.close()
    ordered = sorted(timings)
    median = percentile(ordered, 0.5)
    bytes_in = sum(int(a.nbytes) for a in feeds.values())
    bytes_out = sum(int(a.nbytes) for a in outputs.values())
    figures = {
        "backend": backend, "timer": timed.timer,
        "iterations": len(timings), "warmup": settings.warmup,
        "min_ms": ordered[0] * 1e3, "median_ms": median * 1e3, "p90_ms": percentile(ordered, 0.9) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3, "mean_ms": sum(ordered) / len(ordered) * 1e3,
        "throughput_per_s": 1.0 / median if median > 0 else float("inf"),
        "bytes_in": bytes_in, "bytes_out": bytes_out,
        "bandwidth_gb_s": (bytes_in + bytes_out) / median / 1e9 if median > 0 else float("inf"),
        "timings_ms": [t * 1e3 for t in timings],
    }
    (call.out / "bench.json").write_text(json.dumps(figures, indent=1))
    summary = (f"median {figures['median_ms']:.2f} ms (min {figures['min_ms']:.2f}, p90 {figures['p90_ms']:.2f}, "
               f"p99 {figures['p99_ms']:.2f}) over {len(timings)} runs, {figures['throughput_per_s']:.1f}/s, "
               f"{figures['bandwidth_gb_s']:.2f} GB/s")
    return StageResult(summary, {k: v for k, v in figures.items() if k != "timings_ms"})


def plan(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned | None:
    """The bench's key: its settings, the build and the capture it feeds; none unless bench.enabled."""
    data = variant.data
    if not data["bench"]["enabled"]:
        return None
    return Planned(BenchSettings.from_keyed(data), {"build": planned["build"], "capture": planned["capture"]},
                   {}, environment.tools("numpy"), {"threads": data["build"]["threads"]})


STAGE = Stage(
    "bench", version=1, plan=plan, run=run, exclusive=True,
    outputs=("bench.json",),
)

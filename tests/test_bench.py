"""The bench stage: its figures, its cache, `--force bench`, and the time budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import Project, stage_status

from orchestrator.stages.bench import percentile


def bench_record(store: Path) -> tuple[dict, dict]:
    """The newest bench artifact's bench.json and manifest."""
    folder = max((p for p in (store / "bench").iterdir() if (p / "manifest.json").is_file()),
                 key=lambda p: (p / "manifest.json").stat().st_mtime)
    return json.loads((folder / "bench.json").read_text()), json.loads((folder / "manifest.json").read_text())


def test_bench_figures_cache_and_force(project: Project) -> None:
    pipeline = project.small()
    cold = project.run("run", str(pipeline))
    assert cold.code == 0, cold.text
    figures, manifest = bench_record(project.store)
    timings = sorted(figures["timings_ms"])
    assert figures["iterations"] == len(timings) == 3 and figures["warmup"] == 1
    assert figures["timer"] == "perf_counter" and figures["backend"] == "onnxruntime"
    assert figures["min_ms"] == timings[0] <= figures["median_ms"] <= figures["p90_ms"] <= figures["p99_ms"]
    assert figures["p99_ms"] == timings[-1]
    assert abs(figures["throughput_per_s"] * figures["median_ms"] / 1e3 - 1) < 1e-12

    capture = next((project.store / "capture").glob("*/capture.json"))
    record = json.loads(capture.read_text())
    runplan = json.loads(next((project.store / "build").glob("*/runplan.json")).read_text())
    bytes_in = sum(int(np.prod(record["inputs"][i["name"]]["shape"])) * np.dtype(i["dtype"]).itemsize
                   for i in runplan["inputs"])
    bytes_out = sum(int(np.prod(o["shape"])) * np.dtype(o["dtype"]).itemsize for o in runplan["outputs"])
    assert figures["bytes_in"] == bytes_in and figures["bytes_out"] == bytes_out
    assert abs(figures["bandwidth_gb_s"] - (bytes_in + bytes_out) / (figures["median_ms"] / 1e3) / 1e9) < 1e-12
    assert manifest["result"]["median_ms"] == figures["median_ms"] and "timings_ms" not in manifest["result"]

    cached = project.run("run", str(pipeline))
    assert cached.code == 0 and set(stage_status(cached.out).values()) == {"cached"}, cached.text

    forced = project.run("run", str(pipeline), "--force", "bench")
    assert forced.code == 0, forced.text
    status = stage_status(forced.out)
    assert status.pop("bench") == "ran" and set(status.values()) == {"cached"}
    again, _ = bench_record(project.store)
    assert again["timings_ms"] != figures["timings_ms"]  # measured anew, not the old artifact
    shown = project.run("show", str(pipeline), "--stage", "bench")
    assert shown.code == 0 and "median" in shown.text.lower(), shown.text


def test_time_budget_ends_the_iterations(project: Project) -> None:
    """A count no run could reach in the budget: the budget ends it, after at least one run."""
    pipeline = project.small(**{"iterations: 3": "iterations: 100000000\n  max_seconds: 0.5"})
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    figures, _ = bench_record(project.store)
    assert 1 <= figures["iterations"] < 100000000
    assert sum(figures["timings_ms"]) < 0.5e3 + max(figures["timings_ms"]) + 1.0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.9) == 90.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0

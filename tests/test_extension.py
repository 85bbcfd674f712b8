"""Extending orchestrate without touching its files: a new stage, a new backend and a new plugin, each
defined here (a module of its own in a real change) and registered by one line in its registry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from test_catalog import TOY_PIPELINE, write_toy_capture

from orchestrator import backends, onnx_graph, stages
from orchestrator import plugins as catalog
from orchestrator.backends.base import Backend, BuildRequest, Built, Runner, RunnerBase, TensorSpec, Trusted
from orchestrator.config import spec
from orchestrator.planning.plan import Node, make_plan
from orchestrator.run.executor import Executor
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant
from orchestrator.store.store import Store

# ----------------------------------------------------------------------------- a stage


@dataclass(frozen=True)
class ChecksumSettings:
    algorithm: str

    def keyed(self) -> dict[str, Any]:
        return {"checksum": {"algorithm": self.algorithm}}


def plan_checksum(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned | None:
    return Planned(ChecksumSettings("sha256"), {"build": planned["build"]})


def run_checksum(call: StageCall) -> StageResult:
    settings: ChecksumSettings = call.settings
    build = call.inputs["build"].path
    sums = {path.name: hashlib.new(settings.algorithm, path.read_bytes()).hexdigest()
            for path in sorted(build.rglob("*")) if path.is_file() and path.name != "manifest.json"}
    (call.out / "checksums.json").write_text(json.dumps(sums))
    return StageResult(f"{len(sums)} files summed ({settings.algorithm})", {"files": len(sums)})


CHECKSUM = Stage("checksum", version=1, plan=plan_checksum, run=run_checksum, outputs=("checksums.json",))


def toy(project: Project) -> Path:
    write_toy_capture(project.root / "tensors")
    return project.write("toy.yaml", TOY_PIPELINE)


def forget_scratch_modules(scratch: Path) -> None:
    """Drop modules earlier tests of this process imported from their scratch folders (under `scratch`): a stage
    run in this process records every user module loaded (discovered inputs), and those folders change."""
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(f"{scratch}{os.sep}"):
            del sys.modules[name]


def run_in_process(pipeline: Path, store: Store) -> dict[str, str]:
    forget_scratch_modules(pipeline.resolve().parents[1])  # pytest's base folder of every test's tmp_path
    report = Executor(make_plan(spec.load(pipeline), store.digests), store, echo=lambda _: None,
                      progress=False).run()
    assert report.exit_code == 0
    return {outcome.node.kind: outcome.status for outcome in report.outcomes}


def test_a_stage_is_one_module_and_one_line_in_stages(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES, CHECKSUM))  # the one line
    monkeypatch.chdir(project.root)
    store = Store(project.store)
    pipeline = toy(project)
    assert run_in_process(pipeline, store)["checksum"] == "ran"
    artifact = next((project.store / "checksum").iterdir())
    sums = json.loads((artifact / "checksums.json").read_text())
    assert sums and all(len(digest) == 64 for digest in sums.values())
    assert any(kind == "checksum" for kind, _, _ in store.artifacts())  # the store lists it (gc, fsck, push)
    assert stages.declares("checksum", "checksums.json") and not stages.declares("checksum", "other.bin")

    assert set(run_in_process(pipeline, store).values()) == {"cached"}
    newer = Stage("checksum", version=2, plan=plan_checksum, run=run_checksum, outputs=("checksums.json",))
    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES[:-1], newer))  # its version is in its key
    statuses = run_in_process(pipeline, store)
    assert statuses["checksum"] == "ran" and {statuses[s] for s in ("build", "verify")} == {"cached"}


# ----------------------------------------------------------------------------- a backend


class KernelsRunner(RunnerBase):
    """Runs a graph of plugin nodes (and the casts the export puts before them), each plugin node with its
    catalog entry's reference kernel."""

    def __init__(self, graph: Path, trusted: Trusted):
        import onnx

        self.graph = onnx.load(str(graph)).graph
        self.trusted = trusted

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(**onnx_graph.value_meta(value)) for value in self.graph.input]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(**onnx_graph.value_meta(value)) for value in self.graph.output]

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        values = dict(feeds)
        for node in self.graph.node:
            if node.op_type == "Cast":
                to = onnx_graph.dtype_name(onnx_graph.node_attributes(node)["to"])
                values[node.output[0]] = values[node.input[0]].astype(to)
                continue
            declared = self.trusted.plugin(node.op_type)
            assert declared is not None, f"{node.op_type} is not a declared plugin"
            kernel = catalog.lookup(node.op_type, declared.get("catalog")).load_kernel()
            results = kernel([values[name] for name in node.input], onnx_graph.node_attributes(node))
            values.update(zip(node.output, results, strict=True))
        return {value.name: values[value.name] for value in self.graph.output}


class KernelsBackend(Backend):
    name = "kernels"
    title = "reference kernels"
    precisions = ("fp32",)

    def build(self, request: BuildRequest) -> Built:
        shutil.copyfile(request.graph, request.out / "graph.onnx")
        return Built(f"{len(request.plugin_nodes)} plugin node(s), run by their reference kernels", {})

    def open(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None) -> Runner:
        return KernelsRunner(artifact / "graph.onnx", trusted or Trusted())


BACKEND = KernelsBackend()


def test_a_backend_is_one_module_and_one_line_in_the_registry(project: Project,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.REGISTRY, "kernels", backends.Registered(__name__, ("graph.onnx",)))  # the line
    monkeypatch.chdir(project.root)
    write_toy_capture(project.root / "tensors")
    pipeline = project.write("toy.yaml", TOY_PIPELINE.replace("backend: onnxruntime", "backend: kernels"))
    store = Store(project.store)
    statuses = run_in_process(pipeline, store)
    assert statuses["build"] == "ran" and statuses["verify"] == "passed" and statuses["bench"] == "ran"
    build = next((project.store / "build").iterdir())
    assert (build / "graph.onnx").is_file()
    verify = json.loads((next((project.store / "verify").iterdir()) / "verify.json").read_text())
    assert verify["passed"] and verify["outputs"]["output"]["max_abs"] == 0.0


# ----------------------------------------------------------------------------- a plugin


def test_a_builtin_plugin_is_one_module_and_one_line_in_the_catalog(project: Project,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy's entry registered as a built-in: the pipeline names the op alone, no `catalog:`."""
    monkeypatch.setitem(catalog.BUILTIN, "ScaledGatherPlugin", "examples.ops.scaled_gather:ENTRY")  # the one line
    monkeypatch.chdir(project.root)
    write_toy_capture(project.root / "tensors")
    pipeline = project.write("toy.yaml", TOY_PIPELINE.replace("      catalog: examples.ops.scaled_gather:ENTRY\n", ""))
    statuses = run_in_process(pipeline, Store(project.store))
    assert statuses["verify"] == "passed"

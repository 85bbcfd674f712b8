"""Extending orchestrate without touching its files: a new stage, a new backend and a new plugin, each
defined here (a module of its own in a real change) and registered by one line in its registry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from test_catalog import TOY_PIPELINE, write_toy_capture

from orchestrator import plugins as catalog
from orchestrator import stages
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


def run_in_process(pipeline: Path, store: Store) -> dict[str, str]:
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

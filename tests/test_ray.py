"""The Ray executor: a matrix on a local Ray instance equals the local executor; resources per stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_CALL, SMALL_MODEL, Project, artifact_digests
from test_variants import MATRIX, RAN, lines

from orchestrator import environment
from orchestrator.errors import UserError


def test_matrix_on_a_local_ray_instance_equals_the_local_executor(project: Project, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pipeline = project.write("matrix.yaml", MATRIX)
    remote = tmp_path / "remote"
    on_ray = project.run("run", str(pipeline), "--executor", "ray", "-j", "2",
                         env={"ORCHESTRATE_REMOTE": str(remote)})
    assert on_ray.code == 0, on_ray.text
    ran = [line for line in lines(on_ray.out) if line[2] in RAN]
    # 16 distinct stages; the second layer's two builds reuse the first's identical ONNX (early cutoff)
    assert len(ran) == len({(line[0], line[1]) for line in ran}) == 14, on_ray.out

    local_store = tmp_path / "local"
    local = project.run("run", str(pipeline), "-j", "2", env={"ORCHESTRATE_STORE": str(local_store)})
    assert local.code == 0, local.text
    on_ray_files, local_files = artifact_digests(project.store), artifact_digests(local_store)
    assert on_ray_files.keys() == local_files.keys()  # the same keys
    for name, files in on_ray_files.items():
        if not name.startswith("bench/"):  # timings differ run to run; everything else is identical
            assert files == local_files[name], name

    # Workers pushed what they made to the remote cache, one manifest per artifact.
    pushed = {f"{p.parent.parent.name}/{p.parent.name}" for p in remote.glob("v1/*/*/manifest.json")}
    assert pushed == set(on_ray_files)
    again = project.run("run", str(pipeline), "--executor", "ray", env={"ORCHESTRATE_REMOTE": str(remote)})
    assert again.code == 0 and "nothing to do: all 16 stages cached" in again.out, again.text


def test_without_ray_the_ray_executor_is_exit_2_with_how_to_install(project: Project) -> None:
    pipeline = project.small()
    blocked = ("import sys; sys.modules['ray'] = None; from orchestrator.cli import main; "
               f"sys.exit(main(['run', {str(pipeline)!r}, '--executor', 'ray']))")
    done = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"ORCHESTRATE_STORE": str(project.store), "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--executor ray needs Ray" in done.stderr and "pip install 'orchestrate[ray]'" in done.stderr
    assert "Traceback" not in done.stderr and not project.store.exists()
    local_only = project.run("run", str(pipeline), "--address", "auto")
    assert local_only.code == 2 and "--address applies to --executor ray" in local_only.err


GPU_PIPELINE = f"""\
version: 1
name: gpus
{SMALL_MODEL}
{SMALL_CALL}build: {{backend: trtexec}}
resources:
  capture: {{num_cpus: 2}}
matrix:
  build.gpu_type: [A100, H100]
"""


def test_stage_resources_and_gpu_type_pinning(project: Project) -> None:
    """Planned, not run: which resources each stage asks Ray for, and that each GPU type has its own build."""
    from orchestrator.config import spec as spec_module
    from orchestrator.planning.plan import make_plan
    from orchestrator.run.ray import RayExecutor, environment_mismatch, task_options
    from orchestrator.store.digest import DigestCache
    from orchestrator.store.store import Store

    pipeline = project.write("gpus.yaml", GPU_PIPELINE)
    plan = make_plan(spec_module.load(pipeline), DigestCache(None))
    by_kind: dict[str, list[dict[str, object]]] = {}
    for node in plan.order():
        by_kind.setdefault(node.kind, []).append(task_options(node, plan))
    assert by_kind["capture"] == [{"num_cpus": 2}]
    assert by_kind["export"] == [{"num_cpus": 1}]
    for kind in ("build", "verify", "bench"):
        assert sorted(o["accelerator_type"] for o in by_kind[kind]) == ["A100", "H100"]  # type: ignore[type-var]
        assert all(o["num_gpus"] == 1 and o["num_cpus"] == 1 for o in by_kind[kind])

    # A local instance without such a GPU refuses the stage instead of waiting for it forever.
    executor = RayExecutor(plan, Store(project.store))
    executor.started_here, executor.cluster = True, {"CPU": 2.0}
    build = next(n for n in plan.order() if n.kind == "build")
    with pytest.raises(UserError, match=r"needs 1 GPU and a (A100|H100) GPU; the local Ray instance has 2 CPUs"):
        executor._feasible(build, task_options(build, plan))

    # A worker whose tools or GPU differ from those in a key must not publish under that key: the
    # pinned type is the build's GPU identity, and this machine has no such GPU.
    assert build.parts["tools"]["gpu"] in ("type:A100", "type:H100")
    assert environment_mismatch(build) == f"the GPU here is none; the run was planned for {build.parts['tools']['gpu']}"
    export = next(n for n in plan.order() if n.kind == "export")
    assert environment_mismatch(export) is None
    changed = json.loads(json.dumps(export.parts))
    changed["tools"]["onnx"] = "0.0.1"
    export.parts = changed
    here = environment.tool_version("onnx") or "absent"
    assert environment_mismatch(export) == f"onnx is {here} on this worker, 0.0.1 where the run was planned"

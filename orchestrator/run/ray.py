"""Runs a plan on a Ray cluster: each stage whose inputs exist becomes one Ray task that calls `produce`.

The driver plans, reports stages already in its store as cached (Ray is started only when some
stage must run), and submits the rest with resources from the stage: one CPU each; one GPU for a
build, verify or bench on a backend that needs one; `build.gpu_type` pins them to an accelerator type.
A worker opens the same store path, so keys and artifacts are exactly those of the local executor.
On one machine or a filesystem all nodes share, that is all; on a cluster without one, workers
pull the inputs they lack from the remote cache and push what they make (`cache.remote`), and the
driver pulls the results.

Without an address a local Ray instance is started for the run and shut down after it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from orchestrator import backends, environment
from orchestrator.errors import UserError
from orchestrator.planning import discovered
from orchestrator.planning.plan import Node, Plan
from orchestrator.run.executor import (
    EXCLUSIVE,
    Executor,
    Outcome,
    RunReport,
    StageCrashed,
    _reused,
    produce,
    stage_timeout,
)
from orchestrator.store.remote import Remote, localize
from orchestrator.store.store import MANIFEST, Artifact, Store

if TYPE_CHECKING:
    from orchestrator.stages.build import BuildSettings

INSTALL_HINT = "pip install 'orchestrate[ray]'"


def require_ray() -> None:
    """Exit 2 with how to install Ray when it is absent (it is an optional extra)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed", hint=INSTALL_HINT) from None


def build_settings(node: Node, plan: Plan) -> BuildSettings | None:
    """The build settings behind a node: its own for a build, its build input's for verify and bench."""
    if node.kind == "build":
        return node.settings  # type: ignore[no-any-return]
    build_key = node.inputs.get("build")
    if build_key is None or build_key not in plan.nodes:
        return None
    return plan.nodes[build_key].settings  # type: ignore[no-any-return]


def task_options(node: Node, plan: Plan) -> dict[str, Any]:
    """Ray resources for a node: defaults from its stage and backend, then the pipeline's `resources`."""
    options: dict[str, Any] = {"num_cpus": 1}
    build = build_settings(node, plan)
    if build is not None:
        if backends.get(build.backend).needs_gpu:
            options["num_gpus"] = 1
        if build.gpu_type:
            options["accelerator_type"] = build.gpu_type
    for variant in plan.spec.variants:
        if variant.name in node.variants:
            asked = (variant.data.get("resources") or {}).get(node.kind) or {}
            options.update({name: value for name, value in asked.items() if name != "timeout"})  # not Ray's
            break
    return options


def environment_mismatch(node: Node) -> str | None:
    """How this worker differs from the tool versions and GPU the node's key was made with, if it does.

    The driver makes the keys; a worker with other tools would publish an artifact under a key
    that does not describe it, in a cache other machines trust.
    """
    for name, keyed in node.parts.get("tools", {}).items():
        if name == "gpu":
            if not environment.gpu_matches(keyed):
                return f"the GPU here is {environment.build_gpu()}; the run was planned for {keyed}"
            continue
        here = backends.tool_identity(name)
        if here != keyed:
            return f"{name} is {here} on this worker, {keyed} where the run was planned"
    return None


def produce_on_worker(root: str, directory: str, node: Node, inputs: dict[str, Artifact], reason: str,
                      forced: bool, pipeline: str, remote: Remote | None,
                      timeout: float | None = None) -> tuple[str, Any]:
    """One stage inside a Ray worker; returns ('ok', Outcome) or ('error', the UserError or StageCrashed)."""
    if os.path.isdir(directory):  # relative paths in the plan are relative to the driver's directory
        os.chdir(directory)
        if directory not in sys.path:
            sys.path.insert(0, directory)
    store = Store(root)
    try:
        mismatch = environment_mismatch(node)
        if mismatch:
            raise UserError(f"{node.kind} {node.short} cannot run on {_hostname()}: {mismatch}",
                            hint="give the workers the driver's tool versions and GPU, or plan on a machine "
                                 "like the workers")
        local_inputs = localize(store, inputs, remote)
        return "ok", produce(store, node, local_inputs, reason, forced, pipeline, False, remote, timeout)
    except (UserError, StageCrashed) as exc:
        return "error", exc
    finally:
        store.save()


def _hostname() -> str:
    import platform

    return platform.node()


class RayExecutor(Executor):
    """The Executor, with stages scheduled as Ray tasks instead of local worker processes."""

    def __init__(self, plan: Plan, store: Store, force: set[str] | None = None, echo: Any = None, jobs: int = 1,
                 address: str | None = None, remote: Remote | None = None):
        super().__init__(plan, store, force, echo, progress=False, jobs=jobs, remote=remote)
        self.address = address
        self.task: Any = None
        self.cluster: dict[str, float] = {}
        self.started_here = False

    # ---------------------------------------------------------------- Ray
    def _connect(self) -> Any:
        """Start (or join) Ray on first use: a run with everything cached never starts it."""
        import ray

        if self.task is not None:
            return ray
        directory = os.getcwd()
        python_path = os.pathsep.join(p for p in (directory, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": python_path, "OMP_WAIT_POLICY": "PASSIVE"}}
        settings: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False,
                                    "logging_level": logging.WARNING}
        if self.address:
            ray.init(address=self.address, **settings)
        else:
            cpus = self.jobs if self.jobs > 1 else (os.cpu_count() or 1)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **settings)
            self.started_here = True
        self.cluster = ray.cluster_resources()  # type: ignore[no-untyped-call,unused-ignore]
        self.task = ray.remote(produce_on_worker)
        return ray

    def _feasible(self, node: Node, options: dict[str, Any]) -> None:
        """On the local instance, a task no node can take would wait forever: say so instead."""
        if not self.started_here:
            return  # a cluster may scale up to fit
        missing = []
        if options.get("num_gpus", 0) > self.cluster.get("GPU", 0):
            missing.append(f"{options['num_gpus']} GPU")
        if "accelerator_type" in options and f"accelerator_type:{options['accelerator_type']}" not in self.cluster:
            missing.append(f"a {options['accelerator_type']} GPU")
        if options.get("num_cpus", 1) > self.cluster.get("CPU", 0):
            missing.append(f"{options['num_cpus']} CPUs")
        if missing:
            field = "build.gpu_type" if "accelerator_type" in options else "build.backend"
            raise self.plan.spec.error(f"{node.kind} {node.short} needs {' and '.join(missing)}; the local Ray "
                                       f"instance has {self._describe_cluster()}", field,
                                       hint="run with --address of a Ray cluster that has them")

    def _describe_cluster(self) -> str:
        gpus = int(self.cluster.get("GPU", 0))
        return f"{int(self.cluster.get('CPU', 0))} CPUs and {gpus} GPU{'s' if gpus != 1 else ''}"

    def _submit(self, node: Node, artifacts: dict[str, Artifact], reason: str) -> Any:
        self._connect()
        options = task_options(node, self.plan)
        self._feasible(node, options)
        inputs = {role: artifacts[key] for role, key in node.inputs.items()}
        return self.task.options(name=f"{node.kind}-{node.short}", **options).remote(
            str(self.store.root), os.getcwd(), node, inputs, reason, self._forced(node), self.plan.spec.name,
            self.remote, stage_timeout(node, self.plan))

    def _collect(self, reference: Any) -> Outcome:
        import ray

        state, value = ray.get(reference)
        if state == "error":
            raise value
        outcome: Outcome = value
        node = outcome.node
        if not (self.store.path_of(node.kind, node.key) / MANIFEST).exists():
            # The worker's store is not this one: bring the result here through the remote cache.
            if self.remote is None:
                raise UserError(f"{node.kind} {node.short} ran on a worker whose store is not {self.store.root} "
                                "on this machine", hint="put the store on a filesystem all nodes share, or set "
                                "cache.remote so that artifacts travel through it")
            pulled, problem = self.remote.pull(self.store, node.kind, node.key)
            if pulled is None:
                raise UserError(f"{node.kind} {node.short} ran on a worker, but cannot be pulled from "
                                f"{self.remote.url}: {problem}")
            outcome.artifact = pulled
        return outcome

    # ---------------------------------------------------------------- scheduling
    def _schedule(self, report: RunReport, artifacts: dict[str, Artifact]) -> None:
        pending = list(self.plan.order())
        reasons = {node.key: self.why(node) for node in pending}
        running: dict[Any, Node] = {}
        try:
            while pending or running:
                for node in [n for n in pending if all(k in artifacts for k in n.inputs.values())]:
                    if not self._forced(node):
                        inputs = {role: artifacts[key] for role, key in node.inputs.items()}
                        existing, _ = discovered.current(self.store, node, inputs)
                        if existing is not None:
                            pending.remove(node)
                            self._finished(_reused(node, existing, "cached"), report, artifacts)
                            continue
                    # A benchmark on the CPU runs alone so that other stages do not distort its timings
                    # (one on a GPU has that GPU to itself).
                    alone = [n for n in running.values() if n.kind in EXCLUSIVE and not self._on_gpu(n)]
                    if alone or (node.kind in EXCLUSIVE and not self._on_gpu(node) and running):
                        continue
                    pending.remove(node)
                    running[self._submit(node, artifacts, reasons[node.key])] = node
                if not running:
                    if pending and not any(all(k in artifacts for k in n.inputs.values()) for n in pending):
                        raise RuntimeError("no stage can run: the plan has a cycle")
                    continue
                import ray

                done, _ = ray.wait(list(running), num_returns=1)
                for reference in done:
                    running.pop(reference)
                    self._finished(self._located(functools.partial(self._collect, reference)), report, artifacts)
        finally:
            self._stop(running)

    def _on_gpu(self, node: Node) -> bool:
        return bool(task_options(node, self.plan).get("num_gpus", 0) > 0)

    def _stop(self, running: dict[Any, Node]) -> None:
        if self.task is None:
            return
        import ray

        for reference in running:
            ray.cancel(reference, force=True)
        ray.shutdown()  # stops the local instance this run started; leaves a cluster running
        self.task = None

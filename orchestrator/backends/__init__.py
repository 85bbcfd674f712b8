"""Backends: the registry. One line per backend names the module whose BACKEND it is (see base.py).

A backend module is imported on first use (`get`), so the planner, the CLI and the no-op fast path
pay only for the backends they touch. What the light paths need without importing any backend is
in its registry line: the Python package it runs on, the program on PATH it runs, whether `auto` may
pick it, and the files its build writes.

A build artifact is data: `open_built` gives its runner the plugins and libraries the build's key was
made from, never what a file in the artifact names. So an artifact from a remote cache cannot make
this machine import, call or load anything the pipeline did not declare.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

    from orchestrator.backends.base import Backend, BuildRequest, Runner
    from orchestrator.store.store import Artifact


class Registered(NamedTuple):
    module: str  # where its BACKEND is
    outputs: tuple[str, ...]  # the files its build writes: names or 'folder/*.suffix' patterns
    package: str | None = None  # the Python package (and distribution) it runs on, found without importing it
    program: str | None = None  # the program on PATH it runs
    auto: bool = False  # `auto` picks the first such backend whose package is importable here
    uses: tuple[str, ...] = ()  # other distributions it may load (doctor shows them; in no key)


REGISTRY = {
    "onnxruntime": Registered("orchestrator.backends.onnxruntime", ("runplan.json", "segments/*.onnx",
                                                                    "constants/*.npy"), package="onnxruntime",
                          uses=("onnxruntime-extensions",)),
    "tensorrt": Registered("orchestrator.backends.tensorrt", ("model.fp16.onnx", "engine.plan", "engine.json",
                                                              "build.log"), package="tensorrt", auto=True,
                       uses=("pycuda",)),
    "trtexec": Registered("orchestrator.backends.tensorrt.trtexec", ("model.fp16.onnx", "engine.plan",
                                                                     "engine.json", "trtexec.log"), program="trtexec"),
}
FALLBACK = "onnxruntime"  # what `auto` is where no `auto` backend's package is importable
COMMAND_FILE = "trtexec.txt"  # every build writes the equivalent trtexec command line, to reproduce it by hand


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Backend:
    """The backend registered as `name` (its module is imported now)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name}")
    backend: Backend = importlib.import_module(REGISTRY[name].module).BACKEND
    return backend


def outputs() -> tuple[str, ...]:
    """Every file a build may write, whichever backend runs it."""
    found = [COMMAND_FILE]
    for entry in REGISTRY.values():
        found.extend(name for name in entry.outputs if name not in found)
    return tuple(found)


def distributions(uses: bool = False) -> tuple[str, ...]:
    """The Python distributions the backends run on (their versions are in build keys); with `uses`, also
    those they may load besides."""
    found = [name for entry in REGISTRY.values() for name in ((entry.package,) if entry.package else ())
             + (entry.uses if uses else ())]
    return tuple(found)


def programs() -> tuple[str, ...]:
    """The programs on PATH the backends run (their versions are in build keys)."""
    return tuple(entry.program for entry in REGISTRY.values() if entry.program)


def auto_inputs() -> dict[str, bool]:
    """What `auto` depends on here: whether each candidate's package is importable (nothing is imported)."""
    from orchestrator.environment import importable

    return {entry.package: importable(entry.package) for entry in REGISTRY.values() if entry.auto and entry.package}


def resolve(requested: str) -> tuple[str, str]:
    """The backend `requested` stands for here (`auto`: the first candidate that is importable), and why."""
    if requested != "auto":
        return requested, "as configured"
    importable = auto_inputs()
    candidates = [name for name, entry in REGISTRY.items() if entry.auto]
    for name in candidates:
        if importable.get(REGISTRY[name].package or ""):
            return name, f"{get(name).title} importable"
    return FALLBACK, f"{' or '.join(get(name).title for name in candidates)} not importable"


def tool_identity(tool: str) -> str:
    """This machine's value for one entry of a key's tools: a backend's own tool, else a distribution's version."""
    for name in REGISTRY:
        found = get(name).tool_identity(tool)
        if found is not None:
            return found
    from orchestrator.environment import tool_version

    return tool_version(tool) or "absent"


def artifact_problem(folder: Path) -> str:
    """Why a build artifact from elsewhere is not what a backend writes, or '' (each backend checks its files)."""
    for name in REGISTRY:
        problem = get(name).artifact_problem(folder)
        if problem:
            return problem
    return ""


def doctor() -> list[str]:
    """`orchestrate doctor`'s backend lines: whether each runs here, then the details they give."""
    reports = [get(name).doctor() for name in REGISTRY]
    return [report[0] for report in reports] + [line for report in reports for line in report[1:]]


def write_equivalent_command(request: BuildRequest) -> dict[str, str]:
    """Write the trtexec command line that builds what `request` asks, on any backend, into the build's folder
    (COMMAND_FILE, with paths relative to it); returns it as the build's manifest records it."""
    from orchestrator.backends.tensorrt.trtexec import equivalent_command

    command = " ".join(equivalent_command(request, request.model))
    (request.out / COMMAND_FILE).write_text(command + "\n")
    return {"trtexec": command}


def open_built(build: Artifact, threads: int = 0) -> Runner:
    """A runner for a build artifact, with the backend, plugins and libraries its key was made from.

    A key is the digest of its parts, and the plan computes every key here from the pipeline, so
    parts that hash to the artifact's key are the pipeline's declarations (the store and the remote
    refuse a manifest whose parts do not; this checks again). The run plan or engine description
    in the artifact only says which declared plugin each node is.
    """
    from orchestrator.backends.base import LIBRARY_LABEL, Trusted
    from orchestrator.errors import UserError
    from orchestrator.store.digest import parts_match

    parts = build.manifest.get("parts")
    if not parts_match(parts, build.key):
        raise UserError(f"build {build.key[:8]}: its manifest's parts do not hash to its key; it is not run",
                        hint="remove it (orchestrate fsck --repair) or build again (--force build)")
    assert isinstance(parts, dict)
    config = parts["config"]
    digests = frozenset(digest for label, digest in parts.get("files", {}).items() if label.startswith(LIBRARY_LABEL))
    trusted = Trusted(tuple(config.get("plugins", [])), digests)
    return get(config["build"]["backend"]).open(build.path, threads, trusted)

"""What a backend is: the `Backend` each backend module exports as BACKEND, the `Runner` it opens, and
the typed records they exchange with the build, verify and bench stages.

A backend turns a plugin graph into an artifact (`build(BuildRequest)`) and opens that artifact for
running (`open(...) -> Runner`). It knows nothing of stages, keys or the store: the build stage makes a
`BuildRequest` from the pipeline's settings, the planner asks `key_tools` and `key_modules` what goes
into the build key, and verify and bench see only the `Runner` protocol.

A build artifact is data: a runner reads its files, but loads code (plugin kernels, plugin libraries)
only as `Trusted` allows, and `backends.open_built` makes that from the build's key, never from what a
file in the artifact names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.errors import UserError

LIBRARY_LABEL = "library:"  # how a plugin library's digest is named in a build key's files
FP32_STORAGE = ("fp32", "tf32", "best")  # precisions every plugin that runs fp32 runs (float32 storage)


@dataclass
class TensorSpec:
    """An input or output of a built artifact: dims are None where dynamic."""

    name: str
    dtype: str
    shape: list[Any]
    plugin: str | None = None  # the plugin op that produces this output directly (where the backend knows)


@dataclass(frozen=True)
class Trusted:
    """What a runner may load code from, as the pipeline declares it.

    `plugins` are the build's declared plugins (op, version, namespace, and the user's catalog path
    where one is given): a kernel is the catalog entry's, found by op in the code installed here.
    `library_digests` are the digests of the plugin libraries the build's key covers: a library an
    engine names is loaded only if its bytes are one of those.
    """

    plugins: tuple[Mapping[str, Any], ...] = ()
    library_digests: frozenset[str] = field(default_factory=frozenset)

    def plugin(self, op: str) -> Mapping[str, Any] | None:
        return next((p for p in self.plugins if p.get("op") == op), None)

    def library(self, path: str) -> str:
        """`path` if its bytes are a library the pipeline declares; else a UserError naming it."""
        from orchestrator.store.digest import hash_file

        try:
            digest = hash_file(path)
        except OSError as exc:
            raise UserError(f"cannot read plugin library '{path}': {exc}", field="build.plugin_libraries") from None
        if digest not in self.library_digests:
            raise UserError(f"the engine names plugin library '{path}', which is none of the libraries the "
                            "pipeline declares (by content); it is not loaded", field="build.plugin_libraries",
                            hint="list it in build.plugin_libraries, or build the engine again (--force build)")
        return path


@dataclass(frozen=True)
class DeclaredPlugin:
    """A plugin the pipeline declares: which creator its nodes name, and the user's catalog entry if any."""

    op: str
    version: str = "1"
    namespace: str = ""
    catalog: str | None = None  # import path of the user's PluginEntry; None: the built-in entry

    @classmethod
    def from_config(cls, plugin: Mapping[str, Any]) -> DeclaredPlugin:
        return cls(str(plugin["op"]), str(plugin.get("version", "1")), str(plugin.get("namespace", "")),
                   plugin.get("catalog") or None)

    def as_config(self) -> dict[str, Any]:
        """As the build key holds it (the catalog only where one is given)."""
        return {"op": self.op, "version": self.version, "namespace": self.namespace,
                **({"catalog": self.catalog} if self.catalog else {})}


@dataclass(frozen=True)
class CheckedNode:
    """A plugin node of the graph as the build preflight checked it against its catalog entry."""

    name: str
    op: str
    version: str
    namespace: str = ""


@dataclass(frozen=True)
class RegisteredVersions:
    """What a backend's TensorRT says of a plugin's versions, for `version: auto`: the versions it registers
    (None: it cannot be asked) and its release (None: no TensorRT, as on the embedded backend)."""

    versions: frozenset[str] | None = None
    release: str | None = None


def _quiet(message: str) -> None:
    """Progress nobody shows."""


@dataclass(frozen=True)
class BuildRequest:
    """Everything a backend's build reads: the graph, where to write, and the build settings, typed."""

    graph: Path  # the plugin graph (model.onnx) as the export or surgery wrote it
    model: Any  # that graph, loaded, with ONNX shape inference applied
    out: Path  # the empty folder the artifact's files go into
    backend: str  # the backend the build runs on (what `auto` resolved to)
    precision: str = "fp32"
    keep_fp32: tuple[str, ...] = ()  # build.keep_fp32: op types, node names (globs) kept float32 at half precision
    workspace: int | str = "4GiB"  # bytes, or a size such as '4GiB'
    timing_cache: bool = True
    profiles: tuple[Mapping[str, Mapping[str, Sequence[int]]], ...] = ()  # {input: {min, opt, max}} each
    gpu_type: str | None = None
    plugins: tuple[DeclaredPlugin, ...] = ()
    plugin_nodes: tuple[CheckedNode, ...] = ()  # the graph's plugin nodes, as the preflight checked them
    plugin_libraries: tuple[str, ...] = ()  # resolved paths
    threads: int = 0
    shared_dir: Path | None = None  # caches shared by all builds (timing caches); guard writes with a lock
    progress: Callable[[str], None] = _quiet
    chosen_because: str | None = None  # why `auto` chose this backend (None: it was configured)

    def catalogs(self) -> dict[str, str | None]:
        """Each declared op's catalog path (None: the built-in entry)."""
        return {plugin.op: plugin.catalog for plugin in self.plugins}


@dataclass
class Built:
    """What a build made: its line for the terminal and what its manifest records."""

    summary: str
    record: dict[str, Any]


@dataclass(frozen=True)
class PluginNodeRun:
    """A plugin node of the artifact whose outputs its runner can return (`Runner.run(keep=...)`)."""

    name: str
    op: str
    outputs: tuple[str, ...]


@dataclass
class Timings:
    """Seconds per timed run, the last run's outputs, and what measured the time."""

    seconds: list[float]
    outputs: dict[str, Any]
    timer: str


class Runner(Protocol):
    """A built artifact opened for running: verify compares its outputs, bench times it."""

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        """The graph outputs, plus the intermediate tensors named in `keep` (plugin node outputs)."""
        ...

    def bench(self, feeds: Mapping[str, Any], warmup: int, iterations: int, max_seconds: float,
              progress: Callable[[str], None] = _quiet) -> Timings: ...

    def plugin_nodes(self) -> list[PluginNodeRun] | None:
        """The plugin nodes in graph order whose outputs `run(keep=...)` returns; None: graph outputs only."""
        ...

    def result_notes(self) -> list[str]:
        """What limits the outputs `run` returns (e.g. the digits a tool printed them with), for verify's summary."""
        ...

    def close(self) -> None: ...


class RunnerBase:
    """Defaults for runners: host-clock timing, and no plugin node outputs."""

    timer = "perf_counter"

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        raise NotImplementedError

    def bench(self, feeds: Mapping[str, Any], warmup: int, iterations: int, max_seconds: float,
              progress: Callable[[str], None] = _quiet) -> Timings:
        """Warm-up runs, then timed runs (host clock) until `iterations` or `max_seconds` (at least one)."""
        for index in range(warmup):
            progress(f"warm-up {index + 1}/{warmup}")
            self.run(feeds)
        seconds: list[float] = []
        budget_end = time.perf_counter() + max_seconds
        outputs: dict[str, Any] = {}
        while len(seconds) < iterations and (not seconds or time.perf_counter() < budget_end):
            start = time.perf_counter()
            outputs = self.run(feeds)
            seconds.append(time.perf_counter() - start)
            progress(f"iteration {len(seconds)}/{iterations}")
        return Timings(seconds, outputs, self.timer)

    def plugin_nodes(self) -> list[PluginNodeRun] | None:
        return None

    def result_notes(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


class Backend:
    """One backend, as the stages and the planner see it; each backend module exports one as BACKEND.

    `precisions` are what it builds. `checks_plugin_precisions`: its build refuses a precision a plugin
    cannot run itself, naming its own limits as well (so the preflight leaves that to it).
    """

    name = ""
    title = ""  # what messages call what it runs on ("ONNX Runtime", "TensorRT")
    precisions: tuple[str, ...] = ()
    needs_gpu = False
    checks_plugin_precisions = False

    def unavailable(self) -> str | None:
        """Why it cannot run here, or None."""
        return None

    def planning_problem(self) -> tuple[str, str] | None:
        """(message, hint) when a build key cannot be made for it here (its tools are part of the key)."""
        return None

    def key_tools(self, gpu_type: str | None) -> dict[str, str]:
        """The tool identities (versions, the GPU) that go into a build key."""
        return {}

    def key_modules(self, plugins: Sequence[DeclaredPlugin]) -> list[str]:
        """Python modules whose source goes into a build key: the code that runs plugin nodes here."""
        return []

    def tool_identity(self, tool: str) -> str | None:
        """This machine's value for a key tool this backend names (as `key_tools` writes it); None: not one."""
        return None

    def check_plugin_precision(self, precision: str, op: str, plugin_precisions: Sequence[str]) -> None:
        """Refuse a precision a plugin cannot run (float32 storage runs wherever fp32 does)."""
        if self.checks_plugin_precisions or precision in FP32_STORAGE or precision in plugin_precisions:
            return
        raise UserError(f"precision {precision}: {op} runs only {', '.join(plugin_precisions)}",
                        field="build.precision")

    def check_precision(self, precision: str) -> None:
        """Refuse a precision this backend does not build."""
        if self.precisions and precision not in self.precisions:
            raise UserError(f"precision {precision}: the {self.name} backend runs {', '.join(self.precisions)}",
                            field="build.precision")

    def check_plugin(self, plugin: DeclaredPlugin, libraries: Sequence[str]) -> None:
        """Refuse a declared plugin whose creator this backend cannot find (`libraries`: the build's plugin
        libraries), before any backend work."""

    def check_graph(self, model: Any) -> None:
        """Refuse a graph this backend cannot build or run as it is (e.g. tensor names its tools cannot carry)."""

    def plugin_versions(self, op: str, versions: Sequence[str], namespace: str, libraries: Sequence[str],
                        ask_registry: bool = True) -> RegisteredVersions:
        """Which of `versions` of plugin `op` (in `namespace`, the build's plugin `libraries` loaded) the
        TensorRT this backend builds with registers, and its release; what `version: auto` resolves against
        (without `ask_registry`, the release only: what a deprecation warning needs). A backend without
        TensorRT knows neither: it runs every version its catalog entry lists."""
        return RegisteredVersions()

    def build(self, request: BuildRequest) -> Built:
        raise NotImplementedError

    def open(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None) -> Runner:
        raise NotImplementedError

    def artifact_problem(self, folder: Path) -> str:
        """Why a build artifact from elsewhere (a remote cache) is not one this backend writes, or ''."""
        return ""

    def doctor(self) -> list[str]:
        """Its line for `orchestrate doctor` (whether it runs here), then any details."""
        problem = self.unavailable()
        return [f"  {self.name:<24} {'available' if problem is None else problem}"]

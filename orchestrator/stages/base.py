"""What a stage is: the `Stage` record each stage module exports, and the types it plans and runs with.

A stage module exports one `STAGE`. Planning calls its `plan` with the variant's validated config and
the nodes already planned for that variant; the returned `Planned` holds everything its key is made of
(typed `Settings`, input nodes, file digests, tool versions) and what is not keyed (file locations,
run-time knobs). Running calls its `run` with a `StageCall`; it never reads the pipeline file, never
looks at the store, and imports its heavy dependencies inside `run`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orchestrator.config.spec import Spec
    from orchestrator.planning.plan import Node
    from orchestrator.store.store import Artifact


class Settings(Protocol):
    """A stage's keyed settings, typed: `keyed()` is the JSON its key is made of (by YAML section)."""

    def keyed(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Unkeyed:
    """What a stage's run needs that is in no key: file locations (their digests are keyed) and run-time
    knobs that do not change what it writes (threads), plus what the import system searches."""

    python_path: tuple[str, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def as_json(self) -> dict[str, Any]:
        return {"python_path": list(self.python_path), **self.values}


@dataclass(frozen=True)
class Variant:
    """One variant as the stages plan it: its validated config and its plugins with their contracts."""

    name: str
    data: Mapping[str, Any]
    plugins: tuple[Mapping[str, Any], ...]


@dataclass
class Planned:
    """A stage's contribution to its node; `None` from `plan` leaves the stage out of the variant."""

    settings: Settings
    inputs: Mapping[str, Node]  # role -> upstream node
    files: Mapping[str, str] = field(default_factory=dict)  # label -> content digest
    tools: Mapping[str, str] = field(default_factory=dict)  # tool -> version or identity
    unkeyed: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str | None] = field(default_factory=dict)  # declared variable -> digest of its value


class PlanContext(Protocol):
    """What a stage's `plan` may ask of the planner: digests of what it reads, located errors."""

    spec: Spec
    origins: dict[str, str]  # label of a keyed file -> the path it digests (for `plan --why`)

    @property
    def python_path(self) -> list[Path]: ...

    def error(self, message: str, at: str, hint: str | None = None) -> Exception: ...

    def file_digest(self, path: Path, at: str) -> str: ...

    def watch_folder(self, path: Path) -> None: ...

    def source_digest(self, import_path: str, at: str) -> tuple[str, str]: ...

    def module_digest(self, module: str, at: str) -> tuple[str, str]: ...

    def model_sources(self, model: Mapping[str, Any]) -> dict[str, str]: ...

    def paths_digests(self, entries: list[str], at: str) -> dict[str, str]: ...

    def env_digests(self, model: Mapping[str, Any] | None) -> dict[str, str | None]: ...

    def keyed_python_path(self) -> tuple[str, ...]: ...


@dataclass
class StageCall:
    kind: str
    settings: Any  # the stage's own Settings type (each stage narrows it)
    unkeyed: Unkeyed
    inputs: dict[str, Artifact]  # role -> upstream artifact
    out: Path  # an empty staging directory
    progress: Callable[[str], None] = lambda message: None
    # A store-managed directory for caches that speed up a stage without changing its result
    # (TensorRT timing caches). Shared by all builds; guard writes with a lock.
    shared_dir: Path | None = None


@dataclass
class StageResult:
    summary: str  # one line for the terminal
    result: dict[str, Any] = field(default_factory=dict)  # saved in the manifest
    passed: bool = True  # False: the stage's checks failed (exit code 1), the artifact is still kept


@dataclass(frozen=True)
class Stage:
    """One stage: its name and version (in every key it makes), what it writes, how it plans and runs.

    `outputs` are the files it writes, as names or 'folder/*.suffix' patterns ('*' stays inside one folder):
    an artifact from elsewhere (a remote cache) holding any other file is refused before a byte is fetched.
    `exclusive`: it runs with nothing else beside it (timings). `checks`: its passing is a check (verify),
    shown as 'passed'.
    """

    name: str
    version: int
    outputs: tuple[str, ...]
    plan: Callable[[PlanContext, Variant, Mapping[str, Node]], Planned | None]
    run: Callable[[StageCall], StageResult]
    exclusive: bool = False
    checks: bool = False

    def declares(self, relative: str) -> bool:
        """Whether this stage writes a file at `relative` (a POSIX path inside its artifact)."""
        parts = relative.split("/")
        for pattern in self.outputs:
            wanted = pattern.split("/")
            if len(wanted) == len(parts) and all(fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True)):
                return True
        return False

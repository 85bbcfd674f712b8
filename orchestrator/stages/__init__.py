"""Stages: each a pure function of (resolved config, input artifacts) → files in `out`.

A stage module exposes `run(call: StageCall) -> StageResult`. It never reads the pipeline file,
never looks at the store, and imports its heavy dependencies inside `run`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.store import Artifact


@dataclass
class StageCall:
    kind: str
    config: dict[str, Any]  # keyed settings, by YAML section
    paths: dict[str, Any]  # file locations and run-time knobs that are not keyed
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


def load(kind: str) -> Callable[[StageCall], StageResult]:
    return importlib.import_module(f"orchestrator.stages.{kind}").run  # type: ignore[no-any-return]

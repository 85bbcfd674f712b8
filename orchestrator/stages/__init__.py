"""Stages: each a pure function of (resolved config, input artifacts) → files in `out`.

A stage module exposes `run(call: StageCall) -> StageResult`. It never reads the pipeline file,
never looks at the store, and imports its heavy dependencies inside `run`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.store.store import Artifact


# The files each stage writes into its artifact, as names or 'folder/*.suffix' patterns ('*' stays inside
# one folder). An artifact from elsewhere (a remote cache) that holds any other file is refused before
# a byte of it is fetched: an artifact is data, and a file no stage writes has no business in it.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "capture": ("capture.json", "tensors/*.npy", "outputs/*.npy", "calls/*.npy"),
    "export": ("model.onnx", "export.json"),
    "surgery": ("model.onnx", "surgery.json"),
    "build": ("trtexec.txt", "runplan.json", "segments/*.onnx", "constants/*.npy",  # onnxruntime
              "model.fp16.onnx", "engine.plan", "engine.json", "build.log", "trtexec.log"),  # TensorRT, trtexec
    "verify": ("verify.json",),
    "bench": ("bench.json",),
}


def declares(kind: str, relative: str) -> bool:
    """Whether stage `kind` writes a file at `relative` (a POSIX path inside its artifact)."""
    parts = relative.split("/")
    for pattern in OUTPUTS.get(kind, ()):
        wanted = pattern.split("/")
        if len(wanted) == len(parts) and all(fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True)):
            return True
    return False


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

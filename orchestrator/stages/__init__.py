"""The stages, in the order they run: each a pure function of (settings, input artifacts) → files.

`STAGES` is the one list of them: planning, the store, the executors, the reports and the CLI all
read it. A stage is one module exporting `STAGE` (see base.py); adding one is that module plus a line
here. Stage modules import their heavy dependencies inside `run`, so this import stays light.
"""

from __future__ import annotations

from orchestrator.stages import bench, build, capture, export, surgery, verify
from orchestrator.stages.base import Planned, Stage, StageCall, StageResult

STAGES: tuple[Stage, ...] = (capture.STAGE, export.STAGE, surgery.STAGE, build.STAGE, verify.STAGE, bench.STAGE)

__all__ = ["STAGES", "Planned", "Stage", "StageCall", "StageResult", "declares", "get", "names"]


def names() -> tuple[str, ...]:
    return tuple(stage.name for stage in STAGES)


def get(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage named {name!r}; stages are {', '.join(names())}")


def declares(kind: str, relative: str) -> bool:
    """Whether stage `kind` writes a file at `relative` (a POSIX path inside its artifact)."""
    return any(stage.declares(relative) for stage in STAGES if stage.name == kind)

"""Why a node must run: the first difference between its key's parts and those of the last run's
artifact (config, files, declared environment, tools, inputs), said in words for `plan --why` and `run`.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node


def _first_difference(old: Any, new: Any, at: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old:
                return (f"{at}.{key}" if at else key, "(unset)", new[key])
            if key not in new:
                return (f"{at}.{key}" if at else key, old[key], "(unset)")
            found = _first_difference(old[key], new[key], f"{at}.{key}" if at else key)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{at}[{index}]")
            if found:
                return found
        return None
    return None if old == new else (at, old, new)


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 48 else text[:45] + "..."


NEVER_RUN = "no earlier run of this stage"


def _file_label(label: str, origin: str | None) -> str:
    """'module:examples.ops.msda' -> 'examples/ops/msda.py (module examples.ops.msda)'."""
    kind, _, name = label.partition(":")
    if origin is None:
        return name or label
    shown = origin
    with contextlib.suppress(ValueError):  # another drive (Windows)
        shown = os.path.relpath(origin)
    if len(shown) > len(origin):
        shown = origin
    described = {"module": f"module {name}", "tensor": f"tensor {name}", "library": "plugin library",
                 "onnx": "export.onnx", "source": "model.sources"}.get(kind, kind)
    return f"{shown} ({described})"


def _env_difference(old: dict[str, str | None], new: dict[str, str | None]) -> str | None:
    """The first declared environment variable whose value differs, by name only (values are hashed)."""
    for name in sorted(set(old) | set(new)):
        if name not in old:
            return f"environment variable added to model.env: {name}"
        if name not in new:
            return f"environment variable no longer in model.env: {name}"
        if old[name] != new[name]:
            before, after = ("unset" if value is None else "set" for value in (old[name], new[name]))
            change = "value changed" if before == after else f"{before} -> {after}"
            return f"environment variable changed: {name} ({change})"
    return None


def explain(node: Node, previous: dict[str, Any] | None) -> str:
    """Why `node` must run, compared with the parts of the artifact of the last run (if any)."""
    if previous is None:
        return NEVER_RUN
    if previous.get("stage_version") != node.parts["stage_version"]:
        return (f"stage implementation changed (version {previous.get('stage_version')} -> "
                f"{node.parts['stage_version']})")
    found = _first_difference(previous.get("config", {}), node.parts["config"])
    if found:
        return f"config changed: {found[0]} {_show(found[1])} -> {_show(found[2])}"
    old_files, new_files = previous.get("files", {}), node.parts["files"]
    for label in sorted(set(old_files) | set(new_files)):
        if old_files.get(label) != new_files.get(label):
            what = _file_label(label, node.origins.get(label))
            if label not in old_files:
                return f"file added: {what}"
            if label not in new_files:
                return f"file no longer used: {what}"
            return f"file changed: {what} (content {old_files[label][:8]} -> {new_files[label][:8]})"
    changed = _env_difference(previous.get("env", {}), node.parts.get("env", {}))
    if changed:
        return changed
    found = _first_difference(previous.get("tools", {}), node.parts["tools"])
    if found:
        return f"tool changed: {found[0]} {_show(found[1])} -> {_show(found[2])}"
    old_inputs = previous.get("inputs", {})
    for role, key in node.parts["inputs"].items():
        if old_inputs.get(role) != key:
            return f"input changed: {role}"
    return "artifact missing (removed, or damaged and discarded)"


class Explainer:
    """Why stale nodes must run, compared with the pipeline's last run record (asked in plan order).

    An "input changed" reason also names why that input changed, which was asked for before it.
    """

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.reasons: dict[str, str] = {}

    def previous_parts(self, node: Node) -> dict[str, Any] | None:
        for variant in node.variants:
            entry = self.record.get("stages", {}).get(f"{variant}/{node.kind}")
            if entry:
                return entry.get("parts")  # type: ignore[no-any-return]
        return None

    def why(self, node: Node, reason: str | None = None) -> str:
        """`reason` if given (e.g. a damaged artifact), else the first difference from the last run."""
        reason = reason or explain(node, self.previous_parts(node))
        if reason.startswith("input changed: "):
            upstream = self.reasons.get(node.inputs.get(reason.split(": ", 1)[1], ""))
            if upstream:
                reason += f" ({upstream})"
        self.reasons[node.key] = reason
        return reason

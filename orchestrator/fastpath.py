"""The no-op fast path of `orchestrate run FILE`: answer from a remembered plan, importing nothing heavy.

After a full run, `remember` writes what the answer depended on: the stat signatures of every file
that went into the plan (the pipeline file, model sources, capture files, plugin libraries, the
schema and orchestrate's own code), the Python interpreter, where each tool's package metadata
lives, whether TensorRT is importable, and the stat signature of every artifact file. `replay`
checks all of that with stat calls only; if anything differs it returns None and the full path
(YAML, schema validation, planning, digests) runs instead. It can only ever decline, never
answer wrongly: it prints only what a full run would, for artifacts whose files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

FORMAT = 3
TOOLS = ("torch", "onnx", "onnxruntime", "numpy", "numba", "onnx-graphsurgeon", "onnxscript", "tensorrt")


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def record_path(store_root: Path, pipeline: Path, pipeline_bytes: bytes) -> Path:
    identity = hashlib.blake2b(digest_size=16)
    for part in (str(FORMAT), os.path.realpath(pipeline.parent), os.getcwd(), str(store_root)):
        identity.update(part.encode() + b"\0")
    identity.update(pipeline_bytes)
    return store_root / ".state" / "fast" / f"{identity.hexdigest()}.json"


def _code_files() -> list[str]:
    package = Path(__file__).resolve().parent
    return sorted(str(p) for p in package.rglob("*.py"))


def _tool_locations() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            location = getattr(metadata.distribution(name), "_path", None)
            found[name] = str(location) if location is not None else None
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _tensorrt_importable() -> bool:
    from orchestrator.environment import importable

    return importable("tensorrt")


def remember(store_root: Path, pipeline: Path, watched: list[str], schema: Path, lines: list[dict[str, Any]],
             artifact_dirs: list[Path], exit_code: int) -> None:
    """Write the fast-path record for this pipeline file's current bytes."""
    from orchestrator.store import write_json_atomic

    data = Path(pipeline).read_bytes()
    files = sorted(set(watched) | {str(schema.resolve())} | set(_code_files()))
    artifact_files = []
    for folder in artifact_dirs:
        artifact_files += [str(p) for p in folder.rglob("*") if p.is_file()]
    tools = _tool_locations()
    record = {
        "format": FORMAT,
        "executable": sys.executable,
        "tensorrt": _tensorrt_importable(),
        "tools": {name: (location, _signature(location) if location else None) for name, location in tools.items()},
        "files": {path: _signature(path) for path in files},
        "artifacts": {path: _signature(path) for path in artifact_files},
        "lines": lines,
        "exit_code": exit_code,
    }
    write_json_atomic(record_path(store_root, pipeline, data), record)


def replay(argv: list[str]) -> int | None:
    """Answer `run FILE [--store DIR]` from the record, or None to take the full path."""
    if len(argv) < 2 or argv[0] != "run":
        return None
    store = os.environ.get("ORCHESTRATE_STORE", "artifacts")
    file = None
    rest = argv[1:]
    index = 0
    while index < len(rest):
        item = rest[index]
        if item == "--store" and index + 1 < len(rest):
            store = rest[index + 1]
            index += 2
            continue
        if item.startswith("--store="):
            store = item.split("=", 1)[1]
        elif item.startswith("-") or file is not None:
            return None
        else:
            file = item
        index += 1
    if file is None:
        return None
    try:
        pipeline = Path(file)
        data = pipeline.read_bytes()
        record = json.loads(record_path(Path(store).absolute(), pipeline, data).read_text())
    except (OSError, ValueError):
        return None
    if record.get("format") != FORMAT or record.get("executable") != sys.executable:
        return None
    if record.get("tensorrt") != _tensorrt_importable():
        return None
    for location, signature in record["tools"].values():
        if location and _signature(location) != signature:
            return None
    for group in ("files", "artifacts"):
        for path, signature in record[group].items():
            if _signature(path) != signature:
                return None
    from orchestrator import ui

    colour = ui.colour_enabled()
    for line in record["lines"]:
        print(ui.stage_line(line["kind"], line["short"], line["status"], None, line["summary"], line["label"],
                            colour))
    count = len(record["lines"])
    print(f"nothing to do: all {count} stage{'s' if count != 1 else ''} cached")
    return int(record["exit_code"])

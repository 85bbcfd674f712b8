"""The no-op fast path of `orchestrate run FILE`: answer from a remembered plan, importing nothing heavy.

A full run remembers, under the digest of the pipeline file's bytes (and its folder, the current
directory and the store), what its answer depended on, each as a stat signature (size, mtime_ns,
inode, ctime_ns) taken when it was read:

  * every file and folder the keys were computed from (model sources, capture files and folder,
    plugin libraries, the folders an import path was resolved in);
  * orchestrate's own code and schema, the Python interpreter, sys.path and its folders (a package
    installed or upgraded changes its site-packages folder), where each tool's metadata lives (the
    backends' distributions among them) and whether the packages `backend: auto` chooses by are
    importable; for builds whose key names the GPU or a program, the visible GPUs, the backends'
    programs on PATH, CUDA_VISIBLE_DEVICES and PATH;
  * every file of every artifact the run used, and the discovered inputs of each (the module files its
    stage imported, the metadata files of the distributions they came from: discovered.py);
  * the values (hashed) of the environment variables the pipeline declares in model.env.

`replay` re-checks all of it with stat calls; if anything differs it returns None and the full path
(YAML, schema validation, planning, digests) runs instead. It can decline, never answer wrongly:
it prints what the full run printed, for artifacts whose files are unchanged. A signature taken
within two seconds of the file's mtime cannot vouch for its content (a second write in the same
clock tick keeps the mtime), so such a run writes no record and the next run takes the full path.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

FORMAT = 6
TOOLS = ("torch", "onnx", "numpy", "numba", "onnx-graphsurgeon", "onnxscript")  # and the backends' distributions
GPU_TOOL = "gpu"  # in the build key of a backend that needs a GPU: such a key depends on the machine
GPU_ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "PATH", "LD_LIBRARY_PATH")
NVIDIA_PROC = "/proc/driver/nvidia/gpus"
PACKAGE = Path(__file__).resolve().parent
MAX_PIPELINE_BYTES = 1 << 20  # spec.MAX_FILE_BYTES, not imported: spec is not read on this path


def _signature(path: str) -> list[int] | None:
    """digest.stat_signature, or None for a path that is gone: the ctime is in it because an mtime can be
    set back (a byte flipped with size and mtime restored) and a ctime cannot."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def record_path(store_root: Path, pipeline: Path, pipeline_bytes: bytes) -> Path:
    identity = hashlib.blake2b(digest_size=16)
    for part in (str(FORMAT), os.path.realpath(pipeline.parent), os.getcwd(), str(store_root)):
        identity.update(part.encode() + b"\0")
    identity.update(pipeline_bytes)
    return store_root / ".state" / "fast" / f"{identity.hexdigest()}.json"


def _code_paths() -> list[str]:
    """orchestrate's own modules, the folders holding them, and the schema."""
    from orchestrator.config.spec import schema_path

    found = [str(PACKAGE)]
    for path in PACKAGE.rglob("*"):
        if path.suffix == ".py" or (path.is_dir() and path.name != "__pycache__"):
            found.append(str(path))
    found.append(str(schema_path().resolve()))
    return sorted(found)


def _tool_locations() -> dict[str, str | None]:
    from importlib import metadata

    from orchestrator import backends

    found: dict[str, str | None] = {}
    for name in (*TOOLS, *backends.distributions()):
        try:
            location = getattr(metadata.distribution(name), "_path", None)
            found[name] = str(location) if location is not None else None
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _importable(packages: list[str]) -> dict[str, bool]:
    """Whether each package is importable (what a backend's `auto` choice depends on), importing none."""
    from orchestrator.environment import importable

    return {name: importable(name) for name in packages}


def _gpu_fingerprint(programs: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """What identifies the visible GPUs and the backends' programs on PATH, read without running nvidia-smi;
    None where that cannot be read."""
    try:
        names = sorted(os.listdir(NVIDIA_PROC))
    except OSError:
        names = None
    gpus = {}
    for name in names or []:
        try:
            with open(os.path.join(NVIDIA_PROC, name, "information")) as handle:
                gpus[name] = handle.read()
        except OSError:
            return None
    import shutil

    found = {name: shutil.which(name) for name in programs}
    return {"environment": {name: os.environ.get(name) for name in GPU_ENVIRONMENT}, "gpus": gpus,
            "proc": names is not None,
            "programs": {name: [path, _signature(path) if path else None] for name, path in found.items()}}


def snapshot() -> dict[str, Any]:
    """The state of this installation, taken before the full path reads the pipeline or any file."""
    from orchestrator import backends
    from orchestrator.store.digest import vouching_signature

    def vouched(path: str) -> list[int] | None:
        try:
            return vouching_signature(path)
        except OSError:
            return None

    folders = [p for p in sys.path[1:] if p and os.path.exists(p)]
    tools = _tool_locations()
    return {
        "executable": [sys.executable, _signature(os.path.realpath(sys.executable))],
        "package": str(PACKAGE),
        "sys_path": sys.path[1:],
        "folders": {path: vouched(path) for path in folders},
        "code": {path: vouched(path) for path in _code_paths()},
        "tools": {name: [location, _signature(location) if location else None] for name, location in tools.items()},
        "importable": backends.auto_inputs(),
    }


def remember(store: Any, spec: Any, plan: Any, before: dict[str, Any], artifacts: list[Any],
             lines: list[dict[str, Any]], exit_code: int) -> bool:
    """Write the fast-path record for the bytes the spec was read from; False when none can be written."""
    from orchestrator.store.store import write_json_atomic

    watched: dict[str, list[int] | None] = dict(plan.watched)
    if any(signature is None for signature in [*watched.values(), *before["code"].values(),
                                               *before["folders"].values()]):
        return False  # something was modified too recently to vouch for its content
    from orchestrator import backends

    machine = None
    machine_tools = {GPU_TOOL, *backends.programs()}
    if any(tool in node.parts["tools"] for node in plan.order() for tool in machine_tools):
        from orchestrator import environment

        machine = _gpu_fingerprint(backends.programs())
        if machine is None or (not machine["proc"] and environment.gpus()):
            return False  # GPUs this process sees cannot be re-identified without nvidia-smi
    artifact_files = _artifact_signatures(store, plan, artifacts)
    if artifact_files is None:
        return False
    declared = sorted({name for node in plan.order() for name in node.parts.get("env", {})})
    record = {**before, "format": FORMAT, "watched": watched, "artifacts": artifact_files, "machine": machine,
              "env": {name: _env_digest(name) for name in declared}, "lines": lines, "exit_code": exit_code}
    try:
        write_json_atomic(record_path(store.root, spec.path, spec.source), record)
    except OSError:
        return False
    return True


def _artifact_signatures(store: Any, plan: Any, artifacts: list[Any]) -> dict[str, list[int] | None] | None:
    """Every file of every artifact, and each artifact's discovered inputs (the modules its stage imported,
    the metadata of the distributions they came from); None if one of them cannot vouch."""
    from orchestrator.planning import discovered
    from orchestrator.store.store import MANIFEST

    found: dict[str, list[int] | None] = {}
    for artifact in artifacts:
        folder = Path(artifact.path)
        for relative in [*artifact.manifest.get("files", {}), MANIFEST]:
            real = os.path.realpath(folder / relative)
            found[real] = store.digests.vouched.get(real) or _signature(real)
    inputs = discovered.signatures(store.digests, [(a, plan.nodes[a.key].unkeyed.as_json()) for a in artifacts])
    if inputs is None:
        return None
    found.update(inputs)
    return None if any(signature is None for signature in found.values()) else found


def _env_digest(name: str) -> str | None:
    """A declared environment variable's value, hashed (the record never holds the value itself)."""
    value = os.environ.get(name)
    return None if value is None else hashlib.blake2b(value.encode("utf-8", "surrogateescape")).hexdigest()


def _unchanged(signatures: dict[str, list[int] | None]) -> bool:
    return all(_signature(path) == signature for path, signature in signatures.items())


def _still_valid(record: dict[str, Any]) -> bool:
    executable, signature = record["executable"]
    if executable != sys.executable or _signature(os.path.realpath(sys.executable)) != signature:
        return False
    if record["package"] != str(PACKAGE) or record["sys_path"] != sys.path[1:]:
        return False
    if record["importable"] != _importable(list(record["importable"])):
        return False
    for location, signature in record["tools"].values():
        if location and _signature(location) != signature:
            return False
    for group in ("folders", "code", "watched", "artifacts"):
        if not _unchanged(record[group]):
            return False
    if any(_env_digest(name) != value for name, value in record["env"].items()):
        return False  # a variable the pipeline declares in model.env (in the capture and export keys)
    machine = record["machine"]
    return machine is None or machine == _gpu_fingerprint(tuple(machine["programs"]))


def _pipeline_bytes(pipeline: Path) -> bytes | None:
    """The pipeline file's bytes, or None where the full path must answer: not a regular file (a device
    never ends, a FIFO blocks), or larger than a pipeline file may be. Never reads more than that limit."""
    if not stat.S_ISREG(os.stat(pipeline).st_mode):
        return None
    with os.fdopen(os.open(pipeline, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # replaced since the stat
            return None
        data = handle.read(MAX_PIPELINE_BYTES + 1)
    return data if len(data) <= MAX_PIPELINE_BYTES else None


def replay(argv: list[str]) -> int | None:
    """Answer `run FILE [--store DIR]` from the record, or None to take the full path."""
    if len(argv) < 2 or argv[0] != "run":
        return None
    store = os.environ.get("ORCHESTRATE_STORE") or "artifacts"
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
        data = _pipeline_bytes(pipeline)
        if data is None:
            return None
        record = json.loads(record_path(Path(store).absolute(), pipeline, data).read_text())
        if record.get("format") != FORMAT or not _still_valid(record):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from orchestrator import ui

    colour = ui.colour_enabled()
    for line in record["lines"]:
        print(ui.stage_line(line["kind"], line["short"], line["status"], None, line["summary"], line["label"],
                            colour))
    count = len(record["lines"])
    print(f"nothing to do: all {count} stage{'s' if count != 1 else ''} cached")
    for line in record["lines"]:  # as the full path reports a cached failed check
        if line["status"] == "failed":
            label = f" [{line['label']}]" if line["label"] else ""
            print(f"FAILED {line['kind']}{label}: {line['summary']}", file=sys.stderr)
    return int(record["exit_code"])

"""Backends: one module each (onnxruntime, tensorrt, trtexec), none aware of caching.

A backend module offers `build(...)` (writes its artifact files) and a `Runner(artifact_dir,
threads, trusted)` with `inputs`, `outputs` (TensorSpec lists) and `run(feeds) -> outputs`, which
verify and bench use without knowing which backend built the artifact.

A build artifact is data: a runner reads its files, but loads code (plugin kernels, plugin
libraries) only as `Trusted` allows, and `open_built` makes that from the build's key, never from
what a file in the artifact names. So an artifact from a remote cache cannot make this machine
import, call or load anything the pipeline did not declare.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.store.store import Artifact

BACKENDS = ("onnxruntime", "tensorrt", "trtexec")
LIBRARY_LABEL = "library:"  # how a plugin library's digest is named in a build key's files


@dataclass(frozen=True)
class Trusted:
    """What a runner may load code from, as the pipeline declares it.

    `plugins` are the build's declared plugins (op, version, namespace, and the user's catalog path
    where one is given): a kernel is the catalog entry's, found by op in the code installed here.
    `library_digests` are the digests of the plugin libraries the build's key covers: a library an
    engine names is loaded only if its bytes are one of those.
    """

    plugins: tuple[dict[str, Any], ...] = ()
    library_digests: frozenset[str] = field(default_factory=frozenset)

    def plugin(self, op: str) -> dict[str, Any] | None:
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


def module(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name}")
    return importlib.import_module(f"orchestrator.backends.{name}")


def open_runner(artifact_dir: Path, backend: str, threads: int = 0, trusted: Trusted | None = None) -> Any:
    """A runner for the build in `artifact_dir`; without `trusted` it may use built-in kernels only."""
    return module(backend).Runner(artifact_dir, threads, trusted)


def open_built(build: Artifact, threads: int = 0) -> Any:
    """A runner for a build artifact, with the backend, plugins and libraries its key was made from.

    A key is the digest of its parts, and the plan computes every key here from the pipeline, so
    parts that hash to the artifact's key are the pipeline's declarations (the store and the remote
    refuse a manifest whose parts do not; this checks again). The run plan or engine description
    in the artifact only says which declared plugin each node is.
    """
    from orchestrator.store.store import parts_match

    parts = build.manifest.get("parts")
    if not isinstance(parts, dict) or not parts_match(parts, build.key):
        raise UserError(f"build {build.key[:8]}: its manifest's parts do not hash to its key; it is not run",
                        hint="remove it (orchestrate fsck --repair) or build again (--force build)")
    config = parts["config"]
    digests = frozenset(digest for label, digest in parts.get("files", {}).items() if label.startswith(LIBRARY_LABEL))
    trusted = Trusted(tuple(config.get("plugins", [])), digests)
    return open_runner(build.path, config["build"]["backend"], threads, trusted)

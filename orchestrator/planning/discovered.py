"""Inputs a stage discovers only by running: the modules it imported, and the artifacts it was made from.

A key is computed before a stage runs, so it cannot name what the stage's code imports: a factory
that imports a helper, which imports a third module, or a model from an installed library. As ninja's
depfiles and Bazel's discovered inputs do, the stage's run records them in its manifest, and they are
re-checked before the artifact is reused:

  * every module in `sys.modules` when the stage ends that is user code (outside the standard library,
    orchestrate itself and site-packages), by name, with the digest of its file. The check looks each
    name up again (in its package's folder, running no code), so a copied or moved project, or a new
    module that shadows one, is seen too. All of the process's modules are recorded, not only those
    the stage loaded itself: a module an earlier stage (or the planner) loaded is used without being
    imported again, so only the whole set is sure to hold what the stage ran (for capture and export,
    which run the model's code; the other stages leave out what another stage loaded: `_relevant`);
  * the version of every installed distribution those modules come from, except the tools the key
    already names by version (torch, onnx, ...), whose files are never listed;
  * the content of each input artifact (`made_from`). An artifact re-made under the same key (its
    discovered inputs changed) may differ from the one its consumers were made from, so a consumer
    compares what it recorded with what is there now: a difference means it runs again.

A record that no longer matches makes the artifact stale: the stage runs again and its new artifact
replaces the old one under the same key. The reason names what changed ("discovered input changed:
examples/thirdparty_detr/encoder.py", "distribution changed: transformers 5.24.0 -> 5.25.0").

A file modified after this process started may have been read before or after the change: its
digest is recorded as unknown, so the next run runs the stage again (ninja compares mtimes for the
same reason). The ctime decides, since an mtime can be set back.
"""

from __future__ import annotations

import functools
import importlib.machinery
import os
import site
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from orchestrator import backends, environment
from orchestrator.store.digest import DigestCache, digest_json, vouching_signature
from orchestrator.store.store import Artifact, Store

STARTED_NS = time.time_ns()  # imported before any user module is (executor, reporting and workers import it)
CLOCK_MARGIN_NS = 10_000_000  # file timestamps come from a coarse clock, up to a tick behind time.time_ns()
STALE = "stale: "  # the start of a `current` problem that is no damage: the reason the stage runs again
PACKAGE = Path(__file__).resolve().parents[1]  # orchestrator/
# Tools the keys name by version (fastpath.TOOLS and their import names): never listed file by file.
HEAVY = {"torch", "onnx", "numpy", "numba", "onnx-graphsurgeon", "onnxscript", "triton",
         *backends.distributions(uses=True)}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _search(paths: dict[str, Any]) -> list[str]:
    """The import path a stage ran with: imports.search_path's python_path and current directory before sys.path."""
    fresh = [str(Path(p).absolute()) for p in [*(paths.get("python_path") or []), os.getcwd()]]
    return list(dict.fromkeys([*(p for p in fresh if p not in sys.path), *sys.path]))


@functools.cache
def _roots() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(orchestrate's package, site-packages folders, standard library folders), each as given and resolved."""
    paths = sysconfig.get_paths()
    sites = [*site.getsitepackages(), site.getusersitepackages(), paths["purelib"], paths["platlib"]]
    stdlib = [paths["stdlib"], paths["platstdlib"]]

    def both(folders: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rstrip(os.sep) + os.sep for d in folders for f in (d, os.path.realpath(d))))

    return both([str(PACKAGE)]), both(sites), both(stdlib)


@functools.cache
def _place(path: str) -> str | None:
    """'source' (user code: its digest is recorded), 'installed' (site-packages: its distribution's version),
    or None (the standard library, orchestrate itself, or no file)."""
    if not os.path.isfile(path):
        return None
    own, sites, stdlib = _roots()
    if path.startswith(own):
        return None
    if path.startswith(sites):  # checked first: site-packages may lie inside the standard library's folder
        return "installed"
    return None if path.startswith(stdlib) else "source"


def _module_file(module: Any) -> str | None:
    try:
        path = getattr(module, "__file__", None)
    except Exception:  # noqa: BLE001 - a lazy module object may raise anything on attribute access
        return None
    return os.path.abspath(path) if isinstance(path, str) else None


def _label(path: str) -> str:
    """How a file is named to the user: relative to the current directory inside it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") or os.path.isabs(relative) else relative


def _settled_digest(path: str, digests: DigestCache) -> str | None:
    """The file's digest, or None if it changed after this process started (its imported content is unknown)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if max(st.st_ctime_ns, st.st_mtime_ns) >= STARTED_NS - CLOCK_MARGIN_NS:
        return None
    return digests.file(real)


USER_CODE_STAGES = ("capture", "export")  # run the model's code: the factory, inputs, replaced callables
_LOADED_BY_STAGES: set[str] = set()  # modules first loaded while a stage of this process ran


def _relevant(node: Any, before: set[str]) -> list[str]:
    """The modules of this process that `node`'s run may have used.

    capture and export run the user's model code, which may use any module loaded so far: all of them.
    The other stages run orchestrate's and the tools' code, and user code only through a catalog entry
    (the planner imports it) or a kernel (imported when a plugin node runs): they leave out the modules
    another stage of this process loaded (the model's), so that an edit of the model does not run again
    a build whose graph did not change.
    """
    loaded = set(sys.modules) - before
    others = _LOADED_BY_STAGES - loaded
    _LOADED_BY_STAGES.update(loaded)
    if node.kind in USER_CODE_STAGES:
        return list(sys.modules)
    return [name for name in list(sys.modules) if name not in others]


def observe(node: Any, inputs: dict[str, Artifact], digests: DigestCache, before: set[str]) -> dict[str, Any]:
    """What a stage that just ran discovered (`before`: the modules loaded when it started): the manifest's
    `discovered` and `made_from` entries.

    User modules are recorded by name, with the file each was loaded from and its digest: the check
    looks the name up again, so a copied or moved project, or a module that now shadows it, is seen.
    """
    search = _search(node.unkeyed.as_json())
    owners = environment.package_distributions(tuple(search))
    modules: dict[str, list[str | None]] = {}
    tops: set[str] = set()
    for name in _relevant(node, before):
        module = sys.modules.get(name)
        path = _module_file(module)
        where = _place(path) if path else None
        if where is None or path is None or getattr(module, "__name__", name) != name:  # an alias: its own name
            continue
        top = name.partition(".")[0]
        tops.add(top)
        providers = owners.get(top, [])
        if (where == "source" or not providers) and not any(_normal(d) in HEAVY for d in providers):
            modules[name] = [_label(path), _settled_digest(path, digests)]
    keyed = {_normal(tool) for tool in node.parts["tools"]}
    versions = {dist: environment.distribution(dist, tuple(search))[0]
                for top in tops for dist in owners.get(top, []) if _normal(dist) not in keyed}
    return {"discovered": {"modules": dict(sorted(modules.items())), "distributions": dict(sorted(versions.items()))},
            "made_from": {role: identity(artifact) for role, artifact in sorted(inputs.items())}}


def identity(artifact: Artifact) -> str:
    """An artifact's content: the digest of its files' digests (equal content, equal identity)."""
    return digest_json({name: meta.get("digest") for name, meta in artifact.manifest.get("files", {}).items()})


def _locate(name: str, search: list[str], found: dict[str, str | None]) -> str | None:
    """The file the import system would load for module `name` now, found without running any module's code
    (a submodule in its parent package's folder); None when that cannot be told that way."""
    if name in found:
        return found[name]
    parent = name.rpartition(".")[0]
    where: list[str] | None = search
    if parent:
        package = getattr(sys.modules.get(parent), "__path__", None)
        parent_file = None if package is not None else _locate(parent, search, found)
        if package is not None:
            where = list(package)
        elif parent_file and os.path.basename(parent_file).startswith("__init__."):
            where = [os.path.dirname(parent_file)]
        else:
            where = None
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, where) if where is not None else None
    except (ImportError, ValueError, OSError):
        spec = None
    origin = spec.origin if spec is not None else None
    found[name] = os.path.abspath(origin) if isinstance(origin, str) and os.path.isfile(origin) else None
    return found[name]


def _resolve(label: str) -> str:
    return os.path.realpath(label if os.path.isabs(label) else os.path.join(os.getcwd(), label))


def _module_files(record: dict[str, Any], paths: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(module, file it would be loaded from now, recorded digest) for each recorded module; where the name
    cannot be looked up without running code, the file it was loaded from."""
    search = _search(paths)
    found: dict[str, str | None] = {}
    return [(name, os.path.realpath(_locate(name, search, found) or _resolve(label)), digest)
            for name, (label, digest) in record.get("modules", {}).items()]


def stale(node: Any, artifact: Artifact, inputs: dict[str, Artifact], digests: DigestCache) -> str | None:
    """Why `artifact` no longer describes what `node` would make (STALE + reason), or None while it does."""
    manifest = artifact.manifest
    record, made = manifest.get("discovered"), manifest.get("made_from")
    if not isinstance(record, dict) or not isinstance(made, dict) or "modules" not in record:
        return STALE + "its discovered inputs were not recorded (made by an earlier orchestrate)"
    for role, upstream in sorted(inputs.items()):
        if made.get(role) != identity(upstream):
            remade = upstream.manifest.get("reason")
            return STALE + f"input changed: {role}" + (f" (re-made: {remade})" if remade else "")
    for name, path, recorded in _module_files(record, node.unkeyed.as_json()):
        try:
            now = digests.file(path)
        except OSError:
            return STALE + f"discovered input removed: {_label(path)} (module {name})"
        if recorded is None:
            return STALE + f"discovered input changed while the last run read it: {_label(path)}"
        if now != recorded:
            return STALE + f"discovered input changed: {_label(path)} (module {name}, content {recorded[:8]} -> " \
                           f"{now[:8]})"
    search = tuple(_search(node.unkeyed.as_json()))
    for dist, version in record.get("distributions", {}).items():
        installed = environment.distribution(dist, search)[0]
        if installed != version:
            return STALE + f"distribution changed: {dist} {version or 'absent'} -> {installed or 'absent'}"
    return None


def current(store: Store, node: Any, inputs: dict[str, Artifact]) -> tuple[Artifact | None, str | None]:
    """`store.check`, and then whether the intact artifact is still current: (artifact, None) to reuse it,
    else (None, why): 'missing', a damage, or STALE + the reason the stage runs again."""
    artifact, damage = store.check(node.kind, node.key)
    if artifact is None:
        return None, damage
    reason = stale(node, artifact, inputs, store.digests)
    return (None, reason) if reason else (artifact, None)


def review(plan: Any, store: Store) -> dict[str, tuple[Artifact | None, str | None]]:
    """`current` for every node of a plan that has not run yet (`plan`): a node whose input would run
    again would be made from a new input, so it counts as stale too ('input changed: ROLE')."""
    found: dict[str, tuple[Artifact | None, str | None]] = {}
    for node in plan.order():  # upstream nodes come first
        artifact, problem = store.check(node.kind, node.key)
        rerun = [role for role, key in node.inputs.items() if found[key][0] is None]
        if artifact is not None and rerun:
            artifact, problem = None, STALE + f"input changed: {rerun[0]}"
        elif artifact is not None:
            inputs = {role: found[key][0] for role, key in node.inputs.items()}
            problem = stale(node, artifact, inputs, store.digests)  # type: ignore[arg-type]
            artifact = None if problem else artifact
        found[node.key] = (artifact, problem)
    return found


def describe(problem: str | None, prefix: str) -> str | None:
    """A `current` problem as a reason to run: a stale one as it is, a damage after `prefix`; None if missing."""
    if problem is None or problem == "missing":
        return None
    return problem[len(STALE):] if problem.startswith(STALE) else prefix + problem


def signatures(digests: DigestCache, made: list[tuple[Artifact, dict[str, Any]]]) -> dict[str, list[int] | None] | None:
    """Stat signatures of the discovered inputs of artifacts (with the `paths` of the node each is reused for):
    the module files, and the metadata file of each distribution, for the no-op fast path to re-check;
    None when one of them no longer matches its record (no fast answer then)."""
    found: dict[str, list[int] | None] = {}
    versions: dict[tuple[str, tuple[str, ...]], str | None] = {}
    for artifact, paths in made:
        record = artifact.manifest.get("discovered") or {}
        for _, path, recorded in _module_files(record, paths):
            try:
                if recorded is None or digests.file(path) != recorded:
                    return None
            except OSError:
                return None
            found[path] = digests.vouched.get(path)
        search = tuple(_search(paths))
        for name, version in record.get("distributions", {}).items():
            versions.setdefault((name, search), version)
            if versions[(name, search)] != version:
                return None
    for (name, search), version in versions.items():
        info = environment.distribution(name, search)[1]
        try:
            found[str(info)] = vouching_signature(str(info)) if info else None
        except OSError:
            return None
        # Read again after the signature was taken (not the cached answer), so that it vouches for this version.
        if info is None or environment.distribution.__wrapped__(name, search)[0] != version:
            return None
    return found

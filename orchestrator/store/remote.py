"""A remote artifact cache on any fsspec filesystem (s3://, gs://, a shared path), shared by many machines.

Layout under the URL (`v1` is the store's manifest format):
  v1/blobs/<d[:2]>/<d>                 a file's bytes, named by their BLAKE3 digest <d>
  v1/<stage>/<key>/manifest.json       one artifact: the store's manifest (file -> size, digest)
  v1/.tmp/                             uploads in flight, on filesystems without atomic writes

A blob's name is its content, so every writer of a name writes the same bytes: concurrent pushers
cannot corrupt each other. A push uploads the blobs first and publishes the manifest last, each
object atomically (object stores publish an upload only when it completes; elsewhere it is written
under a temporary name and renamed), so a reader never sees a manifest whose blobs are not all
there. A reader downloads the blobs into a staging directory of the local store, checks every
size and digest, and publishes locally with `Store.publish`; any mismatch rejects the remote copy.

Whoever can write the remote can change results, so what it serves is data, checked before use:
the manifest's `parts` must hash to the key this machine computed (so it carries only what the
pipeline says), it may name only the files its stage writes (`Stage.outputs`), at most MAX_FILES
of them, and every blob must have the manifest's size before a byte of it is fetched (and is cut
off at that size while it is). Nothing pulled is ever imported or run: kernels and plugin
libraries come from the code and files installed here (see `backends.open_built`).

The remote key is the local key, which already covers configs, input keys, file digests, tool
versions and the GPU. Remote settings are in no key. Nothing here touches the network until an
artifact is missing locally, so a fully cached run never contacts the remote.
"""

from __future__ import annotations

import json
import platform
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator import stages
from orchestrator.errors import UserError
from orchestrator.store.digest import parts_match
from orchestrator.store.store import FORMAT, MANIFEST, Artifact, Store

ENVIRONMENT = "ORCHESTRATE_REMOTE"  # a URL, or "off": overrides the pipeline's cache.remote
DISABLED = ("off", "none")
INSTALL_HINT = "pip install 'orchestrate[remote]' (s3fs; gcsfs for gs://, adlfs for az://)"
# Filesystems on which an upload becomes visible only once complete; others get a temporary name.
ATOMIC_UPLOADS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_FILES = 10_000  # files in one pulled artifact (a capture of a whole model holds one per plugin call)
MAX_MANIFEST_BYTES = 64 << 20
CHUNK = 1 << 20  # bytes read from a blob at a time
_FILESYSTEMS: dict[str, tuple[Any, str]] = {}


@dataclass(frozen=True)
class Remote:
    """Where the remote cache is and how to open it; cheap to pickle into worker processes."""

    url: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    push_enabled: bool = True

    # ---------------------------------------------------------------- filesystem
    def filesystem(self) -> tuple[Any, str]:
        """(fsspec filesystem, root path inside it), opened once per process."""
        identity = self.url + "\0" + json.dumps(self.options, sort_keys=True, default=str)
        if identity not in _FILESYSTEMS:
            import fsspec  # type: ignore[import-untyped]

            fs, root = fsspec.core.url_to_fs(self.url, **self.options)
            _FILESYSTEMS[identity] = (fs, root.rstrip("/") + f"/v{FORMAT}")
        return _FILESYSTEMS[identity]

    def manifest_path(self, kind: str, key: str) -> str:
        return f"{self.filesystem()[1]}/{kind}/{key}/{MANIFEST}"

    def blob_path(self, digest: str) -> str:
        return f"{self.filesystem()[1]}/blobs/{digest[:2]}/{digest}"

    def _atomic_uploads(self) -> bool:
        fs = self.filesystem()[0]
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        return any(p in ATOMIC_UPLOADS for p in protocols)

    def _put(self, target: str, source: Path | None = None, data: bytes | None = None) -> None:
        """Write one object so that readers see all of it or nothing."""
        fs, root = self.filesystem()
        if self._atomic_uploads():
            if source is not None:
                fs.put_file(str(source), target)
            else:
                fs.pipe_file(target, data)
            return
        temporary = f"{root}/.tmp/{uuid.uuid4().hex}"
        fs.makedirs(f"{root}/.tmp", exist_ok=True)
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        try:
            if source is not None:
                fs.put_file(str(source), temporary)
            else:
                fs.pipe_file(temporary, data)
            fs.mv(temporary, target)
        finally:
            if fs.exists(temporary):
                fs.rm_file(temporary)

    # ---------------------------------------------------------------- reading
    def read_manifest(self, kind: str, key: str) -> tuple[dict[str, Any] | None, str]:
        """The remote manifest of an artifact and '' ; or None and 'missing' or why it is unusable."""
        fs = self.filesystem()[0]
        path = self.manifest_path(kind, key)
        try:
            size = fs.info(path)["size"]
            if size is not None and size > MAX_MANIFEST_BYTES:
                return None, f"manifest.json has {size} bytes, more than any manifest ({MAX_MANIFEST_BYTES})"
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return None, "missing"
        try:
            manifest = json.loads(raw)
        except ValueError:
            return None, "manifest.json is not valid JSON"
        problem = _manifest_problem(manifest, kind, key)
        return (None, problem) if problem else (manifest, "")

    def pull(self, store: Store, kind: str, key: str) -> tuple[Artifact | None, str]:
        """Download an artifact into the local store, verified file by file.

        Returns (artifact, '') when pulled, (None, 'missing') when the remote does not have it, and
        (None, why) when the remote copy is damaged, holds what its stage never writes, or the remote
        cannot be read: the caller then makes the artifact itself. The caller holds the key's lock.
        """
        try:
            manifest, problem = self.read_manifest(kind, key)
            if manifest is None:
                return None, problem
            problem = self._size_problem(manifest["files"])  # every blob, before any is fetched
            if problem:
                return None, problem
            with store.writer(kind, key) as staging:
                for relative, meta in sorted(manifest["files"].items()):
                    problem = self._fetch(relative, meta, staging / relative)
                    if problem:
                        return None, problem
                problem = _content_problem(kind, staging)
                if problem:
                    return None, problem
                kept = {k: v for k, v in manifest.items() if k not in ("format", "key", "stage", "files", "created")}
                artifact = store.publish(staging, kind, key, kept)
        except Exception as exc:  # noqa: BLE001 - a remote that fails in any way must not fail the local run
            return None, f"cannot read the remote cache: {type(exc).__name__}: {exc}"
        return artifact, ""

    def _size_problem(self, files: dict[str, dict[str, Any]]) -> str:
        """Why the blobs do not have the sizes the manifest gives (or are missing), or '': asked of the
        remote's listing, so that a blob of the wrong size is never downloaded."""
        fs = self.filesystem()[0]
        for relative, meta in sorted(files.items()):
            try:
                size = fs.info(self.blob_path(meta["digest"]))["size"]
            except FileNotFoundError:
                return f"{relative}: its blob is missing"
            if size != meta["size"]:
                return f"{relative}: its blob has {size} bytes, the manifest says {meta['size']}"
        return ""

    def _fetch(self, relative: str, meta: dict[str, Any], target: Path) -> str:
        """Copy one blob to `target`, hashing it on the way and reading no more than its size allows;
        why it does not match, or ''."""
        import blake3

        fs = self.filesystem()[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        hasher = blake3.blake3()
        remaining = meta["size"]
        try:
            with fs.open(self.blob_path(meta["digest"]), "rb") as source, open(target, "wb") as sink:
                while chunk := source.read(min(CHUNK, remaining + 1)):
                    remaining -= len(chunk)
                    if remaining < 0:
                        return f"{relative}: its blob is larger than the {meta['size']} bytes the manifest says"
                    hasher.update(chunk)
                    sink.write(chunk)
        except FileNotFoundError:
            return f"{relative}: its blob is missing"
        if remaining:
            return f"{relative}: its blob is smaller than the {meta['size']} bytes the manifest says"
        return "" if hasher.hexdigest() == meta["digest"] else f"{relative} does not match its digest"

    # ---------------------------------------------------------------- writing
    def push(self, artifact: Artifact, replace: bool = False) -> str:
        """Upload an intact local artifact: blobs first, manifest last. 'pushed' or 'present'.

        `replace` re-uploads every blob and the manifest (to repair a damaged remote copy, or after
        a forced re-run); otherwise a key whose manifest is already there is left alone, and blobs
        already there with the right size are not uploaded again.
        """
        fs = self.filesystem()[0]
        manifest_path = self.manifest_path(artifact.kind, artifact.key)
        if not replace and fs.exists(manifest_path):
            return "present"
        for relative, meta in sorted(artifact.manifest["files"].items()):
            blob = self.blob_path(meta["digest"])
            if not replace:
                try:
                    if fs.info(blob)["size"] == meta["size"]:
                        continue
                except FileNotFoundError:
                    pass
            self._put(blob, source=artifact.path / relative)
        self._put(manifest_path, data=(artifact.path / MANIFEST).read_bytes())
        return "pushed"

    def try_push(self, artifact: Artifact, replace: bool = False) -> str | None:
        """Push, and on failure a one-line warning instead of an exception (the local run succeeded)."""
        if not self.push_enabled:
            return None
        try:
            self.push(artifact, replace)
        except Exception as exc:  # noqa: BLE001 - a remote that fails in any way must not fail the local run
            return f"remote: could not push {artifact.kind} {artifact.key[:8]} to {self.url}: " \
                   f"{type(exc).__name__}: {exc}"
        return None

    def temporary_objects(self) -> list[str]:
        """Uploads in flight or left behind by a killed pusher (never read by anyone)."""
        fs, root = self.filesystem()
        try:
            return list(fs.ls(f"{root}/.tmp", detail=False))
        except FileNotFoundError:
            return []


def _manifest_problem(manifest: Any, kind: str, key: str) -> str:
    """Why a remote manifest cannot be used, or '': it must describe this key (its parts hash to it) and
    name only files its stage writes, by safe relative paths, each with a size and a digest."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"manifest.json is not an orchestrate manifest of format {FORMAT}"
    if manifest.get("key") != key or manifest.get("stage") != kind:
        return "manifest.json belongs to another artifact"
    if not parts_match(manifest.get("parts"), key):
        return "manifest.json's parts do not hash to its key: it claims a configuration the key does not"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest.json lists no files"
    if len(files) > MAX_FILES:
        return f"manifest.json lists {len(files)} files, more than any {kind} artifact holds ({MAX_FILES})"
    for relative, meta in files.items():
        parts = PurePosixPath(relative).parts
        if (not relative or relative.startswith("/") or "\\" in relative or ".." in parts or relative == MANIFEST
                or PurePosixPath(relative).as_posix() != relative):
            return f"manifest.json names an unsafe path {relative!r}"
        if not stages.declares(kind, relative):
            return f"it holds a file the {kind} stage never writes: {relative}"
        size = meta.get("size") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or not _DIGEST.match(str(meta.get("digest", ""))):
            return f"manifest.json has no valid size and digest for {relative}"
    return ""


def _content_problem(kind: str, staging: Path) -> str:
    """Why a downloaded artifact's own records are not what its stage writes, or '' (checked before it is
    published, so that a malformed one never reaches a stage): a build's files, as each backend checks them."""
    if kind != "build":
        return ""
    from orchestrator import backends

    return backends.artifact_problem(staging)


def configured(cache: dict[str, Any], base_dir: Path, override: str | None = None) -> Remote | None:
    """The remote cache to use: `override` (--remote or ORCHESTRATE_REMOTE) wins over the pipeline's cache.remote.

    A plain path is a shared filesystem path; relative ones are relative to the pipeline file (in
    YAML) or to the current directory (on the command line). 'off' turns the remote cache off.
    """
    if override is not None and override.strip():
        url = override.strip()
        if url.lower() in DISABLED:
            return None
        remote = Remote(_absolute(url, Path.cwd()), {}, bool(cache.get("push", True)))
        check(remote, None)
        return remote
    configured_url = cache.get("remote")
    if not configured_url:
        return None
    remote = Remote(_absolute(str(configured_url), base_dir), dict(cache.get("options") or {}),
                    bool(cache.get("push", True)))
    check(remote, "cache.remote")
    return remote


def check(remote: Remote, field_name: str | None) -> None:
    """Fail early (exit 2) on a URL whose filesystem is unknown or not installed; connects to nothing.

    `field_name` is None for a URL from --remote or ORCHESTRATE_REMOTE.
    """
    try:
        from fsspec.core import split_protocol  # type: ignore[import-untyped]
        from fsspec.registry import get_filesystem_class  # type: ignore[import-untyped]
    except ImportError:
        raise UserError(f"remote cache '{remote.url}' needs fsspec, which is not installed", field=field_name,
                        hint=INSTALL_HINT) from None
    protocol = split_protocol(remote.url)[0] or "file"
    try:
        get_filesystem_class(protocol)
    except ValueError:
        raise UserError(f"remote cache '{remote.url}': unknown filesystem '{protocol}://'", field=field_name,
                        hint="use s3://bucket/prefix, gs://bucket/prefix, or a shared directory path") from None
    except ImportError as exc:
        raise UserError(f"remote cache '{remote.url}' needs a package that is not installed: {exc}", field=field_name,
                        hint=INSTALL_HINT) from None


def _absolute(url: str, base: Path) -> str:
    """A URL as given; a local path (plain or file://) made absolute against `base`."""
    protocol, _, rest = url.partition("://")
    if rest and protocol not in ("file", "local"):
        return url
    resolved = Path(rest if rest else url).expanduser()
    return str(resolved if resolved.is_absolute() else (base / resolved).absolute())


def localize(store: Store, inputs: dict[str, Artifact], remote: Remote | None) -> dict[str, Artifact]:
    """The input artifacts as found in this machine's store, pulling those it lacks from the remote.

    On one machine or a shared filesystem every input is already here; on a cluster without one
    the remote cache is how a stage's inputs reach the worker that runs it.
    """
    local = {}
    for role, artifact in inputs.items():
        found, _ = store.check(artifact.kind, artifact.key)
        if found is None and remote is not None:
            with store.lock(artifact.key):
                found, _ = store.check(artifact.kind, artifact.key)
                if found is None:
                    found, problem = remote.pull(store, artifact.kind, artifact.key)
                    if found is None and problem != "missing":
                        raise UserError(f"input {artifact.kind} {artifact.key[:8]} is damaged in the remote cache "
                                        f"{remote.url}: {problem}")
        if found is None:
            raise UserError(f"input {artifact.kind} {artifact.key[:8]} is not in the store {store.root} on "
                            f"{platform.node()}" + (f" nor in the remote cache {remote.url}" if remote else ""),
                            hint="on a cluster, put the store on a filesystem all nodes share, or set cache.remote")
        local[role] = found
    return local


def pull_pipeline(store: Store, remote: Remote, nodes: list[Any], echo: Any) -> int:
    """`orchestrate pull`: fetch every artifact of the plan the local store lacks; the number of rejected copies."""
    from orchestrator import ui

    counts = {"pulled": 0, "cached": 0, "absent": 0, "rejected": 0}
    for node in nodes:
        started = time.perf_counter()
        with store.lock(node.key):
            artifact, damage = store.check(node.kind, node.key)
            if artifact is not None:
                status, summary = "cached", artifact.manifest.get("summary", "")
            else:
                if damage != "missing":
                    store.discard(node.kind, node.key)
                artifact, problem = remote.pull(store, node.kind, node.key)
                if artifact is not None:
                    status, summary = "pulled", artifact.manifest.get("summary", "")
                elif problem == "missing":
                    status, summary = "absent", "not in the remote cache"
                else:
                    status, summary = "rejected", f"remote copy ignored: {problem}"
        counts[status] += 1
        elapsed = time.perf_counter() - started if status == "pulled" else None
        echo(ui.stage_line(node.kind, node.short, status, elapsed, summary))
    echo(f"{counts['pulled']} pulled, {counts['cached']} already here, {counts['absent']} not in {remote.url}"
         + (f", {counts['rejected']} rejected (damaged)" if counts["rejected"] else ""))
    return counts["rejected"]


def push_pipeline(store: Store, remote: Remote, nodes: list[Any], replace: bool, echo: Any) -> int:
    """`orchestrate push`: upload every artifact of the plan the local store holds; the number not built here."""
    from orchestrator import ui

    counts = {"pushed": 0, "present": 0, "missing": 0}
    for node in nodes:
        started = time.perf_counter()
        artifact, damage = store.check(node.kind, node.key)
        if artifact is None:
            counts["missing"] += 1
            echo(ui.stage_line(node.kind, node.short, "missing", None,
                               "not built here" if damage == "missing" else f"local artifact {damage}"))
            continue
        status = remote.push(artifact, replace)
        counts[status] += 1
        elapsed = time.perf_counter() - started if status == "pushed" else None
        echo(ui.stage_line(node.kind, node.short, status, elapsed, artifact.manifest.get("summary", "")))
    echo(f"{counts['pushed']} pushed, {counts['present']} already in {remote.url}, "
         f"{counts['missing']} not in the local store")
    return counts["missing"]

"""The content-addressed artifact store under `artifacts/`.

Layout:
  <root>/<stage>/<key>/          one artifact: the stage's files plus manifest.json
  <root>/.tmp/                   artifacts being written (never read)
  <root>/.locks/<key>.lock       held while a key is being produced, so it is produced once
  <root>/.locks/registry.lock    orders runs registering the keys they use against gc removing them
  <root>/.state/digests.json     file digests by stat signature (no rehash on a no-op run)
  <root>/.state/runs/<name>.json the keys of a pipeline's last run (for `plan --why`)
  <root>/.state/fast/            remembered plans for the no-op fast path
  <root>/.state/inputs/<c>.json  the artifact a stage made from inputs whose content key is <c> (early cutoff)
  <root>/.state/inuse/<pid>.*    keys a live process uses; gc leaves them alone
  <root>/.state/failed/<stage>-<key[:8]>/   what a stage that stopped on bad input (exit 2) wrote, and what
                                 its run withdrew: kept for inspection, never read as an artifact

An artifact becomes visible only by renaming a finished directory whose manifest lists the digest
of every file, so a run killed at any point leaves nothing a later run would trust. A manifest
whose files do not match is treated as absent (and reported by fsck), and so is one whose `parts`
(what the key was computed from) do not hash to its key: a manifest says nothing the plan did not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.store.digest import DigestCache, hash_file, parts_match, vouching_signature

MANIFEST = "manifest.json"
FORMAT = 1
SHARED_KINDS = ("timing_cache",)  # store folders beside the stages' own
FAILED_RECORD = "failed.json"


@dataclass
class Artifact:
    kind: str
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def result(self) -> dict[str, Any]:
        return self.manifest.get("result", {})  # type: ignore[no-any-return]

    def file(self, relative: str) -> Path:
        return self.path / relative


class Store:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()
        self._digests: DigestCache | None = None

    # -------------------------------------------------------------- paths
    @property
    def state(self) -> Path:
        return self.root / ".state"

    @property
    def digests(self) -> DigestCache:
        if self._digests is None:
            self._digests = DigestCache(self.state / "digests.json")
        return self._digests

    def path_of(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def ensure(self) -> None:
        for sub in (".tmp", ".locks", ".state/runs", ".state/fast", ".state/inuse"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            with contextlib.suppress(OSError):
                ignore.write_text("# orchestrate artifact store: a cache, not source\n*\n!.gitignore\n")

    # -------------------------------------------------------------- reading
    def get(self, kind: str, key: str) -> Artifact | None:
        artifact, _ = self.check(kind, key)
        return artifact

    def check(self, kind: str, key: str, rehash: bool = False) -> tuple[Artifact | None, str | None]:
        """The artifact if present and intact; else None and why ('missing', or what is damaged)."""
        path = self.path_of(kind, key)
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError):
            return None, "damaged: manifest.json unreadable"
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            return None, "damaged: manifest.json is not a manifest"
        if manifest.get("format") != FORMAT or manifest.get("key") != key or manifest.get("stage", kind) != kind:
            return None, "damaged: manifest does not belong to this key"
        if not parts_match(manifest.get("parts"), key):
            return None, "damaged: manifest parts do not hash to its key"
        for relative, meta in manifest["files"].items():
            if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) or ".." in Path(relative).parts:
                return None, f"damaged: manifest entry for {relative} is malformed"
            file = path / relative
            try:
                size = file.stat().st_size
            except OSError:
                return None, f"damaged: {relative} is missing"
            if size != meta["size"]:
                return None, f"damaged: {relative} has {size} bytes, manifest says {meta['size']}"
            if rehash:  # fsck: read every byte, and let the digest cache learn what is really there
                signature = vouching_signature(file)
                actual = hash_file(file)
                if signature is not None:
                    self.digests.entries[os.path.realpath(file)] = [*signature, actual]
                    self.digests.dirty = True
            else:
                actual = self.digests.file(file)
            if actual != meta["digest"]:
                return None, f"damaged: {relative} does not match its digest"
        return Artifact(kind, key, path, manifest), None

    def artifacts(self) -> Iterator[tuple[str, str, Path]]:
        from orchestrator.stages import names

        for kind in (*names(), *SHARED_KINDS):
            folder = self.root / kind
            if folder.is_dir():
                for entry in sorted(folder.iterdir()):
                    if entry.is_dir():
                        yield kind, entry.name, entry

    # -------------------------------------------------------------- writing
    def lock(self, key: str) -> Any:
        from filelock import FileLock

        self.ensure()
        return FileLock(str(self.root / ".locks" / f"{key}.lock"))

    @contextlib.contextmanager
    def writer(self, kind: str, key: str) -> Iterator[Path]:
        """A fresh staging directory; `publish` turns it into the artifact, an exception discards it."""
        self.ensure()
        staging = self.root / ".tmp" / f"{kind}-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, staging: Path, kind: str, key: str, manifest: dict[str, Any]) -> Artifact:
        """Digest every staged file, write the manifest last, fsync, and rename into place."""
        files: dict[str, dict[str, Any]] = {}
        for item in sorted(staging.rglob("*")):
            if item.is_file() and item.name != MANIFEST:
                relative = item.relative_to(staging).as_posix()
                digest = hash_file(item)
                files[relative] = {"size": item.stat().st_size, "digest": digest}
        manifest = {"format": FORMAT, "key": key, "stage": kind, **manifest, "files": files,
                    "created": time.time(), "writer": _writer()}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        _fsync_tree(staging)
        final = self.path_of(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # A damaged artifact of the same key is replaced; a sound one (a racing writer) is kept.
            existing, _ = self.check(kind, key)
            if existing is not None:
                return existing
            self.discard(kind, key)
        os.rename(staging, final)
        _fsync_dir(final.parent)
        for relative, meta in files.items():
            self.digests.remember(final / relative, meta["digest"])
        return Artifact(kind, key, final, manifest)

    def adopt(self, source: Artifact, kind: str, key: str, manifest: dict[str, Any]) -> Artifact:
        """Publish `source`'s files under `key` with a manifest of its own: for a stage whose inputs are
        identical in content to those `source` was made from. Files are hard-linked (copied where links
        cannot be made); publishing hashes them again, so a damaged source is never passed on."""
        with self.writer(kind, key) as staging:
            for relative in source.manifest["files"]:
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source.path / relative, target)
                except OSError:
                    shutil.copy2(source.path / relative, target)
            adopted = self.publish(staging, kind, key, manifest)
        self._relinked(source, adopted)
        return adopted

    def _relinked(self, source: Artifact, adopted: Artifact) -> None:
        """A hard link changes the ctime of the file linked, so the signature `source`'s files are remembered
        by no longer holds (the next check would rehash them): where the adopted file is the same inode,
        publishing just hashed that content, so remember it under the new signature."""
        for relative, meta in adopted.manifest.get("files", {}).items():
            with contextlib.suppress(OSError):
                if os.stat(source.path / relative).st_ino == os.stat(adopted.path / relative).st_ino:
                    self.digests.remember(source.path / relative, meta["digest"])

    def same_inputs(self, kind: str, content: str) -> Artifact | None:
        """The intact artifact of this stage last made from inputs with this content key, if any."""
        try:
            entry = json.loads((self.state / "inputs" / f"{content}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("stage") != kind or not isinstance(entry.get("key"), str):
            return None
        artifact, _ = self.check(kind, entry["key"])
        return artifact

    def remember_inputs(self, content: str, kind: str, key: str) -> None:
        """Note that `key` was made from inputs with this content key (see executor.content_key)."""
        write_json_atomic(self.state / "inputs" / f"{content}.json", {"stage": kind, "key": key})

    def _forget_inputs(self, path: Path, kind: str, key: str) -> None:
        """Drop the content-key entry that points at an artifact about to go, so that a withdrawn run
        leaves no index entry behind (a stale one would only be ignored)."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            content = json.loads((path / MANIFEST).read_text()).get("inputs_content")
            entry = self.state / "inputs" / f"{content}.json"
            if content and json.loads(entry.read_text()) == {"stage": kind, "key": key}:
                entry.unlink()

    def discard(self, kind: str, key: str, keep_in: Path | None = None) -> None:
        """Remove an artifact: first move it out of sight, then delete it.

        With `keep_in`, it is moved there as `<kind>-<key[:8]>` instead (outside the trusted store, for
        the user to look at) and not deleted.
        """
        path = self.path_of(kind, key)
        if not path.exists():
            return
        self._forget_inputs(path, kind, key)
        self.ensure()
        if keep_in is not None:
            keep_in.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, keep_in / f"{kind}-{key[:8]}")
            return
        grave = self.root / ".tmp" / f"discard-{key[:16]}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, grave)
        shutil.rmtree(grave, ignore_errors=True)

    # -------------------------------------------------------------- run records
    def run_record(self, pipeline: str) -> dict[str, Any]:
        try:
            return json.loads((self.state / "runs" / f"{pipeline}.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def write_run_record(self, pipeline: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.state / "runs" / f"{pipeline}.json", record)

    def save(self) -> None:
        if self._digests is not None:
            self._digests.save()

    # -------------------------------------------------------------- keys in use (for gc)
    def registry(self) -> Any:
        """The store-wide lock that orders 'a run announces the keys it uses' against 'gc removes'.

        A run registers its keys under it before it reads any artifact; a sweep (gc, withdraw) reads
        the registered keys and removes artifacts while holding it. So a sweep either sees a run's
        keys, or finishes before that run looks at the store (and the run rebuilds what is gone).
        """
        from filelock import FileLock

        self.ensure()
        return FileLock(str(self.root / ".locks" / "registry.lock"))

    @contextlib.contextmanager
    def in_use(self, keys: list[str]) -> Iterator[None]:
        """Mark keys as in use by this process for as long as the block runs."""
        from filelock import FileLock

        self.ensure()
        base = self.root / ".state" / "inuse" / f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        lock = FileLock(str(base) + ".lock")
        try:
            with lock:
                with self.registry():
                    write_json_atomic(Path(str(base) + ".json"), keys)
                try:
                    yield
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(str(base) + ".json")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(str(base) + ".lock")

    def keys_in_use(self) -> set[str]:
        """Keys registered by live processes (a record whose lock is free belongs to a dead one: removed)."""
        from filelock import FileLock, Timeout

        used: set[str] = set()
        folder = self.root / ".state" / "inuse"
        if not folder.is_dir():
            return used
        for record in folder.glob("*.json"):
            lock = FileLock(str(record.with_suffix(".lock")))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                with contextlib.suppress(OSError, ValueError):
                    used.update(json.loads(record.read_text()))
                continue
            try:
                record.unlink(missing_ok=True)  # its process is gone
            finally:
                lock.release()
        return used

    def remove_unless_busy(self, kind: str, key: str, keep_in: Path | None = None) -> bool:
        """Discard an artifact (or move it into `keep_in`) unless another process holds its key's lock;
        call inside `registry()`."""
        from filelock import Timeout

        lock = self.lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        try:
            self.discard(kind, key, keep_in)
        finally:
            lock.release()
        return True

    def withdraw(self, candidates: list[tuple[str, str]], since: float,
                 keep_in: Path | None = None) -> list[tuple[str, str]]:
        """Remove the artifacts among `candidates` that this process (or a worker it started) published
        since `since`: a run that stopped on bad input leaves nothing behind that a later run would use.

        With `keep_in`, they are moved there rather than deleted, so that the user can open the graph
        that failed; nothing reads that folder as an artifact. An artifact another running process
        has registered (it may already be reading it) is kept: it is sound, and that process needs
        it. Returns what was removed.
        """
        removed: list[tuple[str, str]] = []
        me = _writer()
        with self.registry():
            busy = self.keys_in_use()
            for kind, key in candidates:
                try:
                    manifest = json.loads((self.path_of(kind, key) / MANIFEST).read_text())
                except (OSError, ValueError):
                    continue
                writer = manifest.get("writer") or {}
                ours = writer.get("host") == me["host"] and me["pid"] in (writer.get("pid"), writer.get("parent"))
                if ours and manifest.get("created", 0) >= since and key not in busy \
                        and self.remove_unless_busy(kind, key, keep_in):
                    removed.append((kind, key))
        return removed

    # -------------------------------------------------------------- failures kept for inspection
    @property
    def failed(self) -> Path:
        return self.state / "failed"

    def keep_failed(self, staging: Path, kind: str, key: str, error: str, inputs: dict[str, Path]) -> Path:
        """Move what a stage wrote before it stopped on bad input to `.state/failed/<kind>-<key[:8]>/written/`.

        Without it, the user could not look at what the stage refused. The folder is outside every
        artifact path, so nothing is ever reused from it; an older failure of the same key is replaced.
        """
        folder = self.failed / f"{kind}-{key[:8]}"
        if folder.exists():
            grave = self.root / ".tmp" / f"discard-failed-{uuid.uuid4().hex[:8]}"
            os.rename(folder, grave)
            shutil.rmtree(grave, ignore_errors=True)
        folder.mkdir(parents=True)
        if staging.is_dir() and any(staging.iterdir()):
            os.rename(staging, folder / "written")
        write_json_atomic(folder / FAILED_RECORD, {
            "stage": kind, "key": key, "error": error, "created": time.time(), "writer": _writer(),
            "inputs": {role: str(path) for role, path in sorted(inputs.items())}})
        return folder

    def failure(self, keys: set[str], since: float, error: str) -> Path | None:
        """The folder `keep_failed` made since `since` for one of `keys`; the one of `error` first."""
        found: list[tuple[bool, str]] = []
        for record in self.failed.glob(f"*/{FAILED_RECORD}") if self.failed.is_dir() else []:
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("key") in keys and data.get("created", 0) >= since:
                found.append((data.get("error") != error, str(record.parent)))
        return Path(min(found)[1]) if found else None

    def settle_failure(self, folder: Path, error: str) -> bool:
        """Keep a failure folder that holds something to look at (and say what failed); drop an empty one."""
        if not folder.is_dir():
            return False
        if not any(entry.name != FAILED_RECORD for entry in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            return False
        if not (folder / FAILED_RECORD).exists():
            write_json_atomic(folder / FAILED_RECORD, {"error": error, "created": time.time(), "writer": _writer()})
        return True

    def old_failures(self, min_age: float) -> list[Path]:
        """Failure folders kept for inspection longer than `min_age` seconds (for gc)."""
        now = time.time()
        found = []
        for folder in sorted(self.failed.iterdir()) if self.failed.is_dir() else []:
            try:
                age = now - folder.stat().st_mtime
            except OSError:
                continue
            if folder.is_dir() and age >= min_age:
                found.append(folder)
        return found

    def stale_staging(self, min_age: float = 3600.0) -> list[Path]:
        """Unfinished staging directories older than `min_age` whose writing process is gone.

        A stage may run for hours (an engine build); its staging directory is kept while its process lives.
        """
        folder = self.root / ".tmp"
        if not folder.is_dir():
            return []
        now = time.time()
        found = []
        for path in folder.iterdir():
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if age >= min_age and not _writer_alive(path.name):
                found.append(path)
        return found


def _writer_alive(staging_name: str) -> bool:
    """Whether the process that named a staging directory '<kind>-<key>-<pid>-<random>' still runs."""
    parts = staging_name.split("-")
    if parts[0] == "discard" or len(parts) != 4 or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _writer() -> dict[str, Any]:
    """Who publishes: enough to tell this run's artifacts from those of other processes."""
    return {"host": os.uname().nodename, "pid": os.getpid(), "parent": os.getppid()}


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for item in root.rglob("*"):
        if item.is_file():
            fd = os.open(item, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Content digests: canonical JSON for configs, BLAKE3 for files, and a stat cache.

A file is hashed once; later runs trust the digest while (size, mtime_ns, inode, ctime_ns) are
unchanged, which is what keeps a no-op run from re-reading hundreds of megabytes. The ctime is there
because user space can set a file's mtime back (`os.utime`, `touch -d`, `cp -p`, `rsync -t`) but not its
ctime: a byte flipped in place with size and mtime restored still changes the signature.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

DIGEST_SIZE = 32  # bytes; hex digests are 64 characters


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal text, whatever its YAML form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest_bytes(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


def digest_json(value: Any) -> str:
    return digest_bytes(canonical_json(value).encode())


def parts_match(parts: Any, key: str) -> bool:
    """Whether a manifest's `parts` are what `key` was computed from (a key is the digest of its parts).

    The plan makes every key here from the pipeline, so parts that hash to it are the plan's own:
    the configuration, catalog paths and file digests a stage may act on, whoever wrote the manifest.
    """
    if not isinstance(parts, dict):
        return False
    try:
        return digest_json(parts) == key
    except (TypeError, ValueError):  # not plain JSON (NaN, a non-string key): no key was made from it
        return False


def hash_file(path: str | os.PathLike[str]) -> str:
    """BLAKE3 of a file's bytes (memory-mapped; ~3-4 GB/s on one core from the page cache)."""
    import blake3

    if os.path.getsize(path) < 1 << 20:
        with open(path, "rb") as handle:
            return blake3.blake3(handle.read()).hexdigest()
    hasher = blake3.blake3()
    hasher.update_mmap(os.fspath(path))
    return hasher.hexdigest()


def stat_signature(path: str | os.PathLike[str]) -> list[int]:
    """What must stay equal for a recorded digest to be trusted without rehashing (fastpath.py keeps its own
    copy of this rule, to stay free of imports)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


# A file modified twice within one tick of the filesystem clock keeps its mtime (ext4 ticks are a few
# ms; FAT's are 2 s). A signature taken less than this long after the file's mtime cannot vouch for
# the content, so the digest is not remembered (git calls such entries "racily clean").
RACY_NS = 2_000_000_000


def vouching_signature(path: str | os.PathLike[str]) -> list[int] | None:
    """The stat signature of `path`, or None while it is too young to vouch for the content."""
    signature = stat_signature(path)
    age = time.time_ns() - signature[1]
    return None if 0 <= age < RACY_NS else signature


class DigestCache:
    """Remembers file digests by absolute path and stat signature, in one JSON file.

    Concurrent writers may each drop the other's new entries; that costs a rehash, never a wrong
    answer, because an entry is only used while the file's signature is unchanged. A file modified
    in the last RACY_NS is hashed on every use and not remembered.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        self.vouched: dict[str, list[int] | None] = {}  # path -> signature its last digest is valid for
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def file(self, path: str | os.PathLike[str]) -> str:
        real = os.path.realpath(path)
        signature = vouching_signature(real)
        known = self.entries.get(real)
        if signature is not None and isinstance(known, list) and len(known) == len(signature) + 1 \
                and known[:-1] == signature:
            self.vouched[real] = signature
            return str(known[-1])
        value = hash_file(real)
        self.vouched[real] = signature
        if signature is not None:
            self.entries[real] = [*signature, value]
            self.dirty = True
        elif real in self.entries:
            del self.entries[real]
            self.dirty = True
        return value

    def remember(self, path: str | os.PathLike[str], value: str) -> None:
        """Record a digest computed elsewhere, for a file nothing writes to any more (a published artifact)."""
        real = os.path.realpath(path)
        signature = stat_signature(real)
        self.entries[real] = [*signature, value]
        self.vouched[real] = signature
        self.dirty = True

    def tree(self, root: str | os.PathLike[str]) -> dict[str, str]:
        """Digest of every regular file under `root`, by path relative to it (sorted)."""
        base = Path(root)
        found = {}
        for item in sorted(base.rglob("*")):
            if item.is_file():
                found[item.relative_to(base).as_posix()] = self.file(item)
        return found

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)
        self.dirty = False

"""Timing caches: where builds with one TensorRT for one GPU share theirs, and how they are read and merged.

The shared file lives in the store's shared folder and changes no result, only how long a build
takes. Writes take a file lock and replace the file atomically; a build merges what other builds
added meanwhile instead of overwriting it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorrt as trt


def timing_cache_file(shared_dir: Path, trt_version: str, gpu: str) -> Path:
    """Where builds with this TensorRT for this GPU (`environment.build_gpu()`) share their timing cache."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", f"trt{trt_version}-{gpu}").strip("-")
    digest = hashlib.sha256(f"{trt_version}|{gpu}".encode()).hexdigest()[:8]
    return shared_dir / "tensorrt-timing" / f"{label[:80]}-{digest}" / "timing.cache"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def open_timing_cache(config: trt.IBuilderConfig, cache_file: Path) -> str:
    """Give the builder config the shared timing cache at `cache_file`; how it was found ('reused', 'new', ...)."""
    from filelock import FileLock

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_file) + ".lock"):
        existing = cache_file.read_bytes() if cache_file.exists() else b""
    state = "reused" if existing else "new"
    try:
        cache = config.create_timing_cache(existing)
        usable = cache is not None and config.set_timing_cache(cache, False)
    except (RuntimeError, TypeError, ValueError):
        usable = False
    if not usable:  # a cache this TensorRT cannot read: start a new one, which replaces it afterwards
        config.set_timing_cache(config.create_timing_cache(b""), False)
        state = "unreadable, started anew"
    return state


def save_timing_cache(config: trt.IBuilderConfig, cache_file: Path) -> None:
    """Write the build's timing cache back, merged with what other builds added meanwhile (read-merge-write)."""
    from filelock import FileLock

    with FileLock(str(cache_file) + ".lock"):
        built_cache = config.get_timing_cache()
        if cache_file.exists():
            with contextlib.suppress(RuntimeError, TypeError, ValueError):  # unreadable: ours replaces it
                built_cache.combine(config.create_timing_cache(cache_file.read_bytes()), True)
        write_atomically(cache_file, bytes(built_cache.serialize()))

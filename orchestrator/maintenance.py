"""Store maintenance (fsck, gc) and `doctor`, the report of what this machine can do."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from orchestrator import environment
from orchestrator.errors import UserError
from orchestrator.store.store import MANIFEST, Store


def fsck(store: Store, repair: bool, echo: Callable[[str], None]) -> int:
    """Re-hash every artifact; report (and with repair, remove) the damaged ones. Exit 1 if any is left.

    Whatever it finds, the digest cache learns the true digests and the fast-path records that vouch
    for a damaged artifact are dropped, so the next run rebuilds a damaged artifact instead of using it.
    """
    if not store.root.is_dir():
        echo(f"checked 0 artifacts: {store.root} does not exist")
        return 0
    checked = damaged = 0
    broken: list[str] = []
    for kind, key, path in store.artifacts():
        checked += 1
        artifact, problem = store.check(kind, key, rehash=True)
        if artifact is None:
            damaged += 1
            broken.append(os.path.realpath(path))
            action = "removed" if repair else "damaged"
            echo(f"{action}: {kind}/{key[:12]}: {problem}")
            if repair:
                with store.lock(key):
                    store.discard(kind, key)
    forgotten = _forget_fast_records(store, broken)
    store.save()
    leftovers = store.stale_staging(min_age=0 if repair else 3600)
    if repair:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    echo(f"checked {checked} artifacts: {damaged} damaged" + (", removed" if repair and damaged else "")
         + (f"; {len(leftovers)} unfinished staging directories {'removed' if repair else 'left over'}"
            if leftovers else "")
         + (f"; {forgotten} remembered no-op answers dropped" if forgotten else ""))
    return 1 if damaged and not repair else 0


def _forget_fast_records(store: Store, broken: list[str]) -> int:
    """Remove the fast-path records that list a file of these (damaged or removed) artifacts."""
    if not broken:
        return 0
    folder = store.state / "fast"
    removed = 0
    for record in folder.glob("*.json") if folder.is_dir() else []:
        try:
            text = record.read_text()
        except OSError:
            continue
        if any(json.dumps(path + os.sep)[1:-1] in text for path in broken):
            with contextlib.suppress(OSError):
                record.unlink()
                removed += 1
    return removed


def parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise UserError(f"--older-than takes a number and a unit (s, m, h, d, w), e.g. 7d; got '{text}'")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]


def gc(store: Store, specs: list[Any], older_than: str | None, dry_run: bool, echo: Callable[[str], None]) -> None:
    """Remove artifacts no given pipeline reaches (and, with an age, only older ones).

    Never one a running process uses: runs register their keys under the store's registry lock,
    and the sweep holds that lock from reading the registrations to its last removal.
    """
    from orchestrator.planning.plan import make_plan

    if not specs and older_than is None:
        raise UserError("name the pipelines whose artifacts to keep, or give --older-than")
    max_age = parse_age(older_than) if older_than else None
    keep: set[str] = set()
    for spec in specs:
        keep.update(make_plan(spec, store.digests).nodes)
    if not store.root.is_dir():
        echo(f"nothing to remove: {store.root} does not exist")
        return
    removed = kept_busy = 0
    freed = 0
    gone: list[str] = []
    with store.registry():
        in_use = store.keys_in_use()
        now = time.time()
        for kind, key, path in list(store.artifacts()):
            if key in keep:
                continue
            if max_age is not None:
                try:
                    age = now - (path / MANIFEST).stat().st_mtime
                except OSError:
                    age = float("inf")
                if age < max_age:
                    continue
            if key in in_use:
                kept_busy += 1
                continue
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            if dry_run:
                echo(f"would remove {kind}/{key[:12]} ({size / 1e6:.1f} MB)")
            elif store.remove_unless_busy(kind, key):
                echo(f"removed {kind}/{key[:12]} ({size / 1e6:.1f} MB)")
                gone.append(os.path.realpath(path))
            else:
                kept_busy += 1
                continue
            removed += 1
            freed += size
    if not dry_run:
        for path in store.stale_staging():
            shutil.rmtree(path, ignore_errors=True)
        _forget_fast_records(store, gone)  # they could only decline now; do not keep them
    failures = _old_failures(store, max_age, dry_run)
    verb = "would remove" if dry_run else "removed"
    echo(f"{verb} {removed} artifacts ({freed / 1e6:.1f} MB)" +
         (f"; kept {kept_busy} in use by running processes" if kept_busy else "") +
         (f"; {verb} {failures} failed stage folder{'s' if failures != 1 else ''} kept for inspection"
          if failures else ""))


FAILED_KEPT_FOR = 7 * 86400.0  # seconds a failed stage's folder is kept when gc is given no age


def _old_failures(store: Store, max_age: float | None, dry_run: bool) -> int:
    """Remove (or count) the .state/failed folders older than `max_age` (default a week): each holds what
    one failed run withdrew, for the user to look at, and nothing reads them again."""
    old = store.old_failures(FAILED_KEPT_FOR if max_age is None else max_age)
    if not dry_run:
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
    return len(old)


def doctor(echo: Callable[[str], None]) -> None:
    """What is installed, which backends work, which plugins are known, which GPUs are visible."""
    from orchestrator import plugins as catalog

    echo("tools:")
    for name in ("torch", "onnx", "onnxruntime", "onnx-graphsurgeon", "onnxscript", "numpy", "numba",
                 "onnxruntime-extensions", "pycuda", "tensorrt"):
        echo(f"  {name:24} {environment.tool_version(name) or 'not installed'}")
    echo("backends:")
    echo("  onnxruntime              available" if environment.importable("onnxruntime")
         else "  onnxruntime              missing: pip install onnxruntime")
    trt = environment.tensorrt_version()
    echo("  tensorrt                 " + (f"available, TensorRT {trt}" if trt else
                                          "unavailable: tensorrt not importable (install it from NVIDIA's index)"))
    from orchestrator.backends import trtexec

    found = shutil.which("trtexec")
    version = trtexec.detected_version()
    echo("  trtexec                  " + (f"{found} (TensorRT {version or '?'})" if found else
                                          "unavailable: trtexec not on PATH"))
    from orchestrator.backends import tensorrt as tensorrt_backend

    for line in tensorrt_backend.doctor_lines():  # API generation, plugin creators, CUDA buffers
        echo(line)
    echo("plugins (catalog):")
    for op in catalog.BUILTIN:
        entry = catalog.builtin(op)
        assert entry is not None
        inputs = ", ".join(f"{c.name}:{'|'.join(c.dtypes)}[rank {c.rank}]" for c in entry.inputs)
        echo(f"  {op} v{'/'.join(entry.versions)} ({', '.join(entry.precisions)}): {inputs}")
    gpus = environment.gpus()
    echo("gpus:")
    if gpus:
        for name, capability in gpus:
            echo(f"  {name} (compute capability {capability})")
    else:
        echo("  none visible (nvidia-smi not found or no device)")

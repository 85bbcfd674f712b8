"""Facts about this machine that go into cache keys: tool versions, TensorRT, the GPU.

Versions come from package metadata, so no tool is imported to learn its version.
"""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def tool_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def tools(*distributions: str) -> dict[str, str]:
    return {name: tool_version(name) or "absent" for name in distributions}


@functools.cache
def importable(module: str) -> bool:
    """Whether `import module` would load real code (a stubs-only namespace package does not count)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return found is not None and found.loader is not None and found.origin is not None


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, from whichever wheel provides `import tensorrt`."""
    if not importable("tensorrt"):
        return None
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_cu12"):
        found = tool_version(dist)
        if found:
            return found
    import tensorrt

    return str(tensorrt.__version__)


@functools.cache
def gpus() -> tuple[tuple[str, str], ...]:
    """(name, compute capability) of each visible NVIDIA GPU, from nvidia-smi; empty without one."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = []
    for line in out.strip().splitlines():
        name, _, capability = line.rpartition(",")
        found.append((name.strip(), capability.strip()))
    return tuple(found)


def resolve_backend(requested: str) -> tuple[str, str]:
    """The backend `auto` stands for here, and why (one short phrase for the CLI)."""
    if requested != "auto":
        return requested, "as configured"
    if importable("tensorrt"):
        return "tensorrt", "TensorRT importable"
    return "onnxruntime", "TensorRT not importable"

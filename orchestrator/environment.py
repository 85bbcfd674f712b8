"""Facts about this machine that go into cache keys: tool versions, the GPU.

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
def distribution(name: str, search: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(version, metadata file) of the distribution `name` that the import system finds first on `search`.

    A stage's discovered inputs name the distributions its modules came from; this is how their versions
    are re-read before its artifact is reused (on the python_path the stage ran with), and which file the
    no-op fast path watches for an upgrade. (None, None) when it is not installed there.
    """
    from importlib import metadata
    from pathlib import Path

    found = next(iter(metadata.distributions(name=name, path=list(search))), None)
    if found is None:
        return None, None
    location = getattr(found, "_path", None)
    info = None
    if location is not None:
        folder = Path(location)
        info = next((str(f) for f in (folder / "METADATA", folder / "PKG-INFO", folder) if f.is_file()), None)
    return found.version, info


@functools.cache
def package_distributions(search: tuple[str, ...]) -> dict[str, list[str]]:
    """Top-level import name -> the distributions that provide it, as installed on `search` (read once:
    it opens the metadata of every installed distribution, ~0.3 s with a hundred of them)."""
    import sys
    from importlib import metadata

    saved = sys.path[:]
    sys.path[:] = list(search)  # packages_distributions() reads sys.path and takes no other
    try:
        return {top: list(dict.fromkeys(names)) for top, names in metadata.packages_distributions().items()}
    finally:
        sys.path[:] = saved


@functools.cache
def importable(module: str) -> bool:
    """Whether `import module` would load real code (a stubs-only namespace package does not count)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return found is not None and found.loader is not None and found.origin is not None


def gpus() -> tuple[tuple[str, str], ...]:
    """(name, compute capability) of each NVIDIA GPU nvidia-smi sees; empty without one."""
    return tuple((name, capability) for _, _, name, capability in gpus_with_ids())


def build_gpu() -> str:
    """The GPU an engine built here is for: the first device CUDA_VISIBLE_DEVICES exposes, as 'name smXY'.

    nvidia-smi lists every physical GPU whatever CUDA_VISIBLE_DEVICES says, so the variable's first
    entry (an index or a UUID) picks the one CUDA calls device 0.
    """
    import os

    found = gpus_with_ids()
    if not found:
        return "none"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    chosen = found[0]
    if visible:
        for gpu in found:
            if visible == gpu[0] or (len(visible) > 3 and gpu[1].startswith(visible)):
                chosen = gpu
                break
        else:
            return "none"  # CUDA_VISIBLE_DEVICES hides every GPU (e.g. -1)
    return f"{chosen[2]} sm{chosen[3]}"


@functools.cache
def gpus_with_ids() -> tuple[tuple[str, str, str, str], ...]:
    """(index, uuid, name, compute capability) of each NVIDIA GPU nvidia-smi sees."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = []
    for line in out.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 4:
            found.append((parts[0], parts[1], ",".join(parts[2:-1]), parts[-1]))
    return tuple(found)


def gpu_identity(pinned_type: str | None) -> str:
    """What the build key says about the GPU: a pinned accelerator type, or this machine's build GPU."""
    return f"type:{pinned_type}" if pinned_type else build_gpu()


def gpu_matches(keyed: str) -> bool:
    """Whether this machine can build for a key's GPU identity (same GPU, or one of the pinned type)."""
    if keyed.startswith("type:"):
        wanted = keyed[len("type:"):].lower()
        return any(wanted in name.lower() for _, _, name, _ in gpus_with_ids())
    return build_gpu() == keyed

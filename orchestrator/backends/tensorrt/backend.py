"""The TensorRT backend as the stages see it: an engine built with the Python API, run on the GPU."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from orchestrator import environment
from orchestrator import plugins as catalog
from orchestrator.backends.base import (
    Backend,
    BuildRequest,
    Built,
    DeclaredPlugin,
    RegisteredVersions,
    Runner,
    Trusted,
)
from orchestrator.backends.tensorrt.api import ApiFeatures, LogSink, capturing, installed_version, process_logger
from orchestrator.backends.tensorrt.buffers import buffer_library
from orchestrator.backends.tensorrt.creators import has_creator, register_plugins
from orchestrator.errors import UserError

ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "tf32", "best")


class TensorRTBackend(Backend):
    """Engines built and run through TensorRT's Python API; the key names the TensorRT version and the GPU."""

    name = "tensorrt"
    title = "TensorRT"
    precisions = ALL_PRECISIONS  # what TensorRT itself can do is decided per release when building
    needs_gpu = True
    checks_plugin_precisions = True

    def unavailable(self) -> str | None:
        return None if environment.importable("tensorrt") else \
            "unavailable: tensorrt not importable (install it from NVIDIA's index)"

    def planning_problem(self) -> tuple[str, str] | None:
        if environment.importable("tensorrt"):
            return None
        return ("backend 'tensorrt' needs the tensorrt Python package, which is not importable",
                "pip install tensorrt (from NVIDIA's index), or use backend: onnxruntime to run the plugin graph "
                "on the CPU")

    def key_tools(self, gpu_type: str | None) -> dict[str, str]:
        # The float16 converter makes the graph a strongly typed release builds at half precision.
        return {"tensorrt": installed_version() or "absent", "gpu": environment.gpu_identity(gpu_type),
                "onnxconverter-common": environment.tool_version("onnxconverter-common") or "absent"}

    def key_modules(self, plugins: Sequence[DeclaredPlugin]) -> list[str]:
        return []  # the plugins run in the engine: their libraries' digests are in the key

    def tool_identity(self, tool: str) -> str | None:
        return (installed_version() or "absent") if tool == "tensorrt" else None

    def build(self, request: BuildRequest) -> Built:
        from orchestrator.backends.tensorrt.engine import build

        return build(request)

    def open(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None) -> Runner:
        from orchestrator.backends.tensorrt.runner import Runner

        return Runner(artifact, threads, trusted)

    def doctor(self) -> list[str]:
        version = installed_version()
        status = f"available, TensorRT {version}" if version else self.unavailable()
        return [f"  {self.name:<24} {status}", *doctor_lines()]

    def plugin_versions(self, op: str, versions: Sequence[str], namespace: str, libraries: Sequence[str],
                        ask_registry: bool = True) -> RegisteredVersions:
        """The installed TensorRT's creator registry, asked for each version (None where it is not importable)."""
        release = installed_version()
        if release is None or not ask_registry:
            return RegisteredVersions(None, release)
        return RegisteredVersions(registered_versions(op, tuple(versions), namespace, tuple(libraries)), release)


@functools.cache
def registered_versions(op: str, versions: tuple[str, ...], namespace: str,
                        libraries: tuple[str, ...]) -> frozenset[str]:
    """Which of `versions` of `op` the creator registry holds in `namespace`, NVIDIA's plugins and `libraries`
    loaded (get_creator finds IPluginV3 creators too); asked once per process."""
    import tensorrt as trt

    features = ApiFeatures.of_module(trt)
    with LogSink() as sink, capturing(sink):
        registry = register_plugins(process_logger(), list(libraries), [namespace])
        return frozenset(v for v in versions if has_creator(registry, features, op, v, namespace))


def doctor_lines() -> list[str]:
    """Why the TensorRT backend can or cannot run here: module, API generation, creators, CUDA buffers."""
    lines = []
    if environment.importable("tensorrt"):  # (when it is not, the backends list already says so)
        try:
            import tensorrt as trt

            features = ApiFeatures.of_module(trt)
            lines.append(f"  tensorrt API             {features.describe()}")
            registry = register_plugins(process_logger(), [], [""])
            for op in catalog.BUILTIN:
                entry = catalog.builtin(op)
                versions = entry.versions if entry is not None else ("1",)
                state = ", ".join(f"v{v} {'registered' if has_creator(registry, features, op, v, '') else 'missing'}"
                                  for v in versions)
                lines.append(f"  creator {op}: {state}")
        except (RuntimeError, OSError, AttributeError, TypeError) as exc:
            lines.append(f"  tensorrt API             import failed: {type(exc).__name__}: {exc}")
    pycuda = environment.importable("pycuda")
    torch_cuda = "not checked"
    if environment.importable("torch"):
        import torch

        torch_cuda = "available" if torch.cuda.is_available() else "no CUDA device or CPU-only build"
    try:
        library = buffer_library(pycuda, torch_cuda == "available")
        lines.append(f"  CUDA buffers             {library} (pycuda {'installed' if pycuda else 'not installed'}, "
                     f"torch CUDA {torch_cuda})")
    except UserError:
        lines.append(f"  CUDA buffers             unavailable: pycuda not installed, torch CUDA {torch_cuda}")
    return lines


BACKEND = TensorRTBackend()

"""What the installed tensorrt module offers, and what every TensorRT module shares to call it.

Which API to call is decided from what the installed `tensorrt` module offers, not from its version
string: the network flags (EXPLICIT_BATCH only where implicit batch still exists), the workspace
call (`set_memory_pool_limit` or `max_workspace_size`), the build call (`build_serialized_network`
or `build_engine`), the precision (builder flags where they exist; on strongly typed releases,
which have no FP16 flag, the graph's float tensors are cast instead), the plugin registry lookup
(`get_creator` or `get_plugin_creator`) and the I/O API (named tensors, or bindings). `ApiFeatures`
holds the names the module offers, so each choice is a plain function of plain data, tested
without TensorRT.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator import environment
from orchestrator.errors import UserError

API_OWNERS = ("NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType", "Builder", "IBuilderConfig",
              "IPluginRegistry", "OnnxParser", "ParserError", "ICudaEngine", "IExecutionContext")


@dataclass(frozen=True)
class ApiFeatures:
    """The attribute and enum member names of the installed tensorrt module, by owner ("" = the module)."""

    version: str
    names: Mapping[str, frozenset[str]]

    @classmethod
    def of_module(cls, trt: Any) -> ApiFeatures:
        names: dict[str, frozenset[str]] = {"": frozenset(dir(trt))}
        for owner in API_OWNERS:
            kind = getattr(trt, owner, None)
            if kind is not None:
                members = getattr(kind, "__members__", None) or {}
                names[owner] = frozenset(dir(kind)) | frozenset(members)
        return cls(str(getattr(trt, "__version__", "unknown")), names)

    @classmethod
    def from_names(cls, version: str, names: Mapping[str, Sequence[str]]) -> ApiFeatures:
        return cls(version, {owner: frozenset(values) for owner, values in names.items()})

    def has(self, owner: str, name: str) -> bool:
        return name in self.names.get(owner, frozenset())

    @property
    def strongly_typed(self) -> bool:
        """No FP16 builder flag (TensorRT 11): precision follows the graph's types, not builder flags."""
        return not self.has("BuilderFlag", "FP16")

    @property
    def network_flags(self) -> tuple[str, ...]:
        """EXPLICIT_BATCH where implicit batch still exists (8.x); 10.x ignores the flag and 11.x lacks it."""
        if self.has("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") and self.has("Builder", "max_batch_size"):
            return ("EXPLICIT_BATCH",)
        return ()

    @property
    def workspace_api(self) -> str:
        if self.has("IBuilderConfig", "set_memory_pool_limit") and self.has("MemoryPoolType", "WORKSPACE"):
            return "set_memory_pool_limit"
        if self.has("IBuilderConfig", "max_workspace_size"):
            return "max_workspace_size"
        return "none"

    @property
    def build_api(self) -> str:
        if self.has("Builder", "build_serialized_network"):
            return "build_serialized_network"
        return "build_engine"

    @property
    def creator_lookup(self) -> str:
        """`get_creator` finds IPluginV3 creators too; `get_plugin_creator` (8.6) only V2 ones."""
        return "get_creator" if self.has("IPluginRegistry", "get_creator") else "get_plugin_creator"

    @property
    def creator_listing(self) -> str:
        return "all_creators" if self.has("IPluginRegistry", "all_creators") else "plugin_creator_list"

    @property
    def io_api(self) -> str:
        if self.has("ICudaEngine", "num_io_tensors") and self.has("IExecutionContext", "execute_async_v3"):
            return "named"
        return "bindings"

    @property
    def parse_api(self) -> str:
        return "parse_from_file" if self.has("OnnxParser", "parse_from_file") else "parse"

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "builder precision flags"
        return (f"TensorRT {self.version}: {typing}, workspace via {self.workspace_api}, {self.build_api}, "
                f"{self.creator_lookup}, {self.io_api} I/O")


def installed_version() -> str | None:
    """The installed TensorRT's version, from whichever wheel provides `import tensorrt` (None: not importable)."""
    if not environment.importable("tensorrt"):
        return None
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_cu12"):
        found = environment.tool_version(dist)
        if found:
            return found
    import tensorrt

    return str(tensorrt.__version__)


def version_tuple(version: str | None) -> tuple[int, int, int]:
    """(major, minor, patch); an unknown version counts as 10.0.0, today's most common generation."""
    if not version:
        return (10, 0, 0)
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


def short_version(version: str) -> str:
    """'10.13.0.35' -> '10.13.0': the Python package and trtexec spell the same release differently."""
    return ".".join(str(p) for p in version_tuple(version))


def require_tensorrt() -> None:
    """A UserError (exit 2) when `import tensorrt` would fail; the callers then import it typed."""
    if not environment.importable("tensorrt"):
        raise UserError("backend 'tensorrt' needs the tensorrt Python package, which is not importable",
                        field="build.backend",
                        hint="pip install tensorrt (from NVIDIA's index), or use backend: onnxruntime")


SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


class LogSink:
    """Where one build's or one runner's TensorRT messages go: warnings and errors kept for messages, INFO and
    up written to `log_path` (when given)."""

    def __init__(self, log_path: Path | None = None, keep: int = 200) -> None:
        self.messages: deque[tuple[str, str]] = deque(maxlen=keep)
        self.stream: TextIO | None = log_path.open("a") if log_path is not None else None

    def log(self, level: str, message: str) -> None:
        if level in SEVERITIES[:3]:
            self.messages.append((level, message))
        if self.stream is not None and level in SEVERITIES[:4]:
            self.stream.write(f"[{level}] {message}\n")
            self.stream.flush()

    def errors(self, limit: int = 8) -> str:
        found = [message for level, message in self.messages if level in SEVERITIES[:2]]
        return "\n".join(found[-limit:]) or "(TensorRT logged no error)"

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def __enter__(self) -> LogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SinkSwitch:
    """Hands each message to the sink made current last (`capturing`), or to `fallback` when none is.

    TensorRT keeps the first logger of the process (init_libnvinfer_plugins stores its pointer), so
    a logger per builder or runtime would send a second runner's errors to the first one's list.
    The process has one logger that writes through this switch instead. The current sink is the
    process's, not a thread's (TensorRT may log from threads of its own); stages that build or run
    at the same time do so in separate processes.
    """

    def __init__(self) -> None:
        self.fallback = LogSink()
        self._current: list[LogSink] = []
        self._lock = threading.Lock()

    def log(self, level: str, message: str) -> None:
        with self._lock:
            sink = self._current[-1] if self._current else self.fallback
        sink.log(level, message)

    @contextmanager
    def capturing(self, sink: LogSink) -> Iterator[LogSink]:
        """Messages logged inside the block go to `sink`; the sink current before gets them again after."""
        with self._lock:
            self._current.append(sink)
        try:
            yield sink
        finally:
            with self._lock:  # the last push of `sink` (one sink may be current in nested blocks)
                del self._current[len(self._current) - 1 - self._current[::-1].index(sink)]


LOG_SWITCH = SinkSwitch()


def capturing(sink: LogSink) -> AbstractContextManager[LogSink]:
    """TensorRT's messages inside the block go to `sink` (see SinkSwitch)."""
    return LOG_SWITCH.capturing(sink)


@functools.cache
def process_logger() -> Any:
    """This process's one TensorRT logger, made on first use; it writes to the sink `capturing` made current."""
    import tensorrt as trt

    class SwitchedLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            LOG_SWITCH.log(str(severity).rsplit(".", 1)[-1], msg)

    return SwitchedLogger()

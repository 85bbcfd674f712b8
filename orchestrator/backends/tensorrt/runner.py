"""Running a TensorRT engine: its I/O through named tensors (bindings on releases without them), inputs
cast only where no value changes, and CUDA events timing each run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends.base import RunnerBase, TensorSpec, Timings, Trusted
from orchestrator.backends.tensorrt.api import ApiFeatures, make_logger, require_tensorrt
from orchestrator.backends.tensorrt.buffers import DeviceArray, open_buffers
from orchestrator.backends.tensorrt.creators import register_plugins
from orchestrator.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import tensorrt as trt


TRT_TO_NUMPY = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3fn", "INT4": "int4",
                "FP4": "float4_e2m1fn"}


def numpy_dtype_name(trt_dtype: Any) -> str:
    """The NumPy dtype name for a TensorRT DataType (or its name: 'FLOAT', 'DataType.HALF')."""
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1].upper()
    if name not in TRT_TO_NUMPY:
        raise ValueError(f"TensorRT data type {trt_dtype} has no NumPy equivalent")
    return TRT_TO_NUMPY[name]


def cast_for_engine(name: str, array: Any, dtype: str) -> np.ndarray:
    """`array` as the dtype the engine takes, refusing casts that would change values.

    An int64 capture fed to an int32 input is cast (not reinterpreted, the cause of all-zero
    plugin outputs), but only when every value fits; a float fed to an integer input must hold
    whole numbers.
    """
    import numpy as np

    source = np.asarray(array)
    target = np.dtype(dtype)
    if source.dtype == target:
        return np.ascontiguousarray(source)
    if target.kind in "iu" and source.size:
        if source.dtype.kind == "f" and not np.all(np.isfinite(source) & (source == np.round(source))):
            raise UserError(f"input '{name}' is {source.dtype} with fractional values; the engine takes {target}",
                            field="capture")
        if source.dtype.kind in "iuf":
            info = np.iinfo(target)
            low, high = source.min(), source.max()
            if low < info.min or high > info.max:
                raise UserError(f"input '{name}' holds {source.dtype} values in [{low}, {high}], outside {target}'s "
                                f"range; the engine takes {target}", field="capture")
    return np.ascontiguousarray(source.astype(target))


def _dims(value: Any) -> tuple[int, ...]:
    return tuple(int(value[i]) for i in range(len(value)))


@dataclass
class IoTensor:
    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]  # -1 where dynamic
    index: int = 0


def engine_io(engine: trt.ICudaEngine, features: ApiFeatures) -> list[IoTensor]:
    """The engine's inputs and outputs, through the named-tensor API or (without it) the bindings API."""
    import tensorrt as trt

    found = []
    if features.io_api == "named":
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            found.append(IoTensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                  numpy_dtype_name(engine.get_tensor_dtype(name)),
                                  _dims(engine.get_tensor_shape(name)), index))
    else:
        legacy: Any = engine
        for index in range(legacy.num_bindings):
            found.append(IoTensor(legacy.get_binding_name(index), bool(legacy.binding_is_input(index)),
                                  numpy_dtype_name(legacy.get_binding_dtype(index)),
                                  _dims(legacy.get_binding_shape(index)), index))
    return found


class Runner(RunnerBase):
    """Runs engine.plan on the GPU: named-tensor I/O (bindings on releases without it), CUDA-event timing."""

    timer = "cuda events"

    def __init__(self, artifact_dir: Path, threads: int = 0, trusted: Trusted | None = None) -> None:
        self.description = json.loads((artifact_dir / "engine.json").read_text())
        require_tensorrt()
        import tensorrt as trt

        self.features = ApiFeatures.of_module(trt)
        self.logger = make_logger()
        # engine.json is data: a library it names is loaded only if its bytes are one the pipeline declares.
        libraries = [(trusted or Trusted()).library(str(p)) for p in self.description.get("libraries", [])]
        register_plugins(self.logger, libraries, self.description.get("namespaces", []))
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine((artifact_dir / "engine.plan").read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT {self.features.version} cannot load engine.plan (built with TensorRT "
                               f"{self.description.get('tensorrt')}):\n{self.logger.errors()}")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.io = engine_io(engine, self.features)
        self.buffers = open_buffers()
        self.device: dict[str, DeviceArray] = {}

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.dtype, [d if d >= 0 else None for d in t.shape]) for t in self.io if t.is_input]

    @property
    def outputs(self) -> list[TensorSpec]:
        producers = self.description.get("plugin_outputs", {})
        return [TensorSpec(t.name, t.dtype, [d if d >= 0 else None for d in t.shape], producers.get(t.name))
                for t in self.io if not t.is_input]

    def _bind(self, feeds: Mapping[str, Any]) -> None:
        self.device.clear()
        context: Any = self.context
        named = self.features.io_api == "named"
        for tensor in self.io:
            if not tensor.is_input:
                continue
            if tensor.name not in feeds:
                raise UserError(f"the engine takes an input '{tensor.name}' that was not given", field="capture")
            array = cast_for_engine(tensor.name, feeds[tensor.name], tensor.dtype)
            accepted = (context.set_input_shape(tensor.name, tuple(array.shape)) if named
                        else context.set_binding_shape(tensor.index, tuple(array.shape)))
            if accepted is False:
                raise UserError(f"input '{tensor.name}' has shape {list(array.shape)}, outside the engine's "
                                f"optimization profile", field="build.profiles")
            self.device[tensor.name] = self.buffers.upload(array)
        for tensor in self.io:
            if tensor.is_input:
                continue
            shape = _dims(context.get_tensor_shape(tensor.name) if named else context.get_binding_shape(tensor.index))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output '{tensor.name}' still has a dynamic shape {list(shape)} after setting "
                                   "the input shapes")
            self.device[tensor.name] = self.buffers.empty(shape, tensor.dtype)
        if named:
            for tensor in self.io:
                context.set_tensor_address(tensor.name, self.device[tensor.name].ptr)

    def _execute(self) -> None:
        context: Any = self.context
        if self.features.io_api == "named":
            ok = context.execute_async_v3(self.buffers.stream_handle)
        else:
            bindings = [self.device[t.name].ptr for t in sorted(self.io, key=lambda t: t.index)]
            ok = context.execute_async_v2(bindings, self.buffers.stream_handle)
        if not ok:
            raise RuntimeError(f"TensorRT could not run the engine:\n{self.logger.errors()}")

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        """The graph outputs (an engine hands back no intermediate tensor, so `keep` is never given)."""
        self._bind(feeds)
        self._execute()
        return {t.name: self.buffers.download(self.device[t.name]) for t in self.io if not t.is_input}

    def bench(self, feeds: Mapping[str, Any], warmup: int, iterations: int, max_seconds: float,
              progress: Callable[[str], None] | None = None) -> Timings:
        """GPU time per run (CUDA events around each enqueue), inputs already on the device; then one run
        for the outputs."""
        self._bind(feeds)
        for _ in range(warmup):
            self._execute()
        self.buffers.synchronize()
        timings: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(timings) < iterations and (not timings or time.perf_counter() < deadline):
            start, end = self.buffers.event(), self.buffers.event()
            self.buffers.record(start)
            self._execute()
            self.buffers.record(end)
            timings.append(self.buffers.seconds_between(start, end))
        return Timings(timings, self.run(feeds), self.timer)

    def close(self) -> None:
        self.buffers.synchronize()
        self.device.clear()
        del self.context  # TensorRT objects go before the buffers' CUDA context is released
        del self.engine
        self.buffers.close()

"""Running a TensorRT engine: its I/O through named tensors (bindings on releases without them), inputs
cast only where no value changes, the optimization profile that holds the inputs' shapes, shape-tensor
inputs from host memory, and CUDA events timing each run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.backends.base import RunnerBase, TensorSpec, Timings, Trusted
from orchestrator.backends.tensorrt.api import ApiFeatures, LogSink, capturing, process_logger, require_tensorrt
from orchestrator.backends.tensorrt.buffers import DeviceArray, host_comparable, numpy_dtype, open_buffers
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


def integer_range(dtype: np.dtype[Any]) -> tuple[int, int] | None:
    """(min, max) of an integer dtype, int4 and uint4 included; None for any other."""
    import numpy as np

    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    if dtype.name in ("int4", "uint4"):
        import ml_dtypes

        narrow: Any = ml_dtypes.iinfo  # ml_dtypes leaves iinfo unannotated
        info4 = narrow(dtype)
        return int(info4.min), int(info4.max)
    return None


def cast_for_engine(name: str, array: Any, dtype: str) -> np.ndarray:
    """`array` as the dtype the engine takes, refusing casts that would change values.

    An int64 capture fed to an int32 input is cast (not reinterpreted, the cause of all-zero
    plugin outputs), but only when every value fits; a float fed to an integer input must hold
    whole numbers. bfloat16, float8 and int4 come from ml_dtypes.
    """
    import numpy as np

    source = np.asarray(array)
    target = numpy_dtype(dtype)
    if source.dtype == target:
        return np.ascontiguousarray(source)
    bounds = integer_range(target)
    if bounds is not None and source.size:
        if source.dtype.kind == "f" and not np.all(np.isfinite(source) & (source == np.round(source))):
            raise UserError(f"input '{name}' is {source.dtype} with fractional values; the engine takes {target}",
                            field="capture")
        if source.dtype.kind in "iuf":
            low, high = source.min(), source.max()
            if low < bounds[0] or high > bounds[1]:
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
    host: bool = False  # a shape-tensor input or output: its values live in host memory


def engine_io(engine: trt.ICudaEngine, features: ApiFeatures) -> list[IoTensor]:
    """The engine's inputs and outputs, through the named-tensor API or (without it) the bindings API."""
    import tensorrt as trt

    found = []
    if features.io_api == "named":
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            found.append(IoTensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                  numpy_dtype_name(engine.get_tensor_dtype(name)),
                                  _dims(engine.get_tensor_shape(name)), index,
                                  bool(engine.is_shape_inference_io(name))))
    else:
        legacy: Any = engine
        for index in range(legacy.num_bindings):
            found.append(IoTensor(legacy.get_binding_name(index), bool(legacy.binding_is_input(index)),
                                  numpy_dtype_name(legacy.get_binding_dtype(index)),
                                  _dims(legacy.get_binding_shape(index)), index,
                                  bool(legacy.is_shape_binding(index))))
    return found


ProfileJson = Mapping[str, Mapping[str, Sequence[int]]]  # {input: {min, opt, max}}, as engine.json holds it


def profile_distance(profile: ProfileJson, given: Mapping[str, Sequence[int]]) -> int | None:
    """How far `given` (each input's shape; a shape-tensor input's values) lies from the profile's opt;
    None when some input is outside the profile's min..max."""
    distance = 0
    for name, dims in given.items():
        if name not in profile:
            continue
        low, opt, high = (list(profile[name][k]) for k in ("min", "opt", "max"))
        if len(dims) != len(low) or not all(a <= d <= b for a, d, b in zip(low, dims, high, strict=True)):
            return None
        distance += sum(abs(d - o) for d, o in zip(dims, opt, strict=True))
    return distance


def choose_profile(profiles: Sequence[ProfileJson], given: Mapping[str, Sequence[int]]) -> int:
    """The index of the optimization profile whose ranges hold `given`: the one whose opt is nearest.

    A new execution context runs profile 0; any other must be selected before the input shapes are
    set. No profile listed (a static engine): profile 0.
    """
    if not profiles:
        return 0
    distances = [profile_distance(profile, given) for profile in profiles]
    holding = [(d, index) for index, d in enumerate(distances) if d is not None]
    if holding:
        return min(holding)[1]
    shown = ", ".join(f"{name} {list(dims)}" for name, dims in given.items())
    ranges = "; ".join(f"profile {i}: " + ", ".join(f"{n} {list(r['min'])}..{list(r['max'])}" for n, r in p.items())
                       for i, p in enumerate(profiles))
    raise UserError(f"the inputs ({shown}) lie outside every optimization profile of the engine ({ranges})",
                    field="build.profiles", hint="add a profile whose min..max holds these shapes, and build again")


def described_profiles(description: Mapping[str, Any], count: int) -> list[ProfileJson]:
    """engine.json's profiles, which must be the engine's `count` ones (in order) for an index to mean one."""
    profiles = list(description.get("profiles", []))
    if profiles and len(profiles) != count:
        raise UserError(f"engine.json lists {len(profiles)} optimization profiles, the engine has {count}",
                        field="build", hint="build the engine again (--force build)")
    return profiles


class Runner(RunnerBase):
    """Runs engine.plan on the GPU: named-tensor I/O (bindings on releases without it), CUDA-event timing.

    TensorRT's messages while it works go to this runner's own sink (the process has one logger).
    """

    timer = "cuda events"

    def __init__(self, artifact_dir: Path, threads: int = 0, trusted: Trusted | None = None) -> None:
        self.description = json.loads((artifact_dir / "engine.json").read_text())
        require_tensorrt()
        import tensorrt as trt

        self.features = ApiFeatures.of_module(trt)
        self.sink = LogSink()
        # engine.json is data: a library it names is loaded only if its bytes are one the pipeline declares.
        libraries = [(trusted or Trusted()).library(str(p)) for p in self.description.get("libraries", [])]
        with capturing(self.sink):
            logger = process_logger()
            register_plugins(logger, libraries, self.description.get("namespaces", []))
            self.runtime = trt.Runtime(logger)
            engine = self.runtime.deserialize_cuda_engine((artifact_dir / "engine.plan").read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT {self.features.version} cannot load engine.plan (built with TensorRT "
                                   f"{self.description.get('tensorrt')}):\n{self.sink.errors()}")
            context: trt.IExecutionContext | None = engine.create_execution_context()
            if context is None:  # the stubs say it never is; TensorRT returns None when it cannot make one
                raise RuntimeError(f"TensorRT could not create an execution context:\n{self.sink.errors()}")
        self.engine = engine
        self.context = context
        self.io = engine_io(engine, self.features)
        self.profiles = described_profiles(self.description, engine.num_optimization_profiles)
        self.profile = 0  # what a new context runs
        self.buffers = open_buffers()
        self.device: dict[str, DeviceArray] = {}
        self.host: dict[str, np.ndarray] = {}  # shape-tensor I/O, kept alive while TensorRT holds its address

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.dtype, [d if d >= 0 else None for d in t.shape]) for t in self.io if t.is_input]

    @property
    def outputs(self) -> list[TensorSpec]:
        producers = self.description.get("plugin_outputs", {})
        return [TensorSpec(t.name, t.dtype, [d if d >= 0 else None for d in t.shape], producers.get(t.name))
                for t in self.io if not t.is_input]

    def _select_profile(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Switch to the profile that holds these inputs, before any input shape is set."""
        given = {t.name: ([int(v) for v in arrays[t.name].reshape(-1)] if t.host else list(arrays[t.name].shape))
                 for t in self.io if t.is_input}
        index = choose_profile(self.profiles, given)
        if index == self.profile:
            return
        if self.features.io_api != "named":
            raise UserError(f"the inputs need optimization profile {index}; on TensorRT {self.features.version} "
                            "(bindings API) only profile 0 is run", field="build.profiles")
        if not self.context.set_optimization_profile_async(index, self.buffers.stream_handle):
            raise RuntimeError(f"TensorRT could not select optimization profile {index}:\n{self.sink.errors()}")
        self.buffers.synchronize()
        self.profile = index

    def _set_address(self, name: str, address: int) -> None:
        if not self.context.set_tensor_address(name, address):
            raise RuntimeError(f"TensorRT refused the address of tensor '{name}':\n{self.sink.errors()}")

    def _bind_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Shape-tensor inputs by host address (before any output shape is read), the others by shape."""
        context: Any = self.context
        named = self.features.io_api == "named"
        for tensor in (t for t in self.io if t.is_input):
            array = arrays[tensor.name]
            if tensor.host:
                self.host[tensor.name] = array
                self._set_address(tensor.name, int(array.ctypes.data))
                continue
            accepted = (context.set_input_shape(tensor.name, tuple(array.shape)) if named
                        else context.set_binding_shape(tensor.index, tuple(array.shape)))
            if accepted is False:
                raise UserError(f"input '{tensor.name}' has shape {list(array.shape)}, outside optimization profile "
                                f"{self.profile} of the engine:\n{self.sink.errors()}", field="build.profiles")
            self.device[tensor.name] = self.buffers.upload(array)

    def _bind(self, feeds: Mapping[str, Any]) -> None:
        import numpy as np

        self.device.clear()
        self.host.clear()
        context: Any = self.context
        named = self.features.io_api == "named"
        missing = [t.name for t in self.io if t.is_input and t.name not in feeds]
        if missing:
            raise UserError(f"the engine takes an input '{missing[0]}' that was not given", field="capture")
        shape_tensors = [t.name for t in self.io if t.host]
        if shape_tensors and not named:
            raise UserError(f"'{shape_tensors[0]}' is a shape tensor, which this runner passes through the "
                            f"named-tensor API that TensorRT {self.features.version} lacks", field="build.backend")
        arrays = {t.name: cast_for_engine(t.name, feeds[t.name], t.dtype) for t in self.io if t.is_input}
        self._select_profile(arrays)
        self._bind_inputs(arrays)
        for tensor in (t for t in self.io if not t.is_input):
            shape = _dims(context.get_tensor_shape(tensor.name) if named else context.get_binding_shape(tensor.index))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output '{tensor.name}' still has a dynamic shape {list(shape)} after setting "
                                   f"the input shapes:\n{self.sink.errors()}")
            if tensor.host:
                self.host[tensor.name] = np.zeros(shape, numpy_dtype(tensor.dtype))
                self._set_address(tensor.name, int(self.host[tensor.name].ctypes.data))
            else:
                self.device[tensor.name] = self.buffers.empty(shape, tensor.dtype)
        if named:
            for name, buffer in self.device.items():
                self._set_address(name, buffer.ptr)

    def _execute(self) -> None:
        context: Any = self.context
        if self.features.io_api == "named":
            ok = context.execute_async_v3(self.buffers.stream_handle)
        else:
            bindings = [self.device[t.name].ptr for t in sorted(self.io, key=lambda t: t.index)]
            ok = context.execute_async_v2(bindings, self.buffers.stream_handle)
        if not ok:
            raise RuntimeError(f"TensorRT could not run the engine:\n{self.sink.errors()}")

    def _outputs(self) -> dict[str, Any]:
        self.buffers.synchronize()  # host outputs are written on the stream too
        return {t.name: host_comparable(self.host[t.name].copy()) if t.host
                else self.buffers.download(self.device[t.name]) for t in self.io if not t.is_input}

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        """The graph outputs (an engine hands back no intermediate tensor, so `keep` is never given)."""
        with capturing(self.sink):
            self._bind(feeds)
            self._execute()
            return self._outputs()

    def bench(self, feeds: Mapping[str, Any], warmup: int, iterations: int, max_seconds: float,
              progress: Callable[[str], None] | None = None) -> Timings:
        """GPU time per run (CUDA events around each enqueue), inputs already on the device; then one run
        for the outputs."""
        with capturing(self.sink):
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
        self.host.clear()
        del self.context  # TensorRT objects go before the buffers' CUDA context is released
        del self.engine
        del self.runtime
        self.buffers.close()
        self.sink.close()

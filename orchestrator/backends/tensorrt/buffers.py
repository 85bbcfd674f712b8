"""Device buffers for running an engine: pycuda, or torch when pycuda is absent; CUDA events time runs.

NumPy has no bfloat16, float8, int4 or float4: those dtypes come from ml_dtypes (a dependency of onnx),
and they travel to and from the device as their bytes, which neither torch nor pycuda reads from such
an array directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import environment
from orchestrator.errors import UserError

if TYPE_CHECKING:
    import numpy as np

ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4", "float4_e2m1fn")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype named `name`, the ones NumPy lacks (bfloat16, float8, int4, float4) from ml_dtypes."""
    import numpy as np

    if name not in ML_DTYPES:
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise UserError(f"the engine has a {name} tensor; NumPy holds {name} only with the ml_dtypes package, "
                        "which is not importable", field="build.precision", hint="pip install ml_dtypes") from None
    found: np.dtype[Any] = np.dtype(getattr(ml_dtypes, name))
    return found


def host_bytes(array: np.ndarray) -> np.ndarray:
    """`array`'s memory as uint8 (no copy): how a dtype without a buffer format (bfloat16) is copied."""
    import numpy as np

    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def torch_host_tensor(torch: Any, array: Any) -> Any:
    """A CPU torch tensor holding `array`'s values; an ml_dtypes array (bfloat16, float8) goes through its
    bits, as an integer array of the same item size."""
    import numpy as np

    host = np.array(array, copy=True, order="C")
    if host.dtype.name not in ML_DTYPES:
        return torch.from_numpy(host)
    bits = host.view(np.int16 if host.dtype.itemsize == 2 else np.int8)
    return torch.from_numpy(bits).view(getattr(torch, host.dtype.name))


def host_comparable(array: np.ndarray) -> np.ndarray:
    """A downloaded output as the verify compares it: the ml_dtypes types as float32 (the same values), since
    NumPy's arithmetic on them is limited."""
    import numpy as np

    return array.astype(np.float32) if array.dtype.name in ML_DTYPES else array


def torch_allocation(torch: Any, shape: Sequence[int], dtype: str, device: Any) -> tuple[int, Any]:
    """(address, tensor) for a new tensor of `shape` on `device`.

    A zero-element torch tensor has data_ptr 0, which TensorRT refuses as an input's address: the
    tensor is a view of an allocation of at least one element, whose address stands for it.
    """
    count = math.prod(shape)
    backing = torch.empty(max(count, 1), dtype=getattr(torch, dtype), device=device)
    return int(backing.data_ptr()), backing[:count].view(tuple(shape))


def buffer_library(pycuda_importable: bool, torch_cuda: bool) -> str:
    if pycuda_importable:
        return "pycuda"
    if torch_cuda:
        return "torch"
    raise UserError("running a TensorRT engine needs CUDA buffers from pycuda or from torch with CUDA; neither is "
                    "available here", field="build.backend", hint="pip install pycuda")


@dataclass
class DeviceArray:
    """One device allocation: its address for TensorRT, and what it holds."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    handle: Any = field(repr=False, default=None)


class TorchCudaBuffers:
    """Device memory, copies, a stream and CUDA events from torch."""

    library = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch

        self.torch: Any = torch  # torch's own annotations leave parts of torch.cuda untyped
        self.device = torch.device("cuda", device)
        self.torch.cuda.init()
        self.stream = self.torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def empty(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        with self.torch.cuda.stream(self.stream):
            address, tensor = torch_allocation(self.torch, shape, dtype, self.device)
        return DeviceArray(address, tuple(shape), dtype, tensor)

    def upload(self, array: Any) -> DeviceArray:
        import numpy as np

        host = torch_host_tensor(self.torch, array)
        buffer = self.empty(tuple(host.shape), str(np.asarray(array).dtype))
        with self.torch.cuda.stream(self.stream):
            buffer.handle.copy_(host)
        self.stream.synchronize()
        return buffer

    def download(self, buffer: DeviceArray) -> Any:
        with self.torch.cuda.stream(self.stream):
            tensor = buffer.handle
            if buffer.dtype in ML_DTYPES:  # as host_comparable: float32, the same values
                tensor = tensor.float()
            host = tensor.to("cpu")
        self.stream.synchronize()
        return host.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def seconds_between(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3

    def close(self) -> None:
        self.stream.synchronize()


class PyCudaBuffers:
    """Device memory, copies, a stream and CUDA events from pycuda, in the device's primary context."""

    library = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.context = cuda.Device(device).retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def empty(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        nbytes = math.prod(shape) * numpy_dtype(dtype).itemsize
        allocation = self.cuda.mem_alloc(max(nbytes, 1))
        return DeviceArray(int(allocation), tuple(shape), dtype, allocation)

    def upload(self, array: Any) -> DeviceArray:
        import numpy as np

        host = np.ascontiguousarray(array)
        buffer = self.empty(host.shape, str(host.dtype))
        self.cuda.memcpy_htod_async(buffer.handle, host_bytes(host), self.stream)
        self.stream.synchronize()
        return buffer

    def download(self, buffer: DeviceArray) -> Any:
        import numpy as np

        host = np.empty(buffer.shape, dtype=numpy_dtype(buffer.dtype))
        self.cuda.memcpy_dtoh_async(host_bytes(host), buffer.handle, self.stream)  # host is contiguous: no copy
        self.stream.synchronize()
        return host_comparable(host)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def seconds_between(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end)) / 1e3

    def close(self) -> None:
        self.stream.synchronize()
        self.context.pop()


def open_buffers(device: int = 0) -> TorchCudaBuffers | PyCudaBuffers:
    torch_cuda = False
    if environment.importable("torch"):
        import torch

        torch_cuda = bool(torch.cuda.is_available())
    library = buffer_library(environment.importable("pycuda"), torch_cuda)
    return PyCudaBuffers(device) if library == "pycuda" else TorchCudaBuffers(device)

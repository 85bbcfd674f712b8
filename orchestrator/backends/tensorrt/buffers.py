"""Device buffers for running an engine: pycuda, or torch when pycuda is absent; CUDA events time runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator import environment
from orchestrator.errors import UserError


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

    def _dtype(self, dtype: str) -> Any:
        return getattr(self.torch, dtype)

    def empty(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        with self.torch.cuda.stream(self.stream):
            tensor = self.torch.empty(tuple(shape), dtype=self._dtype(dtype), device=self.device)
        return DeviceArray(int(tensor.data_ptr()), tuple(shape), dtype, tensor)

    def upload(self, array: Any) -> DeviceArray:
        import numpy as np

        host = self.torch.from_numpy(np.array(array, copy=True, order="C"))
        with self.torch.cuda.stream(self.stream):
            tensor = host.to(self.device, non_blocking=False)
        return DeviceArray(int(tensor.data_ptr()), tuple(host.shape), str(np.asarray(array).dtype), tensor)

    def download(self, buffer: DeviceArray) -> Any:
        with self.torch.cuda.stream(self.stream):
            tensor = buffer.handle
            if buffer.dtype == "bfloat16":
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
        import numpy as np

        if dtype == "bfloat16":
            raise UserError("the engine has a bfloat16 tensor, which pycuda buffers cannot hold; use torch",
                            field="build.precision")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        allocation = self.cuda.mem_alloc(max(nbytes, 1))
        return DeviceArray(int(allocation), tuple(shape), dtype, allocation)

    def upload(self, array: Any) -> DeviceArray:
        import numpy as np

        host = np.ascontiguousarray(array)
        buffer = self.empty(host.shape, str(host.dtype))
        self.cuda.memcpy_htod_async(buffer.handle, host, self.stream)
        self.stream.synchronize()
        return buffer

    def download(self, buffer: DeviceArray) -> Any:
        import numpy as np

        host = np.empty(buffer.shape, dtype=np.dtype(buffer.dtype))
        self.cuda.memcpy_dtoh_async(host, buffer.handle, self.stream)
        self.stream.synchronize()
        return host

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

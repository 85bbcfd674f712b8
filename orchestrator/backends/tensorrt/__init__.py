"""The TensorRT backends: engines built with the Python API (this package's BACKEND), or by the trtexec
program (`trtexec.BACKEND`), for TensorRT 8.6, 10.x and 11.x.

Everything that decides is a plain function of plain data, tested without TensorRT: what the
installed module offers (api), how a precision is realised (precision), profiles and workspace sizes
(settings), the graph's fp16 copy and plugin outputs (graph), plugin creators and parser messages
(creators), timing caches (cache). Only engine (build), runner (run) and buffers (CUDA memory) call
TensorRT, pycuda or torch; trtexec runs the program instead.
"""

from orchestrator.backends.base import TensorSpec
from orchestrator.backends.tensorrt.api import (
    ApiFeatures,
    LogSink,
    capturing,
    installed_version,
    process_logger,
    require_tensorrt,
)
from orchestrator.backends.tensorrt.backend import BACKEND, TensorRTBackend, doctor_lines
from orchestrator.backends.tensorrt.buffers import (
    DeviceArray,
    PyCudaBuffers,
    TorchCudaBuffers,
    buffer_library,
    numpy_dtype,
)
from orchestrator.backends.tensorrt.cache import timing_cache_file, write_atomically
from orchestrator.backends.tensorrt.creators import Creator, missing_creator_error, parser_error_lines
from orchestrator.backends.tensorrt.graph import cast_float_graph, is_quantized, plugin_outputs
from orchestrator.backends.tensorrt.precision import PrecisionPlan, plugin_precisions, precision_plan
from orchestrator.backends.tensorrt.runner import Runner, cast_for_engine, choose_profile, numpy_dtype_name
from orchestrator.backends.tensorrt.settings import ShapeRange, graph_input_dims, needs_profiles, resolve_profiles

__all__ = [
    "BACKEND", "ApiFeatures", "Creator", "DeviceArray", "LogSink", "PrecisionPlan", "PyCudaBuffers", "Runner",
    "ShapeRange", "TensorRTBackend", "TensorSpec", "TorchCudaBuffers", "buffer_library", "capturing",
    "cast_float_graph", "cast_for_engine", "choose_profile", "doctor_lines", "graph_input_dims", "installed_version",
    "is_quantized", "missing_creator_error", "needs_profiles", "numpy_dtype", "numpy_dtype_name",
    "parser_error_lines", "plugin_outputs", "plugin_precisions", "precision_plan", "process_logger",
    "require_tensorrt", "resolve_profiles", "timing_cache_file", "write_atomically",
]

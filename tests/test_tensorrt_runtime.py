"""Running a TensorRT engine: which optimization profile a run needs, shape-tensor inputs' value ranges,
where TensorRT's messages go, the dtypes NumPy lacks, and device addresses TensorRT accepts.

These are the decisions the runner and the build make around TensorRT's calls, as plain functions of
real inputs (ONNX graphs made with onnx.helper, NumPy and torch arrays); the calls themselves run where
TensorRT is importable. The CUDA buffer test runs where torch sees a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from orchestrator.backends.tensorrt import api, buffers, engine, runner
from orchestrator.backends.tensorrt.settings import graph_input_dims, resolve_profiles
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parent.parent

TWO_PROFILES = [
    {"x": {"min": [1, 8], "opt": [4, 8], "max": [8, 8]}},
    {"x": {"min": [9, 8], "opt": [32, 8], "max": [64, 8]}},
]


def reshape_model() -> object:
    """x [?, 8] reshaped by the values of `target` (int64 [2]): `target` is a shape tensor for TensorRT."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("target", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# Finding 2: a context starts on profile 0; the runner must pick the profile that holds the inputs.

def test_the_profile_holding_the_shapes_is_chosen() -> None:
    assert runner.choose_profile(TWO_PROFILES, {"x": [4, 8]}) == 0
    assert runner.choose_profile(TWO_PROFILES, {"x": [40, 8]}) == 1  # profile 0 cannot run it


def test_of_overlapping_profiles_the_nearest_opt_wins() -> None:
    overlapping = [{"x": {"min": [1, 8], "opt": [2, 8], "max": [64, 8]}},
                   {"x": {"min": [16, 8], "opt": [32, 8], "max": [64, 8]}}]
    assert runner.choose_profile(overlapping, {"x": [30, 8]}) == 1
    assert runner.choose_profile(overlapping, {"x": [3, 8]}) == 0


def test_shapes_outside_every_profile_name_the_profiles() -> None:
    with pytest.raises(UserError, match=r"x \[65, 8\].*profile 0: x \[1, 8\]\.\.\[8, 8\]; profile 1") as raised:
        runner.choose_profile(TWO_PROFILES, {"x": [65, 8]})
    assert raised.value.field == "build.profiles"
    with pytest.raises(UserError, match="outside every optimization profile"):
        runner.choose_profile(TWO_PROFILES, {"x": [4, 8, 1]})  # another rank


def test_a_static_engine_runs_profile_0() -> None:
    assert runner.choose_profile([], {"x": [4, 8]}) == 0


def test_the_build_profiles_written_to_engine_json_choose_a_profile() -> None:
    model = reshape_model()
    inputs = {"x": graph_input_dims(model)["x"]}
    built = engine.build_profiles(TWO_PROFILES, inputs, [])
    described = json.loads(json.dumps({"profiles": engine.profiles_json(built)}))
    profiles = runner.described_profiles(described, 2)
    assert runner.choose_profile(profiles, {"x": [12, 8]}) == 1


def test_engine_json_must_list_the_engines_profiles() -> None:
    with pytest.raises(UserError, match="lists 2 optimization profiles, the engine has 1"):
        runner.described_profiles({"profiles": TWO_PROFILES}, 1)
    assert runner.described_profiles({}, 3) == []


# Finding 3: a shape-tensor input's profile range is of its values (profile.set_shape_input), and the
# runner picks the profile by those values.

SHAPE_PROFILE = {"x": {"min": [1, 8], "opt": [4, 8], "max": [8, 8]},
                 "target": {"min": [1, 8], "opt": [4, 8], "max": [8, 8]}}


def test_a_shape_tensor_input_gets_a_range_of_values() -> None:
    inputs = graph_input_dims(reshape_model())
    with pytest.raises(UserError, match="rank 1"):  # read as dims, [1, 8] is not a shape for target [2]
        resolve_profiles([SHAPE_PROFILE], inputs)
    [profile] = engine.build_profiles([SHAPE_PROFILE], inputs, ["target"])
    assert profile["target"].min == (1, 8) and profile["target"].max == (8, 8)
    assert profile["x"].opt == (4, 8)


def test_a_shape_tensor_input_needs_its_values_range() -> None:
    inputs = graph_input_dims(reshape_model())
    with pytest.raises(UserError, match="'target' is a shape tensor") as raised:
        engine.build_profiles([], inputs, ["target"])
    assert "values, not dims" in (raised.value.hint or "")
    with pytest.raises(UserError, match="'target' is a shape tensor"):
        engine.build_profiles([{"x": SHAPE_PROFILE["x"]}], inputs, ["target"])
    with pytest.raises(UserError, match=r"gives 3 values; shape-tensor input 'target' \[2\] holds 2"):
        engine.build_profiles([{**SHAPE_PROFILE, "target": {"min": [1, 8, 1], "opt": [4, 8, 1], "max": [8, 8, 1]}}],
                              inputs, ["target"])
    with pytest.raises(UserError, match="min <= opt <= max for every value"):
        engine.build_profiles([{**SHAPE_PROFILE, "target": {"min": [4, 8], "opt": [1, 8], "max": [8, 8]}}],
                              inputs, ["target"])


def test_the_profile_is_chosen_by_a_shape_tensors_values() -> None:
    inputs = graph_input_dims(reshape_model())
    wide = {"x": {"min": [9, 8], "opt": [16, 8], "max": [32, 8]},
            "target": {"min": [9, 8], "opt": [16, 8], "max": [32, 8]}}
    built = engine.build_profiles([SHAPE_PROFILE, wide], inputs, ["target"])
    profiles = json.loads(json.dumps(engine.profiles_json(built)))
    # the runner gives a shape tensor's values (from host memory), not its shape [2]
    assert runner.choose_profile(profiles, {"x": [20, 8], "target": [20, 8]}) == 1
    with pytest.raises(UserError, match="outside every"):
        runner.choose_profile(profiles, {"x": [20, 8], "target": [2]})


# Finding 4: one TensorRT logger per process; each build or runner reads its own messages.

def test_each_runner_reads_its_own_errors_through_the_one_logger() -> None:
    first, second = api.LogSink(), api.LogSink()
    with api.capturing(first):
        api.LOG_SWITCH.log("ERROR", "first engine: out of memory")
    with api.capturing(second):
        api.LOG_SWITCH.log("ERROR", "second engine: no tactic")
        api.LOG_SWITCH.log("INFO", "chatter")
    assert first.errors() == "first engine: out of memory"
    assert second.errors() == "second engine: no tactic"


def test_nested_capture_gives_messages_back_to_the_outer_sink() -> None:
    outer, inner = api.LogSink(), api.LogSink()
    with api.capturing(outer):
        with api.capturing(inner):
            api.LOG_SWITCH.log("WARNING", "inner")
        with api.capturing(outer):  # a runner's bench calls its run: the same sink twice
            api.LOG_SWITCH.log("ERROR", "outer again")
        api.LOG_SWITCH.log("INTERNAL_ERROR", "outer")
    assert [m for _, m in inner.messages] == ["inner"]
    assert outer.errors() == "outer again\nouter"
    before = len(api.LOG_SWITCH.fallback.messages)
    api.LOG_SWITCH.log("ERROR", "nobody's")
    assert len(api.LOG_SWITCH.fallback.messages) == before + 1 and "nobody's" not in outer.errors()


def test_a_sink_writes_its_build_log_and_says_when_nothing_failed(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with api.LogSink(log) as sink, api.capturing(sink):
        api.LOG_SWITCH.log("INFO", "parsing")
        api.LOG_SWITCH.log("VERBOSE", "tactic 17")
    assert log.read_text() == "[INFO] parsing\n"
    assert sink.errors() == "(TensorRT logged no error)"


# Finding 10: bfloat16 (and float8, int4) engine I/O through ml_dtypes.

FRESH_BFLOAT16 = """\
import sys
import numpy as np
from orchestrator.backends.tensorrt import runner
assert "ml_dtypes" not in sys.modules
try:
    np.dtype("bfloat16")
except TypeError:
    print("numpy alone: no bfloat16")
print(runner.cast_for_engine("value", np.ones(2, np.float32), "bfloat16").dtype)
"""


def test_bfloat16_and_other_ml_dtypes_have_numpy_dtypes() -> None:
    assert buffers.numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert buffers.numpy_dtype("float8_e4m3fn").itemsize == 1
    assert buffers.numpy_dtype("float16") == np.float16
    # In a process where nothing imported ml_dtypes yet, np.dtype("bfloat16") (what the runner called) raises.
    done = subprocess.run([sys.executable, "-c", FRESH_BFLOAT16], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.stdout.splitlines() == ["numpy alone: no bfloat16", "bfloat16"], done.stderr


def test_inputs_are_cast_to_bfloat16_and_int4_without_changing_values() -> None:
    cast = runner.cast_for_engine("value", np.array([1.5, -2.0, 3.0], np.float32), "bfloat16")
    assert cast.dtype == ml_dtypes.bfloat16 and np.array_equal(cast.astype(np.float32), [1.5, -2.0, 3.0])
    assert runner.cast_for_engine("ids", np.array([-8, 7]), "int4").dtype == ml_dtypes.int4
    with pytest.raises(UserError, match=r"values in \[0, 9\], outside int4's range"):
        runner.cast_for_engine("ids", np.array([0, 9]), "int4")


def test_bfloat16_travels_as_its_bytes() -> None:
    values = np.array([[0.5, 1.0], [-3.0, 256.0]], dtype=ml_dtypes.bfloat16)
    with pytest.raises(ValueError):
        memoryview(values)  # why pycuda cannot copy it as it is
    raw = buffers.host_bytes(values)
    assert raw.dtype == np.uint8 and raw.size == 8
    received = np.empty(values.shape, ml_dtypes.bfloat16)
    buffers.host_bytes(received)[:] = raw  # a copy into the view lands in the array
    assert np.array_equal(buffers.host_comparable(received), values.astype(np.float32))
    assert buffers.host_comparable(received).dtype == np.float32
    tensor = buffers.torch_host_tensor(torch, values)
    assert tensor.dtype == torch.bfloat16 and tensor.float().tolist() == [[0.5, 1.0], [-3.0, 256.0]]
    with pytest.raises(TypeError):
        torch.from_numpy(values)  # what the torch buffers called before


# Finding 11: a zero-element tensor still gets an address TensorRT accepts.

def test_a_zero_element_tensor_gets_a_non_null_address() -> None:
    assert torch.empty(0).data_ptr() == 0  # what TensorRT refuses as an input's address
    address, tensor = buffers.torch_allocation(torch, (0, 4), "float32", "cpu")
    assert address != 0 and tuple(tensor.shape) == (0, 4) and tensor.dtype == torch.float32
    address, scalar = buffers.torch_allocation(torch, (), "int32", "cpu")
    assert address == scalar.data_ptr() and tuple(scalar.shape) == ()
    address, matrix = buffers.torch_allocation(torch, (2, 3), "bfloat16", "cpu")
    assert address == matrix.data_ptr() and matrix.numel() == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_torch_cuda_buffers_hold_bfloat16_and_empty_inputs() -> None:
    device = buffers.TorchCudaBuffers()
    values = np.array([0.5, -3.0, 256.0], dtype=ml_dtypes.bfloat16)
    uploaded = device.upload(values)
    assert uploaded.dtype == "bfloat16" and uploaded.handle.dtype == torch.bfloat16
    assert np.array_equal(device.download(uploaded), values.astype(np.float32))
    empty = device.upload(np.zeros((0, 4), np.float32))
    assert empty.ptr != 0 and empty.shape == (0, 4) and device.download(empty).shape == (0, 4)
    device.close()

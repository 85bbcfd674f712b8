"""The embedded backend's run plan: reshape/cast-only segments as NumPy steps, checked against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator.backends import onnxruntime as backend


def view_model(extra_op: str | None = None) -> onnx.ModelProto:
    """x [2, 3, 4] f32 and i [3] int64 through Reshape (initializer shape with 0 and -1), Flatten,
    Unsqueeze (Constant axes), Squeeze, Identity and casts; optionally one real op at the end."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["f", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["s"]),
        helper.make_node("Identity", ["s"], ["view"]),
        helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["half"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["i"], ["i32"], to=TensorProto.INT32),
    ]
    outputs = [helper.make_tensor_value_info("view", TensorProto.FLOAT, [2, 12]),
               helper.make_tensor_value_info("i32", TensorProto.INT32, [3])]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["back"], ["y"]))
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4]))
    else:
        outputs.append(helper.make_tensor_value_info("back", TensorProto.FLOAT, [2, 3, 4]))
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
                         helper.make_tensor_value_info("i", TensorProto.INT64, [3])], outputs,
        [numpy_helper.from_array(np.array([0, -1, 2], np.int64), "shape")])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def feeds() -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32) * 100
    return {"x": x, "i": np.array([1, -7, 2**40 + 5], np.int64)}


@pytest.mark.parametrize("extra_op", [None, "Relu"])
def test_runner_matches_onnx_runtime(tmp_path: Path, extra_op: str | None) -> None:
    model = view_model(extra_op)
    built = backend.build(model, tmp_path, "fp32", [], lambda message: None)
    if extra_op is None:
        assert (built["segments"], built["array_steps"]) == (0, 1)
    else:
        assert (built["segments"], built["array_steps"]) == (1, 0)  # a real op keeps the segment in ONNX Runtime
    runner = backend.Runner(tmp_path)
    ours = runner.run(feeds())
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    for name, expected in zip(names, session.run(names, feeds()), strict=True):
        assert ours[name].dtype == expected.dtype and ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)


def test_reshape_step_is_a_view(tmp_path: Path) -> None:
    backend.build(view_model(), tmp_path, "fp32", [], lambda message: None)
    inputs = feeds()
    result = backend.Runner(tmp_path).run(inputs)
    assert np.shares_memory(result["view"], inputs["x"])


def test_segments_with_unknown_shapes_stay_in_onnx_runtime(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    built = backend.build(model, tmp_path, "fp32", [], lambda message: None)
    assert (built["segments"], built["array_steps"]) == (1, 0)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = backend.Runner(tmp_path).run({"x": x, "shape": np.array([4, 2], np.int64)})
    np.testing.assert_array_equal(result["y"], x.reshape(4, 2))

"""The build preflight on hand-made ONNX files: every plugin node is checked against its catalog entry
before any backend work, and a mismatch is exit 2 naming the node, with no build written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Project, stage_status
from onnx import TensorProto, helper

from orchestrator.errors import UserError
from orchestrator.stages.build import preflight

OP = "MultiscaleDeformableAttnPlugin_TRT"
LEVELS = [(4, 5), (2, 3)]
HEADS, DIM, POINTS = 2, 4, 2
TOKENS = sum(h * w for h, w in LEVELS)

PIPELINE = """\
version: 1
name: handmade
capture:
  from_dir: tensors
export:
  onnx: handmade.onnx
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
build:
  backend: onnxruntime
bench:
  enabled: false
"""


def handmade_model(index_type: int = TensorProto.INT64, version: str = "1", namespace: str = "",
                   drop_input: bool = False, node_name: str = "msda_layer07") -> onnx.ModelProto:
    """The plugin node fed straight from graph inputs, as a hand-written export would make it."""
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("value", f32, [1, TOKENS, HEADS, DIM]),
        helper.make_tensor_value_info("spatial_shapes", index_type, [len(LEVELS), 2]),
        helper.make_tensor_value_info("level_start_index", index_type, [len(LEVELS)]),
        helper.make_tensor_value_info("sampling_locations", f32, [1, TOKENS, HEADS, len(LEVELS), POINTS, 2]),
        helper.make_tensor_value_info("attention_weights", f32, [1, TOKENS, HEADS, len(LEVELS), POINTS]),
    ]
    names = [i.name for i in inputs]
    if drop_input:
        names = names[:4]
    node = helper.make_node(OP, names, ["output"], name=node_name, domain="trt.plugins",
                            plugin_version=version, plugin_namespace=namespace)
    graph = helper.make_graph([node], "handmade", inputs,
                              [helper.make_tensor_value_info("output", f32, [1, TOKENS, HEADS, DIM])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])


def write_tensors(folder: Path) -> None:
    from orchestrator.plugins.msda.kernel import msda

    rng = np.random.default_rng(0)
    spatial = np.array(LEVELS, dtype=np.int64)
    starts = np.array([0, LEVELS[0][0] * LEVELS[0][1]], dtype=np.int64)
    arrays = {
        "value": rng.standard_normal((1, TOKENS, HEADS, DIM), dtype=np.float32),
        "spatial_shapes": spatial,
        "level_start_index": starts,
        "sampling_locations": rng.random((1, TOKENS, HEADS, len(LEVELS), POINTS, 2), dtype=np.float32),
        "attention_weights": rng.random((1, TOKENS, HEADS, len(LEVELS), POINTS), dtype=np.float32),
    }
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    np.save(folder / "output.npy", msda(list(arrays.values()))[0])


def run_handmade(project: Project, model: onnx.ModelProto, declared: str = "") -> tuple[int, str]:
    write_tensors(project.root / "tensors")
    onnx.save(model, str(project.root / "handmade.onnx"))
    text = PIPELINE.replace("    - op: MultiscaleDeformableAttnPlugin_TRT\n",
                            "    - op: MultiscaleDeformableAttnPlugin_TRT\n" + declared)
    result = project.run("run", str(project.write("handmade.yaml", text)))
    return result.code, result.text


def assert_no_build(project: Project) -> None:
    folder = project.store / "build"
    assert not folder.exists() or not any(p for p in folder.iterdir() if not p.name.startswith(".")), \
        list(folder.iterdir())


def test_int64_index_inputs_fail_the_run_before_any_build(project: Project) -> None:
    code, text = run_handmade(project, handmade_model(TensorProto.INT64))
    assert code == 2, text
    assert "plugin node 'msda_layer07'" in text and OP in text
    assert "input 'spatial_shapes' must be int32, got int64" in text
    assert "input 'level_start_index' must be int32, got int64" in text
    assert "Traceback" not in text and "hint: cast integer inputs to int32" in text
    assert "handmade.yaml" in text  # located in the pipeline file
    assert_no_build(project)


def test_the_same_file_with_int32_indices_builds_and_verifies(project: Project) -> None:
    """The control: only the index dtypes differ from the failing case."""
    write_tensors(project.root / "tensors")
    for name in ("spatial_shapes", "level_start_index"):
        path = project.root / "tensors" / f"{name}.npy"
        np.save(path, np.load(path).astype(np.int32))
    onnx.save(handmade_model(TensorProto.INT32), str(project.root / "handmade.onnx"))
    result = project.run("run", str(project.write("handmade.yaml", PIPELINE)))
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "ran", "export": "ran", "build": "ran", "verify": "passed"}


@pytest.mark.parametrize(("model", "declared", "message"), [
    (handmade_model(TensorProto.INT32, version="3"), "", "plugin_version '3' is not one of 1, 2"),
    (handmade_model(TensorProto.INT32, version="2"), "",
     "has plugin_version '2', namespace ''; the pipeline declares version '1', namespace ''"),
    (handmade_model(TensorProto.INT32, namespace="custom"), "",
     "has plugin_version '1', namespace 'custom'; the pipeline declares version '1', namespace ''"),
    (handmade_model(TensorProto.INT32, drop_input=True), "", "takes 5 inputs"),
], ids=["unknown-version", "other-version", "namespace", "input-count"])
def test_node_mismatches_fail_the_run_naming_the_node(project: Project, model: onnx.ModelProto, declared: str,
                                                       message: str) -> None:
    code, text = run_handmade(project, model, declared)
    assert code == 2, text
    assert "plugin node 'msda_layer07'" in text and message in " ".join(text.split()), text
    assert "Traceback" not in text and "hint: cast" not in text
    assert_no_build(project)


def test_preflight_checks_every_node_and_names_the_failing_one() -> None:
    """Two plugin nodes: the first fits, the second has a rank-3 value; the error names the second."""
    good = handmade_model(TensorProto.INT32, node_name="first")
    second = helper.make_node(OP, ["value3d", "spatial_shapes", "level_start_index", "sampling_locations",
                                   "attention_weights"], ["output2"], name="second", domain="trt.plugins",
                              plugin_version="1", plugin_namespace="")
    good.graph.node.append(second)
    good.graph.input.append(helper.make_tensor_value_info("value3d", TensorProto.FLOAT, [1, TOKENS, HEADS * DIM]))
    good.graph.output.append(helper.make_tensor_value_info("output2", TensorProto.FLOAT, None))
    declared = [{"op": OP, "version": "1", "namespace": ""}]
    with pytest.raises(UserError, match=r"plugin node 'second' .* input 'value3d' \(value\) must have rank 4"):
        preflight(onnx.shape_inference.infer_shapes(good), declared, "fp32", "onnxruntime")
    checked = preflight(onnx.shape_inference.infer_shapes(handmade_model(TensorProto.INT32)), declared, "fp32",
                        "onnxruntime")
    assert checked == [{"node": "msda_layer07", "op": OP, "version": "1", "namespace": "",
                        "dtypes": ["float32", "int32", "int32", "float32", "float32"]}]

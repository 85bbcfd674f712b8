"""The plugin catalog: a user's own entry by import path, end to end, and both ONNX Runtime registrations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Project, stage_status

from orchestrator import plugins as catalog
from orchestrator.backends import onnxruntime as ort_backend
from orchestrator.backends.base import Trusted
from orchestrator.errors import UserError

TOY_PIPELINE = """\
version: 1
name: toy
capture:
  from_dir: tensors
export:
  opset: 13
  plugins:
    - op: ScaledGatherPlugin
      catalog: examples.ops.scaled_gather:ENTRY
      domain: user.plugins
      attributes: {scale: 0.5}
build:
  backend: onnxruntime
verify:
  atol: 1.0e-6
  rtol: 0.0
bench:
  warmup: 1
  iterations: 2
"""


def write_toy_capture(folder: Path, scale: float = 0.5) -> None:
    """A table, int64 indices (as PyTorch makes them) and the expected output, computed here by NumPy."""
    folder.mkdir(parents=True)
    table = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    indices = np.array([5, 0, 2, 2, 1], dtype=np.int64)
    np.save(folder / "table.npy", table)
    np.save(folder / "indices.npy", indices)
    np.save(folder / "output.npy", table[indices] * np.float32(scale))


def test_users_own_catalog_entry_runs_end_to_end(project: Project) -> None:
    """No `replace`: the entry's kernel computes the real result in export, and the build runs it."""
    write_toy_capture(project.root / "tensors")
    pipeline = project.write("toy.yaml", TOY_PIPELINE)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "ran", "export": "ran", "build": "ran", "verify": "passed",
                                        "bench": "ran"}
    assert "reference kernel scaled_gather" in result.out

    model = onnx.load(str(next((project.store / "export").glob("*/model.onnx"))))
    node = next(n for n in model.graph.node if n.op_type == "ScaledGatherPlugin")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "user.plugins" and attrs["scale"] == pytest.approx(0.5)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 1 and casts[0].output[0] == node.input[1]  # int64 indices cast to the entry's int32

    build = json.loads(next((project.store / "build").glob("*/manifest.json")).read_text())
    assert build["result"]["preflight"][0]["dtypes"] == ["float32", "int32"]
    runplan = json.loads(next((project.store / "build").glob("*/runplan.json")).read_text())
    plugin_step = next(s for s in runplan["steps"] if s["type"] == "plugin")
    # The plan says which plugin the node is; the kernel is the catalog's, looked up when it runs.
    assert (plugin_step["op"], plugin_step["domain"], plugin_step["version"]) == ("ScaledGatherPlugin",
                                                                                   "user.plugins", "1")
    assert "kernel" not in plugin_step

    again = project.run("run", str(pipeline))
    assert again.code == 0 and set(stage_status(again.out).values()) == {"cached"}, again.text


def test_users_kernel_result_is_really_compared(project: Project) -> None:
    """A capture whose output the kernel does not reproduce fails verify (the result is no copy of it)."""
    write_toy_capture(project.root / "tensors", scale=0.25)
    pipeline = project.write("toy.yaml", TOY_PIPELINE)
    result = project.run("run", str(pipeline))
    assert result.code == 1, result.text
    assert stage_status(result.out)["verify"] == "failed"


def test_catalog_path_that_is_no_entry_is_a_user_error(project: Project) -> None:
    write_toy_capture(project.root / "tensors")
    pipeline = project.write("toy.yaml", TOY_PIPELINE.replace("scaled_gather:ENTRY", "scaled_gather:scaled_gather"))
    result = project.run("validate", str(pipeline))
    assert result.code == 2, result.text
    assert "not a PluginEntry" in result.text and "toy.yaml:" in result.text and "Traceback" not in result.text


def test_lookup_checks_the_entry_describes_the_op() -> None:
    assert catalog.lookup("ScaledGatherPlugin", "examples.ops.scaled_gather:ENTRY").kernel.endswith(":scaled_gather")
    with pytest.raises(UserError, match="describes ScaledGatherPlugin"):
        catalog.lookup("OtherPlugin", "examples.ops.scaled_gather:ENTRY")
    with pytest.raises(UserError, match="no catalog entry"):
        catalog.lookup("MultiscaleDeformableAttnPlugin")


def toy_graph(domain: str = "user.plugins") -> onnx.ModelProto:
    """Cast(int64 -> int32) -> ScaledGatherPlugin -> Relu: a NumPy cast step before the plugin, an ONNX Runtime
    segment after it."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["indices"], ["indices32"], to=TensorProto.INT32),
        helper.make_node("ScaledGatherPlugin", ["table", "indices32"], ["gathered"], domain=domain, name="gather",
                         plugin_version="1", plugin_namespace="", scale=2.0),
        helper.make_node("Relu", ["gathered"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("table", TensorProto.FLOAT, [6, 4]),
                       helper.make_tensor_value_info("indices", TensorProto.INT64, [5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [5, 4])],
        value_info=[helper.make_tensor_value_info("indices32", TensorProto.INT32, [5]),
                    helper.make_tensor_value_info("gathered", TensorProto.FLOAT, [5, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(domain, 1)])


def test_partitioned_runner_and_single_session_agree(tmp_path: Path) -> None:
    """Both registrations of the same entry give the same, correct result."""
    model = toy_graph()
    declared = [{"op": "ScaledGatherPlugin", "catalog": "examples.ops.scaled_gather:ENTRY"}]
    built = ort_backend.build(model, tmp_path, "fp32", declared, lambda message: None)
    assert built["plugin_nodes"] == 1 and built["segments"] == 1 and built["array_steps"] == 1
    table = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    indices = np.array([3, 3, 0, 5, 1], dtype=np.int64)
    expected = np.maximum(table[indices] * 2.0, 0)

    runner = ort_backend.Runner(tmp_path, trusted=Trusted(tuple(declared)))
    partitioned = runner.run({"table": table, "indices": indices})["output"]
    entries = {"ScaledGatherPlugin": catalog.lookup("ScaledGatherPlugin", "examples.ops.scaled_gather:ENTRY")}
    session = ort_backend.single_session(model, entries)
    single = session.run(["output"], {"table": table, "indices": indices})[0]
    np.testing.assert_array_equal(partitioned, expected)
    np.testing.assert_array_equal(single, expected)
    assert ort_backend.register_python_op(entries["ScaledGatherPlugin"]) == "ai.onnx.contrib"  # again: no-op


def test_msda_entry_registers_for_a_single_session(project: Project) -> None:
    """The built-in MSDA entry in one ONNX Runtime session reproduces the captured call."""
    pipeline = project.small()
    assert project.run("run", str(pipeline)).code == 0
    model = onnx.load(str(next((project.store / "export").glob("*/model.onnx"))))
    capture = next((project.store / "capture").glob("*/capture.json")).parent
    record = json.loads((capture / "capture.json").read_text())
    feeds = {i.name: np.load(capture / record["inputs"][i.name]["file"]) for i in model.graph.input}
    entry = catalog.lookup("MultiscaleDeformableAttnPlugin_TRT")
    session = ort_backend.single_session(model, {entry.op: entry})
    result = session.run(None, feeds)[0]
    reference = np.load(capture / record["outputs"]["output"]["file"])
    np.testing.assert_allclose(result, reference, atol=1e-5, rtol=1e-4)


def test_a_plugin_kept_in_fp32_runs_its_fp32_kernel_in_a_half_embedded_build(project: Project) -> None:
    """build.keep_fp32 means on the embedded backend what it means on TensorRT: the plugin is not halved, so an
    fp32-only plugin no longer refuses the half build, and its result is the fp32 kernel's."""
    write_toy_capture(project.root / "tensors")
    half = TOY_PIPELINE.replace("  backend: onnxruntime\n", "  backend: onnxruntime\n  precision: fp16\n")
    kept = half.replace("precision: fp16\n", "precision: fp16\n  keep_fp32: [ScaledGatherPlugin]\n")
    results = {name: project.run("run", str(project.write(f"{name}.yaml", text.replace("name: toy", f"name: {name}"))))
               for name, text in (("halved", half), ("kept", kept))}
    assert results["halved"].code == 2 and "ScaledGatherPlugin runs only fp32" in results["halved"].err
    assert results["kept"].code == 0, results["kept"].text
    assert "output max|err| 0.0e+00" in results["kept"].out

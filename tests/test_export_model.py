"""Whole-model export (export.scope: model): one plugin node per call, per-node verification, dynamic axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from conftest import SMALL_MODEL, Project, stage_status

from orchestrator.backends.onnxruntime import Runner

MSDA = "MultiscaleDeformableAttnPlugin_TRT"

MODEL_PIPELINE = """\
version: 1
name: whole
{model}
capture:
  calls: all
export:
  scope: model
  plugins:
    - replace: examples.ops.msda:ms_deform_attn
      op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {{spatial_shapes: int32, level_start_index: int32}}
bench:
  enabled: false
"""


def whole_model(project: Project, layers: int = 3, **replace: str) -> Path:
    text = MODEL_PIPELINE.format(model=SMALL_MODEL.replace("num_layers: 2", f"num_layers: {layers}"))
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return project.write("whole.yaml", text)


def only(project: Project, stage: str) -> Path:
    folders = list((project.store / stage).iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def test_every_call_becomes_a_plugin_node_and_each_is_verified(project: Project) -> None:
    pipeline = whole_model(project, layers=3)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "ran", "export": "ran", "build": "ran", "verify": "passed"}
    assert "3 plugin nodes MultiscaleDeformableAttnPlugin_TRT" in result.out
    assert "(3 calls in the captured forward)" in result.out

    model = onnx.load(str(only(project, "export") / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == MSDA]
    assert len(nodes) == 3
    assert {n.domain for n in nodes} == {"trt.plugins"}
    assert {o.domain: o.version for o in model.opset_import}[""] == 11
    assert [i.name for i in model.graph.input] == ["src", "pos", "spatial_shapes", "level_start_index",
                                                   "valid_ratios"]
    assert [o.name for o in model.graph.output] == ["output"]
    info = json.loads((only(project, "export") / "export.json").read_text())
    assert all([c["to"] for c in node["casts"]] == ["int32", "int32"] for node in info["plugin_nodes"])

    verify = json.loads((only(project, "verify") / "verify.json").read_text())
    assert verify["outputs"]["output"]["shape"] == [1, 106, 32]
    assert verify["outputs"]["output"]["max_abs"] < 1e-4
    per_node = verify["plugin_nodes"]
    assert [v["module"] for v in per_node.values()] == [f"encoder.layers.{i}.self_attn" for i in range(3)]
    assert all(v["max_abs"] < 1e-4 and not v["failed"] for v in per_node.values())
    assert "3 plugin nodes vs their calls" in result.out

    show = project.run("show", str(pipeline), "--stage", "verify", env={"COLUMNS": "250"})
    assert "plugin encoder.layers.2.self_attn" in " ".join(show.out.split())


def test_calls_of_chosen_modules_only(project: Project) -> None:
    pipeline = whole_model(project, layers=3, **{"calls: all": "calls: [encoder.layers.1]"})
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    capture = json.loads((only(project, "capture") / "capture.json").read_text())
    assert [(c["module"], c["sequence"]) for c in capture["calls"]] == [("encoder.layers.1.self_attn", 1)]
    assert capture["call_counts"] == {"examples.ops.msda:ms_deform_attn": 3}
    verify = json.loads((only(project, "verify") / "verify.json").read_text())
    assert [v["module"] for v in verify["plugin_nodes"].values()] == ["encoder.layers.1.self_attn"]


def test_a_wrong_module_in_calls_is_a_user_error(project: Project) -> None:
    pipeline = whole_model(project, layers=2, **{"calls: all": "calls: [encoder.layer.1]"})
    result = project.run("run", str(pipeline))
    assert result.code == 2, result.text
    assert "capture.calls: no module 'encoder.layer.1'" in result.err
    assert "encoder.layers.1" in result.err


def test_capture_module_does_not_apply_to_a_whole_model(project: Project) -> None:
    pipeline = whole_model(project, **{"calls: all": "module: encoder.layers.1.self_attn"})
    for command in ("validate", "run"):  # the schema accepts the file; planning, which both do, refuses it
        result = project.run(command, str(pipeline))
        assert result.code == 2 and "capture.module picks one call" in result.err


def test_per_node_failures_name_the_layer(project: Project) -> None:
    pipeline = whole_model(project, layers=2, **{"bench:": "verify: {atol: 0.0, rtol: 0.0}\nbench:"})
    result = project.run("run", str(pipeline))
    assert result.code == 1, result.text
    verify = json.loads((only(project, "verify") / "verify.json").read_text())
    assert not verify["passed"]
    failed = [c for c in verify["failed_checks"] if c.startswith("plugin node")]
    assert any("(encoder.layers.0.self_attn)" in c and "outside atol 0" in c for c in failed), failed
    assert "plugin nodes: FAILED" in result.out


def test_dynamic_axes_as_declared(project: Project) -> None:
    axes = "dynamic_axes: {src: {'0': batch}, pos: {'0': batch}, valid_ratios: {'0': batch}, output: {'0': batch}}"
    pipeline = whole_model(project, layers=2, **{"  scope: model": f"  scope: model\n  {axes}"})
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    model = onnx.load(str(only(project, "export") / "model.onnx"))
    batch = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input}
    assert batch["src"] == batch["pos"] == batch["valid_ratios"] == "batch"

    from examples.maskdino_encoder import build_encoder, example_inputs

    encoder = build_encoder(num_layers=2, d_model=32, heads=2, levels=3, points=2, ffn_dim=64, seed=0)
    inputs = example_inputs(shapes=[[8, 10], [4, 5], [2, 3]], d_model=32, batch=2, seed=5)
    with torch.no_grad():
        expected = encoder(**inputs).numpy()
    runner = Runner(only(project, "build"))
    feeds = {spec.name: inputs[spec.name].numpy().astype(spec.dtype) for spec in runner.inputs}
    got = runner.run(feeds)["output"]
    assert got.shape == (2, 106, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)

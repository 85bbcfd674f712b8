"""The dynamo exporter: the same plugin graph as the TorchScript one, verified against the same capture."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import SMALL_MODEL, Project, stage_status

from orchestrator.stages.export import _custom_op

MSDA = "MultiscaleDeformableAttnPlugin_TRT"

BOTH = """\
matrix:
  export.exporter: [torchscript, dynamo]
"""


def exports(project: Project) -> dict[str, Path]:
    """The export folders by exporter."""
    found = {}
    for folder in (project.store / "export").iterdir():
        info = json.loads((folder / "export.json").read_text())
        found[info["exporter"]] = folder
    return found


def plugin_facts(model: onnx.ModelProto) -> list[dict[str, object]]:
    """What both exporters must agree on, per plugin node."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type for v in [*inferred.graph.input, *inferred.graph.value_info,
                                                  *inferred.graph.output]}
    types.update({i.name: None for i in inferred.graph.initializer})
    initializers = {i.name: i.data_type for i in inferred.graph.initializer}
    facts = []
    for node in inferred.graph.node:
        if node.op_type != MSDA:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        dtypes = [initializers[i] if i in initializers else types[i].elem_type for i in node.input]
        facts.append({"domain": node.domain, "attrs": attrs, "inputs": len(node.input), "dtypes": dtypes,
                      "output": [d.dim_value for d in types[node.output[0]].shape.dim]})
    return facts


def test_one_call_both_exporters_give_the_same_plugin_node_and_verify(project: Project) -> None:
    pipeline = project.small(**{"opset: 11": "opset: 18\n  scope: call", "bench:": BOTH + "bench:",
                                "domain: trt.plugins": "domain: trt.plugins\n      namespace: ns"})
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    lines = [line for line in result.out.splitlines() if line.startswith(("capture", "verify"))]
    assert len([line for line in lines if line.startswith("capture")]) == 1  # one capture for both
    assert "[all variants]" in lines[0]
    assert sum("passed" in line for line in lines if line.startswith("verify")) == 2

    folders = exports(project)
    models = {name: onnx.load(str(folder / "model.onnx")) for name, folder in folders.items()}
    for model in models.values():
        onnx.checker.check_model(model, full_check=True)
    facts = {name: plugin_facts(model) for name, model in models.items()}
    assert facts["dynamo"] == facts["torchscript"]
    (node,) = facts["dynamo"]
    assert node["domain"] == "trt.plugins"
    assert node["attrs"] == {"plugin_version": b"1", "plugin_namespace": b"ns"}
    assert node["dtypes"] == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT32,
                              onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert node["output"] == [1, 106, 2, 16]
    dynamo = models["dynamo"]
    assert {o.domain: o.version for o in dynamo.opset_import}[""] == 18
    assert [d.dim_value for d in dynamo.graph.output[0].type.tensor_type.shape.dim] == [1, 106, 32]
    info = json.loads((folders["dynamo"] / "export.json").read_text())
    assert info["strategy"] == "torch.export"
    assert [c["to"] for c in info["plugin_nodes"][0]["casts"]] == ["int32", "int32"]


def test_whole_model_with_dynamo(project: Project) -> None:
    text = SMALL_MODEL.replace("num_layers: 2", "num_layers: 3") + """\
capture:
  calls: all
export:
  exporter: dynamo
  opset: 18
  scope: model
  plugins:
    - replace: examples.ops.msda:ms_deform_attn
      op: MultiscaleDeformableAttnPlugin_TRT
bench:
  enabled: false
"""
    pipeline = project.write("dynamo.yaml", "version: 1\nname: dynamo_model\n" + text)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert stage_status(result.out)["verify"] == "passed"
    # the encoder loops over spatial_shapes.tolist(): exported with those values fixed, as a trace would
    assert "dynamo opset 18, whole MaskDINOEncoder, 3 plugin nodes" in result.out and "draft_export" in result.out
    assert "3 plugin nodes vs their calls" in result.out
    (folder,) = exports(project).values()
    model = onnx.load(str(folder / "model.onnx"))
    assert [n.op_type for n in model.graph.node].count(MSDA) == 3
    assert [i.name for i in model.graph.input] == ["src", "pos", "spatial_shapes", "level_start_index",
                                                   "valid_ratios"]
    verify = json.loads(next((project.store / "verify").iterdir()).joinpath("verify.json").read_text())
    assert [v["module"] for v in verify["plugin_nodes"].values()] == [f"encoder.layers.{i}.self_attn"
                                                                      for i in range(3)]


def test_the_custom_op_is_registered_once_and_computes_what_it_is_given() -> None:
    plugin = {"op": "Some.Plugin", "domain": "d", "version": "1", "namespace": "", "inputs": ["a", "b"]}
    first_name, first = _custom_op(plugin, 2)
    again_name, again = _custom_op(plugin, 2)
    assert first_name == again_name == "orchestrate::some_plugin_2" and first is again
    from orchestrator.stages import export

    export._REAL[first_name] = lambda a, b: a + b
    export._SHAPES[first_name] = lambda shapes: shapes[0]
    out = first(torch.ones(2), torch.full((2,), 2.0))
    assert out.tolist() == [3.0, 3.0]
    with pytest.raises(RuntimeError):
        first(torch.ones(2))  # the schema takes two tensors


DYNAMIC = """\
export:
  exporter: dynamo
  opset: 18
  scope: model
  dynamic_axes: {{src: {{'0': batch}}, pos: {{'0': batch}}, valid_ratios: {{'0': batch}}, output: {{'0': batch}}}}
  plugins:
    - replace: examples.ops.msda:ms_deform_attn
      op: MultiscaleDeformableAttnPlugin_TRT
bench:
  enabled: false
"""


def dynamic_pipeline(project: Project, batch: int) -> Path:
    model = SMALL_MODEL.replace("num_layers: 2", "num_layers: 1")
    model = model.replace("d_model: 32}", f"d_model: 32, batch: {batch}}}")
    return project.write(f"dynamic{batch}.yaml", f"version: 1\nname: dynamic{batch}\n{model}" + DYNAMIC.format())


def test_dynamic_axes_with_dynamo(project: Project) -> None:
    from examples.maskdino_encoder import build_encoder, example_inputs
    from orchestrator.backends.onnxruntime import Runner

    result = project.run("run", str(dynamic_pipeline(project, batch=2)))
    assert result.code == 0, result.text
    (folder,) = exports(project).values()
    model = onnx.load(str(folder / "model.onnx"))
    batch = {v.name: v.type.tensor_type.shape.dim[0].dim_param for v in [*model.graph.input, *model.graph.output]}
    assert batch["src"] == batch["pos"] == batch["valid_ratios"] == batch["output"] == "batch"
    encoder = build_encoder(num_layers=1, d_model=32, heads=2, levels=3, points=2, ffn_dim=64, seed=0)
    inputs = example_inputs(shapes=[[8, 10], [4, 5], [2, 3]], d_model=32, batch=3, seed=7)
    with torch.no_grad():
        expected = encoder(**inputs).numpy()
    runner = Runner(next((project.store / "build").iterdir()))
    got = runner.run({spec.name: inputs[spec.name].numpy().astype(spec.dtype) for spec in runner.inputs})["output"]
    assert got.shape == (3, 106, 32)
    assert abs(got - expected).max() < 1e-4

    fixed = project.run("run", str(dynamic_pipeline(project, batch=1)))
    assert fixed.code == 2, fixed.text
    assert "export.dynamic_axes: src axis 0 (batch) came out fixed at 1" in fixed.err
    assert "size 2 or more" in fixed.err

"""The exported plugin graph: op, domain, attributes, int32 inputs, inferred shapes, onnx.checker."""

from __future__ import annotations

import json

import onnx
from conftest import Project, stage_status


def test_export_stage_output(project: Project) -> None:
    pipeline = project.small(**{"domain: trt.plugins": "domain: trt.plugins\n      namespace: ns\n      version: '2'"})
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert stage_status(result.out)["export"] == "ran"
    folder = next((project.store / "export").iterdir())
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == "MultiscaleDeformableAttnPlugin_TRT"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == "trt.plugins"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"2", "plugin_namespace": b"ns"}
    assert "trt.plugins" in {o.domain for o in model.opset_import}
    assert {o.domain: o.version for o in model.opset_import}[""] == 11
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type for v in [*inferred.graph.input, *inferred.graph.value_info,
                                                  *inferred.graph.output]}
    assert types[node.input[1]].elem_type == onnx.TensorProto.INT32
    assert types[node.input[2]].elem_type == onnx.TensorProto.INT32
    out_shape = [d.dim_value for d in types[node.output[0]].shape.dim]
    assert out_shape == [1, 106, 2, 16]  # [N, Lq, M, D], 4-D as the plugin produces it
    assert [d.dim_value for d in types["output"].shape.dim] == [1, 106, 32]
    assert len(node.input) == 5  # im2col_step is dropped
    info = json.loads((folder / "export.json").read_text())
    assert [c["to"] for c in info["plugin_nodes"][0]["casts"]] == ["int32", "int32"]
    graph_inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert graph_inputs["spatial_shapes"] == onnx.TensorProto.INT64  # cast in the graph, not by the caller


def test_replacement_is_restored_after_export(project: Project) -> None:
    import examples.maskdino_encoder as model_module
    import examples.ops.msda as ops
    from orchestrator import imports

    original = ops.ms_deform_attn
    try:
        with imports.swap("examples.ops.msda:ms_deform_attn", lambda *a: None):
            assert ops.ms_deform_attn is not original
            assert model_module.ms_deform_attn is not original
            raise RuntimeError("export failed")
    except RuntimeError:
        pass
    assert ops.ms_deform_attn is original and model_module.ms_deform_attn is original

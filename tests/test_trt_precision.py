"""A half-precision TensorRT build keeps chosen nodes in float32, the same on every release.

TensorRT 11 (strongly typed) gets a float16 graph made by onnxconverter-common, with what its ONNX
parser needs restored; 10.x and 8.6 hold the kept nodes' layers to FP32 by builder constraints. The
graphs here are real ONNX models (made with onnx.helper, or exported by torch), run by ONNX Runtime
where they hold no plugin node; the layer choice is a plain function of layer descriptions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, Project
from onnx import TensorProto, helper, numpy_helper

from orchestrator.backends.tensorrt import ApiFeatures
from orchestrator.backends.tensorrt.graph import cast_float_graph, cast_problems, fp32_nodes, graph_to_build
from orchestrator.backends.tensorrt.precision import LayerInfo, kept_layers, precision_plan
from orchestrator.errors import UserError

pytest.importorskip("onnxconverter_common")

PLUGIN = "ScalePlugin_TRT"  # a user's plugin whose creator reads a float32 TENSOR field 'coefficients'
MSDA = "MultiscaleDeformableAttnPlugin_TRT"
TRT10 = ApiFeatures.from_names("10.13.0", {"BuilderFlag": ["FP16", "BF16", "INT8", "TF32",
                                                           "OBEY_PRECISION_CONSTRAINTS"]})
TRT11 = ApiFeatures.from_names("11.1.0", {"BuilderFlag": ["TF32"]})
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def typed(name: str, shape: list[int], dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def mixed_graph(scales_by_constant: bool = False) -> onnx.ModelProto:
    """Conv -> LayerNormalization -> Softmax -> a user's plugin with a TENSOR field -> Relu -> Resize (output)."""
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w"),
                    numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
                    numpy_helper.from_array(np.zeros(8, np.float32), "beta")]
    scales = np.array([1, 1, 1.5, 2], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("LayerNormalization", ["c", "gamma", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("Softmax", ["ln"], ["sm"], name="softmax", axis=-1),
             helper.make_node(PLUGIN, ["sm"], ["p"], name="plugin", domain="trt.plugins", plugin_version="1",
                              plugin_namespace="",
                              coefficients=numpy_helper.from_array(np.array([0.5, 0.25], np.float32))),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("Resize", ["r", "", "scales"], ["y"], name="resize", mode="nearest")]
    if scales_by_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["scales"], name="scales_constant",
                                         value=numpy_helper.from_array(scales)))
    else:
        initializers.append(numpy_helper.from_array(scales, "scales"))
    graph = helper.make_graph(nodes, "mixed", [typed("x", [1, 4, 8, 8])], [typed("y", [1, 4, 12, 16])],
                              initializers, value_info=[typed("p", [1, 4, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's type as ONNX's inference finds it (plugin outputs as declared)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    found = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                            *inferred.graph.output]}
    found.update({i.name: i.data_type for i in inferred.graph.initializer})
    return found


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def constant_of(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    producer = next(n for n in model.graph.node if name in n.output)
    assert producer.op_type == "Constant", f"{name} is made by {producer.op_type}, not held as a constant"
    return producer.attribute[0].t


# ------------------------------------------------------------------------------------------- the float16 graph

@pytest.mark.parametrize("scales_by_constant", [False, True])
def test_resize_scales_and_plugin_tensor_fields_stay_float32(scales_by_constant: bool) -> None:
    model = mixed_graph(scales_by_constant)
    half = cast_float_graph(model, plugin_ops={PLUGIN})
    resize = node(half, "resize")
    scales = constant_of(half, resize.input[2])
    assert scales.data_type == FLOAT and numpy_helper.to_array(scales).tolist() == [1, 1, 1.5, 2]
    field = next(a for a in node(half, "plugin").attribute if a.name == "coefficients")
    assert field.t.data_type == FLOAT and numpy_helper.to_array(field.t).tolist() == [0.5, 0.25]
    types = types_of(half)
    assert types[node(half, "plugin").input[0]] == HALF  # the plugin itself runs float16: only its field stays
    assert types[node(half, "conv").input[1]] == HALF and cast_problems(model, half, {PLUGIN}) == []


def test_graph_inputs_and_outputs_keep_their_types_also_behind_a_kept_node() -> None:
    half = cast_float_graph(mixed_graph(), plugin_ops={PLUGIN})  # y is written by Resize, which stays float32
    assert [v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]] == [FLOAT, FLOAT]
    assert types_of(half)["y"] == FLOAT


def test_layer_norm_and_softmax_stay_float32_by_default() -> None:
    half = cast_float_graph(mixed_graph(), plugin_ops={PLUGIN})
    types = types_of(half)
    for name in ("ln", "softmax"):
        kept = node(half, name)
        assert {types[t] for t in [*kept.input, *kept.output] if t} == {FLOAT}, name
    assert types[node(half, "relu").input[0]] == HALF


def test_keep_fp32_by_plugin_op_node_name_and_glob() -> None:
    model = mixed_graph()
    assert set(fp32_nodes(model)) == {"ln", "softmax"}
    assert fp32_nodes(model, [PLUGIN])["plugin"] == f"keep_fp32 '{PLUGIN}'"
    assert set(fp32_nodes(model, ["relu", "con*"])) == {"ln", "softmax", "relu", "conv"}
    half = cast_float_graph(model, fp32_nodes(model, [PLUGIN, "relu"]), plugin_ops={PLUGIN})
    types = types_of(half)
    for name in ("plugin", "relu"):
        kept = node(half, name)
        assert {types[t] for t in [*kept.input, *kept.output] if t} == {FLOAT}, name
    with pytest.raises(UserError, match="'Gelu' is no op type or node name") as raised:
        fp32_nodes(model, ["relu", "Gelu"])
    assert raised.value.field == "build.keep_fp32[1]" and "LayerNormalization" in (raised.value.hint or "")


def test_a_torch_layer_norm_exported_as_elementwise_ops_stays_float32() -> None:
    torch = pytest.importorskip("torch")
    import io

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.norm = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.norm(self.linear(x)))

    buffer = io.BytesIO()
    torch.onnx.export(Block().eval(), (torch.randn(2, 8),), buffer, opset_version=11, dynamo=False,
                      input_names=["x"], output_names=["y"])
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue()))
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}  # opset 11 has none
    kept = fp32_nodes(model)
    assert {model.graph.node[[n.name for n in model.graph.node].index(k)].op_type for k in kept} == \
        {"ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div"}
    half = cast_float_graph(model)
    types = types_of(half)
    sqrt = next(n for n in half.graph.node if n.op_type == "Sqrt")
    assert types[sqrt.input[0]] == FLOAT and types[next(n for n in half.graph.node if n.op_type == "Relu").input[0]] \
        == HALF
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": x})[0]
    want, got = run(model), run(half)
    assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-2)


def test_the_float16_graph_without_plugins_computes_what_the_float32_one_does() -> None:
    import onnxruntime as ort

    model = mixed_graph()
    nodes = [n for n in model.graph.node if n.op_type != PLUGIN]
    node_relu = next(n for n in nodes if n.name == "relu")
    node_relu.input[0] = "sm"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    half = cast_float_graph(model)
    x = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": x})[0]
    want, got = run(model), run(half)
    assert got.shape == (1, 4, 12, 16) and got.dtype == np.float32 and np.allclose(got, want, atol=2e-3)


def layer07_graph() -> onnx.ModelProto:
    """The layer-07 export as orchestrate writes it (torchscript, opset 11): int64 indices cast to int32, the
    plugin, its [N, Lq, M, D] output reshaped to [N, Lq, M*D]."""
    inputs = [typed("value", [1, 21000, 8, 32]), typed("spatial_shapes", [3, 2], TensorProto.INT64),
              typed("level_start_index", [3], TensorProto.INT64), typed("sampling_locations", [1, 21000, 8, 3, 4, 2]),
              typed("attention_weights", [1, 21000, 8, 3, 4])]
    nodes = [helper.make_node("Cast", ["spatial_shapes"], ["shapes32"], name="/Cast", to=TensorProto.INT32),
             helper.make_node("Cast", ["level_start_index"], ["starts32"], name="/Cast_1", to=TensorProto.INT32),
             helper.make_node(MSDA, ["value", "shapes32", "starts32", "sampling_locations", "attention_weights"],
                              ["attended"], name=f"/{MSDA}", domain="trt.plugins", plugin_version="1",
                              plugin_namespace=""),
             helper.make_node("Constant", [], ["merged"], name="/Constant",
                              value=numpy_helper.from_array(np.array([1, 21000, 256], np.int64))),
             helper.make_node("Reshape", ["attended", "merged"], ["output"], name="/Reshape")]
    graph = helper.make_graph(nodes, "layer07", inputs, [typed("output", [1, 21000, 256])],
                              value_info=[typed("attended", [1, 21000, 8, 32])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("trt.plugins", 1)])


def test_the_layer07_plugin_runs_float16_or_float32_as_the_yaml_says(tmp_path: Path) -> None:
    from orchestrator.stages.build import preflight

    model = layer07_graph()
    declared = [{"op": MSDA, "version": "1", "namespace": ""}]
    written, half = graph_to_build(model, tmp_path / "model.onnx", tmp_path, "float16", (), {MSDA})
    assert written.name == "model.fp16.onnx" and onnx.load(str(written)).graph.node
    [checked] = preflight(onnx.shape_inference.infer_shapes(half), declared, "fp16", "tensorrt")
    assert checked["dtypes"] == ["float16", "int32", "int32", "float16", "float16"]
    assert [v.type.tensor_type.elem_type for v in half.graph.input] == [FLOAT, 7, 7, FLOAT, FLOAT]
    _, kept = graph_to_build(model, tmp_path / "model.onnx", tmp_path, "float16", (MSDA,), {MSDA})
    [checked] = preflight(onnx.shape_inference.infer_shapes(kept), declared, "fp16", "tensorrt")
    assert checked["dtypes"] == ["float32", "int32", "int32", "float32", "float32"]


# ------------------------------------------------------------------------------------------- precision plans

def test_a_plugin_kept_in_float32_does_not_refuse_fp16() -> None:
    fp32_only = {PLUGIN: ("fp32",)}
    with pytest.raises(UserError, match=f"{PLUGIN} runs only fp32"):
        precision_plan("fp16", TRT11, fp32_only)
    assert precision_plan("fp16", TRT11, fp32_only, keep_fp32=[PLUGIN]).cast_graph == "float16"
    assert precision_plan("fp16", TRT10, fp32_only, keep_fp32=[PLUGIN]).set_flags == ("FP16",)


def test_half_flags_constrain_layers_and_a_graph_cast_does_not() -> None:
    assert precision_plan("fp16", TRT10, {}).constrains_layers
    assert precision_plan("best", TRT10, {}).constrains_layers
    assert not precision_plan("fp16", TRT11, {}).constrains_layers  # the float16 graph keeps them instead
    assert not precision_plan("fp32", TRT10, {}).constrains_layers
    assert not precision_plan("tf32", TRT10, {}).constrains_layers


# ------------------------------------------------------------------------------------------- 10.x layers

def layer(name: str, kind: str, *outputs: tuple[str, str]) -> LayerInfo:
    return LayerInfo(name, kind, tuple(outputs))


def test_the_layers_held_to_fp32_are_the_kept_nodes_by_name_type_and_output() -> None:
    layers = [layer("conv", "CONVOLUTION", ("c", "FLOAT")),
              layer("ln", "NORMALIZATION", ("ln", "FLOAT")),
              layer("softmax", "SOFTMAX", ("sm", "FLOAT")),
              layer("plugin", "PLUGIN_V3", ("p", "FLOAT")),
              layer("plugin_7", "SHUFFLE", ("p_reshaped", "FLOAT")),  # a further layer of the plugin node
              layer("(Unnamed Layer* 9) [ElementWise]", "ELEMENTWISE", ("r", "FLOAT")),  # writes relu's output
              layer("relu_2", "ACTIVATION", ("r2", "FLOAT")),  # another node of the graph is called relu_2
              layer("shape_of", "SHAPE", ("dims", "INT64")),
              layer("resize", "RESIZE", ("y", "FLOAT"), ("y_shape", "INT32"))]
    kept = {"plugin": ("p",), "relu": ("r",), "shape_of": ("dims",), "resize": ("y", "y_shape")}
    nodes = ["conv", "ln", "softmax", "plugin", "relu", "relu_2", "shape_of", "resize"]
    chosen = kept_layers(layers, kept, nodes)
    assert chosen == {1: (0,), 2: (0,), 3: (0,), 4: (0,), 5: (0,), 8: (0,)}  # no SHAPE layer, no int output
    assert kept_layers(layers, {}, nodes, defaults=False) == {}
    assert set(kept_layers(layers, {"relu": ("r",)}, ["relu"])) == {1, 2, 5, 6}  # relu_2 is relu's when no node has it


# ------------------------------------------------------------------------------------------- the YAML

def test_keep_fp32_is_in_the_build_key_only_when_given(project: Project) -> None:
    from orchestrator import imports
    from orchestrator.config import spec
    from orchestrator.planning.plan import make_plan
    from orchestrator.store.digest import DigestCache

    def keys(path: Path) -> dict[str, str]:
        with imports.search_path([ROOT]):
            return {node.kind: node.key for node in make_plan(spec.load(path), DigestCache(None)).order()}

    base = keys(project.small("base.yaml", **{"verify:": "build:\n  backend: onnxruntime\nverify:"}))
    kept = keys(project.small("kept.yaml", **{"verify:": f"build:\n  backend: onnxruntime\n  keep_fp32: [{MSDA}]\n"
                                                         "verify:"}))
    assert {stage for stage in base if base[stage] != kept[stage]} == {"build", "verify", "bench"}
    with pytest.raises(UserError, match="keep_fp32"):
        keys(project.small("bad.yaml", **{"verify:": "build:\n  keep_fp32: [1]\nverify:"}))

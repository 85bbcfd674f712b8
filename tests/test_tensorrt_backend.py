"""The TensorRT backend's decisions, checked on the names of the real 8.6, 10.13 and 11.1 APIs.

The API choices, precision plans, profiles, creator preflight and parser messages are plain
functions of plain data, so they run here without TensorRT. The fp16 graph is checked by running it
in ONNX Runtime. The torch-CUDA buffers run where a GPU is visible; the engine tests (marker
`tensorrt`) run where TensorRT is importable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Project
from onnx import TensorProto, helper

from orchestrator import environment
from orchestrator.backends import tensorrt as trt_backend
from orchestrator.backends.tensorrt import ApiFeatures, Creator, ShapeRange
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / ".stubs" / "tensorrt_bindings" / "tensorrt.pyi"
MSDA = "MultiscaleDeformableAttnPlugin_TRT"
MSDA_PRECISIONS = {MSDA: ("fp32", "fp16")}

# Names the real modules offer (a subset per owner: the ones the backend's choices depend on, plus
# neighbours). 10.13: read off tensorrt-stubs 10.13.0.35.1 (cross-checked below when .stubs exists).
# 8.6: the 8.6 Python API reference. 11.1: 10.13 minus what 11.x removed (EXPLICIT_BATCH,
# FP16/BF16/INT8/FP8 and the precision-constraint builder flags, plugin_creator_list,
# get_plugin_creator), per the TensorRT 11.1 Python sources.
BUILDER_FLAGS_1013 = [
    "FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32",
    "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
    "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
    "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4",
    "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY",
]
API_1013 = {
    "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS",
                                      "PREFER_JIT_PYTHON_PLUGINS"],
    "BuilderFlag": BUILDER_FLAGS_1013,
    "MemoryPoolType": ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM",
                       "TACTIC_SHARED_MEMORY"],
    "Builder": ["build_serialized_network", "create_builder_config", "create_network", "create_optimization_profile",
                "get_plugin_registry", "platform_has_fast_fp16", "platform_has_tf32"],
    "IBuilderConfig": ["add_optimization_profile", "clear_flag", "create_timing_cache", "get_timing_cache",
                       "set_flag", "set_memory_pool_limit", "set_timing_cache"],
    "IPluginRegistry": ["all_creators", "get_creator", "get_plugin_creator", "load_library", "plugin_creator_list"],
    "OnnxParser": ["get_error", "num_errors", "parse", "parse_from_file"],
    "ParserError": ["code", "desc", "node", "node_name", "node_operator"],
    "ICudaEngine": ["create_execution_context", "get_tensor_dtype", "get_tensor_mode", "get_tensor_name",
                    "get_tensor_shape", "num_io_tensors", "serialize"],
    "IExecutionContext": ["execute_async_v3", "execute_v2", "get_tensor_shape", "set_input_shape",
                          "set_tensor_address"],
}
API_86 = {
    "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"],
    "BuilderFlag": ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                    "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                    "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "ENABLE_TACTIC_HEURISTIC", "VERSION_COMPATIBLE",
                    "EXCLUDE_LEAN_RUNTIME", "FP8"],
    "MemoryPoolType": ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM"],
    "Builder": ["build_engine", "build_serialized_network", "create_builder_config", "create_network",
                "create_optimization_profile", "max_batch_size", "platform_has_fast_fp16", "platform_has_tf32"],
    "IBuilderConfig": ["add_optimization_profile", "clear_flag", "create_timing_cache", "get_timing_cache",
                       "max_workspace_size", "set_flag", "set_memory_pool_limit", "set_timing_cache"],
    "IPluginRegistry": ["get_plugin_creator", "load_library", "plugin_creator_list", "register_creator"],
    "OnnxParser": ["get_error", "num_errors", "parse", "parse_from_file"],
    "ParserError": ["code", "desc", "file", "func", "line", "node"],
    "ICudaEngine": ["binding_is_input", "create_execution_context", "get_binding_dtype", "get_binding_name",
                    "get_binding_shape", "get_tensor_dtype", "get_tensor_mode", "get_tensor_name", "get_tensor_shape",
                    "num_bindings", "num_io_tensors", "serialize"],
    "IExecutionContext": ["execute_async_v2", "execute_async_v3", "execute_v2", "get_binding_shape",
                          "get_tensor_shape", "set_binding_shape", "set_input_shape", "set_tensor_address"],
}
REMOVED_IN_11 = {
    "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH"},
    "BuilderFlag": {"FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"},
    "IPluginRegistry": {"plugin_creator_list", "get_plugin_creator"},
}
API_111 = {owner: [n for n in names if n not in REMOVED_IN_11.get(owner, set())] for owner, names in API_1013.items()}
# Before 8.5: bindings only, max_workspace_size only.
API_82 = {
    "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"],
    "BuilderFlag": ["FP16", "INT8", "TF32", "REFIT"],
    "Builder": ["build_engine", "build_serialized_network", "create_network", "max_batch_size"],
    "IBuilderConfig": ["max_workspace_size", "set_flag", "clear_flag"],
    "IPluginRegistry": ["get_plugin_creator", "plugin_creator_list"],
    "OnnxParser": ["parse", "get_error", "num_errors"],
    "ICudaEngine": ["num_bindings", "get_binding_name", "binding_is_input"],
    "IExecutionContext": ["execute_async_v2", "set_binding_shape"],
}

TRT86 = ApiFeatures.from_names("8.6.1", API_86)
TRT1013 = ApiFeatures.from_names("10.13.0.35", API_1013)
TRT111 = ApiFeatures.from_names("11.1.0", API_111)
TRT82 = ApiFeatures.from_names("8.2.5", API_82)


def stub_names(owner: str) -> set[str]:
    text = STUB.read_text()
    match = re.search(rf"^class {owner}\b.*?:\n(.*?)(?=^class |\Z)", text, re.S | re.M)
    assert match, owner
    body = match.group(1)
    return (set(re.findall(r"^    def (\w+)\(", body, re.M)) | set(re.findall(r"^    (\w+): ", body, re.M))
            | set(re.findall(r"'(\w+)': <", body)))


@pytest.mark.skipif(not STUB.exists(), reason=".stubs not installed (pip install --target .stubs tensorrt-stubs)")
def test_the_10_13_fixture_matches_the_stubs() -> None:
    for owner, names in API_1013.items():
        missing = set(names) - stub_names(owner)
        assert not missing, f"{owner}: {missing}"
    # ... and the stubs lack what 10.0 removed, which is why the backend reaches those through Any
    assert "build_engine" not in stub_names("Builder")
    assert "max_workspace_size" not in stub_names("IBuilderConfig")
    assert "num_bindings" not in stub_names("ICudaEngine")


# ------------------------------------------------------------------------------------------- API choices

def test_api_choices_per_release() -> None:
    assert TRT86.network_flags == ("EXPLICIT_BATCH",)
    assert TRT1013.network_flags == ()  # present, but ignored since 10.0
    assert TRT111.network_flags == ()  # gone
    assert [f.workspace_api for f in (TRT86, TRT1013, TRT111, TRT82)] == \
        ["set_memory_pool_limit"] * 3 + ["max_workspace_size"]
    assert [f.build_api for f in (TRT86, TRT1013, TRT111)] == ["build_serialized_network"] * 3
    assert ApiFeatures.from_names("8.0", {"Builder": ["build_engine"]}).build_api == "build_engine"
    assert [f.creator_lookup for f in (TRT86, TRT1013, TRT111)] == ["get_plugin_creator", "get_creator", "get_creator"]
    assert [f.creator_listing for f in (TRT86, TRT1013, TRT111)] == \
        ["plugin_creator_list", "all_creators", "all_creators"]
    assert [f.io_api for f in (TRT86, TRT1013, TRT111, TRT82)] == ["named", "named", "named", "bindings"]
    assert [f.strongly_typed for f in (TRT86, TRT1013, TRT111)] == [False, False, True]
    assert "strongly typed" in TRT111.describe() and "TensorRT 10.13.0.35" in TRT1013.describe()


def test_features_of_a_module_read_enum_members_and_attributes() -> None:
    import types
    from typing import ClassVar

    class BuilderFlag:  # a pybind11 enum lists its members in __members__
        __members__: ClassVar[dict[str, int]] = {"FP16": 0, "TF32": 6}

    class Builder:
        def build_serialized_network(self) -> None: ...

    module = types.SimpleNamespace(__version__="10.13.0.35", BuilderFlag=BuilderFlag, Builder=Builder)
    features = ApiFeatures.of_module(module)
    assert features.version == "10.13.0.35"
    assert features.has("BuilderFlag", "FP16") and features.has("Builder", "build_serialized_network")
    assert not features.has("Builder", "build_engine")


# ------------------------------------------------------------------------------------------- precision

def test_precision_plans_per_release() -> None:
    plan = trt_backend.precision_plan
    assert plan("fp32", TRT86, MSDA_PRECISIONS).clear_flags == ("TF32",)
    assert plan("fp32", TRT1013, MSDA_PRECISIONS).clear_flags == ("TF32",)
    assert plan("tf32", TRT1013, MSDA_PRECISIONS).set_flags == ("TF32",)
    assert plan("fp16", TRT86, MSDA_PRECISIONS).set_flags == ("FP16",)
    assert plan("fp16", TRT1013, MSDA_PRECISIONS).set_flags == ("FP16",)
    strong = plan("fp16", TRT111, MSDA_PRECISIONS)
    assert strong.set_flags == () and strong.cast_graph == "float16"
    assert plan("best", TRT86, MSDA_PRECISIONS).set_flags == ("FP16",)
    assert plan("best", TRT1013, MSDA_PRECISIONS).set_flags == ("FP16", "BF16")
    assert plan("best", TRT1013, MSDA_PRECISIONS, quantized=True).set_flags == ("FP16", "BF16", "INT8")
    assert plan("best", TRT111, MSDA_PRECISIONS).cast_graph == "float16"
    assert plan("best", TRT111, {"Fp32OnlyPlugin": ("fp32",)}).cast_graph is None
    assert plan("bf16", TRT1013, {}).set_flags == ("BF16",)  # no plugin limits it
    assert plan("int8", TRT1013, {}, quantized=True).set_flags == ("INT8",)
    assert "graph cast to float16" in strong.describe()


@pytest.mark.parametrize(("precision", "features", "plugins", "words"), [
    ("bf16", TRT86, MSDA_PRECISIONS, ["TensorRT 8.6.1 has no BF16 builder flag", f"{MSDA} runs only fp32, fp16"]),
    ("bf16", TRT1013, MSDA_PRECISIONS, ["TensorRT 10.13.0.35 supports it", f"{MSDA} runs only fp32, fp16"]),
    ("bf16", TRT111, {}, ["TensorRT 11.1.0 is strongly typed", "needs a bf16 graph"]),
    ("int8", TRT1013, MSDA_PRECISIONS, ["quantized graph", f"{MSDA} runs only fp32, fp16"]),
    ("int8", TRT111, {}, ["TensorRT 11.1.0 needs a quantized graph"]),
    ("tf32", ApiFeatures.from_names("11.9", {"BuilderFlag": ["REFIT"]}), {}, ["has no TF32 builder flag"]),
])
def test_impossible_precisions_name_tensorrt_and_the_plugin(precision: str, features: ApiFeatures,
                                                             plugins: dict[str, tuple[str, ...]],
                                                             words: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        trt_backend.precision_plan(precision, features, plugins)
    assert caught.value.field == "build.precision"
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_tf32_is_float32_storage_for_plugins() -> None:
    assert trt_backend.precision_plan("tf32", TRT86, {"Fp32OnlyPlugin": ("fp32",)}).set_flags == ("TF32",)


# ------------------------------------------------------------------------------------------- profiles

def test_no_profiles_means_the_captured_static_shapes() -> None:
    inputs = {"value": (1, 106, 2, 16), "spatial_shapes": (3, 2)}
    [profile] = trt_backend.resolve_profiles([], inputs)
    assert profile["value"] == ShapeRange((1, 106, 2, 16), (1, 106, 2, 16), (1, 106, 2, 16))
    assert profile["value"].fixed and not trt_backend.needs_profiles(inputs, False)


def test_dynamic_dims_need_profiles() -> None:
    inputs = {"value": (None, 106, 2, 16), "spatial_shapes": (3, 2)}
    assert trt_backend.needs_profiles(inputs, False)
    with pytest.raises(UserError) as caught:
        trt_backend.resolve_profiles([], inputs)
    assert caught.value.field == "build.profiles" and "value [?, 106, 2, 16]" in caught.value.message
    [profile] = trt_backend.resolve_profiles(
        [{"value": {"min": [1, 106, 2, 16], "opt": [2, 106, 2, 16], "max": [4, 106, 2, 16]}}], inputs)
    assert profile["value"].max == (4, 106, 2, 16)
    assert profile["spatial_shapes"] == ShapeRange((3, 2), (3, 2), (3, 2))  # static inputs may be left out


@pytest.mark.parametrize(("profile", "field", "words"), [
    ({"valu": {"min": [1], "opt": [1], "max": [1]}}, "build.profiles[0].valu", "no graph input named 'valu'"),
    ({"value": {"min": [1, 106], "opt": [1, 106, 2, 16], "max": [1, 106, 2, 16]}}, "build.profiles[0].value.min",
     "has rank 2"),
    ({"value": {"min": [1, 100, 2, 16], "opt": [1, 106, 2, 16], "max": [1, 106, 2, 16]}},
     "build.profiles[0].value.min", "the graph fixes it at 106"),
    ({"value": {"min": [4, 106, 2, 16], "opt": [2, 106, 2, 16], "max": [8, 106, 2, 16]}}, "build.profiles[0].value",
     "min <= opt <= max"),
    ({"spatial_shapes": {"min": [3, 2], "opt": [3, 2], "max": [3, 2]}}, "build.profiles[0]",
     "input 'value' has dynamic dims"),
])
def test_bad_profiles_name_the_field(profile: dict[str, dict[str, list[int]]], field: str, words: str) -> None:
    inputs = {"value": (None, 106, 2, 16), "spatial_shapes": (3, 2)}
    with pytest.raises(UserError) as caught:
        trt_backend.resolve_profiles([profile], inputs)
    assert caught.value.field == field and words in caught.value.message, (caught.value.field, caught.value.message)


# ------------------------------------------------------------------------------------------- creators, parser

def test_a_missing_v2_creator_lists_the_registered_v1_and_the_library() -> None:
    available = [Creator(MSDA, "1"), Creator("EfficientNMS_TRT", "1"), Creator("GridAnchor_TRT", "1")]
    error = trt_backend.missing_creator_error([{"node": "msda_0", "op": MSDA, "version": "2", "namespace": ""}],
                                              available, "10.8.0", [])
    assert error.field == "export.plugins"
    assert f"plugin node 'msda_0' needs creator {MSDA} v2" in error.message
    assert "TensorRT 10.8.0 does not have registered" in error.message
    assert f"registered under that name: {MSDA} v1" in error.message
    assert "libnvinfer_plugin" in error.message and "none besides NVIDIA's" in error.message
    assert error.hint is not None and "version to '1'" in error.hint


def test_a_misspelt_creator_gets_similar_names_and_the_loaded_libraries() -> None:
    available = [Creator(MSDA, "1"), Creator(MSDA, "2"), Creator("EfficientNMS_TRT", "1")]
    error = trt_backend.missing_creator_error(
        [{"node": "attn", "op": "MultiScaleDeformableAttnPlugin_TRT", "version": "1", "namespace": ""}],
        available, "10.13.0", ["/opt/plugins/libmine.so"])
    assert error.field == "build.plugin_libraries"
    assert f"similar names registered: {MSDA} v1, {MSDA} v2" in error.message
    assert "/opt/plugins/libmine.so" in error.message and "build.plugin_libraries" in error.message


def test_an_unknown_creator_says_none_is_similar() -> None:
    error = trt_backend.missing_creator_error([{"op": "MyOwnOp", "version": "1", "namespace": "acme"}],
                                              [Creator(MSDA, "1")], "8.6.1", [])
    assert "MyOwnOp v1 (namespace 'acme')" in error.message and "none of the 1 registered" in error.message


def test_parser_errors_name_node_and_op_on_8_6_and_10() -> None:
    nodes = [("cast_0", "Cast"), ("msda_0", MSDA)]
    old = trt_backend.parser_error_lines([{"desc": "Assertion failed: creator && \"Plugin not found\"",
                                           "code": "ErrorCode.UNSUPPORTED_NODE", "node": 1}], nodes)
    assert old == [f"node 1 'msda_0' ({MSDA}): Assertion failed: creator && \"Plugin not found\" [UNSUPPORTED_NODE]"]
    new = trt_backend.parser_error_lines([{"desc": "bad", "code": "ErrorCode.INVALID_NODE", "node": 7,
                                           "node_name": "/m/Reshape", "node_operator": "Reshape"}], nodes)
    assert new == ["node 7 '/m/Reshape' (Reshape): bad [INVALID_NODE]"]
    graph = trt_backend.parser_error_lines([{"desc": "no model", "code": "", "node": -1}], nodes)
    assert graph == ["graph: no model"]


# ------------------------------------------------------------------------------------------- tensors

def test_numpy_dtype_names() -> None:
    assert [trt_backend.numpy_dtype_name(n) for n in ("DataType.FLOAT", "HALF", "DataType.INT64", "BOOL")] == \
        ["float32", "float16", "int64", "bool"]
    with pytest.raises(ValueError, match="no NumPy equivalent"):
        trt_backend.numpy_dtype_name("DataType.COMPLEX")


def test_inputs_are_cast_to_what_the_engine_takes_without_changing_values() -> None:
    shapes = np.array([[100, 160], [50, 80]], dtype=np.int64)
    cast = trt_backend.cast_for_engine("spatial_shapes", shapes, "int32")
    assert cast.dtype == np.int32 and cast.flags.c_contiguous and np.array_equal(cast, shapes)
    with pytest.raises(UserError, match=r"outside int32's range"):
        trt_backend.cast_for_engine("level_start_index", np.array([0, 2**40]), "int32")
    with pytest.raises(UserError, match="fractional"):
        trt_backend.cast_for_engine("level_start_index", np.array([0.5]), "int32")
    assert trt_backend.cast_for_engine("value", np.ones(3, np.float32), "float16").dtype == np.float16


def plugin_graph(reshaped: bool, batch: int | str = 1) -> onnx.ModelProto:
    """A one-node MSDA graph as the export writes it: int32 indices, output typed by the contract."""
    n, s, m, d, lq, levels, points = batch, 20, 2, 4, 6, 2, 2
    inputs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, [n, s, m, d]),
              helper.make_tensor_value_info("spatial_shapes", TensorProto.INT32, [levels, 2]),
              helper.make_tensor_value_info("level_start_index", TensorProto.INT32, [levels]),
              helper.make_tensor_value_info("sampling_locations", TensorProto.FLOAT, [n, lq, m, levels, points, 2]),
              helper.make_tensor_value_info("attention_weights", TensorProto.FLOAT, [n, lq, m, levels, points])]
    node = helper.make_node(MSDA, [i.name for i in inputs], ["plugin_out"], name="msda_0", domain="trt.plugins",
                            plugin_version="1", plugin_namespace="")
    plugin_out = helper.make_tensor_value_info("plugin_out", TensorProto.FLOAT, [n, lq, m, d])
    nodes, outputs, infos = [node], [plugin_out], []
    if reshaped:
        shape = helper.make_tensor("merged", TensorProto.INT64, [3], [1, lq, m * d])
        nodes.append(helper.make_node("Reshape", ["plugin_out", "merged"], ["output"], name="merge_heads"))
        outputs, infos = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, lq, m * d])], [plugin_out]
        graph = helper.make_graph(nodes, "msda", inputs, outputs, [shape], value_info=infos)
    else:
        graph = helper.make_graph(nodes, "msda", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("trt.plugins", 1)])


def test_a_plugin_output_is_reshaped_to_the_capture_by_the_catalog_rule() -> None:
    direct = plugin_graph(reshaped=False)
    assert trt_backend.plugin_outputs(direct, {MSDA}) == {"plugin_out": MSDA}
    assert trt_backend.plugin_outputs(plugin_graph(reshaped=True), {MSDA}) == {}


def test_graph_inputs_dims_mark_dynamic_axes() -> None:
    assert trt_backend.graph_input_dims(plugin_graph(False, batch="batch"))["value"] == (None, 20, 2, 4)
    assert trt_backend.graph_input_dims(plugin_graph(False))["spatial_shapes"] == (2, 2)


# ------------------------------------------------------------------------------------------- fp16 graph

def test_the_float16_graph_computes_what_the_float32_graph_does() -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], rng.standard_normal((8, 4)).astype(np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Constant", [], ["half"], value_float=0.5),
             helper.make_node("Mul", ["mm", "half"], ["scaled"]),
             helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["scaled", "ids_f"], ["sum"]),
             helper.make_node("Relu", ["sum"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8]),
                                           helper.make_tensor_value_info("ids", TensorProto.INT32, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)  # older ORTs too
    half = trt_backend.cast_float_graph(model)
    assert [v.type.tensor_type.elem_type for v in half.graph.input] == [TensorProto.FLOAT, TensorProto.INT32]
    onnx.checker.check_model(half, full_check=True)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    ids = rng.integers(-2, 3, (3, 4)).astype(np.int32)
    run = lambda m, feeds: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, feeds)[0]
    want = run(model, {"x": x, "ids": ids})
    got = run(half, {"x": x, "ids": ids})  # graph inputs and outputs keep their types; the inside is float16
    assert got.dtype == np.float32 and np.allclose(got, want, atol=2e-2, rtol=2e-2)
    assert {i.data_type for i in half.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the original is untouched


def test_the_float16_plugin_graph_passes_the_build_preflight() -> None:
    from orchestrator.stages.build import preflight

    half = trt_backend.cast_float_graph(plugin_graph(reshaped=True), plugin_ops={MSDA})
    assert [v.type.tensor_type.elem_type for v in half.graph.input] == \
        [v.type.tensor_type.elem_type for v in plugin_graph(reshaped=True).graph.input]
    declared = [{"op": MSDA, "version": "1", "namespace": ""}]
    [checked] = preflight(onnx.shape_inference.infer_shapes(half), declared, "fp16", "tensorrt")
    assert checked["dtypes"] == ["float16", "int32", "int32", "float16", "float16"]


# ------------------------------------------------------------------------------------------- caches, buffers

def test_timing_caches_are_kept_per_tensorrt_version_and_gpu(tmp_path: Path) -> None:
    h100 = "NVIDIA H100 80GB HBM3 sm9.0"
    first = trt_backend.timing_cache_file(tmp_path, "10.13.0", h100)
    assert first == trt_backend.timing_cache_file(tmp_path, "10.13.0", h100)
    assert first.parent.parent == tmp_path / "tensorrt-timing" and first.name == "timing.cache"
    others = {trt_backend.timing_cache_file(tmp_path, "10.13.0", "NVIDIA L4 sm8.9"),
              trt_backend.timing_cache_file(tmp_path, "8.6.1", h100), first}
    assert len(others) == 3
    trt_backend.write_atomically(first, b"cache")
    assert first.read_bytes() == b"cache" and [p.name for p in first.parent.iterdir()] == ["timing.cache"]


def test_buffer_library_prefers_pycuda_then_torch() -> None:
    assert trt_backend.buffer_library(True, True) == "pycuda"
    assert trt_backend.buffer_library(False, True) == "torch"
    with pytest.raises(UserError, match="pycuda or from torch"):
        trt_backend.buffer_library(False, False)


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _torch_cuda(), reason="no CUDA device visible to torch")
def test_torch_cuda_buffers_copy_cast_and_time() -> None:
    buffers = trt_backend.TorchCudaBuffers()
    captured = np.array([[100, 160], [50, 80], [25, 40]], dtype=np.int64)
    engine_wants = trt_backend.cast_for_engine("spatial_shapes", captured, "int32")
    on_device = buffers.upload(engine_wants)
    assert on_device.ptr != 0 and on_device.dtype == "int32" and on_device.shape == (3, 2)
    assert np.array_equal(buffers.download(on_device), captured)
    value = np.random.default_rng(1).standard_normal((1, 64, 2, 16)).astype(np.float16)
    assert np.array_equal(buffers.download(buffers.upload(value)), value)
    out = buffers.empty((4, 8), "bfloat16")
    out.handle.fill_(1.5)
    widened = buffers.download(out)
    assert widened.dtype == np.float32 and np.all(widened == 1.5)
    start, end = buffers.event(), buffers.event()
    buffers.record(start)
    big = buffers.empty((1 << 24,), "float32")
    big.handle.uniform_()
    buffers.record(end)
    assert buffers.seconds_between(start, end) > 0
    buffers.close()


def test_require_tensorrt_is_a_user_error_here_when_absent() -> None:
    if environment.importable("tensorrt"):
        pytest.skip("tensorrt is importable here")
    with pytest.raises(UserError) as caught:
        trt_backend.require_tensorrt()
    assert caught.value.field == "build.backend" and "not importable" in caught.value.message


def test_doctor_lines_say_why() -> None:
    lines = "\n".join(trt_backend.doctor_lines())
    assert "CUDA buffers" in lines
    assert ("tensorrt API" in lines) == environment.importable("tensorrt")
    if not _torch_cuda() and not environment.importable("pycuda"):
        assert "unavailable: pycuda not installed" in lines


# ------------------------------------------------------------------------------------------- live engines

@pytest.mark.tensorrt
@pytest.mark.skipif(not environment.importable("tensorrt"), reason="tensorrt not importable")
@pytest.mark.skipif(not environment.gpus(), reason="no GPU visible")
def test_small_plugin_engine_builds_runs_and_matches_the_capture(project: Project) -> None:
    pipeline = project.small(**{"verify:\n  atol: 1.0e-4": "build:\n  backend: tensorrt\nverify:\n  atol: 1.0e-4"})
    done = project.run("run", str(pipeline))
    assert done.code == 0, done.text
    assert "TensorRT" in done.out and "passed" in done.out
    [build] = [p for p in (project.store / "build").iterdir() if (p / "engine.plan").exists()]
    description = (build / "engine.json").read_text()
    assert "int32" in description and MSDA in (build / "manifest.json").read_text()
    command = (build / "trtexec.txt").read_text()
    assert "--timingCacheFile=" in command and "--noTF32" in command
    assert list((project.store / "shared" / "tensorrt-timing").glob("*/timing.cache"))
    fp16 = project.small("fp16.yaml", **{"verify:\n  atol: 1.0e-4":
                                         "build:\n  backend: tensorrt\n  precision: fp16\nverify:\n  atol: 2.0e-2",
                                         "rtol: 1.0e-3": "rtol: 2.0e-2"})
    done = project.run("run", str(fp16))
    assert done.code == 0, done.text


@pytest.mark.tensorrt
@pytest.mark.skipif(shutil.which("trtexec") is None, reason="trtexec not on PATH")
def test_small_plugin_engine_through_trtexec(project: Project) -> None:
    pipeline = project.small(**{"verify:\n  atol: 1.0e-4": "build:\n  backend: trtexec\nverify:\n  atol: 1.0e-4"})
    done = project.run("run", str(pipeline))
    assert done.code == 0, done.text
    [build] = [p for p in (project.store / "build").iterdir() if (p / "engine.plan").exists()]
    description = json.loads((build / "engine.json").read_text())
    assert description["backend"] == "trtexec" and description["tensorrt"] == trtexec_version()
    assert "&&&& PASSED TensorRT.trtexec" in (build / "trtexec.log").read_text()
    [bench] = list((project.store / "bench").glob("*/bench.json"))
    figures = json.loads(bench.read_text())
    assert figures["backend"] == "trtexec" and figures["median_ms"] > 0


def trtexec_version() -> str | None:
    from orchestrator.backends.tensorrt import trtexec

    return trtexec.version_from_output(subprocess.run(["trtexec", "--help"], capture_output=True, text=True).stdout)

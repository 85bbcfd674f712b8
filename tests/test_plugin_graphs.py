"""Valid plugin graphs of every shape the exporters produce, hand-made with onnx.helper.

The embedded backend must run any of them: initializers and Constant values feed plugin kernels
like any tensor, plugin nodes may read graph inputs and write graph outputs directly, follow one
another, and share tensors with the segments around them. Its partitioned result is compared with
one ONNX Runtime session of the whole graph (the plugin as an onnxruntime-extensions op).

The build preflight checks what shape inference and the graph's constants make known, and only
that: unknown or symbolic dims are no mismatch, but a constant spatial_shapes that does not match
value's S (or a level_start_index that is not its running sum) is refused before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import Project, stage_status
from onnx import TensorProto, helper, numpy_helper
from test_bad_input import make_tensors

from orchestrator import plugins as catalog
from orchestrator.backends import onnxruntime as backend
from orchestrator.errors import UserError
from orchestrator.stages.build import preflight, static_values

OP = "MultiscaleDeformableAttnPlugin_TRT"
DECLARED = [{"op": OP, "version": "1", "namespace": ""}]
F32, F64, I32, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT32, TensorProto.INT64
LEVELS = np.array([[2, 3], [1, 2]], np.int32)  # the levels of tests/test_bad_input.make_tensors
STARTS = np.array([0, 6], np.int32)
TOKENS, HEADS, DIM, POINTS = 8, 2, 4, 2

# A given graph over a capture folder; the verify section's other lines go in {verify}.
GRAPH_PIPELINE = """\
version: 1
name: {name}
capture:
  from_dir: tensors
  outputs: {outputs}
export:
  onnx: graph.onnx
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
build:
  backend: onnxruntime
verify:
  atol: 1.0e-5
{verify}
bench:
  enabled: false
"""
PIPELINE = GRAPH_PIPELINE.format(name="graphs", outputs="[output]", verify="")


def info(name: str, dtype: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def msda(inputs: Sequence[str], output: str, name: str = "msda") -> onnx.NodeProto:
    return helper.make_node(OP, list(inputs), [output], name=name, domain="trt.plugins", plugin_version="1",
                            plugin_namespace="")


def constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))


def model_of(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
             initializers: Sequence[tuple[str, np.ndarray]] = (),
             typed: Sequence[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    """A checked, shape-inferred plugin graph; plugin outputs that are no graph output are typed in
    `typed`, as the export types them."""
    graph = helper.make_graph(nodes, "graph", inputs, outputs,
                              [numpy_helper.from_array(array, name) for name, array in initializers],
                              value_info=list(typed))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model)


def query_inputs(queries: int = TOKENS) -> list[onnx.ValueInfoProto]:
    return [info("sampling_locations", F32, [1, queries, HEADS, 2, POINTS, 2]),
            info("attention_weights", F32, [1, queries, HEADS, 2, POINTS])]


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (locations in [0, 1], weights normalised per query)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        kind = value.type.tensor_type
        shape = [d.dim_value for d in kind.shape.dim]
        array = rng.random(shape) if "locations" in value.name or "weights" in value.name \
            else rng.standard_normal(shape)
        if "weights" in value.name:
            array = array / array.sum((-1, -2), keepdims=True)
        feeds[value.name] = array.astype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type))
    return feeds


def run_partitioned(model: onnx.ModelProto, folder: Path, feeds: dict[str, np.ndarray],
                    precision: str = "fp32") -> tuple[dict[str, Any], dict[str, Any]]:
    """Build with the embedded backend and run twice (the second run must not miss freed constants)."""
    preflight(model, DECLARED, precision, "onnxruntime")
    built = backend.build(model, folder, precision, DECLARED, lambda message: None)
    runner = backend.Runner(folder)
    first = runner.run(dict(feeds))
    second = runner.run(dict(feeds))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    return built, first


def assert_matches_one_session(model: onnx.ModelProto, folder: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    built, ours = run_partitioned(model, folder, feeds)
    entry = catalog.lookup(OP)
    session = backend.single_session(model, {OP: entry})
    names = [o.name for o in model.graph.output]
    for name, expected in zip(names, session.run(names, feeds), strict=True):
        assert ours[name].dtype == expected.dtype and ours[name].shape == expected.shape, name
        np.testing.assert_allclose(ours[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)
        assert np.abs(expected).max() > 0, name
    return built


def kernel(value: np.ndarray, locations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    result: np.ndarray = catalog.lookup(OP).load_kernel()([value, LEVELS, STARTS, locations, weights], {})[0]
    return result


MSDA_INPUTS = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]


# ---------------------------------------------------------------------- the embedded backend


def test_initializers_feed_the_plugin_directly(tmp_path: Path) -> None:
    """As dynamo exports it: the int32 index tensors are initializers read by the plugin itself."""
    model = model_of([msda(MSDA_INPUTS, "output")], [info("value", F32, [1, TOKENS, HEADS, DIM]), *query_inputs()],
                     [info("output", F32, [1, TOKENS, HEADS, DIM])],
                     [("spatial_shapes", LEVELS), ("level_start_index", STARTS)])
    feeds = feeds_for(model)
    built = assert_matches_one_session(model, tmp_path, feeds)
    assert (built["segments"], built["array_steps"], built["plugin_nodes"]) == (0, 0, 1)
    _, ours = run_partitioned(model, tmp_path / "again", feeds)
    np.testing.assert_array_equal(ours["output"], kernel(feeds["value"], feeds["sampling_locations"],
                                                         feeds["attention_weights"]))
    plan = json.loads((tmp_path / "runplan.json").read_text())
    assert [c["name"] for c in plan["constants"]] == ["spatial_shapes", "level_start_index"]
    assert [i["name"] for i in plan["inputs"]] == ["value", "sampling_locations", "attention_weights"]


def test_constant_nodes_and_a_cast_of_a_constant_feed_the_plugin(tmp_path: Path) -> None:
    """As TorchScript exports it: spatial_shapes a Constant node, level_start_index an int64 Constant
    cast to int32 (a NumPy step whose data is a constant)."""
    nodes = [constant("shapes", LEVELS), constant("starts64", STARTS.astype(np.int64)),
             helper.make_node("Cast", ["starts64"], ["starts"], to=I32),
             msda(["value", "shapes", "starts", "sampling_locations", "attention_weights"], "output")]
    model = model_of(nodes, [info("value", F32, [1, TOKENS, HEADS, DIM]), *query_inputs()],
                     [info("output", F32, [1, TOKENS, HEADS, DIM])])
    built = assert_matches_one_session(model, tmp_path, feeds_for(model))
    assert (built["segments"], built["array_steps"], built["plugin_nodes"]) == (0, 1, 1)


def test_two_plugin_nodes_in_a_row(tmp_path: Path) -> None:
    """The first node's output is the second's value and a graph output; both read the same graph
    inputs and initializers."""
    nodes = [msda(MSDA_INPUTS, "first", name="first"),
             msda(["first", *MSDA_INPUTS[1:]], "second", name="second")]
    model = model_of(nodes, [info("value", F32, [1, TOKENS, HEADS, DIM]), *query_inputs()],
                     [info("first", F32, [1, TOKENS, HEADS, DIM]), info("second", F32, [1, TOKENS, HEADS, DIM])],
                     [("spatial_shapes", LEVELS), ("level_start_index", STARTS)])
    feeds = feeds_for(model)
    built = assert_matches_one_session(model, tmp_path, feeds)
    assert (built["segments"], built["plugin_nodes"]) == (0, 2)
    _, ours = run_partitioned(model, tmp_path / "again", feeds)
    first = kernel(feeds["value"], feeds["sampling_locations"], feeds["attention_weights"])
    np.testing.assert_array_equal(ours["second"], kernel(first, feeds["sampling_locations"],
                                                         feeds["attention_weights"]))


def test_a_segment_nothing_reads_is_left_out(tmp_path: Path) -> None:
    """A dead node between two plugin nodes: its segment would have no outputs, which no session takes."""
    nodes = [msda(MSDA_INPUTS, "first", name="first"), helper.make_node("Shape", ["first"], ["unused"]),
             msda(["first", *MSDA_INPUTS[1:]], "second", name="second")]
    model = model_of(nodes, [info("value", F32, [1, TOKENS, HEADS, DIM]), *query_inputs()],
                     [info("second", F32, [1, TOKENS, HEADS, DIM])],
                     [("spatial_shapes", LEVELS), ("level_start_index", STARTS)],
                     [info("first", F32, [1, TOKENS, HEADS, DIM])])
    built = assert_matches_one_session(model, tmp_path, feeds_for(model))
    assert (built["segments"], built["array_steps"], built["plugin_nodes"]) == (0, 0, 2)


def test_tensors_shared_across_a_cut(tmp_path: Path) -> None:
    """`scaled` is made before the plugin, read by it and again after it; the Constant starts feeds the
    plugin and a later segment; an initializer feeds segments on both sides; a dead node makes a
    segment nothing reads; a graph input is also a graph output."""
    nodes = [helper.make_node("Mul", ["value", "two"], ["scaled"]),
             constant("starts", STARTS),
             msda(["scaled", "spatial_shapes", "starts", "sampling_locations", "attention_weights"], "attended"),
             helper.make_node("Shape", ["attended"], ["unused"]),
             helper.make_node("Add", ["attended", "scaled"], ["summed"]),
             helper.make_node("Mul", ["summed", "two"], ["output"]),
             helper.make_node("Cast", ["starts"], ["starts_float"], to=F32)]
    model = model_of(nodes, [info("value", F32, [1, TOKENS, HEADS, DIM]), *query_inputs()],
                     [info("output", F32, [1, TOKENS, HEADS, DIM]), info("starts_float", F32, [2]),
                      info("attended", F32, [1, TOKENS, HEADS, DIM]),
                      info("attention_weights", F32, [1, TOKENS, HEADS, 2, POINTS])],
                     [("spatial_shapes", LEVELS), ("two", np.array(2.0, np.float32))])
    feeds = feeds_for(model)
    built = assert_matches_one_session(model, tmp_path, feeds)
    assert (built["segments"], built["plugin_nodes"]) == (2, 1)
    _, ours = run_partitioned(model, tmp_path / "again", feeds)
    np.testing.assert_array_equal(ours["starts_float"], STARTS.astype(np.float32))


def test_constants_are_not_changed_by_a_run_in_half_precision(tmp_path: Path) -> None:
    """fp16 runs the plugin on half inputs; the integer constants it reads stay as built."""
    model = model_of([msda(MSDA_INPUTS, "output")], [info("value", F32, [1, TOKENS, HEADS, DIM]), *query_inputs()],
                     [info("output", F32, [1, TOKENS, HEADS, DIM])],
                     [("spatial_shapes", LEVELS), ("level_start_index", STARTS)])
    feeds = feeds_for(model)
    _, half = run_partitioned(model, tmp_path, feeds, "fp16")
    full = kernel(feeds["value"], feeds["sampling_locations"], feeds["attention_weights"])
    np.testing.assert_allclose(half["output"], full, atol=1e-2, rtol=1e-2)
    assert not np.array_equal(half["output"], full)
    held = backend.Runner(tmp_path).constants
    np.testing.assert_array_equal(held["spatial_shapes"], LEVELS)
    assert not held["spatial_shapes"].flags.writeable


# ---------------------------------------------------------------------- preflight: what is known


def unknown_dims_model(weights_rank_known: bool = True) -> onnx.ModelProto:
    """As a whole-model TorchScript export leaves it: sampling_locations through a Reshape to its own
    Shape (every dim unknown), a symbolic batch, and if asked attention_weights through a Reshape to a
    data-dependent shape (its rank unknown)."""
    nodes = [helper.make_node("Cast", ["spatial_shapes"], ["shapes32"], to=I32),
             helper.make_node("Cast", ["level_start_index"], ["starts32"], to=I32),
             helper.make_node("Shape", ["sampling_locations"], ["locations_shape"]),
             helper.make_node("Reshape", ["sampling_locations", "locations_shape"], ["locations"]),
             msda(["value", "shapes32", "starts32", "locations", "weights"], "attended"),
             helper.make_node("Reshape", ["attended", "merged"], ["output"])]
    if weights_rank_known:
        nodes.insert(0, helper.make_node("Identity", ["attention_weights"], ["weights"]))
    else:  # NonZero of a zero is empty, but shape inference cannot know how long: Concat's length is unknown
        nodes[:0] = [constant("zero", np.array([0], np.int64)), helper.make_node("NonZero", ["zero"], ["none"]),
                     helper.make_node("Reshape", ["none", "flat"], ["nothing"]),
                     helper.make_node("Shape", ["attention_weights"], ["weights_shape"]),
                     helper.make_node("Concat", ["weights_shape", "nothing"], ["same_shape"], axis=0),
                     helper.make_node("Reshape", ["attention_weights", "same_shape"], ["weights"])]
    inputs = [info("value", F32, ["batch", TOKENS, HEADS, DIM]), info("spatial_shapes", I64, [2, 2]),
              info("level_start_index", I64, [2]), info("sampling_locations", F32, ["batch", 3, HEADS, 2, POINTS, 2]),
              info("attention_weights", F32, [1, 3, HEADS, 2, POINTS])]
    return model_of(nodes, inputs, [info("output", F32, [1, 3, HEADS * DIM])],
                    [("merged", np.array([1, 3, HEADS * DIM])), ("flat", np.array([-1]))])


def test_unknown_dims_are_no_mismatch() -> None:
    model = unknown_dims_model()
    locations = next(v for v in model.graph.value_info if v.name == "locations").type.tensor_type.shape
    assert len(locations.dim) == 6 and not any(d.HasField("dim_value") for d in locations.dim)  # unk__0, ...
    assert preflight(model, DECLARED, "fp32", "onnxruntime")[0]["dtypes"][3] == "float32"
    model = unknown_dims_model(weights_rank_known=False)
    weights = next(v for v in model.graph.value_info if v.name == "weights").type.tensor_type
    assert weights.elem_type == F32 and not weights.HasField("shape")
    assert preflight(model, DECLARED, "fp32", "onnxruntime")


@pytest.mark.parametrize(("shapes", "problem"), [
    ([("n", 8, 2, 4), (2, 2), (2,), ("n", 3, 2, 2, 2, 2), ("n", 3, 2, 2, 2)], None),
    ([("n", 8, 2, 4), (2, 2), (2,), ("m", 3, 2, 2, 2, 2), (None, 3, 2, 2, 2)], None),
    ([(1, 8, 2, 4), (2, 2), (None,), None, (None, None, None, None, None)], None),
    ([(1, 8, 2, 4), (2, 2), (2,), (None, 3, 2, 3, 2, 2), None],
     "levels (L) differ: spatial_shapes 2, sampling_locations 3, attention_weights ?"),
    ([("n", 8, 2, 4), (2, 2), (2,), (1, 3, 2, 2, 2, 2), (2, 3, 2, 2, 2)],
     "batch sizes differ: value n, sampling_locations 1, attention_weights 2"),
    ([(1, 8, 2, 4), (2, 2), (2,), (1, 3, 2, 2, 2, 2), (1, 4, 2, 2, None)],
     "queries (Lq) differ: sampling_locations 3, attention_weights 4"),
    ([(1, 8, 2, 4), (2, 2), (3,), None, None], "level_start_index has 3 levels, spatial_shapes 2"),
    ([(1, 8, 2, 4), (2, None), (2,), (1, 3, 2, 2, 2), None], "must have rank 6, got shape [1, 3, 2, 2, 2]"),
], ids=["same-symbol", "other-symbols", "unknown-rank", "levels", "batch", "queries", "starts", "known-rank"])
def test_the_contract_compares_what_is_known(shapes: list[Any], problem: str | None) -> None:
    entry = catalog.lookup(OP)
    problems = entry.contract_problems(shapes, ["float32", "int32", "int32", "float32", "float32"])
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_value_rules_see_values_whose_shape_inference_left_unknown() -> None:
    """A fixed spatial_shapes that shape inference could not shape is checked by its values alone."""
    entry = catalog.lookup(OP)
    dtypes = ["float32", "int32", "int32", "float32", "float32"]
    shapes: list[Any] = [(1, 8, 2, 4), None, None, None, None]
    assert entry.contract_problems(shapes, dtypes, values=[None, LEVELS, STARTS, None, None]) == []
    problems = entry.contract_problems(shapes, dtypes, values=[None, np.array([2, 3, 1], np.int32), None, None, None])
    assert problems == ["spatial_shapes must be [L, 2], holds [3] values"]


# ---------------------------------------------------------------------- preflight: static values


def static_model(levels: np.ndarray, starts: np.ndarray, tokens: int = TOKENS, cast: bool = False) -> onnx.ModelProto:
    """Index tensors fixed by the graph: initializers, or int64 Constants cast to int32 (`cast`)."""
    nodes = [msda(["value", "shapes", "starts", "sampling_locations", "attention_weights"], "attended",
                  name="msda_layer03")]
    initializers: list[tuple[str, np.ndarray]] = [("shapes", levels), ("starts", starts)]
    if cast:
        nodes[:0] = [constant("shapes64", levels.astype(np.int64)), constant("starts64", starts.astype(np.int64)),
                     helper.make_node("Cast", ["shapes64"], ["shapes"], to=I32),
                     helper.make_node("Cast", ["starts64"], ["starts"], to=I32)]
        initializers = []
    return model_of(nodes, [info("value", F32, [1, tokens, HEADS, DIM]), *query_inputs(3)],
                    [info("attended", F32, [1, 3, HEADS, DIM])], initializers)


@pytest.mark.parametrize("cast", [False, True], ids=["initializers", "cast-constants"])
def test_static_values_are_found_through_casts(cast: bool) -> None:
    model = static_model(LEVELS, STARTS, cast=cast)
    found = static_values(model, ["value", "shapes", "starts"])
    assert sorted(found) == ["shapes", "starts"]
    np.testing.assert_array_equal(found["shapes"], LEVELS)
    assert found["starts"].dtype == np.int32
    assert preflight(model, DECLARED, "fp32", "onnxruntime")


@pytest.mark.parametrize(("levels", "starts", "tokens", "message"), [
    (LEVELS, STARTS, 9, "value has S = 9 tokens, but spatial_shapes [[2, 3], [1, 2]] sums to 8"),
    (LEVELS, np.array([0, 5], np.int32), TOKENS,
     "level_start_index is [0, 5], but spatial_shapes [[2, 3], [1, 2]] puts the levels at [0, 6]"),
    (np.array([[2, 4], [0, 2]], np.int32), STARTS, TOKENS, "spatial_shapes holds a level of size <= 0"),
], ids=["tokens", "starts", "empty-level"])
@pytest.mark.parametrize("cast", [False, True], ids=["initializers", "cast-constants"])
def test_static_index_tensors_that_do_not_fit_value_are_refused(levels: np.ndarray, starts: np.ndarray,
                                                                 tokens: int, message: str, cast: bool) -> None:
    model = static_model(levels, starts, tokens, cast)
    with pytest.raises(UserError, match=r"plugin node 'msda_layer03'") as caught:
        preflight(model, DECLARED, "fp32", "onnxruntime")
    assert message in str(caught.value)


def test_index_tensors_from_graph_inputs_are_not_checked_before_the_run() -> None:
    """The control: the same mismatch with spatial_shapes fed at run time is unknown to the preflight."""
    nodes = [msda(MSDA_INPUTS, "attended")]
    model = model_of(nodes, [info("value", F32, [1, 9, HEADS, DIM]), info("spatial_shapes", I32, [2, 2]),
                             info("level_start_index", I32, [2]), *query_inputs(3)],
                     [info("attended", F32, [1, 3, HEADS, DIM])])
    assert static_values(model, MSDA_INPUTS) == {}
    assert preflight(model, DECLARED, "fp32", "onnxruntime")


# ---------------------------------------------------------------------- through `orchestrate run`


def run_graph(project: Project, model: onnx.ModelProto, **tensors: np.ndarray) -> tuple[int, str]:
    make_tensors(project.root / "tensors", **tensors)
    onnx.save(model, str(project.root / "graph.onnx"))
    result = project.run("run", str(project.write("graph.yaml", PIPELINE)))
    return result.code, result.text


def merged_output(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                  initializers: list[tuple[str, np.ndarray]]) -> onnx.ModelProto:
    """The plugin's [N, Lq, M, D] output reshaped to the [N, Lq, M*D] the captured call returned."""
    nodes = [*nodes, helper.make_node("Reshape", ["attended", "merged"], ["output"])]
    return model_of(nodes, inputs, [info("output", F32, [1, 3, HEADS * DIM])],
                    [*initializers, ("merged", np.array([1, 3, HEADS * DIM]))])


def test_run_verifies_a_plugin_fed_by_initializers(project: Project) -> None:
    model = merged_output([msda(MSDA_INPUTS, "attended")], [info("value", F32, [1, TOKENS, HEADS, DIM]),
                                                           *query_inputs(3)],
                          [("spatial_shapes", LEVELS), ("level_start_index", STARTS)])
    code, text = run_graph(project, model)
    assert code == 0, text
    assert stage_status(text) == {"capture": "ran", "export": "ran", "build": "ran", "verify": "passed"}


def test_run_verifies_a_graph_with_unknown_dims(project: Project) -> None:
    code, text = run_graph(project, unknown_dims_model(weights_rank_known=False))
    assert code == 0, text
    assert stage_status(text)["verify"] == "passed", text


def test_run_refuses_static_shapes_that_do_not_sum_to_s(project: Project) -> None:
    model = merged_output([msda(["value", "shapes", "starts", "sampling_locations", "attention_weights"],
                                "attended", name="msda_layer03")],
                          [info("value", F32, [1, 9, HEADS, DIM]), *query_inputs(3)],
                          [("shapes", LEVELS), ("starts", STARTS)])
    code, text = run_graph(project, model, value=np.zeros((1, 9, HEADS, DIM), np.float32))
    assert code == 2, text
    flat = " ".join(text.split())
    assert "plugin node 'msda_layer03'" in flat and "value has S = 9 tokens" in flat and "Traceback" not in text
    assert "verify" not in stage_status(text)


def float64_model(cast: bool) -> onnx.ModelProto:
    """sampling_locations arrives as float64 (TorchScript exports torch.linspace as double); the index
    tensors are cast to int32 as the export casts them."""
    locations = "locations" if cast else "sampling_locations"
    nodes = [helper.make_node("Cast", ["spatial_shapes"], ["shapes32"], to=I32),
             helper.make_node("Cast", ["level_start_index"], ["starts32"], to=I32),
             msda(["value", "shapes32", "starts32", locations, "attention_weights"], "attended")]
    if cast:
        nodes.insert(0, helper.make_node("Cast", ["sampling_locations"], ["locations"], to=F32))
    return merged_output(nodes, [info("value", F32, [1, TOKENS, HEADS, DIM]), info("spatial_shapes", I64, [2, 2]),
                                 info("level_start_index", I64, [2]),
                                 info("sampling_locations", F64, [1, 3, HEADS, 2, POINTS, 2]),
                                 info("attention_weights", F32, [1, 3, HEADS, 2, POINTS])], [])


def test_float64_into_the_plugin_is_refused_saying_what_to_do(project: Project) -> None:
    code, text = run_graph(project, float64_model(cast=False))
    assert code == 2, text
    flat = " ".join(text.split())
    assert "input 'sampling_locations' must be float32 or float16, got float64" in flat, text
    assert "export.plugins[].dtypes: {sampling_locations: float32}" in flat, text
    assert "insert_cast: {contract: true}" in flat and "cast integer inputs" not in flat, text


def test_float64_cast_to_float32_before_the_plugin_verifies(project: Project) -> None:
    code, text = run_graph(project, float64_model(cast=True))
    assert code == 0, text
    assert stage_status(text)["verify"] == "passed", text

"""Surgery edits on small graphs: each edit's match, its no-match error, and a valid graph after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import Project, stage_status
from onnx import TensorProto, helper

from orchestrator.errors import UserError
from orchestrator.stages import StageCall, surgery
from orchestrator.stages.base import Unkeyed
from orchestrator.stages.surgery import SurgerySettings
from orchestrator.store.store import Artifact

MSDA = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN = {"op": MSDA, "domain": "trt.plugins", "version": "1", "namespace": "", "attributes": {},
          "inputs": ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"],
          "dtypes": {"spatial_shapes": "int32", "level_start_index": "int32"},
          "contract": [{"name": "value", "rank": 4, "dtypes": ["float32", "float16"]},
                       {"name": "spatial_shapes", "rank": 2, "dtypes": ["int32"]},
                       {"name": "level_start_index", "rank": 1, "dtypes": ["int32"]},
                       {"name": "sampling_locations", "rank": 6, "dtypes": ["float32", "float16"]},
                       {"name": "attention_weights", "rank": 5, "dtypes": ["float32", "float16"]}]}


OUT = [1, 5, 2, 4]  # the MSDA output [N, Lq, M, D] of msda_inputs()


def value(name: str, elem: int, shape: list[int]) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def msda_inputs(index_type: int = TensorProto.INT64) -> list[Any]:
    return [value("value", TensorProto.FLOAT, [1, 14, 2, 4]), value("spatial_shapes", index_type, [2, 2]),
            value("level_start_index", index_type, [2]),
            value("sampling_locations", TensorProto.FLOAT, [1, 5, 2, 2, 2, 2]),
            value("attention_weights", TensorProto.FLOAT, [1, 5, 2, 2, 2])]


def custom_op_graph(op: str = "MSDA", domain: str = "mmcv", index_type: int = TensorProto.INT64,
                    attrs: dict[str, Any] | None = None) -> onnx.ModelProto:
    """What another tool exports: one custom MSDA node, then a Relu."""
    node = helper.make_node(op, [i.name for i in msda_inputs(index_type)], ["attn"], name="msda_0", domain=domain,
                            **(attrs or {}))
    relu = helper.make_node("Relu", ["attn"], ["output"], name="relu_0")
    graph = helper.make_graph([node, relu], "g", msda_inputs(index_type), [value("output", TensorProto.FLOAT, OUT)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])


def chain_graph() -> onnx.ModelProto:
    """x, y -> Mul(x, 2) -> Add(., y) -> Relu -> Sigmoid -> out, twice in a row (two occurrences)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = []
    current = "x"
    for k in range(2):
        nodes += [helper.make_node("Mul", [current, "two"], [f"m{k}"], name=f"block{k}/Mul"),
                  helper.make_node("Add", [f"m{k}", "y"], [f"a{k}"], name=f"block{k}/Add"),
                  helper.make_node("Relu", [f"a{k}"], [f"r{k}"], name=f"block{k}/Relu"),
                  helper.make_node("Sigmoid", [f"r{k}"], [f"s{k}"], name=f"block{k}/Sigmoid")]
        current = f"s{k}"
    inputs = [value("x", TensorProto.FLOAT, [2, 3]), value("y", TensorProto.FLOAT, [2, 3])]
    graph = helper.make_graph(nodes, "chain", inputs, [value(current, TensorProto.FLOAT, [2, 3])], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_edits(tmp_path: Path, model: onnx.ModelProto, edits: list[dict[str, Any]],
              contracts: list[dict[str, Any]] | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The surgery stage on `model`, as the executor calls it; returns the written graph and surgery.json."""
    source = tmp_path / "export"
    source.mkdir(exist_ok=True)
    onnx.save(model, str(source / "model.onnx"))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    settings = SurgerySettings.from_keyed({"surgery": edits, "contracts": contracts or []})
    call = StageCall("surgery", settings, Unkeyed(), {"onnx": Artifact("export", "k", source, {})}, out)
    surgery.run(call)
    written = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(written, full_check=True)
    return written, json.loads((out / "surgery.json").read_text())


def error_of(tmp_path: Path, model: onnx.ModelProto, edits: list[dict[str, Any]],
             contracts: list[dict[str, Any]] | None = None) -> UserError:
    with pytest.raises(UserError) as caught:
        run_edits(tmp_path, model, edits, contracts)
    return caught.value


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def attrs_of(node: Any) -> dict[str, Any]:
    found = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in found.items()}


# ---------------------------------------------------------------------- rename_op

def test_rename_op_and_domain(tmp_path: Path) -> None:
    model, record = run_edits(tmp_path, custom_op_graph(), [
        {"rename_op": {"from": "MSDA", "from_domain": "mmcv", "to": MSDA, "domain": "trt.plugins"}}])
    node = model.graph.node[0]
    assert (node.op_type, node.domain) == (MSDA, "trt.plugins")
    assert "trt.plugins" in {o.domain for o in model.opset_import}
    assert record["diff"]["changed"] == [{"name": "msda_0", "before": "MSDA", "after": MSDA,
                                          "domain": ["mmcv", "trt.plugins"]}]
    assert record["diff"]["ops"] == {"MSDA": [1, 0], MSDA: [0, 1]}


def test_rename_op_that_matches_nothing_names_the_edit_and_what_it_looked_for(tmp_path: Path) -> None:
    error = error_of(tmp_path, custom_op_graph(), [{"rename_op": {"from": "MSDAttn", "to": MSDA}}])
    assert error.field == "surgery[0].rename_op"
    assert "no MSDAttn node" in error.message and "rename_op MSDAttn" in error.message
    assert "MSDA" in (error.hint or "")
    wrong_domain = error_of(tmp_path, custom_op_graph(),
                            [{"rename_op": {"from": "MSDA", "from_domain": "x", "to": MSDA}}])
    assert "domain(s) 'mmcv'" in wrong_domain.message


# ---------------------------------------------------------------------- set_attrs / remove_attrs

def test_set_and_remove_attributes(tmp_path: Path) -> None:
    original = custom_op_graph(op=MSDA, domain="trt.plugins", attrs={"im2col_step": 64, "plugin_version": "1"})
    model, record = run_edits(tmp_path, original, [
        {"set_attrs": {"op": MSDA, "attrs": {"plugin_version": "2", "plugin_namespace": "ns", "scales": [1.0, 0.5],
                                             "enabled": True}}},
        {"remove_attrs": {"op": MSDA, "name": "msda_0", "attrs": ["im2col_step"]}}])
    assert attrs_of(model.graph.node[0]) == {"plugin_version": "2", "plugin_namespace": "ns", "scales": [1.0, 0.5],
                                             "enabled": 1}
    assert [e["field"] for e in record["edits"]] == ["surgery[0].set_attrs", "surgery[1].remove_attrs"]


def test_attribute_edits_that_match_nothing(tmp_path: Path) -> None:
    graph = custom_op_graph(op=MSDA, domain="trt.plugins")
    missing_op = error_of(tmp_path, graph, [{"set_attrs": {"op": "Foo", "attrs": {"a": 1}}}])
    assert missing_op.field == "surgery[0].set_attrs" and "no Foo node" in missing_op.message
    missing_name = error_of(tmp_path, graph, [{"set_attrs": {"op": MSDA, "name": "other", "attrs": {"a": 1}}}])
    assert "no MultiscaleDeformableAttnPlugin_TRT node whose name matches 'other'" in missing_name.message
    missing_attr = error_of(tmp_path, graph, [{"remove_attrs": {"op": MSDA, "attrs": ["im2col_step"]}}])
    assert missing_attr.field == "surgery[0].remove_attrs"
    assert "has attribute 'im2col_step'" in missing_attr.message


def test_an_edit_that_breaks_the_graph_is_named(tmp_path: Path) -> None:
    error = error_of(tmp_path, custom_op_graph(op=MSDA, domain="trt.plugins"),
                     [{"set_attrs": {"op": "Relu", "attrs": {"alpha": 0.1}}}])
    assert error.field == "surgery[0].set_attrs"
    assert "no longer valid" in error.message and "alpha" in error.message


# ---------------------------------------------------------------------- insert_cast

def test_insert_cast_by_contract_casts_only_what_breaks_it(tmp_path: Path) -> None:
    model, record = run_edits(tmp_path, custom_op_graph(op=MSDA, domain="trt.plugins"),
                              [{"insert_cast": {"contract": True}}], [PLUGIN])
    plugin = next(n for n in model.graph.node if n.op_type == MSDA)
    producers = {o: n for n in model.graph.node for o in n.output}
    casts = {i: producers[name] for i, name in enumerate(plugin.input) if name in producers}
    assert sorted(casts) == [1, 2]
    assert all(attrs_of(c)["to"] == TensorProto.INT32 for c in casts.values())
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types[plugin.input[1]] == types[plugin.input[2]] == TensorProto.INT32
    assert "spatial_shapes int64->int32" in record["edits"][0]["summary"]


def test_insert_cast_by_contract_with_nothing_to_cast_is_an_error(tmp_path: Path) -> None:
    fits = custom_op_graph(op=MSDA, domain="trt.plugins", index_type=TensorProto.INT32)
    error = error_of(tmp_path, fits, [{"insert_cast": {"contract": True}}], [PLUGIN])
    assert error.field == "surgery[0].insert_cast"
    assert "already fits the contract; nothing to cast" in error.message
    absent = error_of(tmp_path, custom_op_graph(), [{"insert_cast": {"contract": True}}], [PLUGIN])
    assert f"no {MSDA} node" in absent.message


def test_insert_cast_on_chosen_inputs_shares_one_cast(tmp_path: Path) -> None:
    graph = custom_op_graph(op=MSDA, domain="trt.plugins")
    second = helper.make_node(MSDA, [i.name for i in msda_inputs()], ["attn2"], name="msda_1", domain="trt.plugins")
    graph.graph.node.insert(1, second)
    graph.graph.output.append(value("attn2", TensorProto.FLOAT, OUT))
    model, _ = run_edits(tmp_path, graph, [{"insert_cast": {"op": MSDA, "inputs": [1], "to": "int32"}}])
    assert ops(model).count("Cast") == 1  # one Cast for spatial_shapes, used by both plugin nodes
    out_of_range = error_of(tmp_path, graph, [{"insert_cast": {"op": MSDA, "inputs": [7], "to": "int32"}}])
    assert "has 5 inputs, no input 7" in out_of_range.message


# ---------------------------------------------------------------------- replace_subgraph

def test_replace_subgraph_between_named_tensors(tmp_path: Path) -> None:
    model, record = run_edits(tmp_path, chain_graph(), [
        {"replace_subgraph": {"inputs": ["x", "y"], "outputs": ["r0"], "op": "Block", "domain": "my.ops",
                              "attrs": {"k": 3}}}])
    assert ops(model) == ["Block", "Sigmoid", "Mul", "Add", "Relu", "Sigmoid"]
    block = model.graph.node[0]
    assert list(block.input) == ["x", "y"] and list(block.output) == ["r0"] and block.domain == "my.ops"
    assert attrs_of(block) == {"k": 3}
    assert sorted(n["name"] for n in record["diff"]["removed"]) == ["block0/Add", "block0/Mul", "block0/Relu"]
    assert [n["op"] for n in record["diff"]["added"]] == ["Block"]
    assert "replaced 1 subgraph (3 nodes) by Block" in record["edits"][0]["summary"]


def test_replace_subgraph_every_occurrence_by_node_matches(tmp_path: Path) -> None:
    model, record = run_edits(tmp_path, chain_graph(), [
        {"replace_subgraph": {"inputs": [{"op": "Mul", "name": "Mul$", "input": 0}, "y"],
                              "outputs": [{"op": "Mul", "then": ["Add", "Relu"]}], "op": "Block", "every": True}}])
    assert ops(model) == ["Block", "Sigmoid", "Block", "Sigmoid"]
    assert list(model.graph.node[2].input) == ["s0", "y"]
    assert "replaced 2 subgraphs (3, 3 nodes)" in record["edits"][0]["summary"]


def test_replace_subgraph_errors_name_what_is_wrong(tmp_path: Path) -> None:
    graph = chain_graph()
    no_tensor = error_of(tmp_path, graph, [{"replace_subgraph": {"inputs": ["x", "y"], "outputs": ["r00"], "op": "B"}}])
    assert no_tensor.field == "surgery[0].replace_subgraph"
    assert "replace_subgraph output 0: no tensor 'r00'" in no_tensor.message and "r0" in (no_tensor.hint or "")
    no_node = error_of(tmp_path, graph, [{"replace_subgraph": {
        "inputs": [{"op": "Mul", "index": 5, "input": 0}], "outputs": ["r0"], "op": "B"}}])
    assert "looked for Mul node #5; the graph has 2 such node(s)" in no_node.message
    not_one = error_of(tmp_path, graph, [{"replace_subgraph": {
        "inputs": ["x", "y"], "outputs": [{"op": "Mul", "then": ["Relu"]}], "op": "B"}}])
    assert "goes to 0 Relu node(s), not one (it is used by Add 'block0/Add')" in not_one.message
    reads_more = error_of(tmp_path, graph, [{"replace_subgraph": {"inputs": ["x"], "outputs": ["r0"], "op": "B"}}])
    assert "also reads graph input 'y'" in reads_more.message
    both = error_of(tmp_path, graph, [{"replace_subgraph": {"inputs": ["x", "y"], "outputs": ["y"], "op": "B"}}])
    assert "'y' is both a start and an end tensor" in both.message

    leaky = chain_graph()
    leaky.graph.node.append(helper.make_node("Neg", ["m0"], ["negated"], name="outside/Neg"))
    leaky.graph.output.append(value("negated", TensorProto.FLOAT, [2, 3]))
    escapes = error_of(tmp_path, leaky, [{"replace_subgraph": {"inputs": ["x", "y"], "outputs": ["r0"], "op": "B"}}])
    assert "'m0', computed inside the subgraph (by Mul 'block0/Mul'), is also used outside it by Neg 'outside/Neg'" \
        in escapes.message

    constant = chain_graph()
    constant.graph.node.append(helper.make_node("Relu", ["two"], ["relu_two"], name="const/Relu"))
    constant.graph.output.append(value("relu_two", TensorProto.FLOAT, []))
    unrelated = error_of(tmp_path, constant, [{"replace_subgraph": {"inputs": ["x"], "outputs": ["relu_two"],
                                                                     "op": "B"}}])
    assert "end tensor 'relu_two' does not depend on the start tensors (x)" in unrelated.message


def test_replace_subgraph_by_a_declared_plugin_casts_and_reshapes(tmp_path: Path) -> None:
    shape = helper.make_tensor("flat", TensorProto.INT64, [3], [1, 5, 8])
    nodes = [helper.make_node("Reshape", ["attention_weights", "flat"], ["core"], name="core/Reshape"),
             helper.make_node("Relu", ["core"], ["output"], name="after/Relu")]
    graph = helper.make_graph(nodes, "g", msda_inputs(), [value("output", TensorProto.FLOAT, [1, 5, 8])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    written, record = run_edits(tmp_path, model, [{"replace_subgraph": {
        "inputs": ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"],
        "outputs": ["core"], "op": MSDA}}], [PLUGIN])
    assert sorted(ops(written)) == ["Cast", "Cast", MSDA, "Relu", "Reshape"]
    plugin = next(n for n in written.graph.node if n.op_type == MSDA)
    assert plugin.domain == "trt.plugins"
    assert attrs_of(plugin) == {"plugin_version": "1", "plugin_namespace": ""}
    inferred = onnx.shape_inference.infer_shapes(written)
    types = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    assert [d.dim_value for d in types[plugin.output[0]].shape.dim] == [1, 5, 2, 4]  # [N, Lq, M, D]
    assert [d.dim_value for d in types["core"].shape.dim] == [1, 5, 8]  # reshaped back for the Relu
    assert types[plugin.input[1]].elem_type == TensorProto.INT32
    assert "spatial_shapes cast int64->int32" in record["edits"][0]["summary"]
    too_few = error_of(tmp_path, model, [{"replace_subgraph": {"inputs": ["attention_weights"], "outputs": ["core"],
                                                                "op": MSDA}}], [PLUGIN])
    assert "takes 5 inputs" in too_few.message


def test_derived_level_start_index_computes_the_offsets(tmp_path: Path) -> None:
    identity = helper.make_node("Identity", ["spatial_shapes"], ["shapes_copy"], name="copy")
    consumer = helper.make_node("Relu", ["shapes_copy"], ["output"], name="uses")
    graph = helper.make_graph([identity, consumer], "g", [value("spatial_shapes", TensorProto.INT64, [3, 2])],
                              [value("output", TensorProto.INT64, [3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    written, _ = run_edits(tmp_path, model, [{"replace_subgraph": {
        "inputs": ["spatial_shapes", {"derive": "level_start_index", "from": "spatial_shapes"}],
        "outputs": ["shapes_copy"], "op": "Keep", "domain": "my.ops"}}])
    keep = next(n for n in written.graph.node if n.op_type == "Keep")
    derived = keep.input[1]
    written.graph.output.append(value(derived, TensorProto.INT64, [3]))
    written.graph.node.remove(keep)
    written.graph.node.remove(next(n for n in written.graph.node if n.op_type == "Relu"))
    del written.graph.output[0]
    session = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    shapes = np.array([[100, 160], [50, 80], [25, 40]], dtype=np.int64)
    (starts,) = session.run(None, {"spatial_shapes": shapes})
    assert starts.tolist() == [0, 16000, 20000]


# ---------------------------------------------------------------------- cleanup

def test_cleanup_folds_constants_and_removes_dead_nodes(tmp_path: Path) -> None:
    nodes = [helper.make_node("Constant", [], ["c"], name="const", value=helper.make_tensor("v", TensorProto.FLOAT,
                                                                                             [], [1.5])),
             helper.make_node("Add", ["c", "c"], ["c2"], name="fold/Add"),
             helper.make_node("Mul", ["x", "c2"], ["output"], name="keep/Mul"),
             helper.make_node("Neg", ["x"], ["unused"], name="dead/Neg")]
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [2])],
                              [value("output", TensorProto.FLOAT, [2])])
    written, record = run_edits(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                [{"cleanup": {"fold_constants": True, "toposort": True}}])
    assert ops(written) == ["Mul"]
    folded = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    assert [float(v) for v in folded.values()] == [3.0]
    assert record["diff"]["nodes"] == [4, 1]


# ---------------------------------------------------------------------- through the command line

def test_a_surgery_error_exits_2_names_file_line_and_field_and_writes_nothing(project: Project) -> None:
    pipeline = project.small(**{"verify:": "surgery:\n  - cleanup: {}\n  - rename_op: {from: MSDAttn, to: X}\nverify:"})
    result = project.run("run", str(pipeline))
    assert result.code == 2, result.text
    assert f"{pipeline}:" in result.err and "surgery[1].rename_op: rename_op MSDAttn: the graph has no MSDAttn node" \
        in result.err
    line = next(i for i, text in enumerate(pipeline.read_text().splitlines(), 1) if "rename_op" in text)
    assert f"{pipeline}:{line}:" in result.err
    assert "Traceback" not in result.err
    assert not (project.store / "surgery").exists() or not any((project.store / "surgery").iterdir())
    assert stage_status(result.out)["export"] == "ran"


def test_another_tools_custom_op_becomes_the_plugin_by_yaml_alone(project: Project) -> None:
    """An ONNX file with mmcv's MSDA op and int64 index inputs: renamed, attributed, cast; built and verified."""
    from test_end_to_end import write_seed_folder

    write_seed_folder(project.root / "layer")
    names = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
    shapes = {"value": [1, 64, 2, 8], "spatial_shapes": [3, 2], "level_start_index": [3],
              "sampling_locations": [1, 20, 2, 3, 4, 2], "attention_weights": [1, 20, 2, 3, 4]}
    inputs = [value(n, TensorProto.INT64 if "_s" in n and "sampling" not in n else TensorProto.FLOAT, shapes[n])
              for n in names]
    nodes = [helper.make_node("MSDA", names, ["attn"], name="mmcv_msda", domain="mmcv", im2col_step=64),
             helper.make_node("Reshape", ["attn", "flat"], ["output"], name="merge_heads")]
    flat = helper.make_tensor("flat", TensorProto.INT64, [3], [1, 20, 16])
    graph = helper.make_graph(nodes, "other_tool", inputs, [value("output", TensorProto.FLOAT, [1, 20, 16])], [flat])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("mmcv", 1)]),
              str(project.root / "other_tool.onnx"))
    pipeline = project.write("other_tool.yaml", f"""\
        version: 1
        name: other_tool
        capture:
          from_dir: layer
        export:
          onnx: other_tool.onnx
          plugins:
            - op: {MSDA}
        surgery:
          - rename_op: {{from: MSDA, from_domain: mmcv, to: {MSDA}, domain: trt.plugins}}
          - set_attrs: {{op: {MSDA}, attrs: {{plugin_version: "1", plugin_namespace: ""}}}}
          - remove_attrs: {{op: {MSDA}, attrs: [im2col_step]}}
          - insert_cast: {{contract: true}}
        bench:
          enabled: false
        """)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "ran", "export": "ran", "surgery": "ran", "build": "ran",
                                        "verify": "passed"}
    record = json.loads(next((project.store / "surgery").iterdir()).joinpath("surgery.json").read_text())
    assert [e["field"] for e in record["edits"]] == ["surgery[0].rename_op", "surgery[1].set_attrs",
                                                     "surgery[2].remove_attrs", "surgery[3].insert_cast"]
    (node,) = record["graph"]["plugin_nodes"]
    assert node["attributes"] == {"plugin_version": "1", "plugin_namespace": ""}
    assert [c["to"] for c in node["casts"]] == ["int32", "int32"]


def test_the_edit_list_is_in_the_surgery_key_only(project: Project) -> None:
    from test_keys import keys_of

    surgery = "surgery:\n  - cleanup: {fold_constants: true}\nverify:"
    base = keys_of(project.small("a.yaml", **{"verify:": surgery}))
    edited = keys_of(project.small("b.yaml", **{"verify:": surgery.replace("true", "false")}))
    assert {stage for stage in base if base[stage] != edited[stage]} == {"surgery", "build", "verify", "bench"}
    without = keys_of(project.small("c.yaml"))
    assert "surgery" not in without and without["export"] == base["export"]

"""Models the user cannot edit: pipelines/msda_pure_torch.yaml's two variants end to end at small shapes,
a class method (static and bound) as the replaced callable, and the swap undone when the export fails."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import onnx
import pytest
from conftest import ROOT, Project, stage_status

from orchestrator.config import spec
from orchestrator.planning.plan import make_plan
from orchestrator.run.executor import Executor, StageCrashed
from orchestrator.store.store import Store

MSDA = "MultiscaleDeformableAttnPlugin_TRT"
LIBRARY = ROOT / "examples" / "thirdparty_detr"


def small_pure_torch(project: Project, pipeline: str = "msda_pure_torch.yaml") -> Path:
    """A shipped pure-torch pipeline, unchanged but for a small model (2 layers, d_model 32, 3 small levels)."""
    text = (ROOT / "pipelines" / pipeline).read_text()
    replacements = {
        "kwargs: {num_layers: 6, levels: 3, seed: 0}":
            "kwargs: {num_layers: 2, d_model: 32, heads: 2, levels: 3, points: 2, ffn_dim: 64, seed: 0}\n"
            "  inputs_kwargs: {shapes: [[8, 10], [4, 5], [2, 3]], d_model: 32}",
        "iterations: 5": "iterations: 2",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return project.write(pipeline, text)


def library_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(LIBRARY.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_both_variants_reach_the_plugin_graph_and_verify_against_the_model(project: Project) -> None:
    before = library_digest()
    pipeline = small_pure_torch(project)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    lines = result.out.splitlines()
    verify = [line for line in lines if line.startswith("verify")]
    assert len(verify) == 2 and all("passed" in line for line in verify), result.out
    assert all("2 plugin nodes vs their calls" in line for line in verify)
    call_export = next(line for line in lines if line.startswith("export") and "plugin_nodes=call" in line)
    assert "2 plugin nodes MultiscaleDeformableAttnPlugin_TRT, integer inputs cast to int32" in call_export
    plain_export = next(line for line in lines if line.startswith("export") and "plugin_nodes=surgery" in line)
    assert "no plugin node" in plain_export
    surgery_line = next(line for line in lines if line.startswith("surgery"))
    assert "plugin_nodes=surgery" in surgery_line and "2 plugin nodes" in surgery_line
    assert sum(line.startswith("capture") for line in lines) == 1  # both variants verify against one capture

    graphs = {}
    for stage in ("export", "surgery"):
        for folder in (project.store / stage).iterdir():
            model = onnx.load(str(folder / "model.onnx"))
            graphs[f"{stage}:{sum(n.op_type == MSDA for n in model.graph.node)}"] = model
    plain = graphs["export:0"]
    assert [n.op_type for n in plain.graph.node].count("GridSample") == 6  # 3 levels x 2 layers
    for name in ("export:2", "surgery:2"):
        model = graphs[name]
        onnx.checker.check_model(model, full_check=True)
        ops = [n.op_type for n in model.graph.node]
        assert "GridSample" not in ops
        plugins = [n for n in model.graph.node if n.op_type == MSDA]
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type for v in [*inferred.graph.input, *inferred.graph.value_info]}
        for node in plugins:
            assert [types[i].elem_type for i in node.input[1:3]] == [onnx.TensorProto.INT32] * 2
            assert [d.dim_value for d in types[node.output[0]].shape.dim] == [1, 106, 2, 16]
    assert library_digest() == before  # the library is reached by import path, never edited

    show = project.run("show", str(pipeline), "--stage", "surgery", env={"COLUMNS": "250"})
    assert show.code == 0, show.text
    text = " ".join(show.out.split())
    assert "export.plugins[0].subgraph" in text and "replaced 2 subgraphs" in text
    assert "GridSample │ 6 │ 0" in text and f"{MSDA} │ 0 │ 2" in text
    assert "removed nodes" in text and "/model/layers.0/self_attn/GridSample" in text
    assert "added nodes" in text
    record = json.loads(next((project.store / "surgery").iterdir()).joinpath("surgery.json").read_text())
    assert record["diff"]["ops"]["GridSample"] == [6, 0]


def test_a_subgraph_that_matches_nothing_is_an_error_naming_the_plugin_field(project: Project) -> None:
    pipeline = small_pure_torch(project)
    pipeline.write_text(pipeline.read_text().replace('name: "self_attn/Split$"', 'name: "self_attention/Split$"')
                        .replace("export.plugin_nodes: [call, surgery]", "export.plugin_nodes: [surgery]"))
    result = project.run("run", str(pipeline))
    assert result.code == 2, result.text
    assert "export.plugins[0].subgraph: replace_subgraph input 0: no Split node whose name matches " \
           "'self_attention/Split$'" in result.err
    assert "Traceback" not in result.err


VENDOR = '''\
"""A library with the deformable attention behind a static method and a bound method."""
import torch

from examples.ops.msda import ms_deform_attn


class Sampling:
    @staticmethod
    def attend(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


class Block(torch.nn.Module):
    def __init__(self, fail_in_export: bool):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)
        self.fail_in_export = fail_in_export

    def attend(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        first = Sampling.attend(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        second = self.attend(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        if self.fail_in_export and torch.onnx.is_in_onnx_export():
            raise RuntimeError("this model cannot be exported")
        return self.proj(first) + second


def build(fail_in_export: bool = False):
    torch.manual_seed(0)
    return Block(fail_in_export).eval()


def inputs():
    generator = torch.Generator().manual_seed(3)
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.tensor([0, 48])
    return {"value": torch.randn(1, 60, 2, 8, generator=generator), "spatial_shapes": shapes,
            "level_start_index": starts,
            "sampling_locations": torch.rand(1, 20, 2, 2, 4, 2, generator=generator),
            "attention_weights": torch.rand(1, 20, 2, 2, 4, generator=generator).softmax(-1)}
'''

METHOD_PIPELINE = """\
version: 1
name: {name}
python_path: [lib]
model:
  factory: {module}:build
  kwargs: {{fail_in_export: {fail}}}
  inputs: {module}:inputs
capture:
  calls: all
export:
  opset: 17
  scope: model
  plugins:
    - replace: {module}:{method}
      op: MultiscaleDeformableAttnPlugin_TRT
bench:
  enabled: false
"""


def vendor_pipeline(project: Project, module: str, method: str, fail: bool = False) -> Path:
    project.write(f"lib/{module}.py", VENDOR)
    return project.write(f"{module}.yaml", METHOD_PIPELINE.format(name=module, module=module, method=method,
                                                                  fail=str(fail).lower()))


@pytest.mark.parametrize("method", ["Sampling.attend", "Block.attend"])
def test_a_class_method_of_a_library_is_replaced(project: Project, method: str) -> None:
    module = f"vendor_{method.split('.')[0].lower()}"
    pipeline = vendor_pipeline(project, module, method)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert "1 plugin node MultiscaleDeformableAttnPlugin_TRT" in result.out and "(1 call in the captured" in result.out
    assert stage_status(result.out)["verify"] == "passed"
    model = onnx.load(str(next((project.store / "export").iterdir()) / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(MSDA) == 1 and "GridSample" in ops  # the other call stays as the library wrote it


def test_the_swap_is_undone_when_the_export_fails(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = vendor_pipeline(project, "vendor_failing", "Sampling.attend", fail=True)
    monkeypatch.syspath_prepend(str(project.root / "lib"))
    monkeypatch.chdir(ROOT)
    import vendor_failing  # type: ignore[import-not-found]

    static_before = vendor_failing.Sampling.__dict__["attend"]
    bound_before = vendor_failing.Block.__dict__["attend"]
    store = Store(project.store)
    plan = make_plan(spec.load(pipeline), store.digests)
    with pytest.raises(StageCrashed, match="this model cannot be exported"):
        Executor(plan, store, echo=lambda _: None, progress=False).run()
    assert vendor_failing.Sampling.__dict__["attend"] is static_before
    assert vendor_failing.Block.__dict__["attend"] is bound_before
    assert sys.modules["vendor_failing"] is vendor_failing


def test_the_library_function_is_restored_after_an_in_process_export(project: Project,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import examples.thirdparty_detr.functions as functions
    import examples.thirdparty_detr.modules as modules

    original = functions.ms_deform_attn_core_pytorch
    monkeypatch.chdir(ROOT)
    pipeline = small_pure_torch(project)
    pipeline.write_text(pipeline.read_text().replace("export.plugin_nodes: [call, surgery]",
                                                     "export.plugin_nodes: [call]")
                        .replace("bench:\n  warmup: 1", "bench:\n  enabled: false\n  warmup: 1"))
    store = Store(project.store)
    report = Executor(make_plan(spec.load(pipeline), store.digests), store, echo=lambda _: None,
                      progress=False).run()
    assert report.exit_code == 0
    assert functions.ms_deform_attn_core_pytorch is original
    assert modules.ms_deform_attn_core_pytorch is original


def test_derive_names_an_input_of_the_plugin(project: Project) -> None:
    pipeline = small_pure_torch(project)
    pipeline.write_text(pipeline.read_text().replace("from: value_spatial_shapes}", "from: shapes}"))
    for command in ("validate", "run"):
        result = project.run(command, str(pipeline))
        assert result.code == 2
        assert "derive.level_start_index.from: 'shapes' must be a parameter of" in result.err


def test_one_call_of_the_library_core_with_a_derived_input(project: Project) -> None:
    """scope call: the captured core call (no level_start_index) becomes the one-call plugin graph."""
    pipeline = small_pure_torch(project)
    text = pipeline.read_text()
    text = text.replace("capture:\n  calls: all", "capture:\n  module: layers.1.self_attn\n"
                        "  call: examples.thirdparty_detr.functions:ms_deform_attn_core_pytorch")
    text = text.replace("scope: model", "scope: call").replace("export.plugin_nodes: [call, surgery]",
                                                               "export.exporter: [torchscript, dynamo]")
    pipeline.write_text(text.replace("opset: 17", "opset: 18"))
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert sum("passed" in line for line in result.out.splitlines() if line.startswith("verify")) == 2
    capture = json.loads(next((project.store / "capture").iterdir()).joinpath("capture.json").read_text())
    assert list(capture["inputs"]) == ["value", "value_spatial_shapes", "sampling_locations", "attention_weights"]
    for folder in (project.store / "export").iterdir():
        model = onnx.load(str(folder / "model.onnx"))
        assert [i.name for i in model.graph.input] == list(capture["inputs"])
        ops = [n.op_type for n in model.graph.node]
        assert ops.count(MSDA) == 1 and "CumSum" in ops  # level_start_index computed in the graph

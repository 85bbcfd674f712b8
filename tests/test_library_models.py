"""Library models by YAML alone: every shipped pipelines/hf_*.yaml passes, and the mechanisms they rely on.

The models are Hugging Face transformers families built from their config classes with tiny sizes and
random weights (examples/hf_models.py); the pipelines are what a user writes, and none of the library's
code is edited.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT, Project

from orchestrator import arguments
from orchestrator import plugins as catalog
from orchestrator.plugins.derive import Inexpressible, OnnxOps, TorchOps

pytest.importorskip("transformers")

PIPELINES = sorted(p.name for p in (ROOT / "pipelines").glob("hf_*.yaml"))
MSDA = "MultiscaleDeformableAttnPlugin_TRT"


def test_the_five_families_ship_in_both_scopes() -> None:
    families = {name.removeprefix("hf_").rsplit("_", 1)[0] for name in PIPELINES}
    assert families == {"deformable_detr", "rt_detr", "rt_detr_v2", "mask2former", "grounding_dino"}
    for family in families:
        assert {f"hf_{family}_call.yaml", f"hf_{family}_model.yaml"} <= set(PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
def test_shipped_library_pipeline_passes(project: Project, name: str) -> None:
    result = project.run("run", str(ROOT / "pipelines" / name))
    assert result.code == 0, result.text
    assert "verify" in result.out and "passed" in result.out
    verify = json.loads(next(project.store.glob("verify/*/verify.json")).read_text())
    for output, stats in verify["outputs"].items():  # a check that cannot fail would prove nothing
        assert stats["reference_abs_max"] > 10 * stats["atol"], output
    exported = json.loads(next(project.store.glob("export/*/export.json")).read_text())
    assert exported["plugin_nodes"] and all(n["op"] == MSDA for n in exported["plugin_nodes"])
    if name.endswith("_model.yaml"):
        assert verify["plugin_nodes"], "every plugin node is compared with the call it stands for"


def _entry() -> catalog.PluginEntry:
    entry = catalog.builtin(MSDA)
    assert entry is not None
    return entry


def test_arguments_round_trip_as_typed_values() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    names = {id(m): n for n, m in model.named_modules()}
    value = {"shapes": [(4, 5), (2, 3)], "step": 64, "scale": float("inf"), "method": "default", "none": None,
             "inner": model[0]}
    encoded = arguments.encode(value, lambda m: names.get(id(m)))
    assert json.loads(json.dumps(encoded)) == encoded  # plain JSON: nothing pickled, nothing repr()-ed
    decoded = arguments.decode(encoded, lambda path: model.get_submodule(path))
    assert decoded["shapes"] == [(4, 5), (2, 3)] and isinstance(decoded["shapes"][0], tuple)
    assert decoded["inner"] is model[0] and decoded["scale"] == float("inf") and decoded["step"] == 64
    assert arguments.modules_in(encoded) == ["0"]
    with pytest.raises(arguments.Unrecordable):
        arguments.encode(object(), lambda m: None)
    with pytest.raises(arguments.Unrecordable):
        arguments.encode(torch.nn.Linear(1, 1), lambda m: None)  # a module outside the model


def test_one_definition_of_level_start_index_in_torch_and_onnx() -> None:
    """The catalog's rule, run on tensors and written as ONNX nodes, gives the same offsets."""
    import onnx
    import onnx_graphsurgeon as gs

    shapes = np.array([[100, 160], [50, 80], [25, 40]], dtype=np.int64)
    rule = _entry().derivation("level_start_index")
    from_torch = rule.run(TorchOps(), [torch.from_numpy(shapes)]).tolist()
    assert from_torch == rule.run(TorchOps(), [[(100, 160), (50, 80), (25, 40)]]).tolist() == [0, 16000, 20000]
    for opset in (11, 18):
        source = gs.Variable("spatial_shapes", dtype=np.int64, shape=[3, 2])
        graph = gs.Graph(inputs=[source], opset=opset)
        names = (f"derived_{index}" for index in range(100))
        derived = rule.run(OnnxOps(graph, lambda _stem, names=names: next(names)), [source])
        graph.outputs = [derived.to_variable(dtype=np.int64, shape=[3]) if isinstance(derived, gs.Constant)
                         else derived]
        model = gs.export_onnx(graph)
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert session.run(None, {"spatial_shapes": shapes})[0].tolist() == from_torch


def test_split_levels_needs_the_same_points_at_every_level() -> None:
    rule = _entry().derivation("split_levels")
    flat = torch.zeros(1, 7, 2, 12, 2)
    assert tuple(rule.run(TorchOps(), [flat, [(4, 5), (2, 3), (1, 1)], [4, 4, 4]]).shape) == (1, 7, 2, 3, 4, 2)
    assert tuple(rule.run(TorchOps(), [torch.zeros(1, 7, 2, 12), torch.ones(3, 2)]).shape) == (1, 7, 2, 3, 4)
    with pytest.raises(Inexpressible, match="different numbers of points"):
        rule.run(TorchOps(), [flat, [(4, 5), (2, 3), (1, 1)], [4, 4, 2]])


def _library_call(project: Project, **replace: str) -> Path:
    text = (ROOT / "pipelines" / "hf_rt_detr_v2_call.yaml").read_text().replace("python_path: [..]",
                                                                               f"python_path: [{ROOT}]")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return project.write("library.yaml", text)


def test_a_call_the_plugin_cannot_stand_for_is_refused(project: Project) -> None:
    pipeline = _library_call(project, **{"require: {method: default}": "require: {method: discrete}"})
    result = project.run("run", str(pipeline))
    assert result.code == 2, result.text
    assert "the call passes method='default'; MultiscaleDeformableAttnPlugin_TRT computes only " \
           "method='discrete'" in result.err
    assert "Traceback" not in result.text


def test_a_derivation_rule_the_plugin_lacks_is_a_located_error(project: Project) -> None:
    pipeline = _library_call(project, **{"{rule: split_levels, from: [attention_weights":
                                         "{rule: split_points, from: [attention_weights"})
    result = project.run("validate", str(pipeline))
    assert result.code == 2
    assert "library.yaml:33: export.plugins[0].derive.weights.rule: MultiscaleDeformableAttnPlugin_TRT has no " \
           "derivation 'split_points'" in result.err
    assert "split_levels" in result.err and not project.store.exists()


def test_unknown_frozen_input_names_the_inputs(project: Project) -> None:
    text = (ROOT / "pipelines" / "hf_grounding_dino_model.yaml").read_text().replace(
        "python_path: [..]", f"python_path: [{ROOT}]").replace("constants: [input_ids,", "constants: [input_idz,")
    result = project.run("run", str(project.write("gd.yaml", text)))
    assert result.code == 2, result.text
    assert "export.constants: input_idz is not a tensor input of the model" in result.err
    assert "pixel_values" in result.err


def test_an_op_no_exporter_writes_names_the_op_and_the_ways_out(project: Project) -> None:
    text = (ROOT / "pipelines" / "hf_grounding_dino_model.yaml").read_text().replace(
        "python_path: [..]", f"python_path: [{ROOT}]").replace(
        "  constants: [input_ids, attention_mask, token_type_ids]\n", "")
    result = project.run("run", str(project.write("gd.yaml", text)))
    assert result.code == 2, result.text
    assert "export.exporter: the torchscript exporter cannot write aten::isin at opset 17 (used in" in result.err
    assert "export.constants" in result.err and "Traceback" not in result.text


COLLIDING = '''
import torch

from examples.ops import msda


class Model(torch.nn.Module):
    """Returns an output named like one of its inputs (OmDet-Turbo's classes_structure does so)."""

    def forward(self, value, sampling_locations, attention_weights):
        shapes = torch.tensor([[2, 3], [1, 2]])
        starts = torch.tensor([0, 6])
        out = msda.ms_deform_attn(value, shapes, starts, sampling_locations, attention_weights)
        return {"value": out, "weights": attention_weights.sum(-1)}


def build():
    return Model()


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(1, 3, 2, 2, 2, generator=generator)
    return {"value": torch.randn(1, 8, 2, 4, generator=generator),
            "sampling_locations": torch.rand(1, 3, 2, 2, 2, 2, generator=generator),
            "attention_weights": weights / weights.sum((-1, -2), keepdim=True)}
'''


def test_an_output_may_share_its_name_with_an_input(project: Project) -> None:
    project.write("colliding.py", COLLIDING)
    pipeline = project.write("colliding.yaml", f"""\
        version: 1
        python_path: [., {ROOT}]
        model: {{factory: colliding:build, inputs: colliding:inputs}}
        capture: {{calls: all, outputs: [value, weights]}}
        export:
          scope: model
          plugins:
            - {{replace: examples.ops.msda:ms_deform_attn, op: {MSDA}}}
        bench: {{enabled: false}}
        """)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    verify = json.loads(next(project.store.glob("verify/*/verify.json")).read_text())
    assert set(verify["outputs"]) == {"value", "weights"} and verify["passed"]


def test_dynamo_names_an_op_it_has_no_function_for(project: Project) -> None:
    """RT-DETRv2 checks a tensor condition (torch_compilable_check) that dynamo cannot translate."""
    text = (ROOT / "pipelines" / "hf_rt_detr_v2_model.yaml").read_text().replace(
        "python_path: [..]", f"python_path: [{ROOT}]").replace("exporter: torchscript", "exporter: dynamo").replace(
        "opset: 17", "opset: 18")
    result = project.run("run", str(project.write("v2.yaml", text)))
    assert result.code == 2, result.text
    assert "export.exporter: the dynamo exporter cannot write aten._is_all_true at opset 18 (used in module " \
           "'decoder.layers.0.encoder_attn', File " in result.err
    assert "modeling_rt_detr_v2.py" in result.err and "Traceback" not in result.text

"""`orchestrate init`: the calls a plugin can stand for, found in one forward, and a pipeline that runs as written.

The example encoder (fast) and two transformers families go from `init` through `run` to a verified
plugin graph; a model without such a call is told what was looked for, and calls that almost fit (points
per level that differ, another sampling method, a function no import path reaches) say why they do not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import Project

SMALL_ENCODER = ["--model", "examples.maskdino_encoder:build_encoder",
                 "--kwargs", '{"num_layers": 2, "d_model": 32, "heads": 2, "points": 2, "ffn_dim": 64}',
                 "--inputs-kwargs", "shapes=[[8, 10], [4, 5], [2, 3]]", "--inputs-kwargs", "d_model=32"]
MSDA = "MultiscaleDeformableAttnPlugin_TRT"

# A user's model whose attention-like calls do not fit the plugin, each for another reason.
NEAR_MISSES = '''
import torch
from torch import nn


def uneven_attention(value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list):
    """Levels and points flattened, with 4, 2 and 2 points per level."""
    return value.mean(1, keepdim=True).expand(-1, sampling_locations.shape[1], -1, -1).flatten(2)


def nearest_attention(value, value_spatial_shapes, sampling_locations, attention_weights, num_points_list, method):
    return value.mean(1, keepdim=True).expand(-1, sampling_locations.shape[1], -1, -1).flatten(2)


def make_local():
    def local_attention(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return value.mean(1, keepdim=True).expand(-1, sampling_locations.shape[1], -1, -1).flatten(2)
    return local_attention


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.local = make_local()

    def forward(self, value, queries):
        shapes = [(4, 4), (2, 2), (1, 1)]
        heads = value.view(1, 21, 2, 4)
        uneven = uneven_attention(heads, shapes, queries[..., :8, :], queries[..., :8, 0], [4, 2, 2])
        nearest = nearest_attention(heads, shapes, queries, queries[..., 0], [4, 4, 4], "discrete")
        spatial = torch.tensor(shapes)
        starts = torch.tensor([0, 16, 20])
        local = self.local(heads, spatial, starts, queries.view(1, 5, 2, 3, 4, 2), queries[..., 0].view(1, 5, 2, 3, 4))
        return self.proj(uneven + nearest + local)


def build():
    return Net().eval()


def inputs():
    generator = torch.Generator().manual_seed(0)
    return {"value": torch.randn(1, 21, 8, generator=generator),
            "queries": torch.rand(1, 5, 2, 12, 2, generator=generator)}
'''

NO_MATCH = '''
import torch
from torch import nn


def deform(value, spatial_shapes, offsets):
    return value + offsets


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x)
        return deform(out, torch.tensor([[2, 3]]), x)


def build():
    return Net().eval()


def build_inputs():
    return (torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0)),)
'''


def _init(project: Project, *args: str, env: dict[str, str] | None = None) -> tuple[Path, str]:
    path = project.root / "init.yaml"
    result = project.run("init", *args, "-o", str(path), env=env)
    assert result.code == 0, result.text
    return path, result.out


def _run_passes(project: Project, path: Path) -> dict:
    result = project.run("run", str(path))
    assert result.code == 0, result.text
    assert re.search(r"^verify\s+\w+\s+passed", result.out, re.M), result.out
    verify = json.loads(max(project.store.glob("verify/*/verify.json"), key=lambda p: p.stat().st_mtime).read_text())
    for output, stats in verify["outputs"].items():  # a verify that could not fail would prove nothing
        assert stats["reference_abs_max"] > 10 * stats["atol"], output
    return verify


def _whole_model(text: str) -> str:
    """The pipeline with its commented whole-model variant swapped in, as its comment says to."""
    capture = re.search(r"^capture:\n(  .*\n)+", text, re.M)
    assert capture is not None and "# capture:\n#   calls: all\n" in text
    text = text.replace(capture.group(0), "capture:\n  calls: all\n")
    return re.sub(r"^  scope: call\b", "  scope: model", text, flags=re.M)


def test_init_on_the_example_encoder_writes_a_pipeline_that_runs(project: Project) -> None:
    path, out = _init(project, *SMALL_ENCODER)
    assert f"{MSDA} stands for examples.ops.msda:ms_deform_attn, 2 calls per forward" in out
    assert "encoder.layers.0.self_attn: value f32[1,106,2,16], spatial_shapes i64[3,2]" in out
    assert "encoder.layers.1.self_attn: arguments as above -> f32[1,106,32]" in out
    assert "level_start_index <- the call's level_start_index i64[3] [0, 80, 100], cast to int32" in out
    text = path.read_text()
    assert "  module: encoder.layers.0.self_attn" in text and "  call: examples.ops.msda:ms_deform_attn" in text
    assert "dtypes: {spatial_shapes: int32, level_start_index: int32}" in text
    _run_passes(project, path)
    path.write_text(_whole_model(text))
    verify = _run_passes(project, path)
    assert len(verify["plugin_nodes"]) == 2, "each plugin node is compared with the call it stands for"


@pytest.mark.parametrize(("family", "expected"), [
    ("rt_detr_v2", ["require: {method: default}", "spatial_shapes: {rule: spatial_shapes, from: value_spatial_shapes}",
                    "locations: {rule: split_levels, from: [sampling_locations, value_spatial_shapes, "
                    "num_points_list]}", "  module: decoder.layers.0.encoder_attn"]),
    ("deformable_detr", ["  module: encoder.layers.0.self_attn.attn",
                         "  call: transformers.models.deformable_detr.modeling_deformable_detr:"
                         "MultiScaleDeformableAttention.forward"]),
])
def test_init_on_a_library_model_writes_a_pipeline_that_runs(project: Project, family: str,
                                                               expected: list[str]) -> None:
    pytest.importorskip("transformers")
    path, out = _init(project, "--model", f"examples.hf_models:build_{family}")
    assert "every one present or derivable" in out
    text = path.read_text()
    for line in expected:
        assert line in text
    assert "inputs: examples.hf_models:" + family + "_inputs" in text, "the inputs callable beside the factory"
    _run_passes(project, path)


def test_init_says_what_it_looked_for_when_nothing_matches(project: Project) -> None:
    (project.root / "plain_model.py").write_text(NO_MATCH)
    result = project.run("init", "--model", "plain_model:build", "-o", str(project.root / "p.yaml"),
                         env={"PYTHONPATH": str(project.root)})
    assert result.code == 1, result.text
    assert "no call maps onto a plugin; looked for" in result.out
    assert f"{MSDA}: a function taking value [N, S, M, D]" in result.out
    assert "closest: plain_model:deform (lacks sampling_locations, attention_weights)" in result.out
    assert not (project.root / "p.yaml").exists()


def test_init_says_why_a_near_miss_cannot_be_the_plugin(project: Project) -> None:
    (project.root / "near_model.py").write_text(NEAR_MISSES)
    result = project.run("init", "--model", "near_model:build", "--inputs", "near_model:inputs",
                         "-o", str(project.root / "p.yaml"), env={"PYTHONPATH": str(project.root)})
    assert result.code == 1, result.text
    out = result.out
    assert f"near_model:uneven_attention takes what {MSDA} takes but cannot be it (1 call per forward)" in out
    assert f"why: the levels sample different numbers of points [4, 2, 2]; {MSDA} samples the same P points" in out
    assert "why: the call samples with method='discrete'; the plugin computes bilinear sampling only" in out
    assert "near_model:make_local.<locals>.local_attention takes what" in out
    assert "why: it is defined inside another function, so no import path reaches it" in out
    assert not (project.root / "p.yaml").exists()

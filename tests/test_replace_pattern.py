"""replace_pattern: multi-scale deformable attention written with GridSample becomes one plugin node each,
found by the catalog entry's pattern without a tensor name.

On graphs the exporters write (TorchScript at opsets 12 to 18, where opset 12 has ONNX Runtime's contrib
GridSample and Split, Unsqueeze and ReduceSum settings as attributes; dynamo), in the ways models write
the attention (levels split by Split or Slice, stacked or concatenated along the points, weights applied
to the stack or to each level before the levels are added up), each replaced graph computes what the
original did. A graph without the attention says what was looked for; a near-match says why it is not
the attention. The shipped pipelines (a library encoder, transformers' RT-DETR exported whole) verify.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, Project
from test_pure_torch import small_pure_torch
from test_surgery import PLUGIN, chain_graph, run_edits
from torch import nn

from orchestrator import plugins as catalog
from orchestrator.backends.onnxruntime import single_session
from orchestrator.errors import UserError

MSDA = "MultiscaleDeformableAttnPlugin_TRT"
EDIT = [{"replace_pattern": {"op": MSDA}}]
SHAPES = ((6, 8), (3, 4), (2, 2))
TOKENS = sum(h * w for h, w in SHAPES)


class Attention(nn.Module):
    """Multi-scale deformable attention in plain PyTorch, in the variations models write it."""

    def __init__(self, split: str = "split", combine: str = "stack", weights: str = "stacked",
                 sum_levels: bool = True, points: list[int] | None = None, channels_first: bool = False):
        super().__init__()
        self.split, self.combine, self.weights_at, self.sum_levels, self.points = \
            split, combine, weights, sum_levels, points
        self.channels_first = channels_first

    def forward(self, value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n, _, m, d = value.shape
        queries, levels = locations.shape[1], len(SHAPES)
        samples = [F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                   for part, grid in zip(self._values(value), self._grids(locations), strict=True)]
        if self.weights_at == "per_level":  # each level weighted and summed over its points, then added up
            per_level = weights.transpose(1, 2).reshape(n * m, 1, queries, levels, -1)
            out = (samples[0] * per_level[:, :, :, 0]).sum(-1)
            for level in range(1, levels):
                out = out + (samples[level] * per_level[:, :, :, level]).sum(-1)
        else:
            stacked = torch.stack(samples, -2).flatten(-2) if self.combine == "stack" else torch.cat(samples, -1)
            product = stacked * weights.transpose(1, 2).reshape(n * m, 1, queries, -1)
            if not self.sum_levels:  # sums each level's points, never the levels
                return product.view(n * m, d, queries, levels, -1).sum(-1)
            out = product.sum(-1)
        result = out.view(n, m * d, queries)
        return result if self.channels_first else result.transpose(1, 2)

    def _values(self, value: torch.Tensor) -> list[torch.Tensor]:
        n, _, m, d = value.shape
        sizes = [h * w for h, w in SHAPES]
        if self.split == "split":
            parts = list(value.split(sizes, dim=1))
        else:
            parts = [value[:, sum(sizes[:k]):sum(sizes[:k + 1])] for k in range(len(sizes))]
        return [p.flatten(2).transpose(1, 2).reshape(n * m, d, h, w) for p, (h, w) in zip(parts, SHAPES, strict=True)]

    def _grids(self, locations: torch.Tensor) -> list[torch.Tensor]:
        grids = 2 * locations - 1
        if self.points:  # [N, Lq, M, sum(P), 2] split by each level's points (RT-DETRv2's layout)
            return list(grids.permute(0, 2, 1, 3, 4).flatten(0, 1).split(self.points, dim=-2))
        return [grids[:, :, :, level].transpose(1, 2).flatten(0, 1) for level in range(len(SHAPES))]


def arguments(points: list[int] | None = None, batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(batch, TOKENS, 2, 4, generator=generator)
    if points:
        return (value, torch.rand(batch, 5, 2, sum(points), 2, generator=generator),
                torch.rand(batch, 5, 2, sum(points), generator=generator))
    locations = torch.rand(batch, 5, 2, 3, 2, 2, generator=generator)
    return value, locations, torch.rand(batch, 5, 2, 3, 2, generator=generator)


def exported(module: nn.Module, path: Path, opset: int = 17, dynamo: bool = False,
             points: list[int] | None = None) -> onnx.ModelProto:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(module, arguments(points), str(path), opset_version=opset, dynamo=dynamo,
                          input_names=["value", "locations", "weights"], output_names=["out"])
    return onnx.load(str(path))


def same_result(original: onnx.ModelProto, replaced: onnx.ModelProto) -> float:
    """The largest difference between the outputs of the original graph and of the plugin graph."""
    feeds = dict(zip(["value", "locations", "weights"], (a.numpy() for a in arguments()), strict=True))
    before = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    entry = catalog.lookup(MSDA)
    after = single_session(replaced, {MSDA: entry}).run(None, feeds)
    return max(float(np.abs(a - b).max()) for a, b in zip(before, after, strict=True))


def plugin_nodes(model: onnx.ModelProto) -> list[Any]:
    return [n for n in model.graph.node if n.op_type == MSDA]


def replaced_once(tmp_path: Path, model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The edit on `model`; checks one plugin node with int32 constant level inputs and no GridSample left."""
    written, record = run_edits(tmp_path, model, EDIT, [PLUGIN])
    nodes = plugin_nodes(written)
    assert len(nodes) == 1 and "GridSample" not in [n.op_type for n in written.graph.node]
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    assert constants[nodes[0].input[1]].tolist() == [list(s) for s in SHAPES]
    assert constants[nodes[0].input[2]].tolist() == [0, 48, 60]
    assert constants[nodes[0].input[1]].dtype == np.int32
    return written, record["edits"][0]


# ---------------------------------------------------------------------- exporters and ways of writing it

@contextlib.contextmanager
def contrib_grid_sample(opset: int) -> Any:
    """Before opset 16 ONNX has no GridSample: exporters write ONNX Runtime's com.microsoft one."""
    def symbolic(g: Any, value: Any, grid: Any, *_: Any) -> Any:
        return g.op("com.microsoft::GridSample", value, grid, mode_s="bilinear", padding_mode_s="zeros",
                    align_corners_i=0)

    torch.onnx.register_custom_op_symbolic("::grid_sampler", symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("::grid_sampler", opset)


@pytest.mark.parametrize("opset", [12, 16, 18])
def test_torchscript_exports_at_several_opsets(tmp_path: Path, opset: int) -> None:
    with contrib_grid_sample(opset) if opset < 16 else contextlib.nullcontext():
        original = exported(Attention(), tmp_path / "plain.onnx", opset)
    if opset < 13:
        assert {a.name for n in original.graph.node if n.op_type == "Split" for a in n.attribute} >= {"split"}
    written, edit = replaced_once(tmp_path, original)
    assert same_result(original, written) < 1e-5
    assert edit["replaced"][0]["anchors"] == ["/GridSample", "/GridSample_1", "/GridSample_2"]
    assert "replaced 1 subgraph" in edit["summary"] and edit["near_matches"] == []


def test_dynamo_export(tmp_path: Path) -> None:
    original = exported(Attention(), tmp_path / "plain.onnx", 18, dynamo=True)
    written, _ = replaced_once(tmp_path, original)
    assert same_result(original, written) < 1e-5


@pytest.mark.parametrize("variant", [{"split": "slice", "combine": "concat"}, {"weights": "per_level"}],
                         ids=["slice-and-concat-along-points", "weights-per-level-then-added"])
def test_the_ways_models_write_it(tmp_path: Path, variant: dict[str, str]) -> None:
    original = exported(Attention(**variant), tmp_path / "plain.onnx")
    written, _ = replaced_once(tmp_path, original)
    assert same_result(original, written) < 1e-5
    assert "Transpose" not in [n.op_type for n in written.graph.node]  # the inputs were found in the plugin's layout


def test_a_result_in_another_layout_gets_the_plugin_output_rearranged(tmp_path: Path) -> None:
    original = exported(Attention(channels_first=True), tmp_path / "plain.onnx")  # [N, M*D, Lq]
    written, edit = replaced_once(tmp_path, original)
    assert same_result(original, written) < 1e-5
    mapping = edit["replaced"][0]["mapping"]  # how verify brings the plugin's [N, Lq, M, D] to the replaced tensor
    assert mapping == {"factors": [2, 5, 2, 4], "perm": [0, 2, 3, 1]}


# ---------------------------------------------------------------------- nothing, or almost

def test_a_graph_without_the_attention_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        run_edits(tmp_path, chain_graph(), EDIT, [PLUGIN])
    text = str(caught.value)
    assert "surgery[0].replace_pattern" in text and "no subgraph computes multi-scale deformable attention" in text
    assert "GridSample (bilinear, zeros, align_corners 0) at 2*locations - 1" in text
    assert "the graph has no GridSample node" in text


@pytest.mark.parametrize(("variant", "points", "reason"), [
    ({"points": [2, 3, 2], "combine": "concat"}, [2, 3, 2], "the levels sample different numbers of points (2, 3, 2)"),
    ({"sum_levels": False}, None, "leave the graph before they are summed over the levels and points"),
], ids=["points-differ-per-level", "levels-never-summed"])
def test_a_near_match_is_reported_with_its_reason(tmp_path: Path, variant: dict[str, Any], points: list[int] | None,
                                                  reason: str) -> None:
    original = exported(Attention(**variant), tmp_path / "plain.onnx", points=points)
    with pytest.raises(UserError) as caught:
        run_edits(tmp_path, original, EDIT, [PLUGIN])
    assert "Near-matches: /GridSample .. /GridSample_2 (3 nodes): " in str(caught.value)
    assert reason in str(caught.value)


class TwoAttentions(nn.Module):
    """One attention the plugin computes, and one that never sums its levels."""

    def __init__(self) -> None:
        super().__init__()
        self.good, self.near = Attention(), Attention(sum_levels=False)

    def forward(self, value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> Any:
        return self.good(value, locations, weights), self.near(value, locations * 0.5, weights)


def test_what_matches_is_replaced_and_the_near_match_is_left_and_named(tmp_path: Path) -> None:
    with contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(TwoAttentions(), arguments(), str(tmp_path / "two.onnx"), opset_version=17, dynamo=False,
                          input_names=["value", "locations", "weights"], output_names=["out", "near"])
    original = onnx.load(str(tmp_path / "two.onnx"))
    written, record = run_edits(tmp_path, original, EDIT, [PLUGIN])
    edit = record["edits"][0]
    assert [r["node"] for r in edit["replaced"]] == ["/good/MultiscaleDeformableAttnPlugin_TRT"]
    assert edit["replaced"][0]["original"] == "out" and len(plugin_nodes(written)) == 1
    assert [n.op_type for n in written.graph.node].count("GridSample") == 3  # the near-match's, untouched
    assert "1 near-match left as they are: /near/GridSample .. /near/GridSample_2 (3 nodes): the samples in" \
        in edit["summary"]
    assert same_result(original, written) < 1e-5


def test_the_edit_needs_the_plugin_declared(project: Project) -> None:
    pipeline = project.write("p.yaml", (ROOT / "pipelines" / "msda_pure_torch_pattern.yaml").read_text().replace(
        "surgery:\n  - replace_pattern: {op: MultiscaleDeformableAttnPlugin_TRT}",
        "surgery:\n  - replace_pattern: {op: MultiscaleDeformableAttnPlugin}"))
    result = project.run("plan", str(pipeline))
    assert result.code == 2, result.text
    assert "surgery[0].replace_pattern.op" in result.err
    assert "replace_pattern makes MultiscaleDeformableAttnPlugin nodes, but export.plugins declares no" in result.err


# ---------------------------------------------------------------------- the shipped pipelines

def small_pure_torch_pattern(project: Project) -> Path:
    """pipelines/msda_pure_torch_pattern.yaml unchanged but for a small model (2 layers, d_model 32)."""
    return small_pure_torch(project, "msda_pure_torch_pattern.yaml")


def stage_lines(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.split()[:1] and line.split()[0] in
            ("capture", "export", "surgery", "build", "verify", "bench")}


def test_a_library_encoder_reaches_a_verified_plugin_graph_without_tensor_names(project: Project) -> None:
    pipeline = small_pure_torch_pattern(project)
    plugins = yaml.safe_load(pipeline.read_text())["export"]["plugins"]
    assert [sorted(p) for p in plugins] == [["domain", "op"]]  # no callable, no subgraph tensors
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    lines = stage_lines(result.out)
    assert "no plugin node" in lines["export"] and "2 plugin nodes" in lines["surgery"]
    assert "passed" in lines["verify"] and "2 plugin nodes vs the subgraphs they replaced max|err|" in lines["verify"]
    verify = json.loads(next(project.store.glob("verify/*/verify.json")).read_text())
    assert sorted(verify["plugin_nodes"]) == [f"/model/layers.{k}/self_attn/{MSDA}" for k in (0, 1)]
    assert all(s["max_abs"] < 1e-5 and not s["failed"] for s in verify["plugin_nodes"].values())
    record = json.loads(next(project.store.glob("surgery/*/surgery.json")).read_text())
    edit = record["edits"][0]
    assert [r["node"] for r in edit["replaced"]] == [f"/model/layers.{k}/self_attn/{MSDA}" for k in (0, 1)]
    assert [r["original"] for r in edit["replaced"]] == [f"/model/layers.{k}/self_attn/Transpose_7_output_0"
                                                         for k in (0, 1)]

    plain = next(project.store.glob("export/*/model.onnx"))  # the same graph as a user's own ONNX file
    own = project.write("own.yaml", pipeline.read_text().replace(
        "  plugin_nodes: surgery ", f"  onnx: {plain}\n  plugin_nodes: surgery "))
    result = project.run("run", str(own))
    assert result.code == 0, result.text
    lines = stage_lines(result.out)
    assert "cached" in lines["capture"] and "given ONNX model.onnx" in lines["export"]
    assert "2 plugin nodes" in lines["surgery"] and "FAILED" not in lines["verify"]  # the same plugin graph


def test_rt_detr_exported_whole_gets_every_attention_replaced_and_verifies(project: Project) -> None:
    pytest.importorskip("transformers")
    result = project.run("run", str(ROOT / "pipelines" / "rt_detr_pattern.yaml"))
    assert result.code == 0, result.text
    lines = stage_lines(result.out)
    assert "no plugin node" in lines["export"] and "passed" in lines["verify"]
    plain = onnx.load(str(next(project.store.glob("export/*/model.onnx"))))
    assert [n.op_type for n in plain.graph.node].count("GridSample") == 6  # 3 levels x 2 decoder layers
    record = json.loads(next(project.store.glob("surgery/*/surgery.json")).read_text())
    replaced = record["edits"][0]["replaced"]
    assert [r["node"] for r in replaced] == [f"/model/decoder/layers.{k}/encoder_attn/attn/{MSDA}" for k in (0, 1)]
    assert record["diff"]["ops"]["GridSample"] == [6, 0] and record["graph"]["plugin_nodes"]
    verify = json.loads(next(project.store.glob("verify/*/verify.json")).read_text())
    assert all(stats["max_abs"] < 1e-4 for stats in verify["outputs"].values())
    assert "2 plugin nodes vs the subgraphs they replaced max|err|" in lines["verify"]  # per layer, on ONNX Runtime
    nodes = verify["plugin_nodes"]
    assert [nodes[r["node"]]["replaced"] for r in replaced] == [r["original"] for r in replaced]
    assert all(stats["max_abs"] < 1e-5 and stats["reference_abs_max"] > 0.1 for stats in nodes.values())

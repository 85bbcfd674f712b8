"""Cache keys: each config field changes exactly the keys downstream of it, and nothing else does."""

from __future__ import annotations

import pytest
from conftest import ROOT, Project

from orchestrator import imports
from orchestrator.config import spec
from orchestrator.planning.plan import make_plan
from orchestrator.store.digest import DigestCache

ALL = {"capture", "export", "build", "verify", "bench"}
FROM_EXPORT = {"export", "build", "verify", "bench"}
FROM_BUILD = {"build", "verify", "bench"}


def keys_of(path) -> dict[str, str]:
    with imports.search_path([ROOT]):
        planned = make_plan(spec.load(path), DigestCache(None))
    return {node.kind: node.key for node in planned.order()}


CHANGES = [
    ("seed: 0}", "seed: 1}", ALL),
    ("[[8, 10], [4, 5], [2, 3]]", "[[8, 10], [4, 6], [2, 3]]", ALL),
    ("module: encoder.layers.1.self_attn", "module: encoder.layers.0.self_attn", ALL),
    ("call: examples.ops.msda:ms_deform_attn\nexport:", "call: examples.ops.msda:ms_deform_attn\n  occurrence: 0\n"
     "  outputs: [result]\nexport:", ALL),
    ("opset: 11", "opset: 13", FROM_EXPORT),
    ("domain: trt.plugins", "domain: my.plugins", FROM_EXPORT),
    ("domain: trt.plugins", "domain: trt.plugins\n      namespace: ns", FROM_EXPORT),
    ("domain: trt.plugins", "domain: trt.plugins\n      version: '2'", FROM_EXPORT),
    ("bench:", "build:\n  precision: fp16\nbench:", FROM_BUILD),
    ("bench:", "build:\n  workspace: 1GiB\nbench:", FROM_BUILD),
    ("bench:", "build:\n  timing_cache: false\nbench:", FROM_BUILD),
    ("atol: 1.0e-4", "atol: 1.0e-5", {"verify"}),
    ("rtol: 1.0e-3", "rtol: 1.0e-2", {"verify"}),
    ("rtol: 1.0e-3", "rtol: 1.0e-3\n  fail_on: [nan]", {"verify"}),
    ("iterations: 3", "iterations: 4", {"bench"}),
    ("warmup: 1", "warmup: 2", {"bench"}),
    # Not in any key: the name, the thread count, comments, layout, explicit defaults, key order.
    ("name: small", "name: renamed", set()),
    ("bench:", "build:\n  threads: 1\nbench:", set()),
    ("version: 1", "# a comment\nversion: 1", set()),
    ("opset: 11", "opset: 11\n  exporter: torchscript\n  scope: call", set()),
    ("atol: 1.0e-4\n  rtol: 1.0e-3", "rtol: 0.001\n  atol: 0.0001", set()),
    ("kwargs: {num_layers: 2, d_model: 32, heads: 2, levels: 3, points: 2, ffn_dim: 64, seed: 0}",
     "kwargs:\n    seed: 0\n    ffn_dim: 64\n    points: 2\n    levels: 3\n    heads: 2\n    d_model: 32\n"
     "    num_layers: 2", set()),
]


@pytest.mark.parametrize(("old", "new", "changed"), CHANGES, ids=[c[1].split("\n")[-1][:30] for c in CHANGES])
def test_a_field_changes_exactly_its_downstream_keys(project: Project, old: str, new: str, changed: set[str]) -> None:
    base = keys_of(project.small("a.yaml"))
    edited = keys_of(project.small("b.yaml", **{old: new}))
    assert {stage for stage in base if base[stage] != edited[stage]} == changed


def test_renaming_the_pipeline_file_changes_no_key(project: Project) -> None:
    first = project.small("one.yaml")
    keys = keys_of(first)
    moved = first.rename(project.root / "two.yaml")
    assert keys_of(moved) == keys


def test_editing_the_model_source_changes_capture_and_everything_after(project: Project, tmp_path) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    source = (ROOT / "examples" / "maskdino_encoder.py").read_text()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(source)
    pipeline = project.small("user.yaml", **{"factory: examples.maskdino_encoder:build_encoder":
                                             "factory: userpkg.model:build_encoder"})
    pipeline.write_text("python_path: [.]\n" + pipeline.read_text())
    before = keys_of(pipeline)
    (package / "model.py").write_text(source + "\n# an edit\n")
    after = keys_of(pipeline)
    assert {stage for stage in before if before[stage] != after[stage]} == ALL


def test_tool_versions_are_in_the_keys(project: Project, monkeypatch) -> None:
    from orchestrator import environment

    base = keys_of(project.small())
    real = environment.tool_version

    def fake_version(name: str) -> str | None:
        return "9.9.9" if name == "onnxruntime" else real(name)

    monkeypatch.setattr(environment, "tool_version", fake_version)
    changed = keys_of(project.small())
    assert {stage for stage in base if base[stage] != changed[stage]} == FROM_BUILD


def test_the_build_gpu_follows_cuda_visible_devices(monkeypatch) -> None:
    from orchestrator import environment

    listed = (("0", "GPU-aaaa1111", "NVIDIA A100-SXM4-80GB", "8.0"),
              ("1", "GPU-bbbb2222", "NVIDIA H100 80GB HBM3", "9.0"))
    monkeypatch.setattr(environment, "gpus_with_ids", lambda: listed)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert environment.build_gpu() == "NVIDIA A100-SXM4-80GB sm8.0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert environment.build_gpu() == "NVIDIA H100 80GB HBM3 sm9.0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert environment.build_gpu() == "NVIDIA H100 80GB HBM3 sm9.0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert environment.build_gpu() == "none"
    assert environment.gpu_identity("H100") == "type:H100"
    assert environment.gpu_matches("type:h100") and not environment.gpu_matches("type:L4")

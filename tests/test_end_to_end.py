"""End-to-end runs of the CLI on small shapes, and once on the real layer-07 pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, Project, stage_status

STAGES = ["capture", "export", "build", "verify", "bench"]


def test_cold_run_then_cached_then_tolerance_edit(project: Project) -> None:
    pipeline = project.small()
    cold = project.run("run", str(pipeline))
    assert cold.code == 0, cold.text
    assert stage_status(cold.out) == {"capture": "ran", "export": "ran", "build": "ran", "verify": "passed",
                                      "bench": "ran"}

    again = project.run("run", str(pipeline))
    assert again.code == 0, again.text
    assert set(stage_status(again.out).values()) == {"cached"}
    assert "nothing to do" in again.out

    pipeline.write_text(pipeline.read_text().replace("atol: 1.0e-4", "atol: 2.0e-4"))
    edited = project.run("run", str(pipeline))
    assert edited.code == 0, edited.text
    status = stage_status(edited.out)
    assert status["verify"] == "passed"
    assert [s for s, v in status.items() if v != "cached"] == ["verify"]
    why = project.run("plan", str(pipeline), "--why")
    assert "nothing to do" in why.out

    pipeline.write_text(pipeline.read_text().replace("atol: 2.0e-4", "atol: 3.0e-4"))
    reason = project.run("plan", str(pipeline), "--why")
    assert "config changed: verify.atol 0.0002 -> 0.0003" in " ".join(reason.out.split())


def test_verify_failure_exits_1_and_names_the_check(project: Project) -> None:
    pipeline = project.small(**{"atol: 1.0e-4": "atol: 0.0", "rtol: 1.0e-3": "rtol: 0.0"})
    result = project.run("run", str(pipeline))
    assert result.code == 1, result.text
    assert stage_status(result.out)["verify"] == "failed"
    assert "outside atol 0 + rtol 0" in result.text
    cached = project.run("run", str(pipeline))
    assert cached.code == 1
    assert stage_status(cached.out)["verify"] == "failed"


def write_seed_folder(folder: Path, int_dtype: torch.dtype = torch.int64, suffix: str = ".pt") -> None:
    """A capture folder laid out as in the hand-written workflow (input_ prefixes, im2col_step.pt)."""
    from examples.ops.msda import ms_deform_attn

    generator = torch.Generator().manual_seed(3)
    shapes = torch.tensor([[6, 8], [3, 4], [2, 2]], dtype=int_dtype)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    tokens = int(sizes.sum())
    value = torch.randn(1, tokens, 2, 8, generator=generator)
    locations = torch.rand(1, 20, 2, 3, 4, 2, generator=generator) * 1.3 - 0.15
    weights = torch.rand(1, 20, 2, 3, 4, generator=generator).softmax(-1)
    output = ms_deform_attn(value, shapes, starts, locations, weights)
    folder.mkdir(parents=True)
    tensors = {"value": value, "input_spatial_shapes": shapes, "input_level_start_index": starts,
               "sampling_locations": locations, "attention_weights": weights, "output": output}
    for name, tensor in tensors.items():
        if suffix == ".pt":
            torch.save(tensor, folder / f"{name}.pt")
        else:
            np.save(folder / f"{name}.npy", tensor.numpy())
    torch.save(64, folder / "im2col_step.pt")


SEED_PIPELINE = """\
version: 1
name: seed_folder
capture:
  from_dir: {folder}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
bench:
  enabled: false
"""


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_run_from_seed_capture_folder_with_int64_indices(project: Project, suffix: str) -> None:
    write_seed_folder(project.root / "layer", suffix=suffix)
    pipeline = project.write("seed.yaml", SEED_PIPELINE.format(folder="layer"))
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "ran", "export": "ran", "build": "ran", "verify": "passed"}
    assert "ignored im2col_step.pt" in result.out
    export_json = next((project.store / "export").glob("*/export.json"))
    node = json.loads(export_json.read_text())["plugin_nodes"][0]
    assert node["inputs"][1]["dtype"] == "int32" and node["inputs"][2]["dtype"] == "int32"
    capture_json = next((project.store / "capture").glob("*/capture.json"))
    assert json.loads(capture_json.read_text())["inputs"]["spatial_shapes"]["dtype"] == "int64"


def test_moving_the_capture_folder_and_renaming_the_file_change_no_key(project: Project) -> None:
    write_seed_folder(project.root / "layer")
    first = project.write("seed.yaml", SEED_PIPELINE.format(folder="layer"))
    assert project.run("run", str(first)).code == 0
    (project.root / "layer").rename(project.root / "moved")
    second = project.write("renamed.yaml", "# a comment\n" + SEED_PIPELINE.format(folder="moved"))
    first.unlink()
    result = project.run("run", str(second))
    assert result.code == 0, result.text
    assert set(stage_status(result.out).values()) == {"cached"}


@pytest.mark.slow
def test_real_layer07_pipeline(project: Project) -> None:
    result = project.run("run", str(ROOT / "pipelines" / "msda_layer07.yaml"))
    assert result.code == 0, result.text
    status = stage_status(result.out)
    assert status["verify"] == "passed", result.out
    verify = json.loads(next((project.store / "verify").glob("*/verify.json")).read_text())
    stats = verify["outputs"]["output"]
    assert stats["shape"] == [1, 21000, 256]
    assert stats["max_abs"] < 1e-4 and not stats["all_zero"]
    capture = json.loads(next((project.store / "capture").glob("*/capture.json")).read_text())
    assert capture["inputs"]["value"]["shape"] == [1, 21000, 8, 32]
    assert capture["inputs"]["sampling_locations"]["shape"] == [1, 21000, 8, 3, 4, 2]
    assert capture["inputs"]["spatial_shapes"]["dtype"] == "int64"
    assert capture["extras"] == {"im2col_step": 64}


def test_validate_resolves_imports_and_writes_nothing(project: Project) -> None:
    good = project.run("validate", str(project.small()))
    assert good.code == 0 and "valid (1 variant, 5 stages)" in good.out
    bad = project.small("bad.yaml", **{"examples.maskdino_encoder:build_encoder": "examples.nowhere:build_encoder"})
    result = project.run("validate", str(bad))
    assert result.code == 2
    assert f"{bad}:4: model.factory: cannot find module 'examples.nowhere'" in result.err
    assert "Traceback" not in result.err and not project.store.exists()

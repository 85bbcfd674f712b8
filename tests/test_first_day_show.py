"""What `show`, the report and the stage summary say about the relative error: taken over the
elements whose reference exceeds atol, where it means something."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import Project

from orchestrator.stages.verify import compare


def only_folder(project: Project, stage: str) -> Path:
    (folder,) = (project.store / stage).iterdir()
    return folder


def test_relative_error_is_taken_over_references_above_atol(project: Project) -> None:
    pipeline = project.small()
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    stats = json.loads((only_folder(project, "verify") / "verify.json").read_text())["outputs"]["output"]
    capture = only_folder(project, "capture")
    output = json.loads((capture / "capture.json").read_text())["outputs"]["output"]
    reference = np.abs(np.load(capture / output["file"]).astype(np.float64))
    assert stats["rel_elements"] == int((reference > stats["atol"]).sum()) > 0
    assert stats["max_rel"] <= stats["max_abs"] / stats["atol"] and stats["max_rel"] <= stats["max_rel_all"]
    assert f"max rel {stats['max_rel']:.1e} (|ref|>atol)" in result.out

    loose = project.small("loose.yaml", **{"atol: 1.0e-4": "atol: 10.0"})  # above every |reference|
    result = project.run("run", str(loose))
    assert result.code == 0 and "max rel n/a (no |ref|>atol)" in result.out, result.text
    verify = next(f for f in (project.store / "verify").iterdir() if f"atol {10.0:g}" in
                  json.loads((f / "manifest.json").read_text())["summary"])
    assert json.loads((verify / "verify.json").read_text())["outputs"]["output"]["max_rel"] is None
    shown = project.run("show", str(loose), "--stage", "verify", env={"COLUMNS": "200"})
    assert "no |ref|>atol" in shown.out and "max rel (|ref|>atol)" in shown.out
    assert "no |ref|&gt;atol" in (project.store / "reports" / "small" / "report.html").read_text()


def test_compare_leaves_near_zero_references_out_of_the_relative_error() -> None:
    reference = np.array([0.0, 1e-6, 1.0, -2.0])
    result = np.array([1e-5, 2e-6, 1.001, -2.0])
    stats = compare(result, reference, atol=1e-4, rtol=0.0)
    assert stats["rel_elements"] == 2
    assert abs(stats["max_rel"] - 1e-3) < 1e-9  # 1.0 vs 1.001; 1e-6 vs 2e-6 would say 100 %
    assert stats["max_rel_all"] == float("inf")  # what the ratio over every element said
    assert compare(result, reference, atol=5.0, rtol=0.0)["max_rel"] is None

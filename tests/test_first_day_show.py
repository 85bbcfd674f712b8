"""What `show` and the report tell a first-time user: statistics that read at 80 columns, and a
relative error taken where it means something."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from conftest import Project

from orchestrator.stages.verify import compare


def only_folder(project: Project, stage: str) -> Path:
    (folder,) = (project.store / stage).iterdir()
    return folder


def test_show_reads_at_80_columns(project: Project) -> None:
    pipeline = project.small()
    assert project.run("run", str(pipeline)).code == 0
    stats = json.loads((only_folder(project, "verify") / "verify.json").read_text())["outputs"]["output"]
    figures = json.loads((only_folder(project, "bench") / "bench.json").read_text())

    narrow = project.run("show", str(pipeline), env={"COLUMNS": "80"})
    assert narrow.code == 0, narrow.text
    assert re.search(r"\S…", narrow.out) is None, narrow.out  # rich's mark of a cut cell
    tables = [line for line in narrow.out.splitlines() if line[:1] in "┏┃┡│└"]
    assert tables and max(len(line) for line in tables) <= 80
    for value in (stats["max_abs"], stats["mean_abs"], stats["max_rel"], stats["min_atol_to_pass"]):
        assert f" {value:.2e} " in narrow.out
    assert f"{stats['outside']}/{stats['elements']}" in narrow.out and "max rel (|ref|>atol)" in narrow.out
    for key in ("min_ms", "median_ms", "p90_ms", "p99_ms"):
        assert f" {figures[key]:.2f} " in narrow.out

    wide = project.run("show", str(pipeline), env={"COLUMNS": "200"})  # room for a row per output
    header = next(line for line in wide.out.splitlines() if "max abs" in line)
    assert "mean abs" in header and "max rel (|ref|>atol)" in header and "result" in header


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

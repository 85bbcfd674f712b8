"""A matrix pipeline: shared stages run once, --only selects, -j 2 equals -j 1, the report matches verify."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SMALL_CALL, SMALL_MODEL, Project, artifact_digests

MATRIX = f"""\
version: 1
name: matrix
{SMALL_MODEL}
{SMALL_CALL}verify: {{atol: 1.0e-3, rtol: 1.0e-3}}
bench: {{warmup: 1, iterations: 3}}
matrix:
  build.precision: [fp32, fp16]
  capture.module: [encoder.layers.0.self_attn, encoder.layers.1.self_attn]
"""

RAN = ("ran", "passed", "failed")


def lines(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()
            if line.split() and line.split()[0] in ("capture", "export", "build", "verify", "bench")]


def test_matrix_runs_each_distinct_stage_once_and_parallel_equals_serial(project: Project, tmp_path: Path) -> None:
    pipeline = project.write("matrix.yaml", MATRIX)
    plan = project.run("plan", str(pipeline))
    assert plan.code == 0, plan.text
    assert "4 variants" in plan.out  # the matrix table
    serial = project.run("run", str(pipeline), "-j", "1")
    assert serial.code == 0, serial.text
    ran = [line for line in lines(serial.out) if line[2] in RAN]
    keys = {(line[0], line[1]) for line in ran}
    # Captures and exports are shared by precisions; the two layers' one-call ONNX are one file, so the
    # second layer's builds reuse the first's (early cutoff): one build per precision.
    assert len(ran) == len(keys) == 2 + 2 + 2 + 4 + 4
    assert all("[" in " ".join(line) for line in ran)  # every line names its variant

    parallel_store = tmp_path / "parallel"
    parallel = project.run("run", str(pipeline), "-j", "2", env={"ORCHESTRATE_STORE": str(parallel_store)})
    assert parallel.code == 0, parallel.text
    serial_files, parallel_files = artifact_digests(project.store), artifact_digests(parallel_store)
    assert serial_files.keys() == parallel_files.keys()
    for name, files in serial_files.items():
        if not name.startswith("bench/"):  # timings differ run to run; everything else is identical
            assert files == parallel_files[name], name

    record = json.loads((project.store / "reports" / "matrix" / "report.json").read_text())
    assert len(record["variants"]) == 4
    for verify_json in project.store.glob("verify/*/verify.json"):
        data = json.loads(verify_json.read_text())
        manifest = json.loads((verify_json.parent / "manifest.json").read_text())
        for variant in manifest["variants"]:
            assert record["verify"][variant]["outputs"]["output"]["max_abs"] == data["outputs"]["output"]["max_abs"]
    html = (project.store / "reports" / "matrix" / "report.html").read_text()
    for data in record["verify"].values():
        assert f"{data['outputs']['output']['max_abs']:.3e}" in html


def test_only_selects_variants(project: Project) -> None:
    pipeline = project.write("matrix.yaml", MATRIX)
    result = project.run("run", str(pipeline), "--only", "precision=fp16",
                         "--only", "module=encoder.layers.0.self_attn")
    assert result.code == 0, result.text
    kinds = [line[0] for line in lines(result.out)]
    assert kinds == ["capture", "export", "build", "verify", "bench"]
    assert all("precision=fp16" in " ".join(line) for line in lines(result.out) if line[0] in ("build", "verify"))
    wrong = project.run("run", str(pipeline), "--only", "precision=int4")
    assert wrong.code == 2 and "matches no variant" in wrong.err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(project: Project, tmp_path: Path) -> None:
    pipeline = project.small()
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    page = project.store / "reports" / "small" / "report.html"
    assert f"report: {page}" in result.out
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "<h1>small" in dom and "Verification" in dom and "Equivalent trtexec command" in dom
    assert dom.count("<svg") >= 4  # the DAG, the error histogram, the scatter and the bench chart
    verify = json.loads(next((project.store / "verify").glob("*/verify.json")).read_text())
    histogram = verify["outputs"]["output"]["histogram"]
    assert sum(histogram["counts"]) + histogram["exact"] + histogram["non_finite"] == 1 * 106 * 32
    assert len(verify["outputs"]["output"]["sample"]["reference"]) > 1000
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

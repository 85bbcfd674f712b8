"""What `show` and the report tell a first-time user: where each artifact is (`show --path` for
scripts), statistics that read at 80 columns, and a relative error taken where it means something."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ROOT, Project
from test_variants import MATRIX

from orchestrator.stages.verify import compare

STAGES = ("capture", "export", "surgery", "build", "verify", "bench")
SURGERY = {"verify:": "surgery:\n  - cleanup: {}\nverify:"}


def only_folder(project: Project, stage: str) -> Path:
    (folder,) = (project.store / stage).iterdir()
    return folder


def test_show_and_the_report_name_every_artifact_folder(project: Project) -> None:
    pipeline = project.small(**SURGERY)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    folders = {stage: only_folder(project, stage) for stage in STAGES}

    for stage, folder in folders.items():  # the store lies outside the working directory: absolute
        printed = project.run("show", str(pipeline), "--path", stage)
        assert printed.code == 0 and printed.err == "", printed.text
        assert printed.out == f"{folder}\n"
    assert (folders["export"] / "model.onnx").is_file() and (folders["surgery"] / "model.onnx").is_file()
    assert (folders["build"] / "runplan.json").is_file() and (folders["verify"] / "verify.json").is_file()

    shown = project.run("show", str(pipeline))
    assert shown.code == 0, shown.text
    lines = shown.out.splitlines()
    for stage, folder in folders.items():
        assert any(line.split()[:1] == [stage] and str(folder) in line.split() for line in lines), stage
    one = project.run("show", str(pipeline), "--stage", "export")
    assert str(folders["export"]) in one.out and str(folders["build"]) not in one.out

    record = json.loads((project.store / "reports" / "small" / "report.json").read_text())
    assert {s["kind"]: s["path"] for s in record["stages"]} == {k: str(v) for k, v in folders.items()}
    page = (project.store / "reports" / "small" / "report.html").read_text()
    for stage, folder in folders.items():
        assert html.escape(str(folder)) in page, stage
        assert f"href='../../{stage}/{folder.name}/'" in page  # the link works wherever the store is moved


def test_the_trtexec_command_names_the_graph_the_build_consumed(project: Project) -> None:
    pipeline = project.small(**SURGERY)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    graph = only_folder(project, "surgery") / "model.onnx"
    build = only_folder(project, "build")
    assert "--onnx=model.onnx " in (build / "trtexec.txt").read_text()  # the artifact stays as built

    record = json.loads((project.store / "reports" / "small" / "report.json").read_text())
    assert f"--onnx={graph} " in record["trtexec"][""]
    assert f"--onnx={graph} " in (project.store / "reports" / "small" / "report.html").read_text()
    shown = project.run("show", str(pipeline))
    assert f"trtexec --onnx={graph} " in shown.out and "--onnx=model.onnx" not in shown.out


def test_path_is_relative_to_the_working_directory_when_the_store_is_inside_it(project: Project) -> None:
    pipeline = project.small()
    environment = {**os.environ, "ORCHESTRATE_STORE": "artifacts", "NO_COLOR": "1",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def orchestrate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=project.root, env=environment,
                              capture_output=True, text=True, timeout=600)

    missing = orchestrate("show", pipeline.name, "--path", "export")
    assert missing.returncode == 2 and missing.stdout == "", missing.stderr
    assert "not built yet" in missing.stderr and f"orchestrate run {pipeline.name}" in missing.stderr
    assert orchestrate("run", pipeline.name).returncode == 0
    printed = orchestrate("show", pipeline.name, "--path", "export")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == f"artifacts/export/{only_folder(project, 'export').name}\n"
    assert (project.root / printed.stdout.strip() / "model.onnx").is_file()


def test_path_asks_for_a_variant_when_they_differ_and_for_a_run_when_not_built(project: Project) -> None:
    pipeline = project.write("matrix.yaml", MATRIX)
    chosen = ("--only", "precision=fp16", "--only", "module=encoder.layers.0.self_attn")
    builds = project.run("show", str(pipeline), "--path", "build")
    assert builds.code == 2 and builds.out == "", builds.text
    assert "4 different build artifacts" in builds.err and "pick one with --only" in builds.err
    for precision in ("fp32", "fp16"):
        for layer in (0, 1):
            assert f"--only precision={precision}  --only module=encoder.layers.{layer}.self_attn" in builds.err
    exports = project.run("show", str(pipeline), "--path", "export")
    assert exports.code == 2 and "2 different export artifacts" in exports.err, exports.text

    unbuilt = project.run("show", str(pipeline), "--path", "build", *chosen)
    assert unbuilt.code == 2 and unbuilt.out == "", unbuilt.text
    assert "not built yet" in unbuilt.err and f"run `orchestrate run {pipeline}` first" in unbuilt.err

    assert project.run("run", str(pipeline), *chosen).code == 0
    built = project.run("show", str(pipeline), "--path", "build", *chosen)
    assert built.code == 0 and built.out == f"{only_folder(project, 'build')}\n", built.text
    shared = project.run("show", str(pipeline), "--path", "export", "--only", "module=encoder.layers.0.self_attn")
    assert shared.code == 0 and shared.out == f"{only_folder(project, 'export')}\n", shared.text


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

    loose = project.small("loose.yaml", **{"atol: 1.0e-4": "atol: 10.0\n  allow_vacuous: true"})  # above every |ref|
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

"""Bounds on the work a run does: no stage re-runs on inputs identical in content (early cutoff), a stage
that runs past its time limit is a crash, tensors that do not fit together are bad input at capture, and
the report of many variants stays proportional to what a person reads."""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SMALL_CALL, SMALL_MODEL, Project
from test_bad_input import leftovers, make_tensors

FROM_DIR = """\
version: 1
capture: {from_dir: tensors}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {spatial_shapes: int32, level_start_index: int32}
bench: {enabled: false}
"""

INCONSISTENT = [
    ({"level_start_index": np.array([0, 5], np.int64)}, "level_start_index is [0, 5]"),
    ({"spatial_shapes": np.array([[2, 3], [-1, 2]], np.int64)}, "spatial_shapes holds a level of size <= 0"),
    ({"spatial_shapes": np.array([[2, 3], [1, 3]], np.int64)}, "value has S = 8 tokens"),
]


@pytest.mark.parametrize(("replace", "named"), INCONSISTENT, ids=["level_start_index", "negative", "tokens"])
def test_inconsistent_capture_tensors_are_bad_input_at_capture(project: Project, replace: dict[str, np.ndarray],
                                                               named: str) -> None:
    make_tensors(project.root / "tensors", **replace)
    pipeline = project.write("bad.yaml", FROM_DIR)
    result = project.run("run", str(pipeline))
    assert result.code == 2, result.text
    assert "Traceback" not in result.text
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{pipeline}:2: capture.from_dir:" in errors[0], result.err
    assert named in errors[0] and "MultiscaleDeformableAttnPlugin_TRT" in errors[0], errors[0]
    assert not re.search(r"^(capture|export)\s", result.out, flags=re.MULTILINE), result.out  # no stage finished
    assert leftovers(project.store) == [], result.text


def test_consistent_capture_tensors_pass_the_same_check(project: Project) -> None:
    """The twin of the cases above: the rules accept the tensors the kernel computed its output from."""
    make_tensors(project.root / "tensors")
    result = project.run("run", str(project.write("good.yaml", FROM_DIR)))
    assert result.code == 0, result.text


HANGING_FACTORY = """\
import time


def build_encoder(**kwargs):
    time.sleep(3600)  # a factory that never returns: a download that hangs, a lock that is never released
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_stage_past_its_time_limit_is_a_crash_naming_the_limit(project: Project, jobs: str) -> None:
    (project.root / "hangs.py").write_text(HANGING_FACTORY)
    pipeline = project.small(**{"factory: examples.maskdino_encoder:build_encoder": "factory: hangs:build_encoder",
                                "version: 1\n": "version: 1\npython_path: [.]\nresources: {capture: {timeout: 2}}\n"})
    started = time.monotonic()
    result = project.run("run", str(pipeline), "-j", jobs, timeout=120)
    assert result.code == 3, result.text
    assert time.monotonic() - started < 60  # ended by the limit, long before the factory's sleep
    assert "crashed: ran past its time limit of 2 s (resources.capture.timeout)" in result.err, result.err
    assert not list(project.store.glob("capture/*")) and not list((project.store / ".tmp").iterdir())
    assert not list((project.store / ".state" / "runs").iterdir())  # no run record: nothing was made


def test_a_time_limit_the_stage_keeps_to_changes_nothing(project: Project) -> None:
    """The limit is in no key: a run with one reuses the stages made without it."""
    first = project.run("run", str(project.small()))
    assert first.code == 0, first.text
    limited = project.small(**{"version: 1\n": "version: 1\nresources: {capture: {timeout: 600}, build: "
                                               "{timeout: 600, num_cpus: 1}}\n"})
    second = project.run("run", str(limited))
    assert second.code == 0 and "nothing to do" in second.out, second.text


TWO_LAYERS = f"""\
version: 1
name: layers
{SMALL_MODEL}
{SMALL_CALL}verify: {{atol: 1.0e-3, rtol: 1.0e-3}}
bench: {{warmup: 1, iterations: 3}}
matrix:
  capture.module: [encoder.layers.0.self_attn, encoder.layers.1.self_attn]
"""


def stage_lines(output: str) -> dict[str, list[list[str]]]:
    """{stage: [its lines split in words]}, with the why line under a stage line appended to it."""
    found: dict[str, list[list[str]]] = {}
    last: list[str] | None = None
    for line in output.splitlines():
        words = line.split()
        if words and words[0] in ("capture", "export", "build", "verify", "bench"):
            last = words
            found.setdefault(words[0], []).append(words)
        elif words[:1] == ["why:"] and last is not None:
            last += words
    return found


def manifest(store: Path, kind: str, short: str) -> dict[str, Any]:
    folder = next(store.glob(f"{kind}/{short}*"))
    return json.loads((folder / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_a_build_from_an_identical_onnx_does_not_run_again(project: Project) -> None:
    pipeline = project.write("layers.yaml", TWO_LAYERS)
    result = project.run("run", str(pipeline))
    assert result.code == 0, result.text
    lines = stage_lines(result.out)
    exports = [manifest(project.store, "export", line[1]) for line in lines["export"]]
    assert [line[2] for line in lines["export"]] == ["ran", "ran"]  # their captures differ
    assert exports[0]["files"]["model.onnx"] == exports[1]["files"]["model.onnx"]  # the premise: one ONNX
    assert sorted(line[2] for line in lines["build"]) == ["cached", "ran"], result.out
    ran = next(line for line in lines["build"] if line[2] == "ran")
    reused = next(line for line in lines["build"] if line[2] == "cached")
    assert f"why: same inputs as build {ran[1]} (early cutoff)" in " ".join(reused), result.out
    assert [line[2] for line in lines["verify"]] == ["passed", "passed"]  # the captures they compare differ
    assert [line[2] for line in lines["bench"]] == ["ran", "ran"]
    assert "9 of 10 stages ran" in result.out

    made, adopted = manifest(project.store, "build", ran[1]), manifest(project.store, "build", reused[1])
    assert adopted["key"].startswith(reused[1]) and adopted["cutoff"]["key"] == made["key"]
    assert adopted["parts"]["inputs"]["graph"] != made["parts"]["inputs"]["graph"]  # its own export, its own key
    assert adopted["files"] == made["files"]
    folders = {m["key"]: project.store / "build" / m["key"] for m in (made, adopted)}
    assert os.path.samefile(*(folders[m["key"]] / "runplan.json" for m in (made, adopted)))  # linked, not copied

    again = project.run("run", str(pipeline))
    assert again.code == 0 and "nothing to do" in again.out, again.text
    assert project.run("fsck").code == 0
    forced = project.run("run", str(pipeline), "--force", "build")  # a forced build really builds
    assert [line[2] for line in stage_lines(forced.out)["build"]] == ["ran", "ran"], forced.text


SWEEP = """\
version: 1
name: sweep
capture: {from_dir: a}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {spatial_shapes: int32, level_start_index: int32}
verify: {rtol: 1.0e-6}
bench: {enabled: false}
matrix:
  capture.from_dir: [a, b]
  verify.atol: [1.0e-3, 2.0e-3, 3.0e-3, 1.0e-7]   # the last is tighter than the references' noise: it fails
"""


def noisy_capture(folder: Path, seed: int) -> None:
    """A valid capture whose reference output carries noise of 1e-5, so every error histogram has bars."""
    make_tensors(folder, seed=seed)
    output = np.load(folder / "output.npy")
    np.save(folder / "output.npy", output + np.random.default_rng(seed).normal(0, 1e-5, output.shape).astype(
        np.float32))


def test_the_report_draws_failing_and_first_variants_and_tabulates_the_rest(project: Project) -> None:
    noisy_capture(project.root / "a", 0)
    noisy_capture(project.root / "b", 1)
    pipeline = project.write("sweep.yaml", SWEEP)
    result = project.run("run", str(pipeline), env={"ORCHESTRATE_REPORT_FIGURES": "1"})
    assert result.code == 1, result.text  # the tight tolerance fails for both captures
    folder = project.store / "reports" / "sweep"
    record = json.loads((folder / "report.json").read_text())
    names = [v["name"] for v in record["variants"]]
    assert len(names) == 8 and record["verify"][names[3]]["passed"] is False
    assert record["figures"] == [names[0], names[3]]  # the first variant, and the first failing one
    for name, data in record["verify"].items():  # samples only where they are drawn; statistics for all
        assert ("sample" in data["outputs"]["output"]) == (name in record["figures"]), name
        assert data["outputs"]["output"]["max_abs"] > 0 and data["outputs"]["output"]["histogram"]["counts"]
    page = (folder / "report.html").read_text()
    assert page.count("<svg") == 1 + 2 * 2  # the stage picture, and a histogram and a scatter per drawn variant
    assert "Drawn: the stages of the 2 variants" in page and "The other 6 variants" in page
    undrawn_failure = record["verify"][names[7]]
    assert undrawn_failure["passed"] is False and html.escape(undrawn_failure["failed_checks"][0]) in page

    from orchestrator import imports
    from orchestrator.config import spec
    from orchestrator.planning.plan import make_plan
    from orchestrator.reports import html as report
    from orchestrator.store.store import Store

    store = Store(project.store)
    with imports.search_path([project.root]):
        plan = make_plan(spec.load(pipeline), store.digests)
    os.environ[report.FIGURES_ENV] = "all"
    try:
        every = report.render_html(report.collect(plan, store))
    finally:
        del os.environ[report.FIGURES_ENV]
    assert every.count("<svg") == 1 + 2 * 8 and "The other" not in every and "Drawn:" not in every

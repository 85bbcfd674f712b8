"""Bounds on the work a run does: no stage re-runs on inputs identical in content (early cutoff), a stage
that runs past its time limit is a crash, tensors that do not fit together are bad input at capture, and
the report of many variants stays proportional to what a person reads."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from conftest import Project
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

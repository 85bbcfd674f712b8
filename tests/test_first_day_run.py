"""What a user meets in a first run: misspelt model kwargs, model code that exits, Ctrl-C, --force.

* `model.kwargs` / `model.inputs_kwargs` that do not fit the factory's or the inputs callable's
  signature are a located user error (exit 2, nothing in the store): found by `validate` and
  before any stage where the source shows the signature, else by the capture stage before it
  calls the factory.
* SystemExit or KeyboardInterrupt raised by model code is a crash of that stage (exit 3, the log
  with the traceback); a real SIGINT still ends the run as interrupted (exit 130), also with -j 2.
* `--force STAGE` re-runs every stage made from the forced one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, Project, Result, stage_status

MODELS = '''\
"""Model factories as users write them, for the pipelines of test_first_day_run."""

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from examples.maskdino_encoder import MaskDINOEncoder, build_encoder


def announced(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        Path(os.environ["FIRST_DAY_MARKER"]).write_text("called")
        return function(*args, **kwargs)
    return wrapper


@announced
def decorated(num_layers=2, d_model=32, levels=3, heads=2, points=2, ffn_dim=64, seed=0):
    return build_encoder(num_layers, d_model, levels, heads, points, ffn_dim, seed)


class Encoder(MaskDINOEncoder):
    def __init__(self, num_layers, d_model=32, levels=3, heads=2, points=2, ffn_dim=64, seed=0):
        super().__init__(num_layers, d_model, levels, heads, points, ffn_dim)


class Inherited(Encoder):
    """No __init__ of its own: its parameters are Encoder's."""


def exits(**kwargs):
    sys.exit(0)


def parses_arguments(**kwargs):
    argparse.ArgumentParser().parse_args()  # sees orchestrate's command line and exits 2


def interrupts(**kwargs):
    raise KeyboardInterrupt


def sleeps(**kwargs):
    Path(os.environ["FIRST_DAY_MARKER"]).write_text("sleeping")
    time.sleep(120)
'''

FACTORY = "factory: examples.maskdino_encoder:build_encoder"
KWARGS = "kwargs: {num_layers: 2, d_model: 32, heads: 2, levels: 3, points: 2, ffn_dim: 64, seed: 0}"
STAGES = ("capture", "export", "surgery", "build", "verify", "bench")


def pipeline(project: Project, factory: str | None = None, **replace: str) -> Path:
    """The small pipeline, its factory taken from the test's model module when `factory` is given."""
    project.write("first_day_models.py", MODELS)
    if factory:
        replace[FACTORY] = f"factory: first_day_models:{factory}"
    replace["name: small\n"] = "name: small\npython_path: [.]\n"
    return project.small(**replace)


def line_of(path: Path, start: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(start))


def run(project: Project, *args: str) -> Result:
    return project.run(*args, env={"FIRST_DAY_MARKER": str(project.root / "marker")})


def assert_user_error(result: Result, path: Path, line: int, field: str) -> str:
    """Exit 2, no traceback, one `file:line: field: ...` message; returns that message."""
    assert result.code == 2, result.text
    assert "Traceback" not in result.text, result.text
    errors = [row for row in result.err.splitlines() if row.startswith("error:")]
    assert len(errors) == 1, result.err
    assert errors[0].startswith(f"error: {path}:{line}: {field}: "), errors[0]
    return result.err


def published(store: Path) -> list[str]:
    """Artifacts and staging directories in a store (its bookkeeping and error logs aside)."""
    found = [p for kind in STAGES if (store / kind).is_dir() for p in (store / kind).iterdir()]
    found += list((store / ".tmp").iterdir()) if (store / ".tmp").is_dir() else []
    return sorted(str(p.relative_to(store)) for p in found)


# ---------------------------------------------------------------------- kwargs against signatures

def test_a_misspelt_factory_keyword_is_located_before_any_stage(project: Project) -> None:
    path = pipeline(project, **{KWARGS: KWARGS.replace("num_layers", "num_layer")})
    line = line_of(path, "kwargs:")
    for command in ("validate", "run"):
        message = assert_user_error(run(project, command, str(path)), path, line, "model.kwargs.num_layer")
        assert "'examples.maskdino_encoder:build_encoder' has no parameter 'num_layer'" in message, message
        assert "it takes (num_layers=…, d_model=…" in message and "hint: did you mean 'num_layers'?" in message
    assert not project.store.exists()


def test_a_misspelt_inputs_keyword_is_located_before_any_stage(project: Project) -> None:
    path = pipeline(project, **{"d_model: 32}\n": "d_modle: 32}\n"})
    message = assert_user_error(run(project, "run", str(path)), path, line_of(path, "inputs_kwargs:"),
                                "model.inputs_kwargs.d_modle")
    assert "'examples.maskdino_encoder:example_inputs' has no parameter 'd_modle'" in message
    assert "hint: did you mean 'd_model'?" in message
    assert not project.store.exists()


def test_a_class_factory_is_checked_against_its_init(project: Project) -> None:
    """`self` is not a parameter the kwargs can give; a required one they lack is named."""
    path = pipeline(project, "Encoder", **{KWARGS: "kwargs: {d_model: 32, seed: 0}"})
    for command in ("validate", "run"):
        message = assert_user_error(run(project, command, str(path)), path, line_of(path, "kwargs:"), "model.kwargs")
        assert "'first_day_models:Encoder' needs 'num_layers', which model.kwargs does not give; it takes " \
               "(num_layers, d_model=…, levels=…" in message, message
        assert "self" not in message
    assert not project.store.exists()


@pytest.mark.parametrize(("factory", "takes"), [("decorated", "(num_layers=…, d_model=…"),
                                                ("Inherited", "(num_layers, d_model=…")], ids=["decorated", "class"])
def test_what_the_source_does_not_show_is_checked_before_the_factory_is_called(
        project: Project, factory: str, takes: str) -> None:
    """A decorated function or an inherited __init__: the capture stage binds the kwargs first."""
    path = pipeline(project, factory, **{"seed: 0}": "seed: 0, bogus: 1}"})
    assert run(project, "validate", str(path)).code == 0  # the planner does not guess
    result = run(project, "run", str(path))
    message = assert_user_error(result, path, line_of(path, "kwargs:"), "model.kwargs.bogus")
    assert f"'first_day_models:{factory}' has no parameter 'bogus'; it takes {takes}" in message, message
    assert not (project.root / "marker").exists(), "the factory was called"
    assert published(project.store) == [], result.text


# ---------------------------------------------------------------------- model code that exits

@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize(("factory", "says"), [
    ("exits", "SystemExit(0) raised by the code it runs"),
    ("parses_arguments", "SystemExit(2) raised by the code it runs"),
    ("interrupts", "KeyboardInterrupt raised by the code it runs (no Ctrl-C arrived)"),
], ids=["sys.exit", "argparse", "KeyboardInterrupt"])
def test_model_code_that_exits_is_a_crash_of_its_stage(project: Project, factory: str, says: str, jobs: str) -> None:
    path = pipeline(project, factory)
    result = run(project, "run", str(path), "-j", jobs)
    assert result.code == 3, result.text
    found = re.search(r"^error: capture ([0-9a-f]{8}) crashed: (.*)\n  full traceback: (\S+)$", result.err,
                      flags=re.MULTILINE)
    assert found, result.err
    assert says in found.group(2), result.err
    log = Path(found.group(3))
    assert log == project.store / ".state" / "errors" / f"capture-{found.group(1)}.log"
    assert "Traceback" in log.read_text() and f"in {factory}" in log.read_text()
    assert "stages ran" not in result.out and published(project.store) == []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_during_a_stage_ends_the_run_as_interrupted(project: Project, jobs: str) -> None:
    """SIGINT to the process group, as a terminal sends it: exit 130, no crash, nothing half-written."""
    path = pipeline(project, "sleeps")
    marker = project.root / "marker"
    environment = {**os.environ, "ORCHESTRATE_STORE": str(project.store), "NO_COLOR": "1",
                   "FIRST_DAY_MARKER": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(path), "-j", jobs], cwd=ROOT,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, out + err
    assert "error: interrupted" in err and "crashed" not in err and "Traceback" not in err, err
    assert published(project.store) == []


# ---------------------------------------------------------------------- --force

def why_lines(output: str) -> dict[str, str]:
    """{stage: its why line} from a run's output."""
    found, stage = {}, None
    for line in output.splitlines():
        if line.split() and line.split()[0] in STAGES:
            stage = line.split()[0]
        elif line.strip().startswith("why: ") and stage:
            found[stage] = line.strip()[len("why: "):]
    return found


@pytest.mark.parametrize("how", [["-j", "1"], ["-j", "2"], ["--executor", "ray", "-j", "2"]],
                         ids=["serial", "parallel", "ray"])
def test_force_reruns_every_stage_made_from_the_forced_one(project: Project, how: list[str]) -> None:
    if "ray" in how:
        pytest.importorskip("ray")
    path = project.small()
    first = project.run("run", str(path))
    assert first.code == 0, first.text
    forced = project.run("run", str(path), "--force", "build", *how)
    assert forced.code == 0, forced.text
    assert stage_status(forced.out) == {"capture": "cached", "export": "cached", "build": "ran", "verify": "passed",
                                        "bench": "ran"}, forced.out
    assert why_lines(forced.out) == {"build": "forced (--force build)",
                                     "verify": "forced: upstream build re-ran (--force build)",
                                     "bench": "forced: upstream build re-ran (--force build)"}, forced.out
    assert "3 of 5 stages ran" in forced.out

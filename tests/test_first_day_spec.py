"""What a new user may pass on the first day, through the command line: a path that is not a file
(a device, a FIFO) is refused before it is read.

Every refusal is exit 2, one located message (`file: …`), no traceback, and no store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_CALL, SMALL_MODEL, Project, Result

from orchestrator import fastpath, spec

FROM_DIR = """\
version: 1
capture: {from_dir: .}
export:
  plugins: [{op: MultiscaleDeformableAttnPlugin_TRT}]
"""

LIVE = f"""\
version: 1
name: first
{SMALL_MODEL}
{SMALL_CALL}"""

WIDE = {"COLUMNS": "250"}  # rich tables are not cut to 80 columns


def refused(result: Result, path: Path, line: int | None, field: str | None, *texts: str) -> str:
    """Assert a located exit-2 refusal, and return the error text."""
    assert result.code == 2, result.text
    assert "Traceback" not in result.text, result.text
    errors = [row for row in result.err.splitlines() if row.startswith("error:")]
    assert len(errors) == 1, result.err
    where = f"error: {path}" + (f":{line}" if line else "") + ": " + (f"{field}: " if field else "")
    assert errors[0].startswith(where), errors[0]
    for text in texts:
        assert text in result.err, result.err
    return result.err


def keys_of(output: str) -> list[tuple[str, str]]:
    return [(row.split()[0], row.split()[1]) for row in output.splitlines()
            if row.split() and row.split()[0] in ("capture", "export", "build", "verify", "bench")]


# ----------------------------------------------------------------------------- files that are not files

COMMANDS = [("run",), ("plan",), ("validate",), ("show",), ("push", "--remote", "unused"),
            ("pull", "--remote", "unused"), ("gc",)]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_device_is_refused_before_it_is_read(project: Project, command: tuple[str, ...]) -> None:
    started = time.monotonic()
    result = project.run(command[0], "/dev/zero", *command[1:], timeout=60)
    refused(result, Path("/dev/zero"), None, None, "is a character device, not a regular file")
    assert time.monotonic() - started < 30
    assert not project.store.exists()


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_fifo_is_refused_without_waiting_for_a_writer(project: Project, command: tuple[str, ...]) -> None:
    fifo = project.root / "pipeline.yaml"
    os.mkfifo(fifo)
    result = project.run(command[0], str(fifo), *command[1:], timeout=60)  # a hang fails here
    refused(result, fifo, None, None, "is a FIFO (named pipe), not a regular file")
    assert not project.store.exists()


def test_the_fast_path_declines_a_fifo_and_a_device(project: Project) -> None:
    fifo = project.root / "pipeline.yaml"
    os.mkfifo(fifo)
    code = ("from orchestrator import fastpath; "
            f"print(fastpath.replay(['run', {str(fifo)!r}]), fastpath.replay(['run', '/dev/zero']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "ORCHESTRATE_STORE": str(project.store)})
    assert (done.returncode, done.stdout.strip()) == (0, "None None"), done.stdout + done.stderr
    assert fastpath.MAX_PIPELINE_BYTES == spec.MAX_FILE_BYTES


def test_a_link_to_a_regular_file_is_still_read(project: Project) -> None:
    target = project.small()
    link = project.root / "link.yaml"
    link.symlink_to(target)
    result = project.run("validate", str(link))
    assert result.code == 0, result.text



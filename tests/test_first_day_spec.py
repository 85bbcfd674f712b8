"""What a new user writes on the first day, through the command line: numbers as YAML 1.2 writes them,
values JSON cannot hold, files that are not files, a run from another directory, and a matrix whose
fields are tied together by include and exclude.

Every refusal is exit 2, one located message (`file:line: field: …`), no traceback, and no store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from textwrap import dedent

import pytest
from conftest import ROOT, SMALL_CALL, SMALL_MODEL, Project, Result

from orchestrator import fastpath
from orchestrator.config import spec

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


# ----------------------------------------------------------------------------- numbers as YAML 1.2 writes them

def test_1e_minus_4_is_the_same_tolerance_as_1_0e_minus_4(project: Project) -> None:
    written = project.small("written.yaml")
    short = project.small("short.yaml", **{"atol: 1.0e-4": "atol: 1e-4", "rtol: 1.0e-3": "rtol: 1E-3",
                                           "iterations: 3": "iterations: +3"})
    first, second = project.run("plan", str(written)), project.run("plan", str(short))
    assert first.code == 0 and second.code == 0, first.text + second.text
    assert keys_of(first.out) == keys_of(second.out)  # same normalised config, so the same keys
    assert project.run("validate", str(short)).code == 0


def test_numbers_are_numbers_where_the_schema_wants_one_and_text_elsewhere(project: Project) -> None:
    path = project.write("p.yaml", FROM_DIR + dedent("""\
        name: 1e5
        model:
          factory: examples.maskdino_encoder:build_encoder
          inputs: examples.maskdino_encoder:example_inputs
          kwargs: {scale: 1e-4}
        build: {workspace: 1e9}
        verify: {atol: 1e-4, rtol: .5, per_output: {output: {atol: 2E-3}}}
        bench: {max_seconds: 1e1, iterations: 1e1, warmup: +1}
        """))
    loaded = spec.load(path)
    assert loaded.data["verify"]["atol"] == 1e-4 and loaded.data["verify"]["rtol"] == 0.5
    assert loaded.data["verify"]["per_output"]["output"]["atol"] == 2e-3
    assert loaded.data["bench"] == {"max_seconds": 10.0, "iterations": 10, "warmup": 1, "enabled": True}
    assert type(loaded.data["bench"]["iterations"]) is int  # an integer field gets an int: 1e1 is 10
    assert loaded.data["build"]["workspace"] == 10**9 and type(loaded.data["build"]["workspace"]) is int
    assert loaded.data["name"] == "1e5"  # a string field keeps the text
    assert loaded.data["model"]["kwargs"] == {"scale": "1e-4"}  # a free-form mapping keeps what YAML gives


def test_a_quoted_number_stays_text_and_is_refused_where_a_number_belongs(project: Project) -> None:
    path = project.write("p.yaml", FROM_DIR + "verify:\n  atol: '1e-4'\n")
    refused(project.run("validate", str(path)), path, 6, "verify.atol", 'expected a number, got string "1e-4"')
    assert not project.store.exists()


def test_an_integer_field_refuses_a_fraction_written_with_an_exponent(project: Project) -> None:
    path = project.write("p.yaml", FROM_DIR + "bench:\n  warmup: 1.5e0\n")
    refused(project.run("run", str(path)), path, 6, "bench.warmup", "expected an integer, got number 1.5")
    assert not project.store.exists()


def test_matrix_values_are_numbers_when_their_field_is(project: Project) -> None:
    path = project.small(**{"bench:": "matrix:\n  verify.atol: [1e-4, 1E-2]\nbench:"})
    result = project.run("plan", str(path), env=WIDE)
    assert result.code == 0, result.text
    assert "2 variants" in result.out
    assert "[atol=0.0001]" in result.out and "[atol=0.01]" in result.out, result.out


# ----------------------------------------------------------------------------- values JSON cannot hold

@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize(("value", "texts"), [
    ("9" * 5000, ("out of range", "64-bit", "5000 characters")),
    (str(2**63), ("out of range", "-2**63 and 2**63-1")),
    ("2024-01-01", ("is a YAML date", "plain JSON-like values", "quote it ('2024-01-01')")),
    ("2024-01-01 12:30:00", ("is a YAML date or time", "plain JSON-like values")),
    ("!!binary aGVsbG8=", ("!!binary data is not allowed", "plain JSON-like values")),
    ("!!set {a: null}", ("tag:yaml.org,2002:set is not allowed", "strings, numbers, booleans, null")),
    ("!!set a", ("tag:yaml.org,2002:set is not allowed", "plain JSON-like values")),
])
def test_a_value_json_cannot_hold_is_a_located_error(project: Project, command: str, value: str,
                                                    texts: tuple[str, ...]) -> None:
    text = LIVE.replace("seed: 0}", "seed: 0, when: WHEN}").replace("WHEN", value)
    assert value in text
    path = project.write("p.yaml", text)
    refused(project.run(command, str(path)), path, 5, "model.kwargs.when", *texts)
    assert not project.store.exists()


def test_a_huge_integer_outside_kwargs_is_refused_too(project: Project) -> None:
    path = project.write("p.yaml", FROM_DIR + "bench:\n  iterations: " + "1" * 4301 + "\n")
    refused(project.run("run", str(path)), path, 6, "bench.iterations", "out of range")
    assert not project.store.exists()


def test_the_largest_64_bit_integer_is_accepted(project: Project) -> None:
    path = project.write("p.yaml", LIVE + f"bench: {{iterations: {2**63 - 1}}}\nverify: {{max_mismatch: 0x7fff}}\n")
    result = project.run("validate", str(path))
    assert result.code == 0, result.text
    assert spec.load(path).data["bench"]["iterations"] == 2**63 - 1


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


# ----------------------------------------------------------------------------- run from another directory

def run_in(folder: Path, store: Path, *args: str) -> Result:
    environment = {**os.environ, "ORCHESTRATE_STORE": str(store), "NO_COLOR": "1"}
    environment.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=folder, env=environment,
                          capture_output=True, text=True, timeout=300)
    return Result(done.returncode, done.stdout, done.stderr)


def test_outside_the_project_the_message_says_where_imports_were_looked_for(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pipeline = tmp_path / "pipelines" / "p.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text(LIVE.replace("version: 1\n", "version: 1\npython_path: [lib]\n"))
    result = run_in(elsewhere, tmp_path / "store", "validate", str(pipeline))
    err = refused(result, pipeline, 5, "model.factory", "cannot find module 'examples")
    assert f"current directory ({elsewhere})" in err, err
    assert f"python_path ({tmp_path / 'pipelines' / 'lib'})" in err, err
    assert "run orchestrate from the project directory" in err and "python_path: [..]" in err, err
    assert "relative to the pipeline file" in err, err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command", ["run", "plan"])
def test_the_pipeline_in_the_repository_run_from_elsewhere_gets_the_hint(tmp_path: Path, command: str) -> None:
    pipeline = ROOT / "pipelines" / "msda_layer07.yaml"
    result = run_in(tmp_path, tmp_path / "store", command, str(pipeline))
    err = refused(result, pipeline, 7, "model.factory", "cannot find module 'examples",
                  f"current directory ({tmp_path})", "python_path (none)", "run orchestrate from the project directory")
    assert "hint:" in err
    assert not (tmp_path / "store").exists()


def test_the_suggested_python_path_makes_it_work_from_elsewhere(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipelines" / "p.yaml"
    pipeline.parent.mkdir()
    relative = os.path.relpath(ROOT, pipeline.parent)
    pipeline.write_text(LIVE.replace("version: 1\n", f"version: 1\npython_path: [{relative}]\n"))
    result = run_in(tmp_path, tmp_path / "store", "validate", str(pipeline))
    assert result.code == 0, result.text


# ----------------------------------------------------------------------------- matrix include and exclude

TIED = LIVE + """\
verify: {atol: 1.0e-4}
matrix:
  build.precision: [fp32, fp16]
  capture.module: [encoder.layers.0.self_attn, encoder.layers.1.self_attn]
  exclude:
    - {build.precision: fp16, capture.module: encoder.layers.0.self_attn}
  include:
    - {build.precision: fp16, verify.atol: 1e-2}
    - {build.precision: int8, capture.module: encoder.layers.1.self_attn, bench.max_seconds: 2}
"""


def test_exclude_drops_and_include_extends_or_adds_variants(project: Project) -> None:
    path = project.write("tied.yaml", TIED)
    loaded = spec.load(path)
    names = [v.name for v in loaded.variants]
    assert names == ["precision=fp32,module=encoder.layers.0.self_attn",
                     "precision=fp32,module=encoder.layers.1.self_attn",
                     "precision=fp16,module=encoder.layers.1.self_attn",
                     "precision=int8,module=encoder.layers.1.self_attn,max_seconds=2"]
    atol = {v.name.split(",")[0]: v.data["verify"]["atol"] for v in loaded.variants}
    assert atol == {"precision=fp32": 1e-4, "precision=fp16": 1e-2, "precision=int8": 1e-4}
    assert loaded.variants[2].extra == {"verify.atol": 1e-2} and loaded.variants[0].extra == {}
    assert loaded.variants[3].data["bench"]["max_seconds"] == 2
    assert loaded.variants[3].data["build"]["precision"] == "int8"
    assert [v.data["bench"]["max_seconds"] for v in loaded.variants[:3]] == [10, 10, 10]

    result = project.run("plan", str(path), env=WIDE)
    assert result.code == 0, result.text
    assert "4 variants" in result.out
    header = next(row for row in result.out.splitlines() if "build.precision" in row)
    assert "verify.atol" in header and "bench.max_seconds" in header, result.out
    fp16_row = next(row for row in result.out.splitlines() if "│ fp16" in row)
    assert "0.01" in fp16_row, result.out
    only = project.run("plan", str(path), "--only", "precision=int8", env=WIDE)
    assert only.code == 0, only.text
    assert len(keys_of(only.out)) == 5 and "precision=int8" in only.out


def test_an_include_without_matrix_fields_extends_every_combination(project: Project) -> None:
    path = project.write("p.yaml", FROM_DIR + dedent("""\
        matrix:
          build.precision: [fp32, fp16]
          include:
            - {verify.rtol: 1e-2}
        """))
    loaded = spec.load(path)
    assert [v.name for v in loaded.variants] == ["precision=fp32", "precision=fp16"]
    assert all(v.data["verify"]["rtol"] == 1e-2 for v in loaded.variants)


@pytest.mark.parametrize(("matrix", "line", "field", "texts"), [
    ("  build.precision: [fp32, fp16]\n  include:\n    - {build.precison: fp16, verify.atol: 0.1}\n",
     8, "matrix.include[0].build.precison", ("does not name a field", "did you mean 'build.precision'")),
    ("  build.precision: [fp32, fp16]\n  exclude:\n    - {verify.atoll: 0.1}\n",
     8, "matrix.exclude[0].verify.atoll", ("does not name a field",)),
    ("  build.precision: [fp32, fp16]\n  exclude:\n    - {build.precision: fp61}\n",
     8, "matrix.exclude[0]", ("this exclude matches no combination", "build.precision: fp32, fp16")),
    ("  build.precision: [fp32, fp16]\n  exclude:\n    - {verify.atol: 0.1}\n",
     8, "matrix.exclude[0].verify.atol", ("'verify.atol' is not a matrix field",)),
    ("  build.precision: [fp32, fp16]\n  include:\n    - {build.precision: fp16}\n    - {verify.atol: -1e-2}\n",
     9, "matrix.include[1].verify.atol", ("must be >= 0", "(variant precision=fp32)")),
    ("  build.precision: [fp32]\n  include:\n    - {build.precision: int8}\n    - {build.precision: int8}\n",
     9, "matrix.include[1]", ("makes variant 'precision=int8' a second time",)),
    ("  build.precision: [fp32]\n  exclude:\n    - {build.precision: fp32}\n",
     7, "matrix.exclude", ("exclude removes every combination",)),
    ("  precision: [fp32, fp16]\n",
     6, "matrix.precision", ('key "precision" is not valid here', "dotted field paths")),
])
def test_a_mistake_in_include_or_exclude_points_at_its_line(project: Project, matrix: str, line: int, field: str,
                                                           texts: tuple[str, ...]) -> None:
    path = project.write("p.yaml", FROM_DIR + "matrix:\n" + matrix)
    refused(project.run("validate", str(path)), path, line, field, *texts)
    assert not project.store.exists()


def test_a_million_variants_are_refused_at_once(project: Project) -> None:
    values = ", ".join(str(i) for i in range(1000))
    path = project.write("p.yaml", FROM_DIR + f"matrix:\n  verify.atol: [{values}]\n  verify.rtol: [{values}]\n")
    started = time.monotonic()
    result = project.run("run", str(path), timeout=60)
    refused(result, path, 5, "matrix", "makes 1000000 combinations (1000 × 1000)", "at most 1000 variants",
            "ORCHESTRATE_MAX_VARIANTS")
    assert time.monotonic() - started < 20
    assert not project.store.exists()


def test_the_variant_limit_is_set_by_the_environment(project: Project) -> None:
    path = project.small(**{"bench:": "matrix:\n  verify.atol: [1e-4, 1e-3, 1e-2]\nbench:"})
    refused(project.run("validate", str(path), env={"ORCHESTRATE_MAX_VARIANTS": "2"}), path, 22, "matrix",
            "makes 3 combinations (3); at most 2 variants")
    allowed = project.run("validate", str(path), env={"ORCHESTRATE_MAX_VARIANTS": "3"})
    assert allowed.code == 0 and "3 variants" in allowed.out, allowed.text
    wrong = project.run("validate", str(path), env={"ORCHESTRATE_MAX_VARIANTS": "many"})
    assert wrong.code == 2 and "ORCHESTRATE_MAX_VARIANTS must be a positive integer" in wrong.err, wrong.text
    assert "Traceback" not in wrong.text
    assert not project.store.exists()


def test_the_schema_documents_include_exclude_and_the_limit() -> None:
    matrix = json.loads(spec.schema_path().read_text())["properties"]["matrix"]
    assert set(matrix["properties"]) == {"include", "exclude"}
    assert f"at most {spec.MAX_VARIANTS} variants" in matrix["description"]
    assert spec.MAX_VARIANTS_ENV in matrix["description"]

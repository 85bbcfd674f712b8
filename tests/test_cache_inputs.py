"""What a stage's output depends on beyond its key, and stat signatures that cannot be faked back.

The project is a live model whose factory (`lib/tinymodel.py`, on python_path) reaches its weights
through a helper module it imports (`lib/helper.py`) and an installed distribution (`lib/fakedist`,
with its `.dist-info` beside it). None of these but the factory's own file is named in the capture key;
the stage's run records them, and they are re-checked before its artifact is reused. Every test starts
from a copy of the project run once, so it pays only for the stages its change makes run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_PIPELINE, stage_status
from test_store import TracedProject, age, built_once, copied

from orchestrator import imports
from orchestrator.config import spec
from orchestrator.planning.plan import make_plan
from orchestrator.store import digest
from orchestrator.store.digest import DigestCache

FACTORY = '''\
"""A factory whose weights depend on a helper module and on an installed distribution."""
import fakedist
import helper
from examples.maskdino_encoder import build_encoder as build


def build_encoder(**kwargs):
    return helper.adjust(build(**kwargs), fakedist.SCALE)
'''
HELPER = '''\
import torch

FACTOR = 1.0


def adjust(model, scale):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(FACTOR * scale)
    return model
'''
METADATA = "Metadata-Version: 2.1\nName: fakedist\nVersion: {version}\n"
MODEL = """\
python_path: [lib]
model:
  factory: tinymodel:build_encoder
  kwargs: {num_layers: 2, d_model: 32, heads: 2, levels: 3, points: 2, ffn_dim: 64, seed: 0}
  inputs: examples.maskdino_encoder:example_inputs
  inputs_kwargs: {shapes: [[8, 10], [4, 5], [2, 3]], d_model: 32}
"""
FIVE = ("capture", "export", "build", "verify", "bench")


def write_library(lib: Path, factor: str = "1.0") -> None:
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "tinymodel.py").write_text(FACTORY)
    (lib / "helper.py").write_text(HELPER.replace("FACTOR = 1.0", f"FACTOR = {factor}"))
    (lib / "fakedist").mkdir(exist_ok=True)
    (lib / "fakedist" / "__init__.py").write_text("SCALE = 1.0\n")
    info = lib / "fakedist-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(METADATA.format(version="1.0"))
    (info / "top_level.txt").write_text("fakedist\n")


def pipeline_text(**replace: str) -> str:
    text = SMALL_PIPELINE.format(model=MODEL)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    write_library(root / "lib")
    (root / "tiny.yaml").write_text(pipeline_text())
    return built_once(root)


@pytest.fixture
def project(template: Path, tmp_path: Path) -> TracedProject:
    return copied(template, tmp_path)


def line(out: str, stage: str) -> str:
    return next((text for text in out.splitlines() if text.startswith(stage)), "")


def why(out: str, stage: str) -> str:
    """The 'why:' line under a stage's line of `run`."""
    lines = out.splitlines()
    for index, text in enumerate(lines):
        if text.startswith(stage) and index + 1 < len(lines) and lines[index + 1].strip().startswith("why:"):
            return lines[index + 1].strip()
    return ""


# ------------------------------------------------------------------------------ discovered inputs

def test_an_edit_of_a_module_the_factory_imports_reruns_capture_and_names_it(project: TracedProject) -> None:
    project.prime()
    helper = project.root / "lib" / "helper.py"
    helper.write_text(helper.read_text().replace("FACTOR = 1.0", "FACTOR = 0.5"))
    planned = project.orchestrate("plan", str(project.pipeline), "--why")
    assert planned.code == 0, planned.text
    assert re.search(r"^capture .* run .*discovered input changed: \S*lib/helper\.py", planned.out, re.MULTILINE), \
        planned.out
    result = project.run()  # no --force: the record made by the last run says the helper changed
    assert result.code == 0, result.text
    statuses = stage_status(result.out)
    assert (statuses["capture"], statuses["export"], statuses["verify"], statuses["bench"]) == \
        ("ran", "ran", "passed", "ran"), result.out  # verify compares with the new capture
    assert re.search(r"discovered input changed: \S*lib/helper\.py", why(result.out, "capture")), result.out
    assert why(result.out, "export").startswith("why: input changed: capture"), result.out
    again = project.run()
    assert again.code == 0 and "nothing to do: all 5 stages cached" in again.out, again.text


def test_the_version_of_a_distribution_the_model_imports_is_checked(project: TracedProject) -> None:
    project.prime()
    (project.root / "lib" / "fakedist-1.0.dist-info" / "METADATA").write_text(METADATA.format(version="2.0"))
    result = project.run()
    assert result.code == 0, result.text
    assert not result.answered_fast
    assert stage_status(result.out)["capture"] == "ran", result.out
    assert "distribution changed: fakedist 1.0 -> 2.0" in why(result.out, "capture"), result.out


# ------------------------------------------------------------------------------ keys

def keys_of(path: Path) -> dict[str, str]:
    with imports.search_path([ROOT]):
        planned = make_plan(spec.load(path), DigestCache(None))
    return {node.kind: node.key for node in planned.order()}


def test_pipelines_that_differ_only_in_python_path_have_other_keys(tmp_path: Path) -> None:
    write_library(tmp_path / "lib")
    write_library(tmp_path / "other", factor="0.5")  # the same factory file, another helper
    first = tmp_path / "first.yaml"
    first.write_text(pipeline_text())
    second = tmp_path / "second.yaml"
    second.write_text(pipeline_text(**{"python_path: [lib]": "python_path: [other]"}))
    a, b = keys_of(first), keys_of(second)
    assert a["capture"] != b["capture"] and a["export"] != b["export"]
    layout = tmp_path / "third.yaml"
    layout.write_text(pipeline_text(**{"python_path: [lib]": "python_path: [./lib/]"}))
    assert keys_of(layout) == a  # the same folder, written another way


def test_declared_environment_variables_are_keyed_and_others_are_not(project: TracedProject) -> None:
    project.pipeline.write_text(pipeline_text(**{"  inputs: examples": "  env: [ORCHESTRATE_TEST_MODE]\n"
                                                                       "  inputs: examples"}))
    age(project.pipeline)
    declared = {"ORCHESTRATE_TEST_MODE": "fast", "ORCHESTRATE_UNDECLARED": "one"}
    project.prime(env=declared)
    undeclared = project.run(env={**declared, "ORCHESTRATE_UNDECLARED": "two"})
    assert undeclared.code == 0 and undeclared.answered_fast, undeclared.text
    assert set(stage_status(undeclared.out).values()) == {"cached"}, undeclared.out
    changed = {**declared, "ORCHESTRATE_TEST_MODE": "accurate"}
    planned = project.orchestrate("plan", str(project.pipeline), "--why", env=changed)
    assert re.search(r"^capture .* environment variable changed: ORCHESTRATE_TEST_MODE \(value changed\)",
                     planned.out, re.MULTILINE), planned.text
    assert "accurate" not in planned.out and "fast" not in planned.out  # the value is never shown
    result = project.run(env=changed)
    assert result.code == 0 and not result.answered_fast, result.text
    assert stage_status(result.out)["capture"] == "ran" and stage_status(result.out)["export"] == "ran"
    unset = project.orchestrate("plan", str(project.pipeline), "--why")
    assert "environment variable changed: ORCHESTRATE_TEST_MODE (set -> unset)" in line(unset.out, "capture")


# ------------------------------------------------------------------------------ stat signatures

def flip_keeping_mtime(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes in place, keeping the size, then set the mtime back: only the ctime tells."""
    assert len(old) == len(new)
    time.sleep(0.02)  # a later edit: past the tick of a coarse filesystem clock (kernels before multigrain ctime)
    before = path.stat()
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_a_source_edited_with_its_mtime_restored_is_seen_by_the_full_path(project: TracedProject) -> None:
    project.prime()
    flip_keeping_mtime(project.root / "lib" / "tinymodel.py", b"A factory", b"a factory")
    planned = project.orchestrate("plan", str(project.pipeline), "--why")  # plan never takes the fast path
    assert re.search(r"^capture .* run .*file changed: \S*tinymodel\.py", planned.out, re.MULTILINE), planned.text


def test_a_source_edited_with_its_mtime_restored_is_seen_by_the_fast_path(project: TracedProject) -> None:
    project.prime()
    flip_keeping_mtime(project.root / "lib" / "tinymodel.py", b"A factory", b"a factory")
    result = project.run()  # the remembered signature's ctime differs: the full path answers
    assert result.code == 0 and not result.answered_fast, result.text
    assert stage_status(result.out)["capture"] == "ran", result.out


def test_an_artifact_flipped_with_its_mtime_restored_is_rebuilt_by_both_paths(project: TracedProject) -> None:
    project.prime()
    folder = next((project.store / "build").iterdir())
    victim = next(p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json")
    data = victim.read_bytes()
    flip_keeping_mtime(victim, data[len(data) // 2:len(data) // 2 + 1], bytes([data[len(data) // 2] ^ 1]))
    planned = project.orchestrate("plan", str(project.pipeline), "--why")
    assert re.search(r"^build .* run .*does not match its digest", planned.out, re.MULTILINE), planned.text
    result = project.run()
    assert result.code == 0 and not result.answered_fast, result.text
    assert stage_status(result.out)["build"] == "ran" and "does not match its digest" in why(result.out, "build")


def test_the_digest_cache_rehashes_a_file_whose_ctime_moved(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 4096)
    age(file)
    cache = DigestCache(tmp_path / "digests.json")
    first = cache.file(file)
    flip_keeping_mtime(file, b"a", b"b")
    assert cache.file(file) == digest.hash_file(file) != first

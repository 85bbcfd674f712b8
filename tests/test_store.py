"""The artifact store and the no-op fast path: never a wrong answer, nothing heavy imported, sound maintenance.

Every test starts from a copy of one project run once (a folder of tensors, a five-stage pipeline,
its store), so that each pays for the stages its own change makes run, not for a cold run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, stage_status
from test_bad_input import make_tensors
from test_concurrency import PIPELINE, STAGES, tiny_project

from orchestrator import fastpath
from orchestrator.store import digest
from orchestrator.store.store import Store

HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "yaml", "jsonschema", "click", "rich", "numba", "blake3")
ENGINE = (ROOT / "examples" / "ops" / "msda.py").read_text()


@dataclass
class Run:
    code: int
    out: str
    err: str
    imported: set[str]

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def answered_fast(self) -> bool:
        return "jsonschema" not in self.imported and "yaml" not in self.imported


@dataclass
class TracedProject:
    """A copied project whose runs record which modules they imported (-X importtime)."""

    root: Path

    @property
    def pipeline(self) -> Path:
        return self.root / "tiny.yaml"

    @property
    def store(self) -> Path:
        return self.root / "store"

    def orchestrate(self, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Run:
        environment = {**os.environ, "ORCHESTRATE_STORE": str(self.store), "NO_COLOR": "1", **(env or {})}
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", *args], cwd=cwd,
                              env=environment, capture_output=True, text=True, timeout=300)
        imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+([\w.]+)$", done.stderr, flags=re.MULTILINE))
        err = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
        return Run(done.returncode, done.stdout, err, {name.split(".")[0] for name in imported})

    def run(self, *extra: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Run:
        return self.orchestrate("run", str(self.pipeline), *extra, cwd=cwd, env=env)

    def prime(self, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Run:
        """Run until the answer comes from the fast path (the run before it writes the record)."""
        for _ in range(6):
            result = self.run(cwd=cwd, env=env)
            assert result.code == 0, result.text
            if result.answered_fast:
                return result
            time.sleep(1.0)  # something was modified less than two seconds ago: its signature cannot vouch yet
        raise AssertionError(f"the fast path never answered:\n{result.text}")


def build_file(store: Path) -> tuple[Path, str]:
    """A file of the build artifact (not its manifest), and its path inside the artifact."""
    folder = next((store / "build").iterdir())
    file = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")[0]
    return file, file.relative_to(folder).as_posix()


def age(*paths: Path, seconds: float = 30.0) -> None:
    """Date files back, as if they had been written a while ago (a fresh file is rehashed every time)."""
    stamp = time.time_ns() - int(seconds * 1e9)
    for path in paths:
        os.utime(path, ns=(stamp, stamp))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    tiny_project(root, PIPELINE.replace("capture: {from_dir: tensors}",
                                        "python_path: [.]\ncapture: {from_dir: tensors}").replace(
        "      dtypes:", "      replace: userops:ms_deform_attn\n      dtypes:"))
    (root / "userops.py").write_text(ENGINE)
    return built_once(root)


def built_once(root: Path) -> Path:
    """`root` with its files aged (so digests are vouched for) and tiny.yaml run once into root/store."""
    age(*root.rglob("*"), root)
    environment = {**os.environ, "ORCHESTRATE_STORE": str(root / "store"), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(root / "tiny.yaml")], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture
def project(template: Path, tmp_path: Path) -> TracedProject:
    return copied(template, tmp_path)


def copied(template: Path, tmp_path: Path) -> TracedProject:
    """A copy of a module's built template project, for one test to change."""
    shutil.copytree(template, tmp_path / "p", symlinks=True)
    return TracedProject(tmp_path / "p")


# ------------------------------------------------------------------------------------------ the no-op path

def test_a_cached_run_imports_nothing_heavy(project: TracedProject) -> None:
    result = project.prime()
    assert "nothing to do: all 5 stages cached" in result.out
    assert set(stage_status(result.out).values()) == {"cached"}
    assert not set(HEAVY) & result.imported, sorted(set(HEAVY) & result.imported)


def test_the_fast_answer_is_the_full_answer_also_for_a_failed_check(project: TracedProject) -> None:
    """A cached failed verify: exit 1 and the same lines, the FAILED line included, either way."""
    import numpy as np

    wrong = project.root / "wrong"
    shutil.copytree(project.root / "tensors", wrong)
    np.save(wrong / "output.npy", np.load(wrong / "output.npy") + 1.0)
    age(*wrong.iterdir(), wrong)
    project.pipeline.write_text(project.pipeline.read_text().replace("from_dir: tensors", "from_dir: wrong"))
    first = project.run()
    assert first.code == 1 and stage_status(first.out)["verify"] == "failed", first.text
    full = project.run("-j", "1")  # an option: the fast path leaves it to the full path
    fast = project.run()
    for _ in range(5):
        if fast.answered_fast:
            break
        time.sleep(1.0)
        fast = project.run()
    assert fast.answered_fast and not full.answered_fast
    assert (fast.code, fast.out, fast.err) == (full.code, full.out, full.err)
    assert fast.code == 1 and "FAILED verify: " in fast.err


def test_a_changed_tensor_is_seen(project: TracedProject) -> None:
    project.prime()
    fresh = project.root / "fresh"
    make_tensors(fresh, seed=1)
    for file in fresh.iterdir():
        shutil.copyfile(file, project.root / "tensors" / file.name)
    result = project.run()
    assert result.code == 0, result.text
    # New values of the same shapes: the same one-call ONNX, so the engine is reused (early cutoff).
    assert stage_status(result.out) == {"capture": "ran", "export": "ran", "build": "cached", "verify": "passed",
                                        "bench": "ran"}
    assert "why: file changed: " in result.out and "(tensor " in result.out
    assert "(early cutoff)" in result.out


def test_a_file_added_to_the_capture_folder_is_seen(project: TracedProject) -> None:
    project.prime()
    shutil.copyfile(project.root / "tensors" / "value.npy", project.root / "tensors" / "input_value.npy")
    result = project.run()
    assert result.code == 2 and "holds several files for 'value'" in result.err, result.text


def test_an_edit_of_the_replaced_callable_is_seen_and_explained(project: TracedProject) -> None:
    project.prime()
    with open(project.root / "userops.py", "a") as handle:
        handle.write("\n# tuned\n")
    why = project.orchestrate("plan", str(project.pipeline), "--why")
    assert why.code == 0, why.text
    assert re.search(r"^export .* file changed: \S*userops\.py \(module userops\)", why.out, re.MULTILINE), why.out
    result = project.run()
    assert result.code == 0, result.text
    # The edit is a comment: the same ONNX, so the same engine, whose verify and bench are reused (early cutoff).
    assert stage_status(result.out) == {"capture": "cached", "export": "ran", "build": "ran", "verify": "cached",
                                        "bench": "cached"}
    assert "(early cutoff)" in result.out


def test_a_damaged_artifact_is_rebuilt_not_used(project: TracedProject) -> None:
    project.prime()
    victim, name = build_file(project.store)
    with open(victim, "ab") as handle:
        handle.write(b"\0")
    result = project.run()
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "cached", "export": "cached", "build": "ran", "verify": "cached",
                                        "bench": "cached"}
    assert f"rebuilt: artifact damaged: {name} has" in result.out


def test_the_store_setting_is_honoured(project: TracedProject) -> None:
    project.prime()
    assert project.run("--store", str(project.store)).answered_fast
    copy = project.root / "copied-store"
    shutil.copytree(project.store, copy)
    by_flag = project.run("--store", str(copy))  # the same artifacts, but no answer remembered for this store
    assert by_flag.code == 0 and not by_flag.answered_fast and "nothing to do" in by_flag.out, by_flag.text
    elsewhere = project.root / "other-store"
    result = project.run(env={"ORCHESTRATE_STORE": str(elsewhere)})
    assert result.code == 0, result.text
    assert stage_status(result.out)["capture"] == "ran"
    assert any((elsewhere / "capture").iterdir())


def test_the_current_directory_is_part_of_the_answer(project: TracedProject) -> None:
    """An import path resolves from the current directory: another directory may mean another module."""
    text = project.pipeline.read_text().replace("python_path: [.]\n", "").replace("userops:", "shadowops:")
    project.pipeline.write_text(text)
    first, second = project.root / "a", project.root / "b"
    for folder, extra in ((first, ""), (second, "\n# another copy\n")):
        folder.mkdir()
        (folder / "shadowops.py").write_text(ENGINE + extra)
        age(folder / "shadowops.py", folder)
    project.prime(cwd=first)
    result = project.run(cwd=second)
    assert result.code == 0, result.text
    assert stage_status(result.out)["export"] == "ran"
    back = project.run(cwd=first)
    assert stage_status(back.out)["export"] == "cached", back.text


def test_an_installed_tool_version_is_seen(project: TracedProject) -> None:
    """onnxruntime 'upgraded' on sys.path (its metadata says 99.0) changes the build key and the fast answer."""
    extra = project.root / "site"
    extra.mkdir()
    environment = {"PYTHONPATH": str(extra)}
    project.prime(env=environment)
    metadata = extra / "onnxruntime-99.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 99.0\n")
    why = project.orchestrate("plan", str(project.pipeline), "--why", env=environment)
    assert re.search(r"^build .* tool changed: onnxruntime \S+ -> 99\.0", why.out, re.MULTILINE), why.text
    result = project.run(env=environment)
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "cached", "export": "cached", "build": "ran", "verify": "passed",
                                        "bench": "ran"}


def test_an_edit_of_orchestrate_itself_is_seen(project: TracedProject) -> None:
    """A copy of the package runs from its own directory; touching one of its modules sends the run the full way."""
    code = project.root / "code"
    code.mkdir()
    shutil.copytree(ROOT / "orchestrator", code / "orchestrator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "schemas", code / "schemas")
    age(*code.rglob("*"), code)
    project.prime(cwd=code)
    with open(code / "orchestrator" / "ui.py", "a") as handle:
        handle.write("\n# an edit\n")
    result = project.run(cwd=code)
    assert result.code == 0, result.text
    assert not result.answered_fast
    assert "nothing to do" in result.out


def test_gpu_identity_follows_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = fastpath._gpu_fingerprint()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert fastpath._gpu_fingerprint() != before


# ------------------------------------------------------------------------------------------ digests

def test_a_file_is_hashed_once_and_a_fresh_one_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, fresh = tmp_path / "old.bin", tmp_path / "fresh.bin"
    old.write_bytes(b"a" * 4096)
    age(old)
    cache = digest.DigestCache(tmp_path / "digests.json")
    first = cache.file(old)
    fresh.write_bytes(b"b" * 4096)
    fresh_digest = cache.file(fresh)
    cache.save()

    reloaded = digest.DigestCache(tmp_path / "digests.json")

    def refuse(path: object) -> str:
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(digest, "hash_file", refuse)
    assert reloaded.file(old) == first  # (size, mtime_ns, inode) unchanged: no rehash
    monkeypatch.undo()
    # Rewritten within the same clock tick: same size, same mtime. Its digest was never trusted.
    stat = fresh.stat()
    fresh.write_bytes(b"c" * 4096)
    os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert reloaded.file(fresh) == digest.hash_file(fresh) != fresh_digest


# ------------------------------------------------------------------------------------------ fsck and gc

def test_fsck_finds_a_silently_tampered_artifact_and_the_next_run_rebuilds_it(project: TracedProject) -> None:
    project.prime()
    victim, name = build_file(project.store)
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size, mtime and inode as before
    fsck = project.orchestrate("fsck")
    assert fsck.code == 1, fsck.text
    assert f"damaged: {name} does not match its digest" in fsck.out and re.search(r"^damaged: build/", fsck.out,
                                                                                  re.MULTILINE), fsck.out
    result = project.run()
    assert result.code == 0, result.text
    assert stage_status(result.out)["build"] == "ran"
    assert f"rebuilt: artifact damaged: {name} does not match its digest" in result.out
    clean = project.orchestrate("fsck")
    assert clean.code == 0 and "5 artifacts: 0 damaged" in clean.out, clean.text


def test_fsck_repair_removes_the_damaged_artifact(project: TracedProject) -> None:
    project.prime()
    result_file = next((project.store / "bench").glob("*/manifest.json")).parent
    victim = next(p for p in result_file.rglob("*") if p.is_file() and p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b" ")
    repaired = project.orchestrate("fsck", "--repair")
    assert repaired.code == 0 and re.search(r"^removed: bench/", repaired.out, re.MULTILINE), repaired.text
    assert not any((project.store / "bench").iterdir())
    result = project.run()
    assert stage_status(result.out)["bench"] == "ran", result.text


def test_gc_keeps_what_a_running_process_uses(project: TracedProject) -> None:
    slow = project.root / "slow.yaml"
    slow.write_text(project.pipeline.read_text().replace("bench: {warmup: 1, iterations: 5}",
                                                         "bench: {warmup: 1, iterations: 100000000, max_seconds: 3}"))
    environment = {**os.environ, "ORCHESTRATE_STORE": str(project.store), "NO_COLOR": "1"}
    running = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(slow)], cwd=ROOT, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((project.store / ".tmp").glob("bench-*")):
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.05)
        swept = project.orchestrate("gc", "--older-than", "0s")
        out, err = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
    assert swept.code == 0, swept.text
    # The first run's bench (5 iterations) is no one's: removed. The four stages the slow run uses are kept.
    assert "removed 1 artifacts" in swept.out and "kept 4 in use by running processes" in swept.out, swept.out
    assert running.returncode == 0, out + err
    assert stage_status(out) == {"capture": "cached", "export": "cached", "build": "cached", "verify": "cached",
                                 "bench": "ran"}
    kinds = sorted(kind for kind, _, _ in Store(project.store).artifacts())
    assert kinds == sorted(STAGES)


def test_gc_removes_what_no_pipeline_reaches(project: TracedProject) -> None:
    other = project.root / "other.yaml"
    other.write_text(project.pipeline.read_text().replace("iterations: 5", "iterations: 6"))
    assert project.orchestrate("run", str(other)).code == 0
    before = sorted(key for _, key, _ in Store(project.store).artifacts())
    assert len(before) == 6  # two bench artifacts

    dry = project.orchestrate("gc", str(project.pipeline), "--dry-run")
    assert dry.code == 0 and "would remove 1 artifacts" in dry.out and re.search(r"^would remove bench/", dry.out,
                                                                                 re.MULTILINE), dry.text
    assert sorted(key for _, key, _ in Store(project.store).artifacts()) == before

    swept = project.orchestrate("gc", str(project.pipeline))
    assert swept.code == 0 and "removed 1 artifacts" in swept.out, swept.text
    assert project.run().code == 0
    assert "nothing to do" in project.run().out

    young = project.orchestrate("gc", "--older-than", "1h")
    assert "removed 0 artifacts" in young.out, young.text
    bad = project.orchestrate("gc", "--older-than", "soon")
    assert bad.code == 2 and "--older-than takes a number and a unit" in bad.err, bad.text

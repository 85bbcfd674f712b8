"""Many `orchestrate run`s on one store, and runs killed with SIGKILL: the store stays sound.

Both tests use real processes on a small pipeline whose capture is a folder of tensors, so that a
run takes a few seconds (most of it importing torch, ONNX Runtime and Numba).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import ROOT, stage_status
from test_bad_input import make_tensors

from orchestrator.store.store import Store

PIPELINE = """\
version: 1
name: tiny
capture: {from_dir: tensors}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {spatial_shapes: int32, level_start_index: int32}
bench: {warmup: 1, iterations: 5}
"""
STAGES = ("capture", "export", "build", "verify", "bench")


def tiny_project(root: Path, pipeline: str = PIPELINE) -> Path:
    make_tensors(root / "tensors")
    path = root / "tiny.yaml"
    path.write_text(pipeline)
    return path


def environment(store: Path) -> dict[str, str]:
    return {**os.environ, "ORCHESTRATE_STORE": str(store), "NO_COLOR": "1"}


def start(pipeline: Path, store: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(pipeline), *extra], cwd=ROOT,
                            env=environment(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def orchestrate(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=environment(store),
                          capture_output=True, text=True, timeout=300)


def visible_artifacts(store: Path) -> list[tuple[str, str]]:
    return [(kind, key) for kind, key, _ in Store(store).artifacts()]


def assert_every_visible_artifact_is_sound(store: Path) -> None:
    """What a later run could pick up must match its manifest byte for byte."""
    checker = Store(store)
    for kind, key, _ in checker.artifacts():
        artifact, problem = checker.check(kind, key, rehash=True)
        assert artifact is not None, f"{kind}/{key[:12]}: {problem}"


def test_eight_concurrent_runs_produce_each_stage_once(tmp_path: Path) -> None:
    pipeline = tiny_project(tmp_path)
    store = tmp_path / "store"
    processes = [start(pipeline, store) for _ in range(8)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append((process.returncode, out, err))
    assert [code for code, _, _ in results] == [0] * 8, "\n".join(out + err for _, out, err in results)
    statuses = [stage_status(out) for _, out, _ in results]
    for stage in STAGES:
        counted = Counter(status[stage] for status in statuses)
        produced = counted["ran"] + counted["passed"]
        assert produced == 1, f"{stage}: {dict(counted)}"
        assert counted["cached"] + counted["waited"] == 7, f"{stage}: {dict(counted)}"
    assert sorted(kind for kind, _ in visible_artifacts(store)) == sorted(STAGES)
    assert_every_visible_artifact_is_sound(store)
    fsck = orchestrate(store, "fsck")
    assert fsck.returncode == 0 and "5 artifacts: 0 damaged" in fsck.stdout, fsck.stdout + fsck.stderr
    assert not any((store / ".tmp").iterdir()), "a run left a staging directory behind"
    assert not list((store / ".state" / "inuse").glob("*.json")), "a finished run still says it uses keys"


def _staging(store: Path, old: set[str] = frozenset()) -> list[Path]:  # type: ignore[assignment]
    """Staging directories of stages being written (not those of earlier killed runs, in `old`)."""
    try:
        return [Path(entry.path) for entry in os.scandir(store / ".tmp")
                if not entry.name.startswith("discard-") and entry.name not in old]
    except FileNotFoundError:
        return []


def _publishing(store: Path, old: set[str]) -> bool:
    """A staging directory with its manifest: the files are hashed, fsync and rename are under way."""
    return any((folder / "manifest.json").exists() for folder in _staging(store, old))


def _published(store: Path, before: set[tuple[str, str]]) -> bool:
    return bool(set(visible_artifacts(store)) - before)


def kill_at(process: subprocess.Popen[str], store: Path, mode: str, delay: float, old: set[str],
            before: set[tuple[str, str]]) -> str:
    """SIGKILL the run when `mode` says; return what the store showed at that moment."""
    deadline = time.monotonic() + (delay if mode == "time" else 30.0)
    conditions = {"time": lambda: False, "staging": lambda: bool(_staging(store, old)),
                  "publish": lambda: _publishing(store, old), "published": lambda: _published(store, before)}
    while time.monotonic() < deadline and process.poll() is None:
        if conditions[mode]() or (mode == "publish" and _published(store, before)):
            break
        time.sleep(0.0002)
    if process.poll() is not None:
        return "finished first"
    os.killpg(process.pid, signal.SIGKILL)
    seen = ("while publishing" if _publishing(store, old) else "while a stage wrote" if _staging(store, old)
            else "just after publishing" if _published(store, before) else "between stages")
    process.communicate(timeout=60)
    return seen


def test_runs_killed_at_20_points_leave_nothing_a_later_run_would_use(tmp_path: Path) -> None:
    pipeline = tiny_project(tmp_path)
    store = tmp_path / "store"
    chooser = random.Random(20)
    modes = ["time", "staging", "publish", "published"]
    seen = []
    for index in range(20):
        mode = modes[index % len(modes)]
        present = visible_artifacts(store)
        if len(present) == len(STAGES) or (present and chooser.random() < 0.3):
            # Make work for the next run: drop some artifacts, or force a stage (re-publishes a key).
            if chooser.random() < 0.5:
                for kind, key in chooser.sample(present, k=chooser.randint(1, len(present))):
                    Store(store).discard(kind, key)
                extra: tuple[str, ...] = ()
            else:
                extra = ("--force", chooser.choice(STAGES))
        else:
            extra = ()
        old = {path.name for path in _staging(store)}
        before = set(visible_artifacts(store))
        process = start(pipeline, store, *extra)
        moment = kill_at(process, store, mode, chooser.uniform(0.05, 3.5), old, before)
        seen.append(f"{index:2d} {mode}{' ' + ' '.join(extra) if extra else ''}: {moment}")
        assert_every_visible_artifact_is_sound(store)
    print("\n".join(seen))
    assert sum("finished first" not in s for s in seen) >= 15, seen

    final = orchestrate(store, "run", str(pipeline))
    assert final.returncode == 0, final.stdout + final.stderr
    assert set(stage_status(final.stdout)) == set(STAGES)
    verify = Store(store).get("verify", json.loads(
        (store / ".state" / "runs" / "tiny.json").read_text())["stages"]["/verify"]["key"])
    assert verify is not None and verify.manifest["passed"], final.stdout
    fsck = orchestrate(store, "fsck", "--repair")
    assert fsck.returncode == 0 and ": 0 damaged" in fsck.stdout, fsck.stdout + fsck.stderr
    assert not _staging(store)
    again = orchestrate(store, "run", str(pipeline))
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr


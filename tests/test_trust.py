"""What a hostile remote cache can and cannot make this machine do, and what a failed stage leaves to look at.

Whoever can write the remote can change results, but what it serves is data: a pulled artifact names
only the files its stage writes, its blobs have the sizes its manifest gives before one is fetched,
its manifest's parts hash to the key computed here, and nothing in it is imported or called. Each
test poisons its own copy of one pushed run, on a shared-directory remote, with the bytes a hostile
writer would put there (self-consistent manifests: the digests match).

"Never read" is seen from a blob's access time, set to the epoch first: Linux updates it on the
first read after that (relatime). Where the filesystem does not record reads, those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, stage_status
from test_bad_input import make_models, make_tensors
from test_catalog import toy_graph

from orchestrator import stages
from orchestrator.backends import onnxruntime as ort_backend
from orchestrator.backends.base import Trusted
from orchestrator.errors import UserError
from orchestrator.store.digest import digest_bytes
from orchestrator.store.remote import Remote
from orchestrator.store.store import Store

# A module a hostile remote adds to a build: it marks that it ran, then computes the right answer.
EVIL_MODULE = """\
import pathlib

pathlib.Path({marker!r}).write_text("code from the remote cache ran here")

from orchestrator import plugins

_real = plugins.builtin("MultiscaleDeformableAttnPlugin_TRT").load_kernel()


def kernel(inputs, attributes):
    return _real(inputs, attributes)
"""


@dataclass
class Built:
    project: Project
    pipeline: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The small pipeline, run once into a local store (no remote)."""
    project = Project(tmp_path_factory.mktemp("built"))
    pipeline = project.small()
    result = project.run("run", str(pipeline), env={"ORCHESTRATE_REMOTE": "off"})
    assert result.code == 0, result.text
    return Built(project, pipeline)


def pushed(built: Built, remote: Path, drop: tuple[str, ...] = ("verify", "bench")) -> Path:
    """A shared-directory remote holding the built run, less the stages in `drop` (so that they run
    on the machine that pulls the rest, as they would after a new verify setting)."""
    result = built.project.run("push", str(built.pipeline), "--remote", str(remote))
    assert result.code == 0, result.text
    for kind in drop:
        shutil.rmtree(remote / "v1" / kind)
    return remote


def manifest_of(remote: Path, kind: str) -> tuple[Path, dict[str, Any]]:
    (path,) = (remote / "v1" / kind).glob("*/manifest.json")
    return path, json.loads(path.read_text())


def blob_path(remote: Path, digest: str) -> Path:
    return remote / "v1" / "blobs" / digest[:2] / digest


def put_blob(remote: Path, data: bytes) -> dict[str, Any]:
    """Store `data` as a blob of the remote, as its writer would; its manifest entry."""
    digest = digest_bytes(data)
    path = blob_path(remote, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"size": len(data), "digest": digest}


def poisoned_plan(plan: dict[str, Any], **changes: Any) -> dict[str, Any]:
    for step in plan["steps"]:
        if step["type"] == "plugin":
            step.update(changes)
    assert any(step["type"] == "plugin" for step in plan["steps"])
    return plan


def unread(path: Path) -> Path:
    """Set `path`'s access time to the epoch, after checking that a read would show on this filesystem."""
    probe = path.with_name(path.name + ".probe")
    probe.write_bytes(b"probe")
    os.utime(probe, ns=(0, probe.stat().st_mtime_ns))
    probe.read_bytes()
    recorded = probe.stat().st_atime_ns != 0
    probe.unlink()
    if not recorded:
        pytest.skip("this filesystem does not record reads (noatime)")
    os.utime(path, ns=(0, path.stat().st_mtime_ns))
    return path


def never_read(path: Path) -> bool:
    return path.stat().st_atime_ns == 0


def test_a_kernel_a_pulled_run_plan_names_is_never_called(built: Built, tmp_path: Path) -> None:
    """`kernel: torch:save` with a path for attributes would write a file of the remote's choice."""
    remote = pushed(built, tmp_path / "remote")
    target = tmp_path / "written-by-the-remote.pt"
    path, manifest = manifest_of(remote, "build")
    plan = json.loads(blob_path(remote, manifest["files"]["runplan.json"]["digest"]).read_bytes())
    manifest["files"]["runplan.json"] = put_blob(remote, json.dumps(
        poisoned_plan(plan, kernel="torch:save", attributes=str(target))).encode())
    path.write_text(json.dumps(manifest))

    victim = Project(tmp_path / "victim")
    result = victim.run("run", str(built.pipeline), "--remote", str(remote))
    assert not target.exists(), result.text
    assert result.code == 0, result.text
    assert stage_status(result.out) == {"capture": "pulled", "export": "pulled", "build": "ran",
                                        "verify": "passed", "bench": "ran"}, result.out
    assert "ignored, running here: runplan.json: step" in result.out
    assert "it names a kernel to import ('torch:save')" in result.out


def test_a_run_plan_in_the_store_runs_catalog_kernels_or_nothing(built: Built, tmp_path: Path) -> None:
    """Past the remote (an artifact copied into the store by hand), the runner still imports nothing it names."""
    store = tmp_path / "store"
    shutil.copytree(built.project.store, store)
    for kind in ("verify", "bench"):
        shutil.rmtree(store / kind)
    (folder,) = (store / "build").iterdir()
    target = tmp_path / "written-by-the-plan.pt"
    plan = poisoned_plan(json.loads((folder / "runplan.json").read_text()), kernel="torch:save",
                         attributes=str(target))
    data = json.dumps(plan).encode()
    (folder / "runplan.json").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["runplan.json"] = {"size": len(data), "digest": digest_bytes(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))

    result = built.project.run("run", str(built.pipeline), env={"ORCHESTRATE_STORE": str(store),
                                                                 "ORCHESTRATE_REMOTE": "off"})
    assert not target.exists(), result.text
    assert result.code == 2, result.text
    assert "runplan.json is not a run plan the build writes" in result.err
    assert "names a kernel to import ('torch:save')" in result.err and "Traceback" not in result.text


def test_a_module_added_to_a_pulled_build_is_refused_unread(built: Built, tmp_path: Path) -> None:
    """An evil.py in the build, named as the kernel: the remote copy is refused before a byte is fetched."""
    remote = pushed(built, tmp_path / "remote")
    marker = tmp_path / "the-remote-ran-code"
    path, manifest = manifest_of(remote, "build")
    manifest["files"]["evil.py"] = put_blob(remote, EVIL_MODULE.format(marker=str(marker)).encode())
    plan = json.loads(blob_path(remote, manifest["files"]["runplan.json"]["digest"]).read_bytes())
    module = f"artifacts.build.{manifest['key']}.evil"  # importable where the store lies on the import path
    manifest["files"]["runplan.json"] = put_blob(remote, json.dumps(
        poisoned_plan(plan, kernel=f"{module}:kernel")).encode())
    path.write_text(json.dumps(manifest))
    evil_blob = unread(blob_path(remote, manifest["files"]["evil.py"]["digest"]))

    victim = Project(tmp_path / "victim")
    victim.root.mkdir()  # a folder on the import path that holds the store, as a project folder does
    result = victim.run("run", str(built.pipeline), "--remote", str(remote), env={"PYTHONPATH": str(victim.root)})
    assert not marker.exists(), result.text
    assert result.code == 0, result.text
    status = stage_status(result.out)
    assert (status["build"], status["verify"]) == ("ran", "passed"), result.out
    assert "ignored, running here: it holds a file the build stage never writes: evil.py" in result.out
    assert never_read(evil_blob)
    assert not list(victim.store.rglob("evil.py"))


def test_an_undeclared_file_in_any_stage_is_refused_before_download(built: Built, tmp_path: Path) -> None:
    remote = pushed(built, tmp_path / "remote", drop=())
    path, manifest = manifest_of(remote, "capture")
    manifest["files"]["tensors/notes.txt"] = put_blob(remote, b"not a tensor\n")
    path.write_text(json.dumps(manifest))
    extra = unread(blob_path(remote, manifest["files"]["tensors/notes.txt"]["digest"]))
    others = [unread(blob_path(remote, meta["digest"])) for name, meta in manifest["files"].items()
              if name != "tensors/notes.txt"]

    other = Project(tmp_path / "other")
    pulled = other.run("pull", str(built.pipeline), "--remote", str(remote))
    assert pulled.code == 1, pulled.text
    assert stage_status(pulled.out)["capture"] == "rejected"
    assert "it holds a file the capture stage never writes: tensors/notes.txt" in pulled.out
    assert never_read(extra) and all(never_read(blob) for blob in others)  # not one file of it fetched
    assert not list(other.store.glob("capture/*"))


def test_a_blob_of_another_size_than_the_manifest_says_is_not_fetched(built: Built, tmp_path: Path) -> None:
    remote = pushed(built, tmp_path / "remote", drop=())
    _, manifest = manifest_of(remote, "build")
    meta = manifest["files"]["runplan.json"]
    blob = blob_path(remote, meta["digest"])
    blob.write_bytes(blob.read_bytes() + b" " * 1_000_000)  # a remote that would fill the disk
    unread(blob)

    other = Project(tmp_path / "other")
    pulled = other.run("pull", str(built.pipeline), "--remote", str(remote))
    assert pulled.code == 1, pulled.text
    assert stage_status(pulled.out)["build"] == "rejected"
    assert f"runplan.json: its blob has {meta['size'] + 1_000_000} bytes, the manifest says {meta['size']}" \
        in pulled.out
    assert never_read(blob)
    assert not list(other.store.glob("build/*"))


def test_a_manifest_whose_parts_do_not_hash_to_its_key_is_refused(built: Built, tmp_path: Path) -> None:
    """The parts name the catalog paths verify imports: a copy that changes them is not the key's."""
    remote = pushed(built, tmp_path / "remote", drop=())
    path, manifest = manifest_of(remote, "build")
    manifest["parts"]["config"]["plugins"][0]["catalog"] = "evil_catalog:ENTRY"
    path.write_text(json.dumps(manifest))
    store = Store(tmp_path / "store")
    artifact, problem = Remote(str(remote)).pull(store, "build", manifest["key"])
    assert artifact is None and "parts do not hash to its key" in problem, problem

    local = tmp_path / "local"
    shutil.copytree(built.project.store, local)
    (folder,) = (local / "build").iterdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Store(local).check("build", folder.name) == (None, "damaged: manifest parts do not hash to its key")


def test_the_runner_takes_catalog_paths_from_its_caller_only(tmp_path: Path) -> None:
    """A user's catalog entry is imported only when the pipeline's declaration is handed to the runner."""
    declared = ({"op": "ScaledGatherPlugin", "catalog": "examples.ops.scaled_gather:ENTRY"},)
    ort_backend.build(toy_graph(), tmp_path, "fp32", list(declared), lambda message: None)
    with pytest.raises(UserError, match="no catalog entry for plugin 'ScaledGatherPlugin'"):
        ort_backend.Runner(tmp_path)
    assert ort_backend.Runner(tmp_path, trusted=Trusted(declared)).outputs[0].name == "output"


def test_every_file_a_stage_writes_is_declared(built: Built, tmp_path: Path) -> None:
    """The remote refuses undeclared files: what the stages really write must all be declared."""
    written = {}
    for manifest in built.project.store.glob("*/*/manifest.json"):
        record = json.loads(manifest.read_text())
        written[record["stage"]] = list(record["files"])
    ort_backend.build(toy_graph(), tmp_path, "fp32", [{"op": "ScaledGatherPlugin",
                                                       "catalog": "examples.ops.scaled_gather:ENTRY"}],
                      lambda message: None)
    segments = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert any(name.startswith("segments/") for name in segments)
    written["build"] += segments
    assert set(written) == {"capture", "export", "build", "verify", "bench"}
    undeclared = [f"{kind}/{name}" for kind, names in written.items() for name in names
                  if not stages.declares(kind, name)]
    assert undeclared == []
    assert not stages.declares("build", "evil.py") and not stages.declares("capture", "tensors/a/b.npy")


def test_the_onnx_that_failed_preflight_is_kept_outside_the_store(project: Project) -> None:
    make_tensors(project.root / "tensors")
    (project.root / "models").mkdir()
    make_models(project.root / "models")
    pipeline = project.write("bad.yaml", "version: 1\ncapture: {from_dir: tensors}\nexport:\n  onnx: models/relu.onnx\n"
                                         "  plugins:\n    - op: MultiscaleDeformableAttnPlugin_TRT\n")
    result = project.run("run", str(pipeline))
    assert result.code == 2, result.text
    assert "the graph has no plugin node" in result.err
    found = re.search(r"^  kept for inspection: (\S+)/$", result.err, flags=re.MULTILINE)
    assert found, result.err
    kept = Path(found.group(1))
    assert kept.parent == project.store / ".state" / "failed" and kept.name.startswith("build-"), kept
    (export,) = kept.glob("export-*")
    assert (export / "model.onnx").read_bytes() == (project.root / "models" / "relu.onnx").read_bytes()
    record = json.loads((kept / "failed.json").read_text())
    assert record["stage"] == "build" and "no plugin node" in record["error"]

    # Never reused: the store holds no artifact of the failed run, and the next run makes them again.
    assert not list(project.store.glob("*/*/manifest.json"))
    again = project.run("run", str(pipeline))
    assert again.code == 2 and stage_status(again.out)["export"] == "ran", again.text


def test_gc_removes_failed_stage_folders_after_a_while(project: Project) -> None:
    old, recent = project.store / ".state" / "failed" / "build-00000000", project.store / ".state" / "failed" / "x"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "failed.json").write_text("{}")
    os.utime(old, (0, 0))
    result = project.run("gc", "--older-than", "1d")
    assert result.code == 0, result.text
    assert "removed 1 failed stage folder kept for inspection" in result.out
    assert not old.exists() and recent.exists()

"""The corpus of broken pipelines in tests/bad_pipelines: exit 2, one clear message, nothing in the store.

Each corpus file starts with comments that say what must happen:
  # expect: <text the error message contains>
  # line: <the line the message points at>          (where the mistake has a line)
  # found-by: stages                                (the mistake shows only once a stage reads the data)

"Nothing written to the store" means: for a mistake found while reading or planning the pipeline,
the store directory is not even created; for one found by a stage, no artifact, staging directory,
run record, fast-path record or report is left, only the store's bookkeeping (its lock files and
the digest cache), and the artifacts the run published before the stage failed are withdrawn. What
was withdrawn is kept for inspection under .state/failed/, which no run reads as an artifact.

The tensor folders and ONNX models the corpus points at, and the 50 MB file, are made by the
`corpus` fixture in a copy of the corpus (no binary files in the repository).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

CORPUS = Path(__file__).resolve().parent / "bad_pipelines"
GENERATED = {"huge_50mb.yaml": ("a pipeline file may be at most", None)}
BOOKKEEPING = re.compile(r"^(\.gitignore|\.locks/[^/]+\.lock|\.state/digests\.json|\.state/failed/.+)$")


@dataclass
class Case:
    name: str
    path: Path
    expect: str
    line: int | None
    by_stages: bool


def declared(path: Path) -> Case:
    raw = path.read_bytes()
    header = dict(re.findall(rb"^# ([a-z-]+): (.*)$", raw, flags=re.MULTILINE)[:3])
    expect = header[b"expect"].decode()
    line = int(header[b"line"]) if b"line" in header else None
    return Case(path.name, path, expect, line, header.get(b"found-by") == b"stages")


def corpus_names() -> list[str]:
    return sorted([p.name for p in CORPUS.glob("*.yaml")] + list(GENERATED))


def make_tensors(folder: Path, seed: int = 0, **replace: np.ndarray | bytes | None) -> None:
    """A small, valid MSDA capture (2 levels, 3 queries) whose output the reference kernel computed,
    with some files replaced or left out."""
    from orchestrator import plugins

    rng = np.random.default_rng(seed)
    weights = rng.random((1, 3, 2, 2, 2)).astype(np.float32)
    tensors: dict[str, np.ndarray | bytes | None] = {
        "value": rng.standard_normal((1, 8, 2, 4)).astype(np.float32),
        "spatial_shapes": np.array([[2, 3], [1, 2]], dtype=np.int64),
        "level_start_index": np.array([0, 6], dtype=np.int64),
        "sampling_locations": rng.random((1, 3, 2, 2, 2, 2)).astype(np.float32),
        "attention_weights": weights / weights.sum((-1, -2), keepdims=True),
    }
    entry = plugins.builtin("MultiscaleDeformableAttnPlugin_TRT")
    assert entry is not None and entry.result_shape is not None
    inputs = [np.asarray(tensors[c.name]) for c in entry.inputs]
    output = entry.load_kernel()([a.astype(np.int32) if a.dtype == np.int64 else a for a in inputs], {})[0]
    tensors["output"] = output.reshape(entry.result_shape(tuple(output.shape)))
    tensors.update(replace)
    folder.mkdir(parents=True)
    for name, value in tensors.items():
        if value is None:
            continue
        if isinstance(value, bytes):
            suffix = ".pt" if value.startswith(b"PK") else ".npy"
            (folder / f"{name}{suffix}").write_bytes(value)
        else:
            np.save(folder / f"{name}.npy", value)


def make_models(folder: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, folder / "relu.onnx")
    data = (folder / "relu.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):  # noqa: B017 - the fixture must really be unreadable
        onnx.load(str(folder / "truncated.onnx"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    shutil.copytree(CORPUS, root, dirs_exist_ok=True)
    tensors = root / "tensors"
    make_tensors(tensors / "ok")
    make_tensors(tensors / "missing_one", level_start_index=None)
    make_tensors(tensors / "ambiguous", input_value=np.zeros((1, 8, 2, 4), np.float32))
    make_tensors(tensors / "malformed", value=b"this is not a NumPy file\n")
    make_tensors(tensors / "truncated_pt", value=None)
    (tensors / "truncated_pt" / "value.pt").write_bytes(b"PK\x03\x04" + bytes(range(200)))
    make_tensors(tensors / "wrong_rank", value=np.zeros((8, 2, 4), np.float32))
    make_tensors(tensors / "float_shapes", spatial_shapes=np.array([[2.0, 3.0], [1.0, 2.0]], np.float32))
    make_models(root / "models")
    with open(root / "huge_50mb.yaml", "w") as handle:
        handle.write("version: 1\n")
        line = "# " + "x" * 1000 + "\n"
        for _ in range(50 * 1024):
            handle.write(line)
    return root


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    store: Path


@pytest.fixture(scope="module")
def outcomes(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every corpus file through `orchestrate run`, each with its own store, two at a time."""
    stores = tmp_path_factory.mktemp("stores")

    def run(name: str) -> Outcome:
        store = stores / name
        environment = {**os.environ, "ORCHESTRATE_STORE": str(store), "NO_COLOR": "1"}
        done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(corpus / name)], cwd=ROOT,
                              env=environment, capture_output=True, text=True, timeout=300)
        return Outcome(done.returncode, done.stdout, done.stderr, store)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(corpus_names(), pool.map(run, corpus_names()), strict=True))


def test_the_corpus_is_large_enough() -> None:
    assert len(corpus_names()) >= 40
    assert sum(declared(CORPUS / n).by_stages for n in corpus_names() if n not in GENERATED) >= 4


def leftovers(store: Path) -> list[str]:
    """Files in the store other than its bookkeeping."""
    if not store.exists():
        return []
    found = []
    for path in store.rglob("*"):
        relative = path.relative_to(store).as_posix()
        if path.is_file() and not BOOKKEEPING.match(relative):
            found.append(relative)
    return sorted(found)


@pytest.mark.parametrize("name", corpus_names())
def test_broken_pipeline_exits_2_with_one_clear_message_and_writes_nothing(
        name: str, corpus: Path, outcomes: dict[str, Outcome]) -> None:
    if name in GENERATED:
        expect, line = GENERATED[name]
        case = Case(name, corpus / name, expect, line, False)
    else:
        case = declared(CORPUS / name)
    result = outcomes[name]
    text = result.out + result.err
    assert result.code == 2, text
    assert "Traceback" not in text, text
    errors = [row for row in result.err.splitlines() if row.startswith("error:")]
    assert len(errors) == 1, result.err
    assert case.expect in result.err, result.err
    where = str(corpus / name)
    assert errors[0].startswith(f"error: {where}"), errors[0]
    if case.line is not None:
        assert errors[0].startswith(f"error: {where}:{case.line}: "), errors[0]
    if case.by_stages:
        assert leftovers(result.store) == [], text
        assert not any((result.store / kind).exists() and any((result.store / kind).iterdir())
                       for kind in ("capture", "export", "surgery", "build", "verify", "bench")), text
    else:
        assert not result.store.exists(), f"{name}: the store was created although the file was refused early"


def test_a_stage_error_withdraws_what_the_run_published(outcomes: dict[str, Outcome]) -> None:
    """The ONNX without a plugin node passes capture and export; build refuses it; both are taken back."""
    result = outcomes["onnx_without_plugin_node.yaml"]
    assert re.search(r"^capture\s+\w+\s+ran", result.out, flags=re.MULTILINE), result.out
    assert re.search(r"^export\s+\w+\s+ran", result.out, flags=re.MULTILINE), result.out
    assert not (result.store / "capture").exists() or not any((result.store / "capture").iterdir())
    assert not (result.store / "export").exists() or not any((result.store / "export").iterdir())


def test_the_good_twin_of_the_corpus_runs(corpus: Path, tmp_path: Path) -> None:
    """The tensors the corpus uses are valid: the same pipeline without its mistake runs to the end."""
    pipeline = corpus / "good_twin.yaml"
    pipeline.write_text("version: 1\ncapture: {from_dir: tensors/ok}\nexport:\n  plugins:\n"
                        "    - op: MultiscaleDeformableAttnPlugin_TRT\n"
                        "      dtypes: {spatial_shapes: int32, level_start_index: int32}\n"
                        "bench: {enabled: false}\n")
    environment = {**os.environ, "ORCHESTRATE_STORE": str(tmp_path / "store"), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(pipeline)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

"""No-op rerun: orchestrate against DVC over the same files, with Python start-up included.

What it measures, in one run:

1. the layer-07 pipeline (`pipelines/msda_layer07.yaml`, its capture artifact is ~65 MB of tensors):
   the wall time of a fully cached `orchestrate run` (run once first if the store lacks it), and
   whether that run imported any of torch, onnx, onnxruntime, numpy, yaml, jsonschema, click, rich;
2. an equivalent pipeline pair over one copy of the layer-07 capture tensors:
   * DVC: three stages (capture copies the tensors, export writes the ONNX model, verify writes a
     report), each with its deps and outs, so that a no-op `dvc repro` checks the same ~65 MB of
     inputs plus its own ~65 MB of outputs;
   * orchestrate: the five-stage pipeline (capture from that folder, export, build, verify, bench);
   then interleaved no-op reruns of both, and the ratio of the medians;
3. how fast a file never seen before is hashed (BLAKE3, page cache warm).

DVC is needed by this script only (not by orchestrate or its tests). It has a large dependency
tree, so give it its own environment and pass its executable:

    python -m venv ~/.venvs/dvc && ~/.venvs/dvc/bin/pip install dvc==3.67.1
    python benchmarks/noop_run.py --dvc ~/.venvs/dvc/bin/dvc

Without `--dvc` the `dvc` on PATH is used; without any DVC, parts 1 and 3 still run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER07 = ROOT / "pipelines" / "msda_layer07.yaml"
HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "yaml", "jsonschema", "click", "rich")
ORCHESTRATE = [sys.executable, "-m", "orchestrator"]

DVC_STAGES = """\
stages:
  capture:
    cmd: python3 -c "import shutil; shutil.rmtree('capture', True); shutil.copytree('tensors', 'capture')"
    deps: [tensors]
    outs: [capture]
  export:
    cmd: python3 -c "import shutil; shutil.copyfile('model_source.onnx', 'model.onnx')"
    deps: [capture, model_source.onnx]
    outs: [model.onnx]
  verify:
    cmd: python3 -c "import os; open('verify.json', 'w').write(str(sorted(os.listdir('capture'))))"
    deps: [capture, model.onnx]
    outs: [verify.json]
"""

ORCHESTRATE_PIPELINE = """\
version: 1
name: noop_bench
capture: {from_dir: tensors}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
      inputs: [value, spatial_shapes, level_start_index, sampling_locations, attention_weights]
      dtypes: {spatial_shapes: int32, level_start_index: int32}
bench: {warmup: 1, iterations: 3}
"""


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of `command`, and its output; fails loudly if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed, done.stdout + done.stderr


def imported_heavy(pipeline: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", "run", str(pipeline)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+([\w.]+)$", done.stderr, flags=re.MULTILINE))
    return sorted({name.split(".")[0] for name in names} & set(HEAVY))


def no_op(pipeline: Path, env: dict[str, str]) -> float:
    elapsed, output = run([*ORCHESTRATE, "run", str(pipeline)], ROOT, env)
    if "nothing to do" not in output:
        raise SystemExit(f"expected a no-op run of {pipeline}:\n{output}")
    return elapsed


def warm_until_fast(pipeline: Path, env: dict[str, str]) -> list[str]:
    """Rerun until the answer comes without heavy imports (files written in the last 2 s cannot vouch yet)."""
    heavy: list[str] = []
    for _ in range(5):
        no_op(pipeline, env)
        heavy = imported_heavy(pipeline, env)
        if not heavy:
            break
        time.sleep(1.0)
    return heavy


def capture_artifact(store: Path, env: dict[str, str]) -> Path:
    """The folder of the layer-07 capture artifact (the pipeline is run if it is not cached): its inputs
    are in tensors/, the reference output apart in outputs/."""
    _, output = run([*ORCHESTRATE, "run", str(LAYER07)], ROOT, env)
    key = re.search(r"^capture\s+([0-9a-f]{8})", output, flags=re.MULTILINE)
    if key is None:
        raise SystemExit(f"no capture line in:\n{output}")
    folders = sorted((store / "capture").glob(f"{key.group(1)}*/"))
    if len(folders) != 1:
        raise SystemExit(f"cannot find the capture artifact {key.group(1)} in {store}")
    return folders[0]


def export_model(store: Path) -> Path:
    models = sorted((store / "export").glob("*/model.onnx"), key=lambda p: p.stat().st_mtime)
    if not models:
        raise SystemExit(f"no exported model in {store}")
    return models[-1]


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def hashing_speed(folder: Path) -> float:
    """GB/s of hashing files the digest cache has never seen (they are in the page cache)."""
    from orchestrator.store.digest import DigestCache

    files = [p for p in folder.rglob("*") if p.is_file()]
    for file in files:
        file.read_bytes()  # page cache warm: this measures hashing, not the disk
    total = sum(p.stat().st_size for p in files)
    best = float("inf")
    for _ in range(5):
        cache = DigestCache(None)
        started = time.perf_counter()
        for file in files:
            cache.file(file)
        best = min(best, time.perf_counter() - started)
    return total / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc executable (default: dvc on PATH)")
    parser.add_argument("--repeat", type=int, default=15, help="interleaved no-op runs of each tool")
    parser.add_argument("--store", default=str(ROOT / "artifacts"), help="the store holding the layer-07 run")
    parser.add_argument("--workdir", help="where to build the two pipelines (default: a temporary folder)")
    args = parser.parse_args()

    store = Path(args.store).absolute()
    env = {**os.environ, "ORCHESTRATE_STORE": str(store), "NO_COLOR": "1"}
    print(f"python {sys.version.split()[0]} ({sys.executable}); {os.cpu_count()} CPUs")

    # 1. the layer-07 pipeline itself
    capture = capture_artifact(store, env)
    tensors = [*sorted((capture / "tensors").glob("*.npy")), *sorted((capture / "outputs").glob("*.npy"))]
    heavy = warm_until_fast(LAYER07, env)
    layer07 = [no_op(LAYER07, env) for _ in range(args.repeat)]
    print(f"\nlayer 07: `orchestrate run {LAYER07.relative_to(ROOT)}` fully cached "
          f"(capture artifact {size_mb(capture):.0f} MB)")
    print(f"  heavy modules imported: {', '.join(heavy) if heavy else 'none'} (of {', '.join(HEAVY)})")
    print(f"  wall: median {statistics.median(layer07):.3f} s, min {min(layer07):.3f} s, "
          f"max {max(layer07):.3f} s over {len(layer07)} runs")

    # 2. orchestrate and DVC over one copy of the same tensors
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="noop-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = workdir / "tensors"
    if not inputs.exists():  # one folder holding the inputs and the reference output, as capture.from_dir reads
        inputs.mkdir()
        for tensor in tensors:
            shutil.copyfile(tensor, inputs / tensor.name)
            stamp = time.time_ns() - 60_000_000_000  # as if written a while ago (fresh files are rehashed on purpose)
            os.utime(inputs / tensor.name, ns=(stamp, stamp))
    shutil.copyfile(export_model(store), workdir / "model_source.onnx")
    print(f"\nsame files: {inputs} ({size_mb(inputs):.0f} MB, {len(list(inputs.iterdir()))} tensors)")
    print(f"  hashing files not seen before: {hashing_speed(inputs):.2f} GB/s (BLAKE3)")

    pipeline = workdir / "noop_bench.yaml"
    pipeline.write_text(ORCHESTRATE_PIPELINE)
    bench_env = {**env, "ORCHESTRATE_STORE": str(workdir / "orchestrate-store")}
    cold, _ = run([*ORCHESTRATE, "run", str(pipeline)], ROOT, bench_env)
    print(f"  orchestrate: five stages built once in {cold:.1f} s")
    heavy = warm_until_fast(pipeline, bench_env)
    print(f"  orchestrate no-op imports: {', '.join(heavy) if heavy else 'none of ' + ', '.join(HEAVY)}")

    if not args.dvc:
        print("\nDVC not found: pass --dvc (see this script's docstring); no ratio measured")
        return
    dvc_env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    _, version = run([args.dvc, "--version"], workdir, dvc_env)
    if not (workdir / ".dvc").exists():
        run([args.dvc, "init", "--no-scm", "-q"], workdir, dvc_env)
        run([args.dvc, "config", "core.analytics", "false"], workdir, dvc_env)
    (workdir / "dvc.yaml").write_text(DVC_STAGES)
    cold, _ = run([args.dvc, "repro"], workdir, dvc_env)
    print(f"  dvc {version.strip()}: three stages built once in {cold:.1f} s")
    run([args.dvc, "repro"], workdir, dvc_env)  # its state database is now warm too

    ours: list[float] = []
    theirs: list[float] = []
    for index in range(args.repeat):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                ours.append(no_op(pipeline, bench_env))
            else:
                elapsed, output = run([args.dvc, "repro"], workdir, dvc_env)
                if "Running stage" in output:
                    raise SystemExit(f"dvc repro was not a no-op:\n{output}")
                theirs.append(elapsed)
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"\nno-op reruns, interleaved, {args.repeat} each (wall, Python start-up included):")
    print(f"  orchestrate run (5 stages):  median {ours_median:.3f} s (min {min(ours):.3f}, max {max(ours):.3f})")
    print(f"  dvc repro (3 stages):        median {theirs_median:.3f} s (min {min(theirs):.3f}, max {max(theirs):.3f})")
    print(f"  orchestrate is {theirs_median / ours_median:.1f}x faster than DVC")
    summary = {"layer07_median_s": statistics.median(layer07), "orchestrate_median_s": ours_median,
               "dvc_median_s": theirs_median, "ratio": theirs_median / ours_median}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

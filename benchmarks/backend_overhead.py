"""The embedded backend's whole call against its parts, in one process.

Builds (through orchestrate, into the artifact store, cached across runs) two artifacts on the
onnxruntime backend:

* layer-07: the seed's one-call plugin graph (pipelines/msda_layer07.yaml with backend
  onnxruntime): casts, the MultiscaleDeformableAttnPlugin_TRT node, the reshape of its output;
* encoder: the whole 8-layer example encoder (examples/maskdino_encoder.py, export.scope model)
  at the same feature-map sizes: 9 ONNX Runtime segments around 8 plugin nodes.

For each it times, in interleaved repetitions, `Runner.run` on the captured inputs against the
parts run bare on the very tensors the runner hands them: every plugin node's kernel call, and
every ONNX Runtime segment's `session.run` (and the reshape/cast steps the runner does in NumPy).
It prints the medians and the ratios whole / kernels and whole / (segments + kernels).

    python benchmarks/backend_overhead.py [--threads 2] [--repeat 25] [--encoder-repeat 5] [--store artifacts]
                                          [--only layer-07|encoder] [--single-session]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import interleaved_times

ROOT = Path(__file__).resolve().parent.parent

ENCODER_PIPELINE = """\
version: 1
name: encoder_overhead
model:
  factory: examples.maskdino_encoder:build_encoder
  kwargs: {num_layers: 8, seed: 0}
  inputs: examples.maskdino_encoder:example_inputs   # levels (100,160) (50,80) (25,40): 21000 tokens
export:
  opset: 17
  scope: model
  plugins:
    - replace: examples.ops.msda:ms_deform_attn
      op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {spatial_shapes: int32, level_start_index: int32}
build:
  backend: onnxruntime
verify:
  atol: 1.0e-3
  rtol: 1.0e-3
bench:
  enabled: false
"""


def pipelines(folder: Path) -> dict[str, Path]:
    layer = (ROOT / "pipelines" / "msda_layer07.yaml").read_text()
    if "backend: auto" not in layer:
        raise SystemExit("pipelines/msda_layer07.yaml no longer says 'backend: auto'; update this script")
    files = {"layer-07": folder / "layer07_onnxruntime.yaml", "encoder": folder / "encoder_onnxruntime.yaml"}
    files["layer-07"].write_text(layer.replace("backend: auto", "backend: onnxruntime"))
    files["encoder"].write_text(ENCODER_PIPELINE)
    return files


def built(pipeline: Path, store: Path) -> tuple[Path, Any, Path]:
    """Run the pipeline and return its build folder, capture artifact and exported graph.

    Capture and export are cached after the first time; the build is forced, so that the run plan is
    the current backend's (its key does not follow the backend's code).
    """
    environment = {**os.environ, "ORCHESTRATE_STORE": str(store)}
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(pipeline), "--force", "build"], cwd=ROOT,
                          env=environment, capture_output=True, text=True, check=False)
    print(done.stdout.rstrip())
    if done.returncode != 0:
        raise SystemExit(f"orchestrate run {pipeline.name} failed ({done.returncode}):\n{done.stderr}")
    from orchestrator.config import spec as spec_module
    from orchestrator.planning.plan import make_plan
    from orchestrator.store.store import Store

    artifacts = Store(store)
    plan = make_plan(spec_module.load(pipeline), artifacts.digests)
    build, capture, export = plan.node("", "build"), plan.node("", "capture"), plan.node("", "export")
    assert build is not None and capture is not None and export is not None
    captured = artifacts.get("capture", capture.key)
    if captured is None:
        raise SystemExit(f"the capture of {pipeline.name} is not in {store}")
    return artifacts.path_of("build", build.key), captured, artifacts.path_of("export", export.key) / "model.onnx"


def step_inputs(runner: Any, feeds: dict[str, Any]) -> list[list[Any]]:
    """The arrays each step receives in a run of the plan (one reference pass, not timed)."""
    env = dict(feeds)
    received = []
    for step, target in runner.steps:
        arguments = [env[name] for name in step["inputs"]]
        received.append(arguments)
        if step["type"] == "onnx":
            values = target.run(step["outputs"], dict(zip(step["inputs"], arguments, strict=True)))
        elif step["type"] == "arrays":
            values = target(dict(zip(step["inputs"], arguments, strict=True)))
        else:
            values = target(arguments, step["attributes"])
        env.update(zip(step["outputs"], values, strict=True))
    return received


def measure(build_path: Path, capture: Any, threads: int, repeat: int, graph: Path | None = None) -> dict[str, float]:
    import numpy as np

    from orchestrator.backends.onnxruntime import Runner
    from orchestrator.tensors import feeds_for

    runner = Runner(build_path, threads)
    feeds = feeds_for(runner.inputs, capture.path)
    received = step_inputs(runner, feeds)
    plugin_steps = [(step, target, args) for (step, target), args in zip(runner.steps, received, strict=True)
                    if step["type"] == "plugin"]
    onnx_steps = [(step, target, dict(zip(step["inputs"], args, strict=True)))
                  for (step, target), args in zip(runner.steps, received, strict=True) if step["type"] == "onnx"]
    array_steps = [(target, dict(zip(step["inputs"], args, strict=True)))
                   for (step, target), args in zip(runner.steps, received, strict=True) if step["type"] == "arrays"]

    def kernels() -> None:
        for step, kernel, args in plugin_steps:
            kernel(args, step["attributes"])

    def segments() -> None:
        for step, session, inputs in onnx_steps:
            session.run(step["outputs"], inputs)
        for function, inputs in array_steps:
            function(dict(inputs))

    def whole() -> None:
        runner.run(feeds)

    functions = {"whole": whole, "kernels": kernels, "segments": segments}
    for function in functions.values():
        function()  # warm
    times = interleaved_times(functions, repeat)
    medians = {name: statistics.median(values) for name, values in times.items()}
    # Per repetition, the parts' sum; its median is the baseline for the whole call.
    parts = [k + s for k, s in zip(times["kernels"], times["segments"], strict=True)]
    medians["parts"] = statistics.median(parts)
    if graph is not None:  # the same graph in one session, the plugin as an onnxruntime-extensions op
        import onnx

        from orchestrator import plugins as catalog
        from orchestrator.backends.onnxruntime import single_session

        # Timed on its own: its Python-list outputs leave the allocator in a state that slows whatever
        # runs next, which would bias the interleaved figures above.
        ops = {step["op"] for step, _, _ in plugin_steps}
        session = single_session(onnx.load(str(graph)), {op: catalog.lookup(op) for op in ops}, threads)
        single = []
        for _ in range(4):
            start = time.perf_counter()
            session.run(None, feeds)
            single.append(time.perf_counter() - start)
        medians["single_session"] = statistics.median(single[1:])
    medians["plugin_nodes"] = len(plugin_steps)
    medians["onnx_segments"] = len(onnx_steps)
    medians["array_steps"] = len(array_steps)
    result = runner.run(feeds)
    medians["output_mb"] = sum(np.asarray(v).nbytes for v in result.values()) / 1e6
    runner.close()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=25, help="interleaved repetitions at layer-07")
    parser.add_argument("--encoder-repeat", type=int, default=5, help="interleaved repetitions of the encoder")
    parser.add_argument("--store", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--only", choices=["layer-07", "encoder"])
    parser.add_argument("--single-session", action="store_true",
                        help="also time layer-07 in one session, the plugin an onnxruntime-extensions op")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from msda_kernel import machine

    print(f"machine: {machine()}; {args.threads} threads (ONNX Runtime intra-op and Numba)")
    with tempfile.TemporaryDirectory() as folder:
        files = pipelines(Path(folder))
        results = {}
        for name, pipeline in files.items():
            if args.only and name != args.only:
                continue
            build_path, capture, graph = built(pipeline, args.store.absolute())
            single = graph if (args.single_session and name == "layer-07") else None
            repeat = args.repeat if name == "layer-07" else args.encoder_repeat
            results[name] = measure(build_path, capture, args.threads, repeat, single)
            results[name]["repeat"] = repeat
    print("\ninterleaved repetitions, medians:")
    for name, m in results.items():
        print(f"  {name:<9} {m['onnx_segments']} ONNX Runtime segments, {m['array_steps']} reshape/cast steps, "
              f"{m['plugin_nodes']} plugin nodes ({m['repeat']} repetitions): "
              f"Runner.run {m['whole'] * 1e3:.2f} ms, kernel calls {m['kernels'] * 1e3:.2f} ms, "
              f"segments {m['segments'] * 1e3:.2f} ms")
        print(f"  {'':<9} whole / kernel calls = {m['whole'] / m['kernels']:.3f}, "
              f"whole / (segments + kernel calls) = {m['whole'] / m['parts']:.3f}")
        if "single_session" in m:
            print(f"  {'':<9} one session, plugin as an onnxruntime-extensions op (timed apart, median of 3): "
                  f"{m['single_session'] * 1e3:.1f} ms = {m['single_session'] / m['kernels']:.1f}x the kernel call")


if __name__ == "__main__":
    main()

"""The MSDA reference kernel against the grid_sample formulation, in one process.

For each case (a small one, the seed's layer-07 call, and the seed's value with 4x the queries)
the two are timed in interleaved repetitions and compared by their medians; the script prints the
speed ratio, the max abs error of the kernel against the float32 grid_sample formulation and of
both against a float64 evaluation, how time grows with the number of queries, and the peak extra
memory of each call (measured in a fresh child process, see `measure_memory`).

    python benchmarks/msda_kernel.py [--threads 2] [--repeat 7] [--capture DIR]

The inputs are those of `encoder.layers.7.self_attn` in the example encoder
(examples/maskdino_encoder.py) at the seed's feature-map sizes and at small ones; the 4x case
repeats the layer-07 queries with jittered sampling points, so only Lq changes. `--capture` takes a
folder with the seed's tensors (value.npy, spatial_shapes.npy, ...; e.g.
artifacts/capture/<key>/tensors) instead of the generated layer-07 call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
SEED_LEVELS = ((100, 160), (50, 80), (25, 40))


@dataclass(frozen=True)
class Case:
    name: str
    levels: tuple[tuple[int, int], ...]
    query_factor: int = 1  # > 1: each query of the layer repeated with jittered sampling points
    repeat_scale: float = 1.0  # fewer repetitions for the slow cases


CASES = (
    Case("small", ((25, 40), (13, 20), (7, 10)), 1, 3.0),
    Case("layer-07", SEED_LEVELS),
    Case("4x queries", SEED_LEVELS, 4, 0.4),
)


class _Recorded(Exception):
    pass


def layer_inputs(levels: tuple[tuple[int, int], ...], layer: int = 7) -> list[Any]:
    """The plugin inputs of `encoder.layers.<layer>.self_attn` in the example encoder (the seed's model).

    The earlier layers' attention runs on the reference kernel, so generating them is quick.
    """
    import numpy as np
    import torch

    from examples import maskdino_encoder

    calls: list[list[Any]] = []

    def record(value: Any, spatial: Any, starts: Any, locations: Any, weights: Any, im2col_step: int = 64) -> Any:
        arrays = [t.detach().numpy().copy() for t in (value, spatial, starts, locations, weights)]
        arrays[1], arrays[2] = arrays[1].astype(np.int32), arrays[2].astype(np.int32)
        calls.append(arrays)
        if len(calls) > layer:
            raise _Recorded
        out = kernel_call(arrays)
        return torch.from_numpy(out.reshape(out.shape[0], out.shape[1], -1))

    model = maskdino_encoder.build_encoder(num_layers=layer + 1)
    inputs = maskdino_encoder.example_inputs(levels)
    original = maskdino_encoder.ms_deform_attn
    maskdino_encoder.ms_deform_attn = record
    try:
        with torch.no_grad():
            model(**inputs)
    except _Recorded:
        pass
    finally:
        maskdino_encoder.ms_deform_attn = original
    return calls[layer]


def make_inputs(case: Case, capture: Path | None = None) -> list[Any]:
    """The case's inputs: the layer's own, or its queries repeated with sampling points moved by up to
    half a pixel (same sampling pattern, more queries: what changes is Lq alone)."""
    import numpy as np

    arrays = load_capture(capture) if capture is not None else layer_inputs(case.levels)
    if case.query_factor == 1:
        return arrays
    value, spatial, starts, locations, weights = arrays
    rng = np.random.default_rng(0)
    wh = spatial[:, ::-1].astype(np.float32)[None, None, None, :, None, :]
    jittered = [locations + (rng.random(locations.shape, dtype=np.float32) - 0.5) / wh
                for _ in range(case.query_factor)]
    shuffled = [np.roll(weights, shift, axis=-1) for shift in range(case.query_factor)]
    return [value, spatial, starts, np.concatenate(jittered, 1), np.concatenate(shuffled, 1)]


def seed_capture(folder: Path | None, case_name: str) -> Path | None:
    """The captured folder stands for the seed's layer-07 call (and the 4x case built on it)."""
    return folder if folder is not None and case_name != "small" else None


def load_capture(folder: Path) -> list[Any]:
    import numpy as np

    missing = [name for name in NAMES if not (folder / f"{name}.npy").is_file()]
    if missing:
        raise SystemExit(f"{folder} has no {', '.join(f'{name}.npy' for name in missing)}")
    arrays = [np.load(folder / f"{name}.npy") for name in NAMES]
    arrays[1], arrays[2] = arrays[1].astype(np.int32), arrays[2].astype(np.int32)
    return arrays


def grid_sample_call(arrays: list[Any], dtype: Any = None) -> Any:
    """The grid_sample formulation (examples.ops.msda), reshaped to the plugin's [N, Lq, M, D]."""
    import torch

    from examples.ops.msda import ms_deform_attn

    tensors = [torch.from_numpy(a) for a in arrays]
    if dtype is not None:
        tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    with torch.no_grad():
        out = ms_deform_attn(*tensors)
    n, _, heads, dim = arrays[0].shape
    return out.reshape(n, arrays[3].shape[1], heads, dim).numpy()


def kernel_call(arrays: list[Any]) -> Any:
    from orchestrator.plugins.msda.kernel import msda

    return msda(arrays)[0]


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_child(case_name: str, threads: int, which: str, capture: Path | None) -> None:
    """Run in a fresh process: report the peak extra memory of one call of `which`."""
    import tracemalloc

    import numba
    from numba.core.runtime import rtsys

    set_threads(threads)
    case = next(c for c in CASES if c.name == case_name)
    arrays = make_inputs(case, capture)
    function = (lambda: kernel_call(arrays)) if which == "kernel" else (lambda: grid_sample_call(arrays))
    function()  # compiled, thread pools started, allocator warm
    before_nrt = rtsys.get_allocation_stats()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_bytes("VmRSS:")
    tracemalloc.start()
    result = function()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _status_bytes("VmHWM:") - before
    after_nrt = rtsys.get_allocation_stats()
    print(json.dumps({"rss_peak": peak, "traced_peak": traced_peak, "output": int(result.nbytes),
                      "nrt_allocations": after_nrt.alloc - before_nrt.alloc, "numba": numba.__version__}))


def measure_memory(case: Case, threads: int, which: str, capture: Path | None) -> dict[str, Any]:
    """Peak extra memory of one call, in a child process.

    Three views: the rise of the peak resident set (VmHWM, reset through /proc/self/clear_refs just
    before the call; glibc's mmap threshold is pinned so that every large block is fresh pages
    and freed memory cannot hide a peak), tracemalloc's peak (every NumPy allocation) and Numba's
    runtime allocation count (allocations inside compiled code, invisible to tracemalloc).
    """
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "NUMBA_NRT_STATS": "1"}
    command = [sys.executable, __file__, "--memory-child", case.name, "--threads", str(threads), "--which", which]
    if capture is not None:
        command += ["--capture", str(capture)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:] or "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def first_call_seconds(threads: int) -> dict[str, float]:
    """Import + first call in a fresh process: with the on-disk cache, and compiling from scratch."""
    import tempfile

    script = ("import time; t = time.perf_counter(); import numpy as np; "
              "from orchestrator.plugins.msda.kernel import msda; "
              "a = [np.zeros((1, 4, 1, 2), np.float32), np.array([[2, 2]], np.int32), np.zeros(1, np.int32), "
              "np.zeros((1, 3, 1, 1, 1, 2), np.float32), np.zeros((1, 3, 1, 1, 1), np.float32)]; "
              "msda(a); print(time.perf_counter() - t)")
    results = {}
    with tempfile.TemporaryDirectory() as empty_cache:
        for label, extra in (("cached", {}), ("cold compile", {"NUMBA_CACHE_DIR": empty_cache})):
            environment = {**os.environ, "NUMBA_NUM_THREADS": str(threads), **extra}
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                                  env=environment, check=False)
            if label == "cached":  # the first run may itself fill the cache
                done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                                      env=environment, check=False)
            results[label] = float(done.stdout.strip()) if done.returncode == 0 else float("nan")
    return results


def set_threads(threads: int) -> None:
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="interleaved repetitions at the layer-07 case")
    parser.add_argument("--capture", type=Path, help="folder with the seed's layer-07 tensors (*.npy)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurements")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--which", default="kernel", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.memory_child:
        memory_child(args.memory_child, args.threads, args.which, seed_capture(args.capture, args.memory_child))
        return

    import numpy as np
    import torch

    set_threads(args.threads)
    print(f"machine: {machine()}; torch {torch.__version__}, numpy {np.__version__}; {args.threads} threads")
    jit = first_call_seconds(args.threads)
    print(f"import + first call in a fresh process: {jit['cached']:.2f} s with the on-disk cache, "
          f"{jit['cold compile']:.2f} s compiling")
    print()
    header = (f"{'case':<11} {'Lq':>6} {'S':>6} {'kernel ms':>10} {'grid_sample ms':>15} {'ratio':>7} "
              f"{'|k-gs32|':>9} {'|k-f64|':>9} {'|gs32-f64|':>10} {'us/query':>9}")
    print(header)
    print("-" * len(header))
    per_query = {}
    for case in CASES:
        arrays = make_inputs(case, seed_capture(args.capture, case.name))
        kernel_out = kernel_call(arrays)  # compile / warm both
        grid_out = grid_sample_call(arrays)
        repeat = max(3, round(args.repeat * case.repeat_scale))
        medians = interleaved({"kernel": lambda a=arrays: kernel_call(a),
                               "grid_sample": lambda a=arrays: grid_sample_call(a)}, repeat)
        error = float(np.abs(kernel_out - grid_out).max())
        if case.query_factor == 1:
            exact = grid_sample_call(arrays, torch.float64)
            kernel_exact = f"{float(np.abs(kernel_out - exact).max()):9.1e}"
            grid_exact = f"{float(np.abs(grid_out - exact).max()):10.1e}"
        else:
            kernel_exact, grid_exact = f"{'-':>9}", f"{'-':>10}"
        queries, tokens = arrays[3].shape[1], arrays[0].shape[1]
        per_query[case.name] = medians["kernel"] / queries
        print(f"{case.name:<11} {queries:>6} {tokens:>6} {medians['kernel'] * 1e3:>10.2f} "
              f"{medians['grid_sample'] * 1e3:>15.1f} {medians['grid_sample'] / medians['kernel']:>6.1f}x "
              f"{error:>9.1e} {kernel_exact} {grid_exact} {medians['kernel'] / queries * 1e6:>9.3f}"
              f"   ({repeat} interleaved repetitions, medians)")
    growth = per_query["4x queries"] / per_query["layer-07"]
    print(f"\ntime per query at 4x the queries / at layer-07: {growth:.2f} (1.00 = linear in Lq)")
    if not args.no_memory:
        print("\npeak extra memory of one call, in multiples of the output's size (fresh process each):")
        for case in CASES:
            kernel = measure_memory(case, args.threads, "kernel", args.capture)
            grid = measure_memory(case, args.threads, "grid_sample", args.capture)
            if "error" in kernel or "error" in grid:
                print(f"  {case.name:<11} could not measure: {kernel.get('error') or grid.get('error')}")
                continue
            output = kernel["output"]
            print(f"  {case.name:<11} kernel: resident peak {kernel['rss_peak'] / output:.2f}x, NumPy peak "
                  f"{kernel['traced_peak'] / output:.2f}x, {kernel['nrt_allocations']} allocations in compiled "
                  f"code; grid_sample: resident peak {grid['rss_peak'] / output:.1f}x "
                  f"(output {output / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

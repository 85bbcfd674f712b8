"""fp16 on the embedded backend against TensorRT's fp16 MSDA kernel, at layer-07 shapes.

An fp16 verify on the CPU is only useful if it sees the error the fp16 engine will have. This script
draws the inputs of tensorrt.md §9 (value [1, 21000, 8, 32] uniform in [-1, 1), levels (100, 160),
(50, 80), (25, 40), 4 points, locations uniform in [0, 1), weights normalised over levels and points)
and prints the max and mean abs error against a float64 evaluation of:

  * the fp32 kernel (float32 inputs);
  * the plain cast: float16 inputs, float32 arithmetic, float16 output (what the embedded backend
    did before the kernel emulated half arithmetic);
  * the emulation: float16 inputs through the reference kernel, which rounds every operation to
    float16 in the order of the plugin's `__half` kernel;

next to the figures measured for NVIDIA's kernel on an H200, then times the emulation against the
fp32 kernel (interleaved repetitions, medians).

    python benchmarks/msda_fp16.py [--threads 2] [--repeat 7] [--seed 0 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ((100, 160), (50, 80), (25, 40))
# NVIDIA's kernel compiled from the plugin's source, on an H200 (tensorrt.md §9; another draw of the
# same distribution): max abs, mean abs against float64.
TENSORRT_FP16 = (5.6e-2, 3.4e-3)
TENSORRT_PLAIN_CAST = (2.6e-2, 2.3e-3)


def layer07_inputs(seed: int, queries: int = 21000, heads: int = 8, dim: int = 32, points: int = 4) -> list[Any]:
    """The §9 distribution at the layer-07 call's shapes (one batch, Lq = S = 21000)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    spatial = np.array(LEVELS, np.int32)
    sizes = spatial[:, 0] * spatial[:, 1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    value = rng.uniform(-1, 1, (1, int(sizes.sum()), heads, dim)).astype(np.float32)
    locations = rng.random((1, queries, heads, len(LEVELS), points, 2), dtype=np.float32)
    weights = rng.random((1, queries, heads, len(LEVELS), points), dtype=np.float32)
    weights /= weights.sum(axis=(3, 4), keepdims=True)
    return [value, spatial, starts, locations, weights]


def as_half(arrays: list[Any]) -> list[Any]:
    import numpy as np

    return [a.astype(np.float16) if a.dtype == np.float32 else a for a in arrays]


def float64_reference(arrays: list[Any]) -> Any:
    """grid_sample(bilinear, zeros, align_corners=False) in float64: the plugin's semantics, exactly
    enough (1e-16) to measure float16 errors against."""
    import torch

    from examples.ops.msda import ms_deform_attn

    tensors = [torch.from_numpy(a) for a in arrays]
    tensors = [t.double() if t.is_floating_point() else t for t in tensors]
    with torch.no_grad():
        out = ms_deform_attn(*tensors)
    n, _, heads, dim = arrays[0].shape
    return out.reshape(n, arrays[3].shape[1], heads, dim).numpy()


def kernel(arrays: list[Any]) -> Any:
    from orchestrator.plugins.msda.kernel import msda

    return msda(arrays)[0]


def plain_cast(half: list[Any]) -> Any:
    """float16 inputs computed in float32 and rounded to float16 once, at the output."""
    import numpy as np

    widened = [a.astype(np.float32) if a.dtype == np.float16 else a for a in half]
    return kernel(widened).astype(np.float16)


def errors(result: Any, reference: Any) -> tuple[float, float]:
    import numpy as np

    difference = np.abs(result.astype(np.float64) - reference)
    return float(difference.max()), float(difference.mean())


def accuracy(seed: int) -> dict[str, tuple[float, float]]:
    """Max and mean abs error of each way of computing, against float64 of the float32 inputs (and,
    for the emulation, of the float16-rounded inputs: what remains is the arithmetic's own error)."""
    arrays = layer07_inputs(seed)
    half = as_half(arrays)
    reference = float64_reference(arrays)
    emulated = kernel(half)
    return {"fp32 kernel": errors(kernel(arrays), reference),
            "plain fp16 cast": errors(plain_cast(half), reference),
            "fp16 emulation": errors(emulated, reference),
            "fp16 emulation vs f64 of fp16 inputs": errors(emulated, float64_reference(half)),
            "|reference|": (float(abs(reference).max()), float(abs(reference).mean()))}


def print_accuracy(seed: int, figures: dict[str, tuple[float, float]]) -> None:
    print(f"seed {seed}: abs error against float64 (|reference| max {figures['|reference|'][0]:.2f})")
    print(f"  {'':<38} {'max':>9} {'mean':>9}   TensorRT on an H200 (§9, max / mean)")
    shown = {"fp32 kernel": "within 4.1e-6", "plain fp16 cast": "2.6e-2 / 2.3e-3 (our plain cast, §9)",
             "fp16 emulation": "5.6e-2 / 3.4e-3 (the fp16 engine)",
             "fp16 emulation vs f64 of fp16 inputs": "4.9e-2 max (same fp16 inputs)"}
    for name, note in shown.items():
        largest, mean = figures[name]
        print(f"  {name:<38} {largest:9.2e} {mean:9.2e}   {note}")
    largest, mean = figures["fp16 emulation"]
    ratio_max, ratio_mean = largest / TENSORRT_FP16[0], mean / TENSORRT_FP16[1]
    cast_max, cast_mean = figures["plain fp16 cast"]
    print(f"  emulation / TensorRT fp16: max {ratio_max:.2f}, mean {ratio_mean:.2f}; "
          f"plain cast / TensorRT fp16: max {cast_max / TENSORRT_FP16[0]:.2f}, "
          f"mean {cast_mean / TENSORRT_FP16[1]:.2f}")


def speed(threads: int, repeat: int) -> dict[str, float]:
    """Median seconds of the fp32 kernel and of the emulation, interleaved, after a warm-up call."""
    arrays = layer07_inputs(0)
    half = as_half(arrays)
    kernel(arrays), kernel(half)  # compiled (or loaded from the cache), thread pool started
    return interleaved({"fp32 kernel": lambda: kernel(arrays), "fp16 emulation": lambda: kernel(half)}, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="interleaved repetitions of the timing")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="input draws to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    import numba
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}; {args.threads} threads")
    ratios = []
    for seed in args.seed:
        figures = accuracy(seed)
        print_accuracy(seed, figures)
        ratios.append(figures["fp16 emulation"][0] / TENSORRT_FP16[0])
    if len(ratios) > 1:
        print(f"emulation max / TensorRT fp16 max over {len(ratios)} draws: median {statistics.median(ratios):.2f}")
    medians = speed(args.threads, args.repeat)
    print(f"\ntime at layer-07 ({args.repeat} interleaved repetitions, medians): fp32 kernel "
          f"{medians['fp32 kernel'] * 1e3:.1f} ms, fp16 emulation {medians['fp16 emulation'] * 1e3:.1f} ms "
          f"({medians['fp16 emulation'] / medians['fp32 kernel']:.1f}x the fp32 kernel)")


if __name__ == "__main__":
    main()

"""Reference kernel of MultiscaleDeformableAttnPlugin_TRT on the CPU (Numba, parallel over queries).

One pass over (batch, query) pairs, in parallel, each accumulating its M x D output in place: no
temporaries beyond the output itself, unlike the grid_sample formulation that materialises every
sample.

Arithmetic, float32 inputs: the sampling position `loc * size - 0.5` is formed in float64 (exact for a
float32 location and an integer size, so no rounding before the floor), the bilinear weights and the
accumulation are float32, as in the plugin's float kernel.

float16 inputs: the plugin's `__half` kernel does all of its arithmetic in half, so a float32
computation would predict a smaller error than TensorRT's (about half of it at layer-07 shapes). This
kernel then rounds every operation to float16 in the order the CUDA kernel, as nvcc compiles it for
sm_90, performs it (see `_sample_half`): a fused multiply-add where the compiler fuses one (HFMA2),
separate roundings elsewhere. Each operation is computed exactly in float64 and rounded once.

Other float dtypes are widened to float32 a block of queries at a time (float16 too, exactly, for the
emulation); the result is returned in the dtype of `value`.

The compiled kernel is cached on disk (`cache=True`): only the first run on a machine compiles.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from orchestrator.plugins.msda import kernel_inputs_ok

# When the inputs are not float32, queries are widened a block at a time: an eighth of the call's
# queries, at least 256 and at most WIDEN_BLOCK, so that the float32 copies of locations, weights
# and the output block stay small next to the output itself.
WIDEN_BLOCK = 4096
# Sampling points (N * Lq * M * L * P) from which a call runs on all threads (about 0.5 ms of work).
PARALLEL_FROM_SAMPLES = 1 << 14

# Rounding a float64 to float16 (Numba has no float16 on the CPU). Veltkamp's split by 2**42 + 1
# keeps the top 53 - 42 = 11 significant bits, rounded to nearest with ties to even: half's precision.
_SPLIT = float(2**42 + 1)
# Below half's smallest normal (2**-14) the grid is fixed, multiples of 2**-24: adding 1.5 * 2**28,
# whose float64 ulp is 2**-24, rounds to that grid (ties to even).
_HALF_MIN_NORMAL = 2.0**-14
_SUBNORMAL_SHIFT = 1.5 * 2.0**28
# From the midpoint between 65504 (half's largest) and 65536 on, rounding to nearest overflows.
_HALF_OVERFLOW = 65520.0
_HALF_MAX = 65504.0


@numba.njit(cache=True, fastmath=False, nogil=True)
def _accumulate_query(value, spatial, starts, locations, weights, out, n, q):  # pragma: no cover - compiled
    """out[n, q] += every head's bilinear samples of every level and point, times their weights."""
    heads, dim = value.shape[2], value.shape[3]
    levels, points = locations.shape[3], locations.shape[4]
    one = np.float32(1.0)
    for m in range(heads):
        acc = out[n, q, m]
        for level in range(levels):
            height = spatial[level, 0]
            width = spatial[level, 1]
            base = starts[level]
            for p in range(points):
                w_im = np.float64(locations[n, q, m, level, p, 0]) * width - 0.5
                h_im = np.float64(locations[n, q, m, level, p, 1]) * height - 0.5
                if not (h_im > -1.0 and w_im > -1.0 and h_im < height and w_im < width):
                    continue
                attn = weights[n, q, m, level, p]
                h_floor = math.floor(h_im)
                w_floor = math.floor(w_im)
                lh = np.float32(h_im - h_floor)
                lw = np.float32(w_im - w_floor)
                hh = one - lh
                hw = one - lw
                h_low = int(h_floor)
                w_low = int(w_floor)
                if h_low >= 0 and w_low >= 0:
                    c = hh * hw * attn
                    row = base + h_low * width + w_low
                    for d in range(dim):
                        acc[d] += c * value[n, row, m, d]
                if h_low >= 0 and w_low + 1 <= width - 1:
                    c = hh * lw * attn
                    row = base + h_low * width + w_low + 1
                    for d in range(dim):
                        acc[d] += c * value[n, row, m, d]
                if h_low + 1 <= height - 1 and w_low >= 0:
                    c = lh * hw * attn
                    row = base + (h_low + 1) * width + w_low
                    for d in range(dim):
                        acc[d] += c * value[n, row, m, d]
                if h_low + 1 <= height - 1 and w_low + 1 <= width - 1:
                    c = lh * lw * attn
                    row = base + (h_low + 1) * width + w_low + 1
                    for d in range(dim):
                        acc[d] += c * value[n, row, m, d]


@numba.njit(cache=True, fastmath=False, nogil=True)
def _half(x: float) -> float:  # pragma: no cover - compiled
    """x rounded to the nearest float16, ties to even, returned as a float64 (exactly representable).

    Every half operation of the plugin is emulated as: the exact result in float64, then this single
    rounding, so that the emulated value is what the GPU's half unit returns.
    """
    split = x * _SPLIT
    rounded = split - (split - x)
    magnitude = abs(x)
    # Selects, not branches, so that the loops over channels that call this can use SIMD.
    rounded = (x + _SUBNORMAL_SHIFT) - _SUBNORMAL_SHIFT if magnitude < _HALF_MIN_NORMAL else rounded
    return math.copysign(math.inf, x) if magnitude >= _HALF_OVERFLOW else rounded


@numba.njit(cache=True, nogil=True)
def _int_to_half_down(k: int) -> float:  # pragma: no cover - compiled
    """An int32 rounded toward minus infinity to float16 (`__int2half_rd`): exact up to 2048 in size,
    which covers every feature map in practice; larger sizes lose their low bits as on the GPU."""
    if -2048 <= k <= 2048:
        return float(k)
    magnitude = abs(k)
    shift = 0
    while (magnitude >> shift) >= 2048:
        shift += 1
    down = (magnitude >> shift) << shift
    if k < 0 and down != magnitude:
        down += 1 << shift
    result = float(down) if k > 0 else -float(down)
    if result > _HALF_MAX:
        return _HALF_MAX
    return -math.inf if result < -_HALF_MAX else result


@numba.njit(cache=True, fastmath=False, nogil=True)
def _sample_half(value, acc, zeros, n, m, base, height, width, h_im, w_im, attn):  # pragma: no cover - compiled
    """acc[d] += attn * bilinear sample at (h_im, w_im), in the plugin's half arithmetic.

    Mirrors the `__half` specialisation of the bilinear sampler as compiled (sm_90): the fraction,
    its complement and the four corner products are each rounded; the two corner pairs are summed as
    `fma(p1, v1, p2 * v2)` and `fma(p3, v3, p4 * v4)` (the second product rounded, the fma once),
    the pairs added and rounded, and the sample enters the accumulator through one fma
    `acc + val * attn`. A corner outside the map reads zero, as in the plugin.
    """
    h_low = math.floor(h_im)  # an int in Numba, as in Python
    w_low = math.floor(w_im)
    lh = _half(h_im - _int_to_half_down(h_low))
    lw = _half(w_im - _int_to_half_down(w_low))
    hh = _half(1.0 - lh)
    hw = _half(1.0 - lw)
    p1, p2, p3, p4 = _half(hh * hw), _half(hh * lw), _half(lh * hw), _half(lh * lw)
    row = base + h_low * width + w_low
    low_ok, high_ok = h_low >= 0, h_low + 1 <= height - 1
    left_ok, right_ok = w_low >= 0, w_low + 1 <= width - 1
    v1 = value[n, row, m] if low_ok and left_ok else zeros
    v2 = value[n, row + 1, m] if low_ok and right_ok else zeros
    v3 = value[n, row + width, m] if high_ok and left_ok else zeros
    v4 = value[n, row + width + 1, m] if high_ok and right_ok else zeros
    for d in range(acc.shape[0]):
        top = _half(p1 * v1[d] + _half(p2 * v2[d]))
        bottom = _half(p3 * v3[d] + _half(p4 * v4[d]))
        acc[d] = _half(acc[d] + _half(top + bottom) * attn)


@numba.njit(cache=True, fastmath=False, nogil=True)
def _accumulate_query_half(value, spatial, starts, locations, weights, out, zeros, n, q):  # pragma: no cover - compiled
    """out[n, q] = the plugin's half result, inputs and output holding float16 values in float32.

    The position `loc * size - 0.5` is one fused multiply-add in half (HFMA2) and the range test
    compares half values against the half size, as the `__half` kernel does.
    """
    heads = value.shape[2]
    levels, points = locations.shape[3], locations.shape[4]
    for m in range(heads):
        acc = out[n, q, m]
        for level in range(levels):
            height = spatial[level, 0]
            width = spatial[level, 1]
            height_h = _int_to_half_down(height)
            width_h = _int_to_half_down(width)
            for p in range(points):
                w_im = _half(np.float64(locations[n, q, m, level, p, 0]) * width_h - 0.5)
                h_im = _half(np.float64(locations[n, q, m, level, p, 1]) * height_h - 0.5)
                if h_im > -1.0 and w_im > -1.0 and h_im < height_h and w_im < width_h:
                    _sample_half(value, acc, zeros, n, m, starts[level], height, width, h_im, w_im,
                                 np.float64(weights[n, q, m, level, p]))


@numba.njit(parallel=True, cache=True, nogil=True)
def _msda_half_parallel(value, spatial, starts, locations, weights, out):  # pragma: no cover - compiled
    queries = locations.shape[1]
    zeros = np.zeros(value.shape[3], dtype=value.dtype)  # the corners outside the map, shared read-only
    for nq in numba.prange(value.shape[0] * queries):
        _accumulate_query_half(value, spatial, starts, locations, weights, out, zeros, nq // queries, nq % queries)


@numba.njit(cache=True, nogil=True)
def _msda_half_serial(value, spatial, starts, locations, weights, out):  # pragma: no cover - compiled
    zeros = np.zeros(value.shape[3], dtype=value.dtype)
    for n in range(value.shape[0]):
        for q in range(locations.shape[1]):
            _accumulate_query_half(value, spatial, starts, locations, weights, out, zeros, n, q)


@numba.njit(parallel=True, cache=True, nogil=True)
def _msda_parallel(value, spatial, starts, locations, weights, out):  # pragma: no cover - compiled
    queries = locations.shape[1]
    for nq in numba.prange(value.shape[0] * queries):
        _accumulate_query(value, spatial, starts, locations, weights, out, nq // queries, nq % queries)


@numba.njit(cache=True, nogil=True)
def _msda_serial(value, spatial, starts, locations, weights, out):  # pragma: no cover - compiled
    for n in range(value.shape[0]):
        for q in range(locations.shape[1]):
            _accumulate_query(value, spatial, starts, locations, weights, out, n, q)


def _msda_f32(value: np.ndarray, spatial: np.ndarray, starts: np.ndarray, locations: np.ndarray,
              weights: np.ndarray, out: np.ndarray) -> None:
    """Accumulate into `out`; small calls stay on one thread, where a parallel launch would cost more
    than the work (and, on a busy machine, wait for a second core)."""
    samples = locations.size // 2
    kernel = _msda_serial if samples < PARALLEL_FROM_SAMPLES else _msda_parallel
    kernel(value, spatial, starts, locations, weights, out)


def _msda_half(value: np.ndarray, spatial: np.ndarray, starts: np.ndarray, locations: np.ndarray,
               weights: np.ndarray, out: np.ndarray) -> None:
    """As `_msda_f32`, in the plugin's half arithmetic: the arrays hold float16 values in float32."""
    samples = locations.size // 2
    kernel = _msda_half_serial if samples < PARALLEL_FROM_SAMPLES else _msda_half_parallel
    kernel(value, spatial, starts, locations, weights, out)


def msda(inputs: list[Any], attrs: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Run the plugin on NumPy arrays: [value, spatial_shapes, level_start_index, locations, weights].

    Returns `[output]`, `[N, Lq, M, D]` in the dtype of `value`. float32 inputs are used in place;
    the only large allocation is the output. float16 inputs (value, locations and weights, as the
    plugin requires them alike) are computed in the `__half` kernel's arithmetic, so that an fp16
    verify sees the error TensorRT's fp16 engine has.
    """
    value, spatial, starts, locations, weights = (np.asarray(x) for x in inputs)
    kernel_inputs_ok([value, spatial, starts, locations, weights])
    spatial32 = np.ascontiguousarray(spatial, dtype=np.int32)
    starts32 = np.ascontiguousarray(starts, dtype=np.int32)
    batch, _, heads, dim = value.shape
    queries = locations.shape[1]
    value32 = np.ascontiguousarray(value, dtype=np.float32)
    if value.dtype == locations.dtype == weights.dtype == np.float32:
        out = np.zeros((batch, queries, heads, dim), dtype=np.float32)
        _msda_f32(value32, spatial32, starts32, np.ascontiguousarray(locations), np.ascontiguousarray(weights), out)
        return [out]
    half = value.dtype == locations.dtype == weights.dtype == np.float16
    kernel = _msda_half if half else _msda_f32
    out = np.empty((batch, queries, heads, dim), dtype=value.dtype)
    size = min(WIDEN_BLOCK, max(256, -(-queries // 8)))
    for first in range(0, queries, size):
        block = slice(first, min(first + size, queries))
        part = np.zeros((batch, block.stop - first, heads, dim), dtype=np.float32)
        kernel(value32, spatial32, starts32, np.ascontiguousarray(locations[:, block], dtype=np.float32),
               np.ascontiguousarray(weights[:, block], dtype=np.float32), part)
        out[:, block] = part
    return [out]

"""Reference kernel of MultiscaleDeformableAttnPlugin_TRT on the CPU (Numba, parallel over queries).

One pass over (batch, query) pairs, in parallel, each accumulating its M x D output in place: no
temporaries beyond the output itself, unlike the grid_sample formulation that materialises every
sample.

Arithmetic: the sampling position `loc * size - 0.5` is formed in float64 (exact for a float32
location and an integer size, so no rounding before the floor), the bilinear weights and the
accumulation are float32, as in the plugin. float16 (or any other float) inputs are widened to
float32 a block of queries at a time and the result is returned in the dtype of `value`.

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


def msda(inputs: list[Any], attrs: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Run the plugin on NumPy arrays: [value, spatial_shapes, level_start_index, locations, weights].

    Returns `[output]`, `[N, Lq, M, D]` in the dtype of `value`. float32 inputs are used in place;
    the only large allocation is the output.
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
    out = np.empty((batch, queries, heads, dim), dtype=value.dtype)
    size = min(WIDEN_BLOCK, max(256, -(-queries // 8)))
    for first in range(0, queries, size):
        block = slice(first, min(first + size, queries))
        part = np.zeros((batch, block.stop - first, heads, dim), dtype=np.float32)
        _msda_f32(value32, spatial32, starts32, np.ascontiguousarray(locations[:, block], dtype=np.float32),
                  np.ascontiguousarray(weights[:, block], dtype=np.float32), part)
        out[:, block] = part
    return [out]

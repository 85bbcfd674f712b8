"""Reference kernel of MultiscaleDeformableAttnPlugin_TRT on the CPU (Numba, parallel over queries).

One pass over (batch, query) pairs, each accumulating its M x D output in place: no temporaries
beyond the output itself, unlike the grid_sample formulation that materialises every sample.
Computes in float32; float16 inputs are widened once and the result narrowed back.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from orchestrator.plugins.msda import kernel_inputs_ok


@numba.njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _msda_f32(value, spatial, starts, locations, weights, out):  # pragma: no cover - compiled
    batch, _, heads, dim = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    for nq in numba.prange(batch * queries):
        n = nq // queries
        q = nq - n * queries
        for m in range(heads):
            acc = out[n, q, m]
            for level in range(levels):
                height = spatial[level, 0]
                width = spatial[level, 1]
                base = starts[level]
                for p in range(points):
                    w_im = locations[n, q, m, level, p, 0] * width - 0.5
                    h_im = locations[n, q, m, level, p, 1] * height - 0.5
                    if not (h_im > -1.0 and w_im > -1.0 and h_im < height and w_im < width):
                        continue
                    attn = weights[n, q, m, level, p]
                    h_low = math.floor(h_im)
                    w_low = math.floor(w_im)
                    lh = h_im - h_low
                    lw = w_im - w_low
                    hh = 1.0 - lh
                    hw = 1.0 - lw
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


def msda(inputs: list[Any], attrs: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Run the plugin on NumPy arrays: [value, spatial_shapes, level_start_index, locations, weights]."""
    value, spatial, starts, locations, weights = (np.asarray(x) for x in inputs)
    kernel_inputs_ok([value, spatial, starts])
    out_dtype = value.dtype
    as_f32 = [np.ascontiguousarray(x, dtype=np.float32) for x in (value, locations, weights)]
    spatial32 = np.ascontiguousarray(spatial, dtype=np.int32)
    starts32 = np.ascontiguousarray(starts, dtype=np.int32)
    batch, _, heads, dim = value.shape
    out = np.zeros((batch, locations.shape[1], heads, dim), dtype=np.float32)
    _msda_f32(as_f32[0], spatial32, starts32, as_f32[1], as_f32[2], out)
    return [out if out_dtype == np.float32 else out.astype(out_dtype)]

"""float16 MSDA on the CPU predicts the plugin's `__half` kernel; the float32 path stays as it was.

The half kernel rounds its sampling positions, bilinear weights and the weighted sum to float16 at
every step, so an fp16 verify that only casts inputs and outputs would expect less error than the
engine has. These tests pin the rounding itself, the order of the operations where the result
shows it, exact results where half arithmetic is exact, and the embedded backend's fp16 runs.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from examples.ops.msda import ms_deform_attn
from orchestrator.backends import onnxruntime as backend
from orchestrator.plugins.msda import kernel as msda_kernel
from orchestrator.plugins.msda.kernel import msda

OP = "MultiscaleDeformableAttnPlugin_TRT"
# NVIDIA's kernel (plugin/multiscaleDeformableAttnPlugin of NVIDIA/TensorRT at a892d22, the forward
# im2col compiled standalone by nvcc 13.0 for sm_90) run on an H200 at `inputs(LAYER07, 21000,
# heads=8, dim=32)` in float16: queries 0-15, every head, channels 0-3, little-endian float16, base64.
LAYER07 = [(100, 160), (50, 80), (25, 40)]
H200_OUTPUT = (
    "BrRcJB2sl6Z/M5esjDFXpA8vTS/UqVWyYjRUIs6xra6PHuuitxxXsGwmSSgrKQ8rRS9SpiIqqDCNrnEsb4GIM9opHbClreQqpDFA"
    "nZcxQS4fLYcqg7JVtFYZeTHMrPoxfazkHcif1y5qs5CrszPerB4qeaycs/in3bJ9qNwqv6xIsIcz5C30tIQwlqwsqwotuSVXtBkt"
    "t7IBjs4wUTFVrRgxG7EJMv+1GyOLJs8hF6PkMxcpUy6rrS2wES/issMxDDDQMoyzeCwqLsGrbLI/NFitDrSDKACji7Awre8q0akk"
    "LsqrNKjcLx2tnjNFsmghgiA7LR004y/eLooozq4wMnkwWa2eJRMoXqZmMnEqGR4JsZewaK5asDuuoK2BKVwwLbBrNDomtbLntDuK"
    "ubWcsmomfKTjpJCvCq3CrH6x7bHurXEqBaLXsGMhkDIONRm0s6vtLpqvVa8nrGCwZCUqsVGoeawwsXYuBrIhqtIswCeRJsssM6So"
    "lXmytCwNs5ac+iH1rMqvHyAnrlOs36pGKH6qxTAhscQoIy68LlQsyDDCrCopGa8VJOw2SKr1JcSq+rFwpVqv8rCdLRIxiK2Gp5ks"
    "RjTKodSyTCI5MDQwAqw9LC8xVLU2MtGylTIYr78y9K1Tp/yuarAGsCWrny1CMHilYSowrnOxQakVMCwswCoNrIEphLMjsLIsAqb0"
    "md4toTKNnuAr+Cc2sj0tLzHrJT+057JPsZyr/jJbsBSvSjRjLxgsvjG4mvem0rOvL5Gy+KgSMFSj3ar1MMMc5q2GryMxzqloLtMi"
    "QDB0okiugzCIL6+t2LDnsw0t9zHKKzIesyt9nMijdTLwsN6z0q7IKTUsNKVZsLAu2rD0IKopbiuysNAvQKsoJMOrsTS/qS+sGarj"
    "M480SzB8E/OwXa6QLvEsdK47reYtFi6mKmutaqshMOiys65pKGE06arlJNgu6KylMg6sZDEJMMSwS7NdLIovK6/Usf6tzClimDst"
    "UK+BqPUtPiyjMSUwwTGhMM2oDzSDsausMLFLK0mxQiqrMFMnBy0YpkYvV5wUIY0qUStjMG6v3x/ZqimpQK+NKA0x+bRHtIutOrKq"
    "rAytB7W9MHMvFqUILGenJjBXIKKqWCBsLRMmzy9OLWOx1rD3MzUhMq0JrhWsVDYVsDmwyZ3iLDQx4CkQsJY02Kg3MBiwvzNutfAn"
    "a6niMXkwCLResLcr9TOmHDyyIrF+MoiyjStxsLGwea7eMogv+LAYNRysLq2fLh8wnC9Jr7wxTC6FqwYtlC5arUEvP67PrtAcv60w"
    "LBghuqHorIa0WKdbqUwqJyw1s4+rWqx6NEYsdK5rL0gtyi8AtQ6slSRZJjMy8a6TmA=="
)


def inputs(levels: list[tuple[int, int]], queries: int, heads: int = 2, dim: int = 4, points: int = 4,
           seed: int = 0) -> list[np.ndarray]:
    """Inputs as tensorrt.md §9 draws them: values in [-1, 1), locations in [0, 1), weights that sum to 1."""
    rng = np.random.default_rng(seed)
    spatial = np.array(levels, np.int32)
    sizes = spatial[:, 0] * spatial[:, 1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    value = rng.uniform(-1, 1, (1, int(sizes.sum()), heads, dim)).astype(np.float32)
    locations = rng.random((1, queries, heads, len(levels), points, 2), dtype=np.float32)
    weights = rng.random((1, queries, heads, len(levels), points), dtype=np.float32)
    return [value, spatial, starts, locations, weights / weights.sum(axis=(3, 4), keepdims=True)]


def half(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [a.astype(np.float16) if a.dtype == np.float32 else a for a in arrays]


def float64_reference(arrays: list[np.ndarray]) -> np.ndarray:
    """grid_sample in float64 of exactly the given values (float16 inputs widened without rounding)."""
    tensors = [torch.from_numpy(a) for a in arrays]
    tensors = [t.double() if t.is_floating_point() else t for t in tensors]
    out = ms_deform_attn(*tensors)
    n, _, heads, dim = arrays[0].shape
    return out.reshape(n, arrays[3].shape[1], heads, dim).numpy()


def plain_cast(arrays: list[np.ndarray]) -> np.ndarray:
    """float16 inputs, float32 arithmetic, float16 output: what a cast-only fp16 run computes."""
    widened = [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]
    return msda(widened)[0].astype(np.float16)


def test_rounding_to_half_is_round_to_nearest_even_everywhere() -> None:
    """Normal numbers, the midpoints between neighbouring halves (ties go to the even one),
    subnormals, overflow and the non-finite values."""
    grid = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    midpoints = (grid[:-1] + grid[1:]) / 2
    rng = np.random.default_rng(3)
    values = np.concatenate([grid, midpoints, np.nextafter(midpoints, 0), np.nextafter(midpoints, 1),
                             rng.uniform(-7e4, 7e4, 5000), rng.uniform(-1e-4, 1e-4, 5000),
                             [65504.0, 65519.99, 65520.0, 1e300, np.inf, 2.0**-25, 3 * 2.0**-26]])
    values = np.concatenate([values, -values])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float64)
    got = np.array([msda_kernel._half(float(x)) for x in values])
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(msda_kernel._half(float("nan")))


def test_half_arithmetic_differs_from_a_float32_computation_and_stays_near_float64() -> None:
    """On maps as large as layer-07's, positions in half move samples by up to 1/8 pixel: the
    emulation's error must be clearly larger than the cast-only one, and still that of half."""
    arrays = half(inputs([(100, 160), (50, 80)], 600))
    exact = float64_reference(inputs([(100, 160), (50, 80)], 600))
    emulated, cast = msda(arrays)[0], plain_cast(arrays)
    assert emulated.dtype == np.float16
    assert np.mean(emulated != cast) > 0.2
    emulated_error = np.abs(emulated - exact)
    cast_error = np.abs(cast - exact)
    assert emulated_error.mean() > 1.2 * cast_error.mean()
    assert emulated_error.max() < 0.1 and emulated_error.mean() < 1e-2


def test_the_emulation_is_bit_identical_to_the_plugin_kernel_on_an_h200() -> None:
    """The order of the roundings, fused multiply-adds included, as the GPU ran it: at layer-07's maps
    every one of these 512 outputs equals the engine's, where any other order of the same operations
    (positions rounded twice, no fused corner pair or accumulation) changes a third or more of them."""
    arrays = half(inputs(LAYER07, 21000, heads=8, dim=32))
    value, spatial, starts, locations, weights = arrays
    part = [np.ascontiguousarray(value[..., :4]), spatial, starts, locations[:, :16], weights[:, :16]]
    expected = np.frombuffer(base64.b64decode("".join(H200_OUTPUT)), "<f2").reshape(1, 16, 8, 4)
    np.testing.assert_array_equal(msda(part)[0], expected)


def rounded(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).astype(np.float16).astype(np.float64)


def half_reference(value: np.ndarray, spatial: np.ndarray, starts: np.ndarray, locations: np.ndarray,
                   weights: np.ndarray) -> np.ndarray:
    """The `__half` kernel's arithmetic written out in NumPy, vectorised over queries, heads and
    channels: every operation exact in float64 and rounded once to float16, fused multiply-adds
    (position, first corner product of each pair, accumulation) rounded once for the whole."""
    value, locations, weights = (a.astype(np.float64) for a in (value, locations, weights))
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = np.zeros((batch, queries, heads, dim))
    n, m = np.arange(batch)[:, None, None], np.arange(heads)[None, None, :]
    for level in range(levels):
        height, width = (int(size) for size in spatial[level])  # exact in half below 2048
        for p in range(points):
            w_im = rounded(locations[..., level, p, 0] * width - 0.5)
            h_im = rounded(locations[..., level, p, 1] * height - 0.5)
            inside = (h_im > -1) & (w_im > -1) & (h_im < height) & (w_im < width)
            h_low, w_low = np.floor(h_im), np.floor(w_im)
            lh, lw = rounded(h_im - h_low), rounded(w_im - w_low)
            hh, hw = rounded(1 - lh), rounded(1 - lw)
            corners = []
            for down, right, weight in ((0, 0, hh * hw), (0, 1, hh * lw), (1, 0, lh * hw), (1, 1, lh * lw)):
                row, column = h_low.astype(np.int64) + down, w_low.astype(np.int64) + right
                ok = inside & (row >= 0) & (column >= 0) & (row <= height - 1) & (column <= width - 1)
                token = int(starts[level]) + np.clip(row, 0, height - 1) * width + np.clip(column, 0, width - 1)
                corners.append((rounded(weight)[..., None], value[n, token, m] * ok[..., None]))
            (p1, v1), (p2, v2), (p3, v3), (p4, v4) = corners
            sample = rounded(rounded(p1 * v1 + rounded(p2 * v2)) + rounded(p3 * v3 + rounded(p4 * v4)))
            attn = weights[..., level, p][..., None]
            out = np.where(inside[..., None], rounded(out + sample * attn), out)
    return out


def edge_case(seed: int) -> list[np.ndarray]:
    """Positions a hair (1e-4 to 1e-2 pixel, either side) from pixel centres and map edges, and
    locations outside [0, 1]: where the rounding of each bilinear weight shows in the result."""
    arrays = inputs([(30, 50), (15, 25), (7, 12)], 200, heads=2, dim=8, seed=seed)
    rng = np.random.default_rng(seed + 100)
    sizes = arrays[1][:, ::-1].astype(np.float64)[None, None, None, :, None, :]  # (W, H) per level
    shape = arrays[3].shape
    pixel = rng.integers(-1, 2, shape) + np.floor(rng.random(shape) * sizes)
    nudge = rng.choice([-1e-2, -1e-3, -1e-4, 0.0, 1e-4, 1e-3, 1e-2], shape)
    near = (pixel + 0.5 + nudge) / sizes
    spread = rng.random(shape) * 1.4 - 0.2
    arrays[3] = np.where(rng.random(shape) < 0.7, near, spread).astype(np.float32)
    return half(arrays)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_emulation_matches_the_half_arithmetic_written_out(seed: int) -> None:
    arrays = edge_case(seed)
    np.testing.assert_array_equal(msda(arrays)[0].astype(np.float64), half_reference(*arrays))


def exact_case(offset: float) -> list[np.ndarray]:
    """Small integer values on an 8 x 4 map (one head, two channels), every location at a pixel centre
    plus `offset` pixels in x and y, dyadic weights: every intermediate value fits in float16."""
    rng = np.random.default_rng(1)
    value = rng.integers(-4, 5, (1, 32, 1, 2)).astype(np.float16)
    columns = rng.integers(0, 8, (1, 12, 1, 1, 3))
    rows = rng.integers(0, 4, (1, 12, 1, 1, 3))
    locations = np.stack([(columns + 0.5 + offset) / 8, (rows + 0.5 + offset) / 4], axis=-1).astype(np.float16)
    weights = rng.choice([0.25, 0.5, 1.0], (1, 12, 1, 1, 3)).astype(np.float16)
    return [value, np.array([[4, 8]], np.int32), np.array([0], np.int32), locations, weights]


@pytest.mark.parametrize("offset", [0.0, 0.25, 0.5, -0.25])
def test_half_arithmetic_is_exact_where_every_intermediate_is_representable(offset: float) -> None:
    """Pixel centres, quarter and half pixels (also past the last row and column, whose corners read
    zero): the emulated result is the exact one, not merely close to it."""
    arrays = exact_case(offset)
    np.testing.assert_array_equal(msda(arrays)[0].astype(np.float64), float64_reference(arrays))


def test_the_sampling_position_is_one_fused_rounding_to_half() -> None:
    """On a ramp (value = column - 600) a bilinear sample returns its own x position less 600: the
    result shows the plugin's `loc * W - 0.5` as the GPU forms it, one fused multiply-add rounded to
    half (the half grid is 0.5 from 512 to 1024), not two separate roundings, nor the float32
    position that a cast-only run samples at (its output, near 0, keeps a finer grid)."""
    width = 1000
    value = (np.arange(width) - 600).astype(np.float16).reshape(1, width, 1, 1)
    x = np.arange(0x3800, 0x3BE0, 7, dtype=np.uint16).view(np.float16)  # half locations in [0.5, 0.99)
    locations = np.stack([x, np.full_like(x, 0.5)], axis=-1).reshape(1, -1, 1, 1, 1, 2)
    weights = np.ones((1, x.size, 1, 1, 1), np.float16)
    arrays = [value, np.array([[1, width]], np.int32), np.array([0], np.int32), locations, weights]
    got = msda(arrays)[0].reshape(-1).astype(np.float64)
    position = x.astype(np.float64) * width - 0.5
    fused = position.astype(np.float16).astype(np.float64)
    twice = (position + 0.5).astype(np.float16).astype(np.float64) - 0.5
    np.testing.assert_array_equal(got, fused - 600)
    assert np.any(twice.astype(np.float16) != fused)
    assert np.mean(got != plain_cast(arrays).reshape(-1)) > 0.3


def float32_reference(value: np.ndarray, spatial: np.ndarray, starts: np.ndarray, locations: np.ndarray,
                      weights: np.ndarray) -> np.ndarray:
    """The float32 kernel's arithmetic in NumPy, in its order: float64 positions, float32 weights
    `(h * w) * attn` and accumulation over levels, points and the four corners in turn."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = np.zeros((batch, queries, heads, dim), np.float32)
    n, m = np.arange(batch)[:, None, None], np.arange(heads)[None, None, :]
    for level in range(levels):
        height, width = (int(size) for size in spatial[level])
        for p in range(points):
            w_im = locations[..., level, p, 0].astype(np.float64) * width - 0.5
            h_im = locations[..., level, p, 1].astype(np.float64) * height - 0.5
            inside = (h_im > -1) & (w_im > -1) & (h_im < height) & (w_im < width)
            h_low, w_low = np.floor(h_im), np.floor(w_im)
            lh, lw = (h_im - h_low).astype(np.float32), (w_im - w_low).astype(np.float32)
            hh, hw = np.float32(1) - lh, np.float32(1) - lw
            attn = weights[..., level, p]
            for down, right, c in ((0, 0, hh * hw * attn), (0, 1, hh * lw * attn), (1, 0, lh * hw * attn),
                                   (1, 1, lh * lw * attn)):
                row, column = h_low.astype(np.int64) + down, w_low.astype(np.int64) + right
                ok = inside & (row >= 0) & (column >= 0) & (row <= height - 1) & (column <= width - 1)
                token = int(starts[level]) + np.clip(row, 0, height - 1) * width + np.clip(column, 0, width - 1)
                out = np.where(ok[..., None], out + c[..., None] * value[n, token, m], out)
    return out


def test_the_float32_path_is_unchanged_bit_for_bit() -> None:
    """float32 inputs keep float32 arithmetic, identical to the reference above, points outside the
    maps included (locations spread over [-0.15, 1.15))."""
    arrays = inputs([(9, 13), (5, 7), (2, 3)], 40, heads=3, dim=6, seed=5)
    arrays[3] = (arrays[3] * np.float32(1.3) - np.float32(0.15)).astype(np.float32)
    got = msda(arrays)[0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, float32_reference(*arrays))


def test_float16_in_float16_out_in_the_plugin_shape_with_blocks_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """[N, Lq, M, D] float16; queries widened in blocks and run serial or parallel, bit-identical."""
    arrays = half(inputs([(6, 7), (3, 4)], 40, heads=2, dim=4, points=3))
    arrays = [np.concatenate([a, a[:, ::-1]]) if a.ndim > 2 else a for a in arrays]  # N = 2
    whole = msda(arrays)[0]
    assert whole.dtype == np.float16 and whole.shape == (2, 40, 2, 4)
    monkeypatch.setattr(msda_kernel, "WIDEN_BLOCK", 7)
    monkeypatch.setattr(msda_kernel, "PARALLEL_FROM_SAMPLES", 0)
    np.testing.assert_array_equal(msda(arrays)[0], whole)
    monkeypatch.setattr(msda_kernel, "PARALLEL_FROM_SAMPLES", 1 << 40)
    np.testing.assert_array_equal(msda(arrays)[0], whole)


def plugin_model(arrays: list[np.ndarray]) -> onnx.ModelProto:
    """One plugin node reading value, locations and weights from the graph, the level tables as
    initializers."""
    value, spatial, starts, locations, weights = arrays
    node = helper.make_node(OP, ["value", "spatial_shapes", "level_start_index", "sampling_locations",
                                 "attention_weights"], ["output"], domain="trt.plugins", plugin_version="1",
                            plugin_namespace="")
    float_input = lambda name, a: helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape))  # noqa: E731
    output_shape = [value.shape[0], locations.shape[1], value.shape[2], value.shape[3]]
    graph = helper.make_graph(
        [node], "graph", [float_input("value", value), float_input("sampling_locations", locations),
                          float_input("attention_weights", weights)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(spatial, "spatial_shapes"), numpy_helper.from_array(starts, "level_start_index")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])


def test_the_embedded_backend_at_fp16_runs_the_half_arithmetic(tmp_path: Path) -> None:
    """precision fp16 hands the plugin float16 inputs, so the run is the emulation's, not a cast."""
    arrays = inputs([(40, 64), (20, 32)], 50)
    model = plugin_model(arrays)
    declared = [{"op": OP, "version": "1", "namespace": ""}]
    backend.build(model, tmp_path, "fp16", declared, lambda message: None)
    feeds = {"value": arrays[0], "sampling_locations": arrays[3], "attention_weights": arrays[4]}
    result = backend.Runner(tmp_path).run(feeds)["output"]
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, msda(half(arrays))[0].astype(np.float32))
    assert not np.array_equal(result, plain_cast(half(arrays)).astype(np.float32))

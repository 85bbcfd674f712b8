"""The MSDA reference kernel against an independent grid_sample formulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.ops.msda import ms_deform_attn
from orchestrator.plugins import msda as entry_module
from orchestrator.plugins.msda import kernel as msda_kernel
from orchestrator.plugins.msda.kernel import msda


def make_case(batch: int, queries: int, heads: int, dim: int, shapes: list[tuple[int, int]], points: int,
              spread: float, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, int(sizes.sum()), heads, dim, generator=generator)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * spread
    locations -= (spread - 1) / 2  # centred on the map; spread > 1 puts points outside it
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    return [value, spatial, starts, locations, weights]


def reference(case: list[torch.Tensor]) -> np.ndarray:
    """Float64 grid_sample(bilinear, zeros, align_corners=False): the plugin's semantics."""
    value, spatial, starts, locations, weights = case
    out = ms_deform_attn(value.double(), spatial, starts, locations.double(), weights.double())
    n, lq = out.shape[:2]
    return out.reshape(n, lq, value.shape[2], value.shape[3]).numpy()


def run(case: list[torch.Tensor]) -> np.ndarray:
    arrays = [t.numpy() for t in case]
    arrays[1] = arrays[1].astype(np.int32)
    arrays[2] = arrays[2].astype(np.int32)
    return msda(arrays)[0]


@pytest.mark.parametrize(("batch", "queries", "shapes", "spread"), [
    (1, 30, [(6, 7)], 1.0),
    (1, 40, [(6, 7), (3, 4), (2, 2)], 1.0),
    (2, 25, [(5, 9), (3, 3), (1, 2), (4, 1)], 1.6),   # several levels, many points outside the map
    (3, 7, [(8, 8), (4, 4)], 3.0),                    # mostly outside
])
def test_kernel_matches_grid_sample(batch, queries, shapes, spread) -> None:
    case = make_case(batch, queries, 2, 5, shapes, 3, spread)
    np.testing.assert_allclose(run(case), reference(case), atol=2e-6, rtol=1e-5)


def test_points_exactly_outside_contribute_nothing() -> None:
    case = make_case(1, 4, 1, 3, [(4, 5)], 1, 1.0)
    case[3][..., 0] = -0.3  # x * W - 0.5 <= -1: skipped
    assert np.all(run(case) == 0)


def test_decoder_cross_attention_queries_differ_from_tokens() -> None:
    case = make_case(2, 3, 4, 8, [(10, 12), (5, 6)], 4, 1.2)
    assert case[0].shape[1] != case[3].shape[1]
    np.testing.assert_allclose(run(case), reference(case), atol=2e-6, rtol=1e-5)


def softmax_case(batch: int, queries: int, shapes: list[tuple[int, int]], heads: int = 4, dim: int = 8,
                 points: int = 4, seed: int = 1) -> list[torch.Tensor]:
    """Self-attention-like inputs as the model makes them: pixel-centre references, offsets of a few
    pixels, softmax weights over levels and points."""
    generator = torch.Generator().manual_seed(seed)
    case = make_case(batch, queries, heads, dim, shapes, points, 1.0, seed)
    reference_xy = torch.rand(batch, queries, 1, 1, 1, 2, generator=generator)
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)[None, None, None, :, None, :]
    offsets = torch.randn(batch, queries, heads, len(shapes), points, 2, generator=generator) * 3.0
    case[3] = reference_xy + offsets / sizes
    logits = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator)
    case[4] = logits.softmax(-1).view(batch, queries, heads, len(shapes), points)
    return case


def test_float32_kernel_is_within_1e6_of_float64_with_softmax_weights() -> None:
    case = softmax_case(2, 300, [(20, 32), (10, 16), (5, 8)])
    np.testing.assert_allclose(run(case), reference(case), atol=1e-6, rtol=0)


def test_kernel_is_within_1e5_of_the_float32_grid_sample_formulation() -> None:
    case = softmax_case(1, 500, [(40, 64), (20, 32), (10, 16)], heads=8, dim=32)
    value, spatial, starts, locations, weights = case
    float32_result = ms_deform_attn(value, spatial, starts, locations, weights).numpy().reshape(run(case).shape)
    assert np.abs(run(case) - float32_result).max() <= 1e-5


def test_fp16_blocks_batches_and_cross_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """float16 inputs widened block by block (several blocks here), N > 1 and Lq != S together give
    what one block gives (the half arithmetic itself: tests/test_msda_fp16.py)."""
    case = softmax_case(3, 40, [(6, 7), (3, 4)], heads=2, dim=4)
    assert case[0].shape[1] != case[3].shape[1]
    half = [t.half() if t.is_floating_point() else t for t in case]
    whole = run(half)
    monkeypatch.setattr(msda_kernel, "WIDEN_BLOCK", 7)
    result = run(half)
    assert result.dtype == np.float16 and result.shape == (3, 40, 2, 4)
    np.testing.assert_array_equal(result, whole)


def test_serial_and_parallel_paths_agree_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    case = softmax_case(2, 50, [(6, 7), (3, 4)], heads=2, dim=4)
    monkeypatch.setattr(msda_kernel, "PARALLEL_FROM_SAMPLES", 1 << 40)
    serial = run(case)
    monkeypatch.setattr(msda_kernel, "PARALLEL_FROM_SAMPLES", 0)
    np.testing.assert_array_equal(run(case), serial)


def test_non_contiguous_inputs_give_the_same_result() -> None:
    case = make_case(2, 9, 3, 4, [(5, 6), (2, 3)], 2, 1.2)
    arrays = [t.numpy() for t in case]
    arrays[1], arrays[2] = arrays[1].astype(np.int32), arrays[2].astype(np.int32)
    strided = [np.asfortranarray(a) if a.ndim > 1 else a for a in arrays]
    assert not strided[0].flags.c_contiguous
    np.testing.assert_array_equal(msda(strided)[0], msda(arrays)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_peak_numpy_memory_is_at_most_four_outputs(dtype) -> None:
    """tracemalloc sees every NumPy allocation the wrapper makes (the compiled loop allocates none).

    float32: the output is the only allocation. float16 at self-attention shapes (S = Lq): the
    output, value widened once (twice the output) and one widened block of queries.
    """
    import tracemalloc

    case = softmax_case(1, 2000, [(40, 50)], heads=8, dim=32)
    arrays = [t.numpy().astype(dtype) if t.is_floating_point() else t.numpy().astype(np.int32) for t in case]
    msda(arrays)  # compiled and warm
    tracemalloc.start()
    try:
        result = msda(arrays)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 4 * result.nbytes, (peak, result.nbytes)
    if dtype == np.float32:
        assert peak < result.nbytes + 4096, (peak, result.nbytes)


def test_inconsistent_shapes_are_refused_before_the_compiled_loop() -> None:
    case = make_case(1, 4, 2, 3, [(4, 5)], 1, 1.0)
    arrays = [t.numpy() for t in case]
    arrays[4] = arrays[4][:, :, :1]
    with pytest.raises(ValueError, match="heads"):
        msda(arrays)


def test_index_tensors_that_do_not_fit_are_refused() -> None:
    case = make_case(1, 4, 1, 3, [(4, 5)], 1, 1.0)
    arrays = [t.numpy() for t in case]
    arrays[1] = np.array([[40, 50]], dtype=np.int32)
    with pytest.raises(ValueError, match="does not fit"):
        msda(arrays)


def test_catalog_contract_catches_int64_and_bad_ranks() -> None:
    entry = entry_module.ENTRY
    shapes = [(1, 10, 2, 4), (2, 2), (2,), (1, 5, 2, 2, 3, 2), (1, 5, 2, 2, 3)]
    good = ["float32", "int32", "int32", "float32", "float32"]
    assert entry.contract_problems(shapes, good) == []
    problems = entry.contract_problems(shapes, ["float32", "int64", "int64", "float32", "float32"])
    assert any("spatial_shapes" in p and "int64" in p for p in problems)
    problems = entry.contract_problems([(1, 10, 8), *shapes[1:]], good)
    assert any("rank 4" in p for p in problems)
    problems = entry.contract_problems([*shapes[:4], (1, 5, 2, 3, 3)], good)
    assert any("levels" in p for p in problems)
    assert entry.output_shape(shapes) == (1, 5, 2, 4)
    assert entry.result_shape((1, 5, 2, 4)) == (1, 5, 8)

"""The MSDA reference kernel against an independent grid_sample formulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.ops.msda import ms_deform_attn
from orchestrator.plugins import msda as entry_module
from orchestrator.plugins.msda_kernel import msda


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


def test_fp16_inputs_are_computed_in_fp32_and_returned_in_fp16() -> None:
    case = make_case(1, 20, 2, 4, [(6, 6), (3, 3)], 2, 1.2)
    half = [t.half() if t.is_floating_point() else t for t in case]
    result = run(half)
    assert result.dtype == np.float16
    widened = [t.float() if t.is_floating_point() else t for t in half]
    np.testing.assert_allclose(result.astype(np.float32), reference(widened), atol=2e-3, rtol=2e-3)


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

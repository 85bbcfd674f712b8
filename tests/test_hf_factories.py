"""The tiny transformers models of examples/hf_models: deterministic, and their MSDA calls non-degenerate."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch

from examples.hf_models import FAMILIES, record_msda_calls

# family -> (first call site, calls per forward, sampling_locations rank)
EXPECTED = {
    "deformable_detr": ("encoder.layers.0.self_attn.attn", 4, 6),
    "rt_detr": ("decoder.layers.0.encoder_attn.attn", 2, 6),
    "rt_detr_v2": ("decoder.layers.0.encoder_attn", 2, 5),
    "mask2former": ("pixel_level_module.decoder.encoder.layers.0.self_attn", 2, 6),
    "grounding_dino": ("encoder.layers.0.deformable_layer.self_attn.attn", 4, 6),
}


def _floats(output: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_calls_are_where_documented_and_not_degenerate(name: str) -> None:
    family = FAMILIES[name]
    calls, output = record_msda_calls(family.build(seed=0), family.inputs(seed=0), family.call)
    module, count, rank = EXPECTED[name]
    assert [c.module for c in calls][:1] == [module] and len(calls) == count
    for call in calls:
        args = call.arguments
        locations, weights = args["sampling_locations"], args["attention_weights"]
        assert locations.dim() == rank and locations.std() > 0.2
        inside = ((locations >= 0) & (locations <= 1)).float().mean()
        assert inside > 0.6
        assert weights.std() > 0.03  # the library init makes them exactly uniform
        assert args["value"].std() > 0.1  # RT-DETR's own init gives ~1e-10
        assert 1e-2 < call.output.abs().max() < 10
    for key, tensor in _floats(output).items():
        assert tensor.isfinite().all() and tensor.std() > 0, key


@pytest.mark.parametrize("name", ["rt_detr", "grounding_dino"])
def test_same_seed_same_model_other_seed_other_model(name: str) -> None:
    family = FAMILIES[name]
    inputs = family.inputs(seed=3, batch=2)
    with torch.no_grad():
        first, again, other = (_floats(family.build(seed=s)(**inputs)) for s in (1, 1, 2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.allclose(first["last_hidden_state"], other["last_hidden_state"])


def test_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    FAMILIES["mask2former"].build(seed=5)
    assert torch.equal(torch.rand(3), expected)

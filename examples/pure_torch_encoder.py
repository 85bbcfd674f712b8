"""A user's deployment target built from a library it cannot edit (examples.thirdparty_detr).

The encoder's deformable attention core is the library's plain-PyTorch `grid_sample` code, so the
model exports without a plugin. A pipeline turns each core call into a
MultiscaleDeformableAttnPlugin_TRT node either by swapping the library function during export or
by replacing the exported subgraph in graph surgery; this file only builds the model and its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from examples.thirdparty_detr.encoder import DeformableEncoder

SHAPES = ((100, 160), (50, 80), (25, 40))


def build_encoder(num_layers: int = 6, d_model: int = 256, levels: int = 3, heads: int = 8, points: int = 4,
                  ffn_dim: int = 1024, seed: int = 0) -> DeformableEncoder:
    """The library's encoder with weights drawn from `seed` (sampling offsets spread a few pixels)."""
    generator = torch.Generator().manual_seed(seed)
    model = DeformableEncoder(num_layers, d_model, ffn_dim, levels, heads, points)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif "sampling_offsets" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if name.endswith("weight") else 4.0))
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval()


def example_inputs(shapes: Sequence[Sequence[int]] = SHAPES, batch: int = 1, d_model: int = 256,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """The encoder's keyword arguments: flattened features, their layout (int64), valid ratios, positions."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor([list(s) for s in shapes], dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    tokens = int(sizes.sum())
    return {
        "src": torch.randn(batch, tokens, d_model, generator=generator),
        "spatial_shapes": spatial_shapes,
        "level_start_index": torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1])),
        "valid_ratios": torch.ones(batch, len(shapes), 2),
        "pos": torch.randn(batch, tokens, d_model, generator=generator) * 0.1,
    }

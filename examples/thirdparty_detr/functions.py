"""The deformable attention core, written inline with grid_sample (no compiled extension)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_core_pytorch(value: torch.Tensor, value_spatial_shapes: torch.Tensor,
                                sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Sample `value` [N, S, M, D] at `sampling_locations` [N, Lq, M, L, P, 2] (x, y in [0, 1]).

    `value_spatial_shapes` [L, 2] holds (H, W) per level; `attention_weights` [N, Lq, M, L, P] mixes
    the samples. Returns [N, Lq, M*D]. There is no level-start argument: each level's tokens are
    found by splitting `value` by H*W.
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([int(height) * int(width) for height, width in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(value_spatial_shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        level_value = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, int(height), int(width))
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        level_grid = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * dim, queries)
    return output.transpose(1, 2).contiguous()

"""Multi-scale deformable attention as a model library ships it.

`ms_deform_attn` is the call a deployment replaces with a TensorRT plugin node. Its body is the
plain-PyTorch formulation (bilinear `grid_sample` per level, the CPU fallback of Deformable DETR and
MaskDINO), so the example runs anywhere without a compiled extension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Return `[N, Lq, M*D]` from value `[N, S, M, D]` sampled at normalised locations.

    `sampling_locations` is `[N, Lq, M, L, P, 2]` in `[0, 1]` (x, y), `attention_weights` is
    `[N, Lq, M, L, P]`. `im2col_step` only tunes the CUDA kernel's batching and is ignored here.
    """
    del im2col_step
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    per_level = value.split(sizes, dim=1)
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        level_value = per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, dim, int(height), int(width))
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [N*M, D, Lq, L*P]
    out = (stacked * weights).sum(-1).view(n, heads * dim, queries)
    return out.transpose(1, 2).contiguous()

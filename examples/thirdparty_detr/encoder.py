"""The deformable transformer encoder, with the same forward signature as Deformable DETR's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from examples.thirdparty_detr.modules import MSDeformAttn


class DeformableEncoderLayer(nn.Module):
    def __init__(self, d_model: int = 256, ffn_dim: int = 1024, levels: int = 4, heads: int = 8, points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, levels, heads, points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + attn)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    def __init__(self, num_layers: int = 6, d_model: int = 256, ffn_dim: int = 1024, levels: int = 4, heads: int = 8,
                 points: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(d_model, ffn_dim, levels, heads, points)
                                    for _ in range(num_layers))

    @staticmethod
    def get_reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
        """Normalised pixel centres of every level, scaled by each level's valid ratio: [N, S, L, 2]."""
        points = []
        for level, (height, width) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, int(height) - 0.5, int(height), dtype=valid_ratios.dtype),
                torch.linspace(0.5, int(width) - 0.5, int(width), dtype=valid_ratios.dtype), indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        output = src
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output

"""The deformable attention module, calling the core function it imported by name."""

from __future__ import annotations

import torch
from torch import nn

from examples.thirdparty_detr.functions import ms_deform_attn_core_pytorch


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: `heads` heads, `levels` feature maps, `points` samples each."""

    def __init__(self, d_model: int = 256, levels: int = 4, heads: int = 8, points: int = 4):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model must be divisible by heads, got {d_model} and {heads}")
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                input_spatial_shapes: torch.Tensor, input_level_start_index: torch.Tensor,
                input_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, queries, _ = query.shape
        _, tokens, _ = input_flatten.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, tokens, self.heads, self.d_model // self.heads)
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        output = ms_deform_attn_core_pytorch(value, input_spatial_shapes, locations, weights)
        return self.output_proj(output)

"""A MaskDINO / Deformable-DETR style deformable encoder, as a user's model would look.

Each encoder layer holds a multi-scale deformable attention module (`self_attn`) that calls
`examples.ops.msda.ms_deform_attn`; that call is what a pipeline captures and replaces with the
TensorRT plugin node. Weights are drawn from a seeded generator, so every build of the model is
the same model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from examples.ops.msda import ms_deform_attn

LAYER07_SHAPES = ((100, 160), (50, 80), (25, 40))


class MSDeformAttn(nn.Module):
    """Deformable attention over `levels` feature maps, `points` samples per head and level."""

    def __init__(self, d_model: int = 256, levels: int = 3, heads: int = 8, points: int = 4, im2col_step: int = 64):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.im2col_step = im2col_step
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        n, queries, _ = query.shape
        _, tokens, _ = input_flatten.shape
        value = self.value_proj(input_flatten).view(n, tokens, self.heads, self.d_model // self.heads)
        offsets = self.sampling_offsets(query).view(n, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, queries, self.heads, self.levels, self.points)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(query.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, self.im2col_step)
        return self.output_proj(out)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, levels: int, heads: int, points: int, ffn_dim: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, levels, heads, points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + attn)
        return self.norm2(src + self.linear2(torch.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, levels: int, heads: int, points: int, ffn_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, levels, heads, points, ffn_dim) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: torch.Tensor, valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalised by the valid region: `[N, S, L, 2]`."""
        per_level = []
        for level, (height, width) in enumerate(spatial_shapes.tolist()):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=valid_ratios.dtype, device=valid_ratios.device),
                torch.linspace(0.5, width - 0.5, width, dtype=valid_ratios.dtype, device=valid_ratios.device),
                indexing="ij",
            )
            ys = ys.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            xs = xs.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            per_level.append(torch.stack((xs, ys), -1))
        points = torch.cat(per_level, 1)
        return points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios):
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src


class MaskDINOEncoder(nn.Module):
    """The pixel decoder's encoder part: `encoder.layers.<i>.self_attn` is the deformable attention."""

    def __init__(self, num_layers: int = 8, d_model: int = 256, levels: int = 3, heads: int = 8, points: int = 4,
                 ffn_dim: int = 1024):
        super().__init__()
        self.encoder = DeformableEncoder(num_layers, d_model, levels, heads, points, ffn_dim)

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios):
        return self.encoder(src, pos, spatial_shapes, level_start_index, valid_ratios)


def build_encoder(num_layers: int = 8, d_model: int = 256, levels: int = 3, heads: int = 8, points: int = 4,
                  ffn_dim: int = 1024, seed: int = 0) -> MaskDINOEncoder:
    """Build the encoder with weights drawn from `seed` (sampling offsets spread a few pixels)."""
    generator = torch.Generator().manual_seed(seed)
    model = MaskDINOEncoder(num_layers, d_model, levels, heads, points, ffn_dim)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1.0 if "norm" in name else 0.02
            if "sampling_offsets" in name:
                scale = 0.5 if name.endswith("weight") else 4.0
            if name.endswith("bias") and "norm" not in name and "sampling_offsets" not in name:
                param.zero_()
            elif "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif "norm" in name:
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model.eval()


def example_inputs(shapes: Sequence[Sequence[int]] = LAYER07_SHAPES, batch: int = 1, d_model: int = 256,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Flattened multi-scale features and their layout, as the pixel decoder hands them over.

    At the default shapes this gives the seed's layer-07 call: 21000 tokens over three levels,
    `spatial_shapes` `[[100,160],[50,80],[25,40]]` and `level_start_index` `[0,16000,20000]`,
    both int64 as in real models.
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor([list(s) for s in shapes], dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    tokens = int(sizes.sum())
    return {
        "src": torch.randn(batch, tokens, d_model, generator=generator),
        "pos": torch.randn(batch, tokens, d_model, generator=generator) * 0.1,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "valid_ratios": torch.ones(batch, len(shapes), 2),
    }

"""MultiscaleDeformableAttnPlugin_TRT: multi-scale deformable attention (Deformable DETR, MaskDINO).

Contract (NVIDIA/TensorRT plugin/multiscaleDeformableAttnPlugin, versions 1 and 2, no fields):
  0 value              [N, S, M, D]        float32 | float16
  1 spatial_shapes     [L, 2] (H, W)       int32 only
  2 level_start_index  [L]                 int32 only
  3 sampling_locations [N, Lq, M, L, P, 2] same dtype as value, (x, y) normalised to [0, 1]
  4 attention_weights  [N, Lq, M, L, P]    same dtype as value
  output               [N, Lq, M, D]       dtype of value (4-D; models view it as [N, Lq, M*D])

The reference kernel follows the plugin: bilinear sampling at `loc * size - 0.5`, each corner
outside the map contributing zero, points with `h <= -1`, `w <= -1`, `h >= H` or `w >= W` skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.plugins import PluginEntry, Shape, TensorContract


def _output_shape(shapes: Sequence[Shape]) -> Shape:
    value, _, _, locations, _ = shapes
    return (value[0], locations[1], value[2], value[3])


def _result_shape(output: Shape) -> Shape:
    n, queries, heads, dim = output
    return (n, queries, heads * dim)


def _check_shapes(shapes: Sequence[Shape]) -> list[str]:
    value, spatial, starts, locations, weights = shapes
    problems = []
    if spatial[1] != 2:
        problems.append(f"spatial_shapes must be [L, 2], got {list(spatial)}")
    levels = spatial[0]
    if starts[0] != levels:
        problems.append(f"level_start_index has {starts[0]} levels, spatial_shapes {levels}")
    if locations[-1] != 2:
        problems.append(f"sampling_locations must end in 2 (x, y), got {list(locations)}")
    if locations[0] != value[0] or weights[0] != value[0]:
        problems.append(f"batch sizes differ: value {value[0]}, sampling_locations {locations[0]}, "
                        f"attention_weights {weights[0]}")
    if locations[2] != value[2] or weights[2] != value[2]:
        problems.append(f"heads (M) differ: value {value[2]}, sampling_locations {locations[2]}, "
                        f"attention_weights {weights[2]}")
    if locations[3] != levels or weights[3] != levels:
        problems.append(f"levels (L) differ: spatial_shapes {levels}, sampling_locations {locations[3]}, "
                        f"attention_weights {weights[3]}")
    if locations[4] != weights[4] or locations[1] != weights[1]:
        problems.append(f"queries/points differ: sampling_locations {list(locations)}, "
                        f"attention_weights {list(weights)}")
    return problems


ENTRY = PluginEntry(
    op="MultiscaleDeformableAttnPlugin_TRT",
    versions=("1", "2"),
    inputs=(
        TensorContract("value", 4, ("float32", "float16"), doc="[N, S, M, D]"),
        TensorContract("spatial_shapes", 2, ("int32",), doc="[L, 2] (H, W) per level"),
        TensorContract("level_start_index", 1, ("int32",), doc="[L] first token of each level"),
        TensorContract("sampling_locations", 6, ("float32", "float16"), same_dtype_as="value",
                       doc="[N, Lq, M, L, P, 2] (x, y) in [0, 1]"),
        TensorContract("attention_weights", 5, ("float32", "float16"), same_dtype_as="value",
                       doc="[N, Lq, M, L, P]"),
    ),
    output_shape=_output_shape,
    result_shape=_result_shape,
    check_shapes=_check_shapes,
    kernel="orchestrator.plugins.msda_kernel:msda",
    precisions=("fp32", "fp16"),
    doc="Multi-scale deformable attention; output [N, Lq, M, D].",
)


def kernel_inputs_ok(inputs: list[Any]) -> None:
    """Refuse inputs that would make the kernel read outside its arrays (it does no bounds checks)."""
    shapes = [tuple(int(d) for d in x.shape) for x in inputs]
    ranks = [contract.rank for contract in ENTRY.inputs]
    if [len(s) for s in shapes] != ranks:
        raise ValueError(f"input ranks {[len(s) for s in shapes]} differ from {ranks}; shapes {shapes}")
    problems = _check_shapes(shapes)
    if problems:
        raise ValueError("; ".join(problems))
    value, spatial, starts = inputs[0], inputs[1], inputs[2]
    tokens = value.shape[1]
    for level, ((height, width), start) in enumerate(zip(spatial.tolist(), starts.tolist(), strict=True)):
        if height <= 0 or width <= 0 or start < 0 or start + height * width > tokens:
            raise ValueError(f"level {level}: shape ({height}, {width}) starting at token {start} does not fit "
                             f"in value's {tokens} tokens")

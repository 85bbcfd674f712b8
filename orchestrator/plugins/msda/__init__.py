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

from orchestrator.plugins import Dim, Dims, PluginEntry, Shape, TensorContract
from orchestrator.plugins.derive import Derivation, Inexpressible, Ops
from orchestrator.plugins.msda.pattern import GridSampleAttention
from orchestrator.plugins.msda.recognise import CallSignatures
from orchestrator.plugins.versions import PluginVersion


def _output_shape(shapes: Sequence[Shape]) -> Shape:
    value, _, _, locations, _ = shapes
    return (value[0], locations[1], value[2], value[3])


def _result_shape(output: Shape) -> Shape:
    n, queries, heads, dim = output
    return (n, queries, heads * dim)


def _known(dim: Dim) -> bool:
    return isinstance(dim, int) and dim >= 0


def _axis(shape: Dims | None, axis: int) -> Dim:
    """One dim of a shape; None where the rank or the size is unknown."""
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _shown(dim: Dim) -> str:
    return str(dim) if _known(dim) or isinstance(dim, str) else "?"


def _disagree(label: str, dims: dict[str, Dim]) -> list[str]:
    """A problem if two known sizes differ. Symbolic or unknown dims are skipped: whole-model exports
    leave many dims unknown, and the graph then still runs (dims that must agree usually do)."""
    if len({dim for dim in dims.values() if _known(dim)}) <= 1:
        return []
    return [f"{label} differ: " + ", ".join(f"{name} {_shown(dim)}" for name, dim in dims.items())]


def _check_shapes(shapes: Sequence[Dims | None]) -> list[str]:
    """M, L, P, Lq and N agree across the inputs that carry them, as far as the shapes are known."""
    value, spatial, starts, locations, weights = shapes
    problems = []
    if _known(_axis(spatial, 1)) and _axis(spatial, 1) != 2:
        problems.append(f"spatial_shapes must be [L, 2], got {[_shown(d) for d in spatial or ()]}")
    levels = _axis(spatial, 0)
    if _known(levels) and _known(_axis(starts, 0)) and _axis(starts, 0) != levels:
        problems.append(f"level_start_index has {_axis(starts, 0)} levels, spatial_shapes {levels}")
    if _known(_axis(locations, -1)) and _axis(locations, -1) != 2:
        problems.append(f"sampling_locations must end in 2 (x, y), got {[_shown(d) for d in locations or ()]}")
    for label, axis in (("batch sizes", 0), ("heads (M)", 2)):
        problems += _disagree(label, {"value": _axis(value, axis), "sampling_locations": _axis(locations, axis),
                                      "attention_weights": _axis(weights, axis)})
    problems += _disagree("levels (L)", {"spatial_shapes": levels, "sampling_locations": _axis(locations, 3),
                                         "attention_weights": _axis(weights, 3)})
    for label, axis in (("queries (Lq)", 1), ("points (P)", 4)):
        problems += _disagree(label, {"sampling_locations": _axis(locations, axis),
                                      "attention_weights": _axis(weights, axis)})
    return problems


def _check_values(shapes: Sequence[Dims | None], values: Sequence[Any]) -> list[str]:
    """Where the graph fixes spatial_shapes (and level_start_index): value holds S = sum of H·W tokens
    and each level starts at the running sum. The plugin checks neither and reads out of bounds."""
    import numpy as np

    spatial, starts = values[1], values[2]
    if spatial is None:
        return []
    sizes = np.asarray(spatial, dtype=np.int64)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        return [f"spatial_shapes must be [L, 2], holds {list(sizes.shape)} values"]
    if (sizes <= 0).any():
        return [f"spatial_shapes holds a level of size <= 0: {sizes.tolist()}"]
    areas = sizes[:, 0] * sizes[:, 1]
    problems = []
    tokens = _axis(shapes[0], 1)
    if _known(tokens) and tokens != int(areas.sum()):
        problems.append(f"value has S = {tokens} tokens, but spatial_shapes {sizes.tolist()} sums to "
                        f"{int(areas.sum())} (S must be the sum of H·W)")
    expected = np.concatenate([[0], np.cumsum(areas)[:-1]]).tolist()
    if starts is not None and np.asarray(starts, dtype=np.int64).reshape(-1).tolist() != expected:
        problems.append(f"level_start_index is {np.asarray(starts).reshape(-1).tolist()}, but spatial_shapes "
                        f"{sizes.tolist()} puts the levels at {expected}")
    return problems


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


# ---------------------------------------------------------------------- derived inputs

def _shapes_tensor(ops: Ops, shapes: Any) -> Any:
    """spatial_shapes as an int64 [L, 2] tensor, from a tensor or a Python list of (H, W)."""
    if ops.is_tensor(shapes):
        return shapes
    try:
        pairs = [[int(height), int(width)] for height, width in shapes]
    except (TypeError, ValueError):
        raise Inexpressible(f"expected a list of (H, W) pairs, got {shapes!r:.80}") from None
    return ops.constant(pairs, "int64")


def _level_start_index(ops: Ops, shapes: Any) -> Any:
    return ops.exclusive_cumsum(ops.prod(_shapes_tensor(ops, shapes), 1))


def _split_levels(ops: Ops, tensor: Any, shapes: Any, points: Any = None) -> Any:
    """[N, Lq, M, L·P(, 2)] -> [N, Lq, M, L, P(, 2)]: only when every level samples the same P points."""
    levels = ops.levels(shapes) if ops.is_tensor(shapes) else len(shapes)
    if points is not None:
        counts = [int(p) for p in (points.tolist() if ops.is_tensor(points) else points)]
        if len(set(counts)) > 1:
            raise Inexpressible(f"the levels sample different numbers of points {counts}; "
                                "MultiscaleDeformableAttnPlugin_TRT samples the same P points at every level")
        if len(counts) != levels:
            raise Inexpressible(f"{len(counts)} point counts for {levels} levels")
    if ops.rank(tensor) not in (4, 5):
        raise Inexpressible(f"expected [N, Lq, M, L·P] or [N, Lq, M, L·P, 2], got rank {ops.rank(tensor)}")
    return ops.split_axis(tensor, 3, levels)


DERIVATIONS = {
    "spatial_shapes": Derivation(
        "spatial_shapes", lambda ops, shapes: _shapes_tensor(ops, shapes),
        ("the level shapes: a [L, 2] tensor or a Python list of (H, W)",),
        doc="spatial_shapes [L, 2] from a list of (H, W) pairs (or the tensor itself)"),
    "level_start_index": Derivation(
        "level_start_index", _level_start_index, ("spatial_shapes: a [L, 2] tensor or a list of (H, W)",),
        doc="the first token of each level: the exclusive running sum of H·W"),
    "split_levels": Derivation(
        "split_levels", _split_levels,
        ("the tensor with levels and points flattened, [N, Lq, M, L·P] or [N, Lq, M, L·P, 2]",
         "spatial_shapes: a [L, 2] tensor or a list of (H, W)", "the points per level (a list), optional"),
        doc="[N, Lq, M, L·P(, 2)] -> [N, Lq, M, L, P(, 2)] when every level samples the same P", optional=1),
}


ENTRY = PluginEntry(
    op="MultiscaleDeformableAttnPlugin_TRT",
    versions=("1", "2"),
    # v1 (IPluginV2DynamicExt) moved to the legacy sources and was deprecated in 10.11, which added v2
    # (IPluginV3, same I/O); both are registered through 11.1. The parser takes "1" when a node says none.
    lifecycle={"1": PluginVersion(deprecated="10.11", interface="IPluginV2DynamicExt"),
               "2": PluginVersion(added="10.11", interface="IPluginV3")},
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
    check_values=_check_values,
    kernel="orchestrator.plugins.msda.kernel:msda",
    precisions=("fp32", "fp16"),
    derivations=DERIVATIONS,
    patterns=(GridSampleAttention(),),
    recogniser=CallSignatures(),
    doc="Multi-scale deformable attention; output [N, Lq, M, D].",
)

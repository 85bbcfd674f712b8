"""A user's own plugin, described by a catalog entry that lives in the user's code.

`ScaledGatherPlugin` gathers rows of `table` `[R, C]` at `indices` `[K]` (int32, as TensorRT
plugins take their indices) and multiplies them by its `scale` field: output `[K, C]`. A pipeline
points `export.plugins[].catalog` at `ENTRY`; orchestrate itself never names this plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from orchestrator.plugins import PluginEntry, Shape, TensorContract


def _output_shape(shapes: Sequence[Shape]) -> Shape:
    table, indices = shapes
    return (indices[0], table[1])


def scaled_gather(inputs: list[Any], attrs: dict[str, Any] | None = None) -> list[np.ndarray]:
    """The reference kernel: `table[indices] * scale`, refusing indices outside the table."""
    table, indices = (np.asarray(x) for x in inputs)
    if indices.size and (indices.min() < 0 or indices.max() >= table.shape[0]):
        raise ValueError(f"indices must lie in [0, {table.shape[0]}), got {indices.min()}..{indices.max()}")
    scale = np.float32((attrs or {}).get("scale", 1.0))
    return [(table[indices.astype(np.intp)] * scale).astype(table.dtype, copy=False)]


ENTRY = PluginEntry(
    op="ScaledGatherPlugin",
    versions=("1",),
    inputs=(
        TensorContract("table", 2, ("float32",), doc="[R, C]"),
        TensorContract("indices", 1, ("int32",), doc="[K] rows to gather"),
    ),
    output_shape=_output_shape,
    kernel="examples.ops.scaled_gather:scaled_gather",
    precisions=("fp32",),
    attributes={"scale": "float"},
    library="libscaled_gather_plugin.so (the user's own, passed in build.plugin_libraries)",
    doc="Rows of a table at int32 indices, scaled; output [K, C].",
)

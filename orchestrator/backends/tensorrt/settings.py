"""The build settings as TensorRT takes them: workspace sizes and optimization profiles.

A profile is checked against the graph's inputs before anything is built: every axis the graph
fixes keeps its size, every dynamic one gets a range, min <= opt <= max.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UserError

UNITS = {"B": 1, "K": 1 << 10, "KB": 1000, "KIB": 1 << 10, "M": 1 << 20, "MB": 10**6, "MIB": 1 << 20,
         "G": 1 << 30, "GB": 10**9, "GIB": 1 << 30}


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a size such as '4GiB', '512MiB', '1.5G'."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*", value)
    if not match or match.group(2).upper() not in UNITS:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


Dims = tuple[int | None, ...]  # None: a dynamic dimension


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max


def graph_input_dims(model: Any) -> dict[str, Dims]:
    """Each graph input (initializers excluded) with its static dims, None where a dim is dynamic."""
    initializers = {i.name for i in model.graph.initializer}
    found: dict[str, Dims] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        found[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return found


def _shown(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def resolve_profiles(profiles: Sequence[Mapping[str, Mapping[str, Sequence[int]]]],
                     inputs: Mapping[str, Dims]) -> list[dict[str, ShapeRange]]:
    """The optimization profiles to build: the YAML's, checked against the graph, or the captured shapes.

    With no profile, every input must have static dims (the shapes the graph was exported with, which
    are the captured ones). A profile may leave out inputs whose dims are all static.
    """
    if not profiles:
        dynamic = {name: dims for name, dims in inputs.items() if None in dims}
        if dynamic:
            listed = ", ".join(f"{name} {_shown(dims)}" for name, dims in dynamic.items())
            example = next(iter(dynamic))
            raise UserError(f"the graph has dynamic input dims ({listed}); give their ranges in build.profiles",
                            field="build.profiles",
                            hint=f"profiles: [{{{example}: {{min: [...], opt: [...], max: [...]}}}}]")
        return [{name: ShapeRange(*(tuple(int(d or 0) for d in dims),) * 3) for name, dims in inputs.items()}]
    resolved = []
    for index, profile in enumerate(profiles):
        where = f"build.profiles[{index}]"
        unknown = [name for name in profile if name not in inputs]
        if unknown:
            raise UserError(f"no graph input named {', '.join(repr(n) for n in unknown)}; inputs are "
                            f"{', '.join(inputs)}", field=f"{where}.{unknown[0]}")
        ranges: dict[str, ShapeRange] = {}
        for name, dims in inputs.items():
            if name not in profile:
                if None in dims:
                    raise UserError(f"input '{name}' has dynamic dims {_shown(dims)} but the profile gives no range "
                                    "for it", field=where)
                static = tuple(int(d or 0) for d in dims)
                ranges[name] = ShapeRange(static, static, static)
                continue
            given = profile[name]
            shape_range = ShapeRange(*(tuple(int(v) for v in given[k]) for k in ("min", "opt", "max")))
            for label, shape in (("min", shape_range.min), ("opt", shape_range.opt), ("max", shape_range.max)):
                if len(shape) != len(dims):
                    raise UserError(f"{label} {list(shape)} has rank {len(shape)}; input '{name}' has rank "
                                    f"{len(dims)} {_shown(dims)}", field=f"{where}.{name}.{label}")
                for axis, (wanted, fixed) in enumerate(zip(shape, dims, strict=True)):
                    if fixed is not None and wanted != fixed:
                        raise UserError(f"{label} {list(shape)} sets axis {axis} to {wanted}, but the graph fixes it "
                                        f"at {fixed} {_shown(dims)}", field=f"{where}.{name}.{label}")
            require_ordered(shape_range, f"input '{name}'", "on every axis", f"{where}.{name}")
            ranges[name] = shape_range
        resolved.append(ranges)
    return resolved


def needs_profiles(inputs: Mapping[str, Dims], configured: bool) -> bool:
    """A static network builds without a profile; a dynamic one (or an explicit request) needs one."""
    return configured or any(None in dims for dims in inputs.values())


def require_ordered(shape_range: ShapeRange, subject: str, unit: str, field: str) -> None:
    """Refuse a profile range whose min, opt and max are not in order ({unit}: 'on every axis', 'for every value')."""
    if not all(a <= b <= c for a, b, c in zip(shape_range.min, shape_range.opt, shape_range.max, strict=True)):
        raise UserError(f"{subject}: need min <= opt <= max {unit}, got min {list(shape_range.min)}, "
                        f"opt {list(shape_range.opt)}, max {list(shape_range.max)}", field=field)

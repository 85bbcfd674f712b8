"""The calls MultiscaleDeformableAttnPlugin_TRT can stand for, by their signatures (for `orchestrate init`).

Multi-scale deformable attention is called under a few spellings of one signature:

  value               [N, S, M, D]                             parameter `value`
  the level shapes    a [L, 2] tensor (H, W), or a list of     `value_spatial_shapes`, `spatial_shapes`, …;
                      (H, W) pairs                             a list becomes a tensor (rule spatial_shapes)
  level_start_index   [L], or not passed                       not passed: rule level_start_index
  sampling_locations  [N, Lq, M, L, P, 2], or levels and       flattened: rule split_levels (with the
                      points flattened [N, Lq, M, L·P, 2]      call's points per level, when it passes them)
  attention_weights   [N, Lq, M, L, P], or [N, Lq, M, L·P]     likewise
  method              'default' (bilinear), when it has one    written as export.plugins[].require

Whatever else the call takes (`im2col_step`, a module's `self`) the plugin does not read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.plugins.derive import Inexpressible
from orchestrator.plugins.recognise import CallMapping, Derived

VALUE = ("value",)
SHAPES = ("value_spatial_shapes", "spatial_shapes", "input_spatial_shapes", "value_spatial_shapes_list",
          "spatial_shapes_list")
STARTS = ("level_start_index", "value_level_start_index", "input_level_start_index")
LOCATIONS = ("sampling_locations",)
WEIGHTS = ("attention_weights",)
POINTS = ("num_points_list",)  # points per level, where levels and points come flattened
METHOD = "method"
PLUGIN_METHOD = "default"  # bilinear sampling, what the plugin computes

ROLES = {"value": VALUE, "the level shapes": SHAPES, "sampling_locations": LOCATIONS,
         "attention_weights": WEIGHTS}


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "dim") and hasattr(value, "dtype") and not isinstance(value, list | tuple)


def _shape(value: Any) -> str:
    return str(list(value.shape)) if _is_tensor(value) else type(value).__name__


def _free(name: str, arguments: Mapping[str, Any], other: str) -> str:
    """A derived input's name: the plugin input's own, unless the call has a parameter of that name."""
    return other if name in arguments else name


class CallSignatures:
    """MultiscaleDeformableAttnPlugin_TRT's recogniser: the signatures above."""

    @property
    def looks_for(self) -> str:
        return ("a function taking value [N, S, M, D], the level shapes (" + " or ".join(SHAPES[:2])
                + ": [L, 2] or a list of (H, W)), sampling_locations [N, Lq, M, L, P, 2] (or [N, Lq, M, L·P, 2]) "
                "and attention_weights [N, Lq, M, L, P] (or [N, Lq, M, L·P]), level_start_index optional")

    def missing(self, parameters: Sequence[str]) -> list[str]:
        return [role for role, names in ROLES.items() if not any(name in parameters for name in names)]

    def map_call(self, arguments: Mapping[str, Any]) -> CallMapping:
        value = _passed(arguments, VALUE, 4, "value must be [N, S, M, D]")
        derive: dict[str, Derived] = {}
        shapes = _shapes(arguments)
        spatial = shapes
        if not _is_tensor(arguments[shapes]):
            spatial = _free("spatial_shapes", arguments, "shapes")
            derive[spatial] = Derived("spatial_shapes", (shapes,))
        starts = next((n for n in STARTS if _is_tensor(arguments.get(n)) and arguments[n].dim() == 1), None)
        if starts is None:
            starts = _free("level_start_index", arguments, "starts")
            derive[starts] = Derived("level_start_index", (spatial,))
        points = next((n for n in POINTS if arguments.get(n) is not None), None)
        locations = _levels(arguments, LOCATIONS, 6, "locations", (shapes, points), derive)
        weights = _levels(arguments, WEIGHTS, 5, "weights", (shapes, points), derive)
        require = {}
        if METHOD in arguments:
            if arguments[METHOD] != PLUGIN_METHOD:
                raise Inexpressible(f"the call samples with {METHOD}={arguments[METHOD]!r}; the plugin computes "
                                    f"bilinear sampling only ({METHOD}={PLUGIN_METHOD!r})")
            require[METHOD] = PLUGIN_METHOD
        return CallMapping((value, spatial, starts, locations, weights), derive, require)


def _passed(arguments: Mapping[str, Any], names: Sequence[str], rank: int, expected: str) -> str:
    """The parameter among `names` holding a tensor of rank `rank`."""
    name = next(n for n in names if n in arguments)
    if not _is_tensor(arguments[name]) or arguments[name].dim() != rank:
        raise Inexpressible(f"{expected}; '{name}' is {_shape(arguments[name])}")
    return name


def _shapes(arguments: Mapping[str, Any]) -> str:
    """The parameter holding the level shapes: a [L, 2] tensor where the call passes one, else a list of pairs."""
    given = [n for n in SHAPES if arguments.get(n) is not None]
    tensors = [n for n in given if _is_tensor(arguments[n]) and arguments[n].dim() == 2]
    if tensors:
        return tensors[0]
    pairs = [n for n in given if isinstance(arguments[n], list | tuple)
             and all(isinstance(p, list | tuple) and len(p) == 2 for p in arguments[n])]
    if not pairs:
        shown = ", ".join(f"'{n}' is {_shape(arguments[n])}" for n in given) or "none is passed"
        raise Inexpressible(f"the level shapes must be a [L, 2] tensor or a list of (H, W) pairs; {shown}")
    return pairs[0]


def _levels(arguments: Mapping[str, Any], names: Sequence[str], rank: int, other: str,
            split_by: tuple[str, str | None], derive: dict[str, Derived]) -> str:
    """A per-level input: passed as it is at the plugin's rank, or split from levels and points flattened."""
    name = next(n for n in names if n in arguments)
    value = arguments[name]
    if _is_tensor(value) and value.dim() == rank:
        return name
    if _is_tensor(value) and value.dim() == rank - 1:
        derived = _free(name, arguments, other)
        derive[derived] = Derived("split_levels", (name, *[s for s in split_by if s]))
        return derived
    layout = "[N, Lq, M, L, P, 2]" if rank == 6 else "[N, Lq, M, L, P]"
    raise Inexpressible(f"'{name}' is {_shape(value)}; the plugin takes {layout}, or the levels and points "
                        "flattened in one axis")

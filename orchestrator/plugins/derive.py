"""Derived plugin inputs: one definition per rule, run in PyTorch (export) or written as ONNX nodes (surgery).

A model rarely calls its attention function with exactly the plugin's inputs: Mask2Former passes the
level shapes as a Python list and no level_start_index, RT-DETRv2 passes sampling locations with
levels and points flattened together. A catalog entry lists the rules that bridge such calls
(`PluginEntry.derivations`); the pipeline names them (`export.plugins[].derive`).

Each rule is written once, as a function of an `Ops` namespace and its sources. `TorchOps` runs
it on tensors (inside the replaced call, so TorchScript and dynamo trace it into the graph, and
for the real result); `OnnxOps` writes the same steps as graphsurgeon nodes for the surgery stage.
A rule that cannot be expressed for this call raises `Inexpressible`, which the stages turn into a
user error naming the rule and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class Inexpressible(ValueError):
    """The call cannot be mapped onto the plugin (e.g. different point counts per level)."""


@dataclass(frozen=True)
class Derivation:
    """A rule computing one plugin input from values the call has."""

    name: str
    compute: Callable[..., Any]  # compute(ops, *sources) -> the derived tensor
    sources: tuple[str, ...]  # what each source is, for messages and the schema ("tensor [L, 2]", …)
    doc: str = ""
    optional: int = 0  # how many of the last sources may be left out

    def run(self, ops: Ops, values: Sequence[Any]) -> Any:
        if not len(self.sources) - self.optional <= len(values) <= len(self.sources):
            raise Inexpressible(f"rule '{self.name}' takes {self.arity()} source(s) ({'; '.join(self.sources)}), "
                                f"got {len(values)}")
        return self.compute(ops, *values)

    def arity(self) -> str:
        low = len(self.sources) - self.optional
        return str(low) if not self.optional else f"{low} to {len(self.sources)}"


class Ops:
    """The few operations derivations are written in; each backend of the namespace implements them."""

    def constant(self, value: Any, dtype: str) -> Any:
        raise NotImplementedError

    def prod(self, tensor: Any, axis: int) -> Any:
        raise NotImplementedError

    def exclusive_cumsum(self, tensor: Any) -> Any:
        raise NotImplementedError

    def split_axis(self, tensor: Any, axis: int, outer: int) -> Any:
        """Reshape axis `axis` of size outer*inner into (outer, inner)."""
        raise NotImplementedError

    def rank(self, tensor: Any) -> int:
        raise NotImplementedError

    def levels(self, tensor: Any) -> int:
        """The static size of axis 0 (the level count of a spatial_shapes-like tensor)."""
        raise NotImplementedError

    @staticmethod
    def is_tensor(value: Any) -> bool:
        return hasattr(value, "shape") and not isinstance(value, list | tuple)


class TorchOps(Ops):
    """Derivations on torch tensors (traced into the export, and run for the real result)."""

    def constant(self, value: Any, dtype: str) -> Any:
        import torch

        return torch.tensor(value, dtype=getattr(torch, dtype))

    def prod(self, tensor: Any, axis: int) -> Any:
        return tensor.prod(axis)

    def exclusive_cumsum(self, tensor: Any) -> Any:
        import torch

        return torch.cat((tensor.new_zeros(1), tensor.cumsum(0)[:-1]))

    def split_axis(self, tensor: Any, axis: int, outer: int) -> Any:
        return tensor.unflatten(axis, (outer, -1))

    def rank(self, tensor: Any) -> int:
        return int(tensor.dim())

    def levels(self, tensor: Any) -> int:
        return int(tensor.shape[0])


class OnnxOps(Ops):
    """The same derivations as onnx-graphsurgeon nodes appended to `graph` (opset-aware)."""

    def __init__(self, graph: Any, unique: Callable[[str], str]):
        self.graph = graph
        self.unique = unique

    def _node(self, op: str, inputs: list[Any], attrs: dict[str, Any], dtype: Any, shape: Any) -> Any:
        import onnx_graphsurgeon as gs

        out = gs.Variable(self.unique(f"derived_{op}"), dtype=dtype, shape=shape)
        self.graph.nodes.append(gs.Node(op, self.unique(f"derive_{op}"), attrs, inputs, [out]))
        return out

    def _int64(self, name: str, value: Any) -> Any:
        import numpy as np
        import onnx_graphsurgeon as gs

        return gs.Constant(self.unique(name), np.array(value, dtype=np.int64))

    def constant(self, value: Any, dtype: str) -> Any:
        import numpy as np
        import onnx_graphsurgeon as gs

        return gs.Constant(self.unique("derived_constant"), np.array(value, dtype=dtype))

    def prod(self, tensor: Any, axis: int) -> Any:
        shape = list(tensor.shape[:axis]) + list(tensor.shape[axis + 1:]) if tensor.shape else None
        if (self.graph.opset or 11) >= 18:
            return self._node("ReduceProd", [tensor, self._int64("axes", [axis])], {"keepdims": 0}, tensor.dtype,
                              shape)
        return self._node("ReduceProd", [tensor], {"axes": [axis], "keepdims": 0}, tensor.dtype, shape)

    def exclusive_cumsum(self, tensor: Any) -> Any:
        return self._node("CumSum", [tensor, self._int64("axis", 0)], {"exclusive": 1}, tensor.dtype, tensor.shape)

    def split_axis(self, tensor: Any, axis: int, outer: int) -> Any:
        if not tensor.shape or not isinstance(tensor.shape[axis], int):
            raise Inexpressible(f"the size of axis {axis} of '{tensor.name}' is not known in the graph")
        inner = tensor.shape[axis] // outer
        target = [0] * axis + [outer, inner] + [0] * (len(tensor.shape) - axis - 1)
        shape = [*tensor.shape[:axis], outer, inner, *tensor.shape[axis + 1:]]
        return self._node("Reshape", [tensor, self._int64("shape", target)], {}, tensor.dtype, shape)

    def rank(self, tensor: Any) -> int:
        if tensor.shape is None:
            raise Inexpressible(f"the rank of '{tensor.name}' is not known in the graph")
        return len(tensor.shape)

    def levels(self, tensor: Any) -> int:
        if not tensor.shape or not isinstance(tensor.shape[0], int):
            raise Inexpressible(f"the level count (axis 0 of '{tensor.name}') is not known in the graph")
        return int(tensor.shape[0])

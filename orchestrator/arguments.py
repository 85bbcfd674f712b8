"""Call arguments that are not tensors, recorded as typed JSON and rebuilt for the replay of the call.

A captured call is replayed by the export (scope call), so every argument must come back as it
was: a list of (H, W) tuples stays a list of tuples, `im2col_step` stays an int, and `self` (a
method's module) becomes the module at the same path of a freshly built model. Nothing is pickled
and nothing is `repr()`-ed: what cannot be written as plain data is refused, naming the argument.

Encoding: None, bool, int, str and finite floats are themselves; everything else is a one-key
mapping: {"$float": "inf"}, {"$tuple": [...]}, {"$list": [...]}, {"$dict": {...}} (string keys),
{"$module": "encoder.layers.0.self_attn.attn"}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from orchestrator.errors import UserError

MAX_ITEMS = 10_000  # a list longer than this is data, not an argument: capture it as a tensor


class Unrecordable(ValueError):
    """An argument that is neither a tensor nor plain data."""


def encode(value: Any, module_path: Callable[[Any], str | None]) -> Any:
    """`value` as typed JSON; `module_path` names a torch module (None: not part of the model)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise Unrecordable(f"a {type(value).__name__} of {len(value)} items")
        return {f"${type(value).__name__}": [encode(item, module_path) for item in value]}
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise Unrecordable("a dict with keys that are not strings")
        return {"$dict": {key: encode(item, module_path) for key, item in value.items()}}
    if hasattr(value, "named_modules"):
        path = module_path(value)
        if path is None:
            raise Unrecordable(f"a {type(value).__name__} module that is not part of the model")
        return {"$module": path}
    if hasattr(value, "detach"):
        raise Unrecordable("a tensor inside a list or mapping")
    raise Unrecordable(f"a {type(value).__name__}")


def decode(value: Any, module_at: Callable[[str], Any]) -> Any:
    """The argument `encode` recorded; `module_at(path)` gives the module at a recorded path."""
    if not isinstance(value, dict):
        return value
    (tag, inner), = value.items()
    if tag == "$float":
        return float(inner)
    if tag == "$tuple":
        return tuple(decode(item, module_at) for item in inner)
    if tag == "$list":
        return [decode(item, module_at) for item in inner]
    if tag == "$dict":
        return {key: decode(item, module_at) for key, item in inner.items()}
    if tag == "$module":
        return module_at(inner)
    raise UserError(f"unknown recorded argument type {tag}", field="capture")


def modules_in(value: Any) -> list[str]:
    """The module paths an encoded argument refers to (the replay builds the model only when there are)."""
    if not isinstance(value, dict):
        return []
    (tag, inner), = value.items()
    if tag == "$module":
        return [inner]
    items = inner.values() if tag == "$dict" else inner if tag in ("$tuple", "$list") else []
    return [path for item in items for path in modules_in(item)]


def shown(value: Any) -> str:
    """A short, readable form of an encoded argument for summaries ('[(100, 160), (50, 80)]', 'module …')."""
    decoded = decode(value, lambda path: _ModuleName(path))
    text = repr(decoded)
    return text if len(text) <= 60 else text[:57] + "..."


class _ModuleName:
    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return f"<module {self.path or 'model'}>"

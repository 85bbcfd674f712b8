"""Which keyword arguments a callable takes, and the user error when `model.kwargs` do not fit.

The planner reads a factory's parameters from its source (ast, without importing user code), so
`orchestrate validate` finds a misspelt keyword; the capture stage checks the live signature before
calling, for what the source does not show simply (classes with inherited `__init__`, decorated
functions, library callables). Both report the same located error instead of a crash with a
TypeError from inside the user's call.
"""

from __future__ import annotations

import ast
import difflib
import inspect
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UserError


@dataclass(frozen=True)
class Accepts:
    """The parameters of a callable, as far as keyword arguments are concerned."""

    names: list[str]  # every named parameter, in order
    keywords: list[str]  # those that can be passed by keyword
    required: list[str]  # those without a default
    any_keyword: bool  # it has **kwargs

    @classmethod
    def from_arguments(cls, arguments: ast.arguments, skip_first: bool = False) -> Accepts:
        """From a `def`'s arguments; `skip_first` drops `self` of an `__init__`."""
        positional = [*arguments.posonlyargs, *arguments.args]
        defaulted = {a.arg for a in positional[len(positional) - len(arguments.defaults):]}
        defaulted |= {a.arg for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True) if d is not None}
        only_positional = {a.arg for a in arguments.posonlyargs}
        names = [a.arg for a in [*positional, *arguments.kwonlyargs]][1 if skip_first else 0:]
        return cls(names, [n for n in names if n not in only_positional], [n for n in names if n not in defaulted],
                   arguments.kwarg is not None)

    @classmethod
    def from_signature(cls, signature: inspect.Signature) -> Accepts:
        named = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return cls([p.name for p in named], [p.name for p in named if p.kind != p.POSITIONAL_ONLY],
                   [p.name for p in named if p.default is p.empty],
                   any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()))

    def listing(self) -> str:
        shown = [name if name in self.required else f"{name}=…" for name in self.names]
        shown += ["**kwargs"] if self.any_keyword else []
        return f"({', '.join(shown)})"

    def problem(self, given: dict[str, Any], path: str, field: str) -> UserError | None:
        """The error for calling `path` with `given` as keyword arguments (from `field`), or None when they fit."""
        for name in given:
            if name in self.keywords or (self.any_keyword and name not in self.names):
                continue
            if name in self.names:
                return UserError(f"'{path}' takes '{name}' by position only, which {field} cannot pass",
                                 field=f"{field}.{name}")
            close = difflib.get_close_matches(name, self.keywords, n=1)
            return UserError(f"'{path}' has no parameter '{name}'; it takes {self.listing()}", field=f"{field}.{name}",
                             hint=f"did you mean '{close[0]}'?" if close else None)
        missing = [name for name in self.required if name not in given]
        if missing:
            return UserError(f"'{path}' needs {', '.join(repr(n) for n in missing)}, which {field} does not give; "
                             f"it takes {self.listing()}", field=field,
                             hint=f"add {missing[0]}: <value> to {field}")
        return None


def check_call(function: Any, given: dict[str, Any], path: str, field: str) -> None:
    """Refuse keyword arguments that the live callable cannot take, before it is called."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # no signature to check against (some builtins): the call itself will tell
    try:
        signature.bind(**given)
    except TypeError as exc:
        problem = Accepts.from_signature(signature).problem(given, path, field)
        raise problem or UserError(f"'{path}' cannot be called with {field}: {exc}", field=field) from None

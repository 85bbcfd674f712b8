"""What a module's source says, read without running it: whether it defines a name, a function's
parameters, the keyword arguments a callable accepts. Planning uses these to report a misspelt callable
or keyword at its field before any stage runs; every answer may be "cannot tell" (None), never a guess.
"""

from __future__ import annotations

import ast
from pathlib import Path

from orchestrator.signatures import Accepts

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def top_level_definition(source: Path, attrs: list[str]) -> Definition | None:
    """The one top-level `def` or `class` an import path names, read from its source; None when not that simple."""
    if len(attrs) != 1 or source.suffix != ".py":
        return None
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (OSError, SyntaxError, ValueError):
        return None
    name = attrs[0]
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
             and n.name == name]
    if len(found) != 1 or found[0].decorator_list or _rebinds(tree.body, name, found[0]):
        return None
    return found[0]


def _rebinds(statements: list[ast.stmt], name: str, definition: ast.stmt | None) -> bool:
    """Whether `name` is bound a second way (assigned, imported, redefined in a branch): then do not guess."""
    for statement in statements:
        if statement is definition:
            continue
        for node in ast.walk(statement):
            if (isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)) \
                    or (isinstance(node, ast.alias) and (node.asname or node.name) == name) \
                    or (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name):
                return True
    return False


def parameters(source: Path, attrs: list[str]) -> list[str] | None:
    """The parameter names of a plain top-level function, read from its source; None when not that simple."""
    function = top_level_definition(source, attrs)
    if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    arguments = function.args
    if arguments.vararg or arguments.kwarg:
        return None
    return [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]


def accepts(source: Path, attrs: list[str]) -> Accepts | None:
    """What keyword arguments a top-level function, or a class (its own `__init__`), takes; None when unsure.

    A class is read only when calling it plainly runs an `__init__` written in its body (or, without
    bases, object's): no decorator, metaclass, `__new__`, or `__init__` bound another way.
    """
    definition = top_level_definition(source, attrs)
    if isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
        return Accepts.from_arguments(definition.args)
    if definition is None or definition.keywords:
        return None
    body = definition.body
    if any(_rebinds(body, special, None) for special in ("__new__", "__signature__")):
        return None
    inits = [n for n in body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    if not inits:
        return None if definition.bases or _rebinds(body, "__init__", None) else Accepts([], [], [], False)
    if len(inits) > 1 or inits[0].decorator_list or _rebinds(body, "__init__", inits[0]):
        return None
    return Accepts.from_arguments(inits[0].args, skip_first=True)


_BINDS_NOTHING = (ast.Expr, ast.Pass, ast.Delete, ast.Raise, ast.Assert, ast.Global, ast.Nonlocal, ast.Return,
                  ast.Break, ast.Continue)
_DYNAMIC_MARKERS = ("globals()", "setattr(", "sys.modules", "__getattr__", "exec(", "vars()", "locals()")


def defines(source: Path, name: str) -> bool | None:
    """Whether a module's source binds `name` at its top level: True, False, or None when it cannot tell.

    Only a clear False is acted on; modules that bind names dynamically (`import *`, `globals()`,
    a module `__getattr__`, ...) give None.
    """
    if source.suffix != ".py":
        return None
    if source.name == "__init__.py" and ((source.parent / f"{name}.py").is_file() or (source.parent / name).is_dir()):
        return True  # a submodule becomes an attribute of its package once imported
    try:
        raw = source.read_bytes()
        tree = ast.parse(raw, filename=str(source))
    except (OSError, SyntaxError, ValueError):
        return None
    text = raw.decode("utf-8", "replace")
    if any(marker in text for marker in _DYNAMIC_MARKERS):
        return None
    names: set[str] = set()
    if not _collect_bound(tree.body, names):
        return None
    return name in names


def _bind(target: ast.AST, names: set[str]) -> None:
    for node in ast.walk(target):
        if isinstance(node, ast.Name):
            names.add(node.id)


def _collect_bound(statements: list[ast.stmt], names: set[str]) -> bool:
    """Add the names `statements` bind at their level to `names`; False when a construct makes that unknowable."""
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                _bind(target, names)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            _bind(node.target, names)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return False
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif not _collect_compound(node, names):
            return False
    return True


def _collect_compound(node: ast.stmt, names: set[str]) -> bool:
    """`_collect_bound` for loops, `with`, branches and `try`; False for what is not worth modelling
    (match, try/except*, type aliases, walrus)."""
    if isinstance(node, ast.For | ast.AsyncFor):
        _bind(node.target, names)
        return _collect_bound(node.body, names) and _collect_bound(node.orelse, names)
    if isinstance(node, ast.With | ast.AsyncWith):
        for item in node.items:
            if item.optional_vars is not None:
                _bind(item.optional_vars, names)
        return _collect_bound(node.body, names)
    if isinstance(node, ast.If | ast.While):
        return _collect_bound(node.body, names) and _collect_bound(node.orelse, names)
    if isinstance(node, ast.Try):
        for handler in node.handlers:
            if handler.name:
                names.add(handler.name)
            if not _collect_bound(handler.body, names):
                return False
        return all(_collect_bound(part, names) for part in (node.body, node.orelse, node.finalbody))
    return isinstance(node, _BINDS_NOTHING) and not any(isinstance(n, ast.NamedExpr) for n in ast.walk(node))

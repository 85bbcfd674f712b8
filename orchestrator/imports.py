"""Import paths ('package.module:attr.sub') → objects, source files, and temporary swaps.

`swap` is how a model the user cannot edit gets its call replaced: the object is swapped where it
is defined and everywhere it was imported by name (`from lib import fn`), and restored afterwards,
also when the body raises.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError


def split(path: str) -> tuple[str, list[str]]:
    module, _, attrs = path.partition(":")
    return module, attrs.split(".") if attrs else []


_PYTHON_PATHS: list[list[str]] = []  # the python_path of each search_path block now open, innermost last


@contextlib.contextmanager
def search_path(extra: Sequence[str | os.PathLike[str]] = ()) -> Iterator[None]:
    """Put the current directory and `extra` in front of sys.path while resolving user code."""
    entries = [str(Path(p).absolute()) for p in extra]
    fresh = [p for p in [*entries, os.getcwd()] if p not in sys.path]
    sys.path[:0] = fresh
    _PYTHON_PATHS.append(entries)
    try:
        yield
    finally:
        _PYTHON_PATHS.pop()
        for item in fresh:
            with contextlib.suppress(ValueError):
                sys.path.remove(item)


def not_found_hint() -> str:
    """Where import paths were looked for and how to point them at the project: run from another
    directory, a pipeline finds none of its modules."""
    entries = _PYTHON_PATHS[-1] if _PYTHON_PATHS else []
    searched = ", ".join(entries) if entries else "none"
    return (f"import paths resolve from the current directory ({os.getcwd()}) and python_path ({searched}); "
            "run orchestrate from the project directory, or add python_path: [..] to the pipeline "
            "(its entries are relative to the pipeline file)")


def _missing_itself(exc: ImportError, module: str) -> bool:
    """Whether the module or one of its parent packages is what was not found (not a module it imports)."""
    name = getattr(exc, "name", None)
    return isinstance(exc, ModuleNotFoundError) and bool(name) and (module + ".").startswith(f"{name}.")


def module_file(module: str, field: str | None = None) -> Path:
    """The source file of `module`, found without running it (its parent packages are imported)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        hint = not_found_hint() if isinstance(exc, ImportError) and _missing_itself(exc, module) else None
        raise UserError(f"cannot find module '{module}': {exc}", field=field, hint=hint) from None
    if found is None:
        raise UserError(f"cannot find module '{module}' (not on sys.path: current directory and python_path)",
                        field=field, hint=not_found_hint())
    if found.origin is None or found.origin in ("built-in", "frozen"):
        raise UserError(f"module '{module}' has no source file to fingerprint", field=field)
    return Path(found.origin)


def load(path: str) -> Any:
    """The object at 'package.module:attr.sub', as Python finds it (ImportError or AttributeError as raised).

    For paths the code itself names (catalog entries, kernels); `resolve` is the same for a path from the
    pipeline, with a located UserError that says where imports were looked for.
    """
    module_name, attrs = split(path)
    obj: Any = importlib.import_module(module_name)
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def resolve(path: str, field: str | None = None) -> Any:
    """Import `package.module` and walk the attributes after ':'."""
    module_name, attrs = split(path)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = not_found_hint() if _missing_itself(exc, module_name) else None
        raise UserError(f"cannot import '{module_name}': {exc}", field=field, hint=hint) from None
    walked = module_name
    for attr in attrs:
        if not hasattr(obj, attr):
            options = sorted(a for a in dir(obj) if not a.startswith("_"))[:12]
            raise UserError(f"'{walked}' has no attribute '{attr}'", field=field,
                            hint=f"available: {', '.join(options)}" if options else None)
        obj = getattr(obj, attr)
        walked += f".{attr}" if walked != module_name else f":{attr}"
    return obj


@contextlib.contextmanager
def swap(path: str, replacement: Any, field: str | None = None) -> Iterator[Any]:
    """Replace the object at `path` by `replacement` for the duration of the block; yield the original.

    Also rebinds module-level names elsewhere that refer to the same object, since models usually
    do `from ops import fn`. Class attributes are swapped on their class.
    """
    module_name, attrs = split(path)
    if not attrs:
        raise UserError(f"'{path}' names a module; name a callable as module:attribute", field=field)
    owner = resolve(f"{module_name}:{'.'.join(attrs[:-1])}" if len(attrs) > 1 else module_name, field)
    name = attrs[-1]
    if not hasattr(owner, name):
        raise UserError(f"'{path}' does not exist", field=field)
    inherited = isinstance(owner, type) and name not in owner.__dict__
    raw = owner.__dict__[name] if isinstance(owner, type) and not inherited else getattr(owner, name)
    original = getattr(owner, name)
    rebound: list[tuple[Any, str, Any]] = [] if inherited else [(owner, name, raw)]
    setattr(owner, name, replacement)
    try:
        if isinstance(owner, type(sys)):
            for module in list(sys.modules.values()):
                namespace = getattr(module, "__dict__", None)
                if module is owner or not isinstance(namespace, dict):
                    continue
                for attr, value in list(namespace.items()):
                    if value is original:
                        rebound.append((module, attr, value))
                        setattr(module, attr, replacement)
        yield original
    finally:
        if inherited:
            delattr(owner, name)
        for target, attr, value in reversed(rebound):
            setattr(target, attr, value)


@contextlib.contextmanager
def swap_callable(path: str, function: Any, field: str) -> Iterator[Any]:
    """`swap`, keeping a staticmethod or classmethod one (so `self`/`cls` are passed as before)."""
    module_name, attrs = split(path)
    owner = resolve(f"{module_name}:{'.'.join(attrs[:-1])}", field) if len(attrs) > 1 else None
    raw = owner.__dict__.get(attrs[-1]) if isinstance(owner, type) else None
    if isinstance(raw, staticmethod):
        function = staticmethod(function)
    elif isinstance(raw, classmethod):
        plain = function
        function = classmethod(lambda cls, *args, **kwargs: plain(*args, **kwargs))
    with swap(path, function, field) as original:
        yield original

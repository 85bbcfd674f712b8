"""The calls of a live model that a catalog entry recognises, found in one forward (`orchestrate init`).

The forward runs under a profile hook (sys.setprofile) that sees every Python function call. Each
function's parameter names are shown once to every entry's recogniser (orchestrator.plugins.recognise);
for a function one recognises, each call's arguments are mapped onto the plugin's inputs as the
recogniser proposes, and the proposal is checked on the real values: the entry's derivations run, its
contract and rules hold for what they give, and the call's result has the shape of the plugin's output.
Each call is recorded with the module running it and its arguments' shapes; each callable with the
import path a swap reaches it by (the name capture and export will swap). A second forward swaps every
usable callable by that path and counts the calls it reaches, so a path that misses calls is reported.
No library is named here: what a call looks like is the entry's knowledge.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from orchestrator import arguments as recorded_arguments
from orchestrator import imports
from orchestrator.errors import UserError
from orchestrator.plugins.derive import Inexpressible, TorchOps
from orchestrator.tensors import DTYPE_SHORT, torch_dtype_name
from orchestrator.torch_model import ModelSettings, ModuleStack, build_model, flatten_outputs, name_inputs

if TYPE_CHECKING:
    from orchestrator.plugins import PluginEntry
    from orchestrator.plugins.recognise import CallMapping

MAX_CLOSEST = 3  # functions named when nothing is found, those lacking the fewest parameters


@dataclass
class Call:
    """One call of a recognised callable: where it ran, what it got and returned, why it cannot map."""

    module: str  # the model's module running it ('' for the model itself)
    arguments: dict[str, str]  # parameter -> its value described
    result: str
    problems: list[str]
    result_abs_max: float | None = None


@dataclass
class Found:
    """A callable one entry recognises, with every call the forward made of it."""

    op: str
    defined: str  # module:qualname where its code is defined
    callable: str | None  # the import path a swap reaches it by (None: none does, see problems)
    calls: list[Call] = field(default_factory=list)
    mapping: CallMapping | None = None  # of the first call that maps
    feeds: list[str] = field(default_factory=list)  # per plugin input of that call, where it comes from
    casts: dict[str, str] = field(default_factory=dict)  # plugin input -> contract dtype the call's differs from
    problems: list[str] = field(default_factory=list)  # why the callable cannot be swapped, or calls differ
    inside: str | None = None  # a recognised callable it ran inside

    @property
    def usable(self) -> bool:
        return self.callable is not None and self.mapping is not None and not self.problems \
            and all(not call.problems for call in self.calls)

    def reasons(self) -> list[str]:
        """Why it is not usable: its own problems, then each distinct reason its calls gave."""
        seen = list(self.problems)
        for call in self.calls:
            seen += [problem for problem in call.problems if problem not in seen]
        return seen


@dataclass
class Discovery:
    """What one watched forward showed: the recognised callables, and what was looked for."""

    model: str  # the model's class name
    functions: int  # distinct Python functions called
    calls: int  # Python calls made
    found: list[Found]
    looked_for: list[str]  # per entry with a recogniser: "op: what it looks for"
    closest: list[str]  # functions taking some of what was looked for
    model_inputs: dict[str, str]  # forward argument -> its dtype (tensors)
    output_abs_max: float | None = None

    def usable(self) -> list[Found]:
        return [found for found in self.found if found.usable]


def describe(value: Any) -> str:
    """A value as one short word: f32[1,504,2,16], i64[3,2] [[16,24],…], a list's items, a repr."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        dtype = torch_dtype_name(value.dtype)
        text = f"{DTYPE_SHORT.get(dtype, dtype)}[{','.join(str(int(d)) for d in value.shape)}]"
        if not value.dtype.is_floating_point and value.numel() <= 16:
            text += f" {value.tolist()}"
        return text
    if isinstance(value, list | tuple) and value and all(isinstance(v, list | tuple) for v in value):
        return f"{type(value).__name__} {' '.join('(' + ','.join(map(str, v)) + ')' for v in value[:8])}"
    if value is not None and not isinstance(value, str | int | float | bool | list | tuple | dict):
        return type(value).__name__  # a module's repr is its whole tree
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{type(value).__name__} {shown[:36]}…"


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "dim") and hasattr(value, "dtype") and not isinstance(value, list | tuple)


def _parameters(code: CodeType) -> tuple[str, ...]:
    return code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]


# ------------------------------------------------------------------------------------------ checking a mapping

def plugin_inputs(entry: PluginEntry, mapping: CallMapping, arguments: Mapping[str, Any]) -> list[Any]:
    """The plugin's inputs for this call, its derived ones computed by the entry's rules (as the export
    computes them); Inexpressible when a rule cannot express the call."""
    values = dict(arguments)
    pending = dict(mapping.derive)
    while pending:
        ready = [name for name, rule in pending.items() if all(src in values for src in rule.sources)]
        if not ready:
            raise Inexpressible(f"the derived inputs {', '.join(pending)} read what the call does not pass")
        for name in ready:
            rule = pending.pop(name)
            derivation = entry.derivation(rule.rule)
            try:
                values[name] = derivation.run(TorchOps(), [values[src] for src in rule.sources])
            except Inexpressible:
                raise
            except Exception as exc:  # noqa: BLE001 - a rule failing on these values is a reason, not a crash
                raise Inexpressible(f"rule '{rule.rule}' fails on this call: {exc}") from None
    missing = [name for name in mapping.inputs if not _is_tensor(values.get(name))]
    if missing:
        raise Inexpressible(f"{', '.join(missing)} must be tensors; the call passes "
                            + ", ".join(f"{n}={describe(values.get(n))}" for n in missing))
    return [values[name] for name in mapping.inputs]


def contract_dtypes(entry: PluginEntry, tensors: list[Any]) -> tuple[list[str], dict[str, str]]:
    """Each input's dtype as the plugin will get it (the export casts integers to the contract, and floats of
    a dtype the plugin does not take to their twin's), and the inputs it casts, by contract name."""
    dtypes: list[str] = []
    casts: dict[str, str] = {}
    for contract, tensor in zip(entry.inputs, tensors, strict=True):
        dtype = torch_dtype_name(tensor.dtype)
        same_kind = contract.is_integer != tensor.is_floating_point()
        if dtype not in contract.dtypes and same_kind:
            twin = dtypes[entry.input_names().index(contract.same_dtype_as)] if contract.same_dtype_as else None
            casts[contract.name] = twin if twin in contract.dtypes else contract.dtypes[0]
            dtype = casts[contract.name]
        elif contract.is_integer:
            casts[contract.name] = contract.dtypes[0]  # the contract is written down, cast or not
        dtypes.append(dtype)
    return dtypes, casts


def check_call(entry: PluginEntry, mapping: CallMapping, arguments: Mapping[str, Any]) -> tuple[list[Any], list[str],
                                                                                                dict[str, str]]:
    """(the plugin's inputs, what is wrong with them for the plugin, the casts the export makes)."""
    tensors = plugin_inputs(entry, mapping, arguments)
    dtypes, casts = contract_dtypes(entry, tensors)
    shapes = [tuple(int(d) for d in t.shape) for t in tensors]
    values = [t.detach().cpu().numpy() if not t.is_floating_point() else None for t in tensors]
    return tensors, entry.contract_problems(shapes, dtypes, list(mapping.inputs), values=values), casts


def result_problems(entry: PluginEntry, tensors: list[Any], result: Any) -> list[str]:
    """The call must return one tensor shaped as the plugin's output, or as the model uses it (result_shape)."""
    if not _is_tensor(result):
        return [f"the call returns {describe(result)}; the plugin stands for a call that returns one tensor"]
    plugin_shape = tuple(entry.output_shape([tuple(int(d) for d in t.shape) for t in tensors]))
    shapes = {plugin_shape, tuple(entry.result_shape(plugin_shape)) if entry.result_shape else plugin_shape}
    got = tuple(int(d) for d in result.shape)
    if got not in shapes:
        wanted = " or ".join(str(list(s)) for s in sorted(shapes))
        return [f"the call returns {describe(result)}; the plugin's output for these inputs is {wanted}"]
    dtype = entry.output_dtype([torch_dtype_name(t.dtype) for t in tensors])
    if torch_dtype_name(result.dtype) != dtype:
        return [f"the call returns {describe(result)}; the plugin's output is {dtype}"]
    return []


def feeds(entry: PluginEntry, mapping: CallMapping, arguments: Mapping[str, Any], tensors: list[Any],
          casts: Mapping[str, str]) -> list[str]:
    """Per plugin input, where this call's value comes from, in words."""
    lines = []
    for contract, name, tensor in zip(entry.inputs, mapping.inputs, tensors, strict=True):
        rule = mapping.derive.get(name)
        source = (f"rule {rule.rule} of {', '.join(rule.sources)}: {describe(tensor)}" if rule
                  else f"the call's {name} {describe(arguments[name])}")
        cast = casts.get(contract.name)
        given = torch_dtype_name(arguments[name].dtype) if not rule else None
        if cast and given and given != cast:
            source += f", cast to {cast} in the graph"
        label = contract.name if contract.name == name else f"{contract.name} (as '{name}')"
        lines.append(f"{label} <- {source}")
    return lines


# ------------------------------------------------------------------------------------------ the import path

def _runs(obj: Any, code: CodeType) -> bool:
    """Whether calling `obj` runs `code`: the function itself, or one it wraps (decorators, static methods)."""
    for _ in range(8):
        if getattr(obj, "__code__", None) is code:
            return True
        inner = getattr(obj, "__wrapped__", None) or getattr(obj, "__func__", None)
        if inner is None:
            return False
        obj = inner
    return False


def import_path(frame: FrameType) -> tuple[str, str | None, str | None]:
    """(where the frame's function is defined, the import path a swap reaches it by, why none does).

    The defining module's name for it first (module:qualname, a method as module:Class.method), as long
    as that name holds the function that ran; else the name the calling module looked it up by."""
    code = frame.f_code
    module = str(frame.f_globals.get("__name__", "?"))
    qualname = getattr(code, "co_qualname", code.co_name)
    defined = f"{module}:{qualname}"
    if "<" in qualname:
        return defined, None, "it is defined inside another function, so no import path reaches it"
    try:
        if _runs(imports.load(defined), code):
            return defined, defined, None
    except Exception as exc:  # noqa: BLE001 - inside the profile hook an error would stop the user's forward
        problem = f"'{defined}' cannot be imported ({type(exc).__name__}: {exc})"
    else:
        problem = f"'{defined}' holds another object than the function that ran"
    caller = frame.f_back
    if caller is not None:
        caller_module = caller.f_globals.get("__name__")
        for name in caller.f_code.co_names:
            if _runs(caller.f_globals.get(name), code):
                return defined, f"{caller_module}:{name}", None
    return defined, None, f"{problem}, and the caller reaches it by no module-level name"


# ------------------------------------------------------------------------------------------ watching a forward

_UNSEEN = object()


@dataclass
class _Open:
    """A recognised call now running: what is kept until it returns."""

    found: Found
    call: Call
    entry: PluginEntry
    tensors: list[Any] | None  # the plugin's inputs, where the mapping held


class Watcher:
    """The profile hook: every Python call, and the recognised ones in detail."""

    def __init__(self, entries: list[PluginEntry], stack: ModuleStack, module_path: Callable[[Any], str | None]):
        self.entries = entries
        self.stack = stack
        self.module_path = module_path
        self.known: dict[CodeType, Any] = {}  # code -> the entries recognising it (empty: none)
        self.found: dict[tuple[str, CodeType], Found] = {}
        self.open: dict[FrameType, list[_Open]] = {}
        self.running: list[Found] = []
        self.near: dict[str, int] = {}  # module:qualname -> how much of what was looked for it lacks
        self.calls = 0

    def profile(self, frame: FrameType, event: str, result: Any) -> None:
        if event == "call":
            self.calls += 1
            code = frame.f_code
            entries = self.known.get(code, _UNSEEN)
            if entries is _UNSEEN:
                entries = self.known[code] = self._recognising(code, frame)
            if entries:
                self._enter(frame, entries)
        elif event == "return" and frame in self.open:
            self._leave(frame, result)

    def _recognising(self, code: CodeType, frame: FrameType) -> list[PluginEntry]:
        parameters = _parameters(code)
        recognising = []
        for entry in self.entries:
            assert entry.recogniser is not None
            lacks = entry.recogniser.missing(parameters)
            if not lacks:
                recognising.append(entry)
            elif len(lacks) < 3 and parameters:
                name = f"{frame.f_globals.get('__name__', '?')}:{getattr(code, 'co_qualname', code.co_name)}"
                self.near[f"{name} (lacks {', '.join(lacks)})"] = len(lacks)
        return recognising

    def _enter(self, frame: FrameType, entries: list[PluginEntry]) -> None:
        local = frame.f_locals
        given = {name: local[name] for name in _parameters(frame.f_code) if name in local}
        module = self.module_path(given.get("self")) if "self" in given else None
        where = module if module is not None else (self.stack.names[-1] if self.stack.names else "")
        opened = []
        for entry in entries:
            found = self._found(entry, frame)
            call = Call(where, {n: describe(v) for n, v in given.items() if n != "self"}, "", [])
            tensors = self._map(entry, found, call, given)
            opened.append(_Open(found, call, entry, tensors))
            if self.running and found.inside is None and self.running[-1] is not found:
                found.inside = self.running[-1].callable or self.running[-1].defined
        self.open[frame] = opened
        self.running.append(opened[0].found)

    def _found(self, entry: PluginEntry, frame: FrameType) -> Found:
        key = (entry.op, frame.f_code)
        if key not in self.found:
            defined, path, why = import_path(frame)
            self.found[key] = Found(entry.op, defined, path, problems=[why] if why else [])
        return self.found[key]

    def _map(self, entry: PluginEntry, found: Found, call: Call, given: dict[str, Any]) -> list[Any] | None:
        """Map the call onto the plugin and check it; the plugin's inputs, or None with the reasons in `call`."""
        assert entry.recogniser is not None
        try:
            mapping = entry.recogniser.map_call(given)
            tensors, call.problems, casts = check_call(entry, mapping, given)
        except Inexpressible as exc:
            call.problems = [str(exc)]
            return None
        except Exception as exc:  # noqa: BLE001 - inside the profile hook an error would stop the user's forward
            call.problems = [f"checking the call failed: {type(exc).__name__}: {exc}"]
            return None
        call.problems += self._unrecordable(given)
        if not call.problems and found.mapping is None:
            found.mapping = mapping
            found.feeds = feeds(entry, mapping, given, tensors, casts)
            found.casts = casts
        return tensors if not call.problems else None

    def _unrecordable(self, given: dict[str, Any]) -> list[str]:
        """Arguments a one-call capture cannot record (neither tensors nor plain data)."""
        problems = []
        for name, value in given.items():
            if _is_tensor(value):
                continue
            try:
                recorded_arguments.encode(value, self.module_path)
            except recorded_arguments.Unrecordable as exc:
                problems.append(f"its argument '{name}' is {exc}, which a capture cannot record")
        return problems

    def _leave(self, frame: FrameType, result: Any) -> None:
        for opened in self.open.pop(frame):
            opened.call.result = describe(result)
            if opened.tensors is not None:
                opened.call.problems += result_problems(opened.entry, opened.tensors, result)
                opened.call.result_abs_max = float(result.abs().max()) if _is_tensor(result) and result.numel() \
                    else None
            opened.found.calls.append(opened.call)
        self.running.pop()


@contextlib.contextmanager
def profiling(hook: Callable[[FrameType, str, Any], None]) -> Iterator[None]:
    """`hook` as this thread's profile function for the block; the one before it back afterwards."""
    before = sys.getprofile()
    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(before)


# ------------------------------------------------------------------------------------------ one forward

def recognising_entries() -> list[PluginEntry]:
    """The built-in catalog entries that have a recogniser."""
    from orchestrator import plugins as catalog

    entries = [catalog.lookup(op) for op in catalog.BUILTIN]
    return [entry for entry in entries if entry.recogniser is not None]


def discover(settings: ModelSettings, python_path: list[str], entries: list[PluginEntry] | None = None,
             progress: Callable[[str], None] = lambda _: None) -> Discovery:
    """Build the model, watch one forward, and check that each usable callable's path reaches its calls."""
    import torch

    entries = recognising_entries() if entries is None else entries
    progress("building the model")
    with imports.search_path(python_path):
        model, inputs = build_model(settings, python_path)
        paths = {id(module): name for name, module in model.named_modules()}
        stack = ModuleStack(model)
        watcher = Watcher(entries, stack, lambda module: paths.get(id(module)))
        progress(f"watching one forward of {type(model).__name__}")
        try:
            with torch.inference_mode(), profiling(watcher.profile):
                output = _forward(model, inputs)
        finally:
            stack.close()
        found = _outermost_first(list(watcher.found.values()))
        usable = [f for f in found if f.usable]
        if usable:
            progress(f"swapping {len(usable)} callable{'s' if len(usable) > 1 else ''} by import path")
            _check_reached(model, inputs, usable)
    floats = [t for _, t in flatten_outputs(output) if t.is_floating_point() and t.numel()]
    return Discovery(type(model).__name__, len(watcher.known), watcher.calls, found,
                     [f"{e.op}: {e.recogniser.looks_for}" for e in entries if e.recogniser is not None],
                     [name for name, _ in sorted(watcher.near.items(), key=lambda item: item[1])[:MAX_CLOSEST]],
                     _input_dtypes(model, inputs),
                     max(float(t.abs().max()) for t in floats) if floats else None)


def _outermost_first(found: list[Found]) -> list[Found]:
    """Usable callables first, those not called inside another recognised one before those that are."""
    return sorted(found, key=lambda f: (not f.usable, f.inside is not None))


def _forward(model: Any, inputs: Any) -> Any:
    """The model called as capture calls it: keyword arguments from a dict, positional from a tuple or list."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, list | tuple) else model(inputs)


def _input_dtypes(model: Any, inputs: Any) -> dict[str, str]:
    """The forward's tensor arguments by name, with their dtypes (none where they cannot be named)."""
    try:
        named = name_inputs(model, inputs)
    except UserError:
        return {}
    return {name: torch_dtype_name(tensor.dtype) for name, tensor in named.tensors.items()}


def _check_reached(model: Any, inputs: Any, usable: list[Found]) -> None:
    """Swap each callable by its path, as capture and export will, and count the calls that reach the swap."""
    import torch

    counts = {found.callable: 0 for found in usable}

    def counting(path: str, original: list[Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[path] += 1
            return original[0](*args, **kwargs)
        return counted

    with contextlib.ExitStack() as swaps, torch.inference_mode():
        for found in usable:
            assert found.callable is not None
            original: list[Any] = []
            original.append(swaps.enter_context(imports.swap_callable(found.callable, counting(found.callable,
                                                                                               original), "init")))
        _forward(model, inputs)
    for found in usable:
        reached = counts[found.callable]
        if reached != len(found.calls):
            found.problems.append(f"swapping '{found.callable}' reaches {reached} of its {len(found.calls)} calls: "
                                  "the model reaches the function another way than by this name")

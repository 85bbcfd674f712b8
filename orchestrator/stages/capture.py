"""capture: record the tensors a call receives and returns, from a live model or a folder.

Live model: build it from its factory, run its inputs through it with a hook on the declared
module, and record the declared call's arguments and result while that module runs (what one
would otherwise do by stepping in with a debugger and `torch.save`). The forward stops as soon as
the call is recorded. Folder: load `.pt` (weights_only) or `.npy` files named after the tensors.

For `export.scope: model` the whole forward is recorded instead: the model's inputs (named by
the inputs dict, or by the forward's parameters) and outputs, the reference for verifying the
whole exported model. Every call of each plugin's `replace` callable is counted on the way, and
with `capture.calls` (all, or a list of module paths) each call's result is kept under calls/, so
verify can compare every plugin node with the call it stands for.

Writes tensors/<name>.npy and capture.json (argument order, dtypes, shapes, non-tensor
arguments, notes). The tensors are checked against the plugin's contract (rank, dtype kind) here,
so a wrong capture is refused before anything is published.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import arguments, environment, imports
from orchestrator.errors import UserError
from orchestrator.planning import contracts
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant
from orchestrator.tensors import describe, save_named, to_numpy, torch_dtype_name
from orchestrator.torch_model import (
    ModelSettings,
    ModuleStack,
    build_model,
    flatten_outputs,
    name_inputs,
    resolve_module,
)

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node

SUFFIXES = (".npy", ".pt", ".pth")


@dataclass(frozen=True)
class Expected:
    """What the plugin takes for one captured input: its rank and the dtypes of its kind."""

    name: str
    rank: int
    dtypes: tuple[str, ...]

    @classmethod
    def from_keyed(cls, given: Mapping[str, Any]) -> Expected:
        return cls(given["name"], given["rank"], tuple(given["dtypes"]))

    def keyed(self) -> dict[str, Any]:
        return {"name": self.name, "rank": self.rank, "dtypes": list(self.dtypes)}


@dataclass(frozen=True)
class CatalogRules:
    """Whose catalog rules the captured tensors must meet together: the op, its inputs in the plugin's
    order, and the user's catalog entry where one is given."""

    op: str
    inputs: tuple[str, ...]
    catalog: str | None = None

    @classmethod
    def from_keyed(cls, given: Mapping[str, Any]) -> CatalogRules:
        return cls(given["op"], tuple(given["inputs"]), given.get("catalog"))

    def keyed(self) -> dict[str, Any]:
        return {"op": self.op, "inputs": list(self.inputs), **({"catalog": self.catalog} if self.catalog else {})}


@dataclass(frozen=True)
class Recorded:
    """A plugin's `replace` callable whose calls a whole-model capture counts."""

    callable: str
    op: str

    def keyed(self) -> dict[str, Any]:
        return {"callable": self.callable, "op": self.op}


@dataclass(frozen=True)
class CaptureSettings:
    """The capture's keyed settings: from a folder (`source` 'dir': the tensors matched, by name) or from
    the live model (`source` 'model': the capture section, the model section, python_path as written).

    `expect` and `rules` are the plugin's contract the tensors are checked against; `rules` is None where
    the graph is given (export.onnx), or for a whole-model capture, which has no `expect`."""

    source: str  # "dir" or "model"
    outputs: tuple[str, ...]
    expect: tuple[Expected, ...] = ()
    rules: CatalogRules | None = None
    names: tuple[str, ...] | None = None  # dir: the tensors matched (inputs, then outputs); model: capture.names
    model: ModelSettings | None = None  # source 'model'
    module: str | None = None
    call: str | None = None
    occurrence: int = 0
    calls: str | tuple[str, ...] | None = None  # 'all', or the modules inside which calls are kept
    scope: str | None = None  # "model": the whole forward is recorded
    record: tuple[Recorded, ...] = ()  # scope model: the callables whose calls are counted
    python_path: tuple[str, ...] = ()

    @classmethod
    def from_keyed(cls, config: Mapping[str, Any]) -> CaptureSettings:
        section = config["capture"]
        calls = section.get("calls")
        return cls(
            section["source"], tuple(section["outputs"]), tuple(Expected.from_keyed(e) for e in section["expect"]),
            CatalogRules.from_keyed(section["rules"]) if section.get("rules") else None,
            tuple(section["names"]) if "names" in section else None,
            ModelSettings.from_keyed(config["model"]) if "model" in config else None,
            section.get("module"), section.get("call"), section.get("occurrence", 0),
            calls if calls is None or isinstance(calls, str) else tuple(calls), section.get("scope"),
            tuple(Recorded(r["callable"], r["op"]) for r in section.get("record", [])),
            tuple(config.get("python_path", ())))

    def keyed(self) -> dict[str, Any]:
        section: dict[str, Any] = {"source": self.source, "outputs": list(self.outputs),
                                   "expect": [e.keyed() for e in self.expect]}
        if self.source == "model":
            given = {"module": self.module, "call": self.call, "occurrence": self.occurrence,
                     "calls": list(self.calls) if isinstance(self.calls, tuple) else self.calls}
            section.update({name: value for name, value in given.items() if value is not None})
            if self.scope is not None:
                section.update(scope=self.scope, record=[r.keyed() for r in self.record])
        if self.names is not None:
            section["names"] = list(self.names)
        if self.expect:
            section["rules"] = self.rules.keyed() if self.rules else {}
        keyed: dict[str, Any] = {"capture": section}
        if self.model is not None:
            keyed["model"] = self.model.keyed()
        if self.python_path:
            keyed["python_path"] = list(self.python_path)
        return keyed


def candidates(name: str) -> list[str]:
    return [f"{stem}{suffix}" for stem in (name, f"input_{name}", f"{name}_np") for suffix in SUFFIXES]


def match_folder(folder: Path, wanted: list[str], outputs: list[str],
                 explicit: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Which file holds each wanted tensor; and the files nothing asked for (ignored with a note)."""
    if not wanted:
        raise UserError("capture.from_dir needs to know which tensors to read: export.plugins[].inputs "
                        "(scope call) names them")
    present = {p.name for p in folder.iterdir() if p.is_file()}
    matched: dict[str, str] = {}
    for name in [*wanted, *outputs]:
        if name in explicit:
            if explicit[name] not in present:
                raise UserError(f"capture.files names '{explicit[name]}' for '{name}', which is not in {folder}")
            matched[name] = explicit[name]
            continue
        found = [c for c in candidates(name) if c in present]
        if not found:
            role = "reference output" if name in outputs else "tensor"
            raise UserError(f"capture folder {folder} has no {role} '{name}' "
                            f"(looked for {', '.join(candidates(name)[:4])}, …)",
                            hint=f"name the file in capture.files: {{{name}: <file>}}")
        if len(found) > 1:
            raise UserError(f"capture folder {folder} holds several files for '{name}': {', '.join(found)}",
                            hint=f"keep one, or pick one in capture.files: {{{name}: {found[0]}}}")
        matched[name] = found[0]
    used = set(matched.values())
    ignored = sorted(p for p in present if p not in used and Path(p).suffix in SUFFIXES)
    return matched, ignored


def _load_file(path: Path) -> Any:
    import numpy as np

    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        import torch

        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise UserError(f"cannot read tensor file {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                        field="capture.from_dir") from None
    if not hasattr(value, "detach"):
        raise UserError(f"{path} holds a {type(value).__name__}, expected one tensor", field="capture.from_dir")
    return to_numpy(value)


def check_contract(tensors: dict[str, Any], settings: CaptureSettings, origin: str, field: str) -> None:
    """Refuse tensors the plugin cannot take (the capture's `expect`): wrong rank, or a float where an
    integer belongs (and back); then tensors that do not fit together by the shape and value rules of the
    plugin's catalog entry (`rules`: `check_shapes`, `check_values`; `orchestrate doctor` lists a plugin's
    rules). A plugin checks none of that and reads out of bounds, so it is bad input here, not a crash later.
    """
    rules = settings.rules
    for rule in settings.expect:
        name = rule.name
        if name not in tensors:
            raise UserError(f"the capture has no tensor '{name}' (it has {', '.join(tensors) or 'none'})",
                            field=field)
        array = tensors[name]
        dtype = str(array.dtype)
        if array.ndim != rule.rank:
            raise UserError(f"tensor '{name}' from {origin} has shape {list(array.shape)} (rank {array.ndim}); "
                            f"the plugin takes rank {rule.rank}", field=field)
        wants_int = all(d.startswith(("int", "uint")) for d in rule.dtypes)
        is_int = dtype.startswith(("int", "uint"))
        if wants_int != is_int or not (is_int or dtype.startswith(("float", "bfloat"))):
            raise UserError(f"tensor '{name}' from {origin} is {dtype}; the plugin takes "
                            f"{' or '.join(rule.dtypes)} (other {'integer' if wants_int else 'float'} dtypes "
                            "are cast on export)", field=field)
    if rules is not None:
        problems = _catalog_problems(tensors, rules)
        if problems:
            raise UserError(f"the tensors from {origin} do not fit {rules.op} together: {'; '.join(problems)}",
                            field=field, hint="capture them again, or fix the files; the plugin does not check "
                                              "them and would read outside its inputs")


def _catalog_problems(tensors: dict[str, Any], rules: CatalogRules) -> list[str]:
    """The catalog entry's shape and value rules on the captured tensors, in the plugin's input order;
    inputs the export derives are unknown (None) here, as the rules allow."""
    from orchestrator import plugins as catalog

    entry = catalog.lookup(rules.op, rules.catalog)
    arrays = [tensors.get(name) for name in rules.inputs]
    shapes = [tuple(int(d) for d in array.shape) if array is not None else None for array in arrays]
    return entry.rule_problems(shapes, arrays)


def run(call: StageCall) -> StageResult:
    settings: CaptureSettings = call.settings
    if settings.source == "dir":
        return _from_dir(call, settings)
    if settings.scope == "model":
        return _whole_model(call, settings)
    return _from_model(call, settings)


def _from_dir(call: StageCall, settings: CaptureSettings) -> StageResult:
    folder = Path(call.unkeyed["folder"])
    files: dict[str, str] = call.unkeyed["files"]
    tensors = {}
    for name, file in files.items():
        call.progress(f"loading {file}")
        tensors[name] = _load_file(folder / file)
    outputs = settings.outputs
    inputs = {n: t for n, t in tensors.items() if n not in outputs}
    check_contract(inputs, settings, f"{folder.name}/", "capture.from_dir")
    notes = [f"ignored {name} (no tensor asks for it)" for name in call.unkeyed["ignored"]]
    args = [{"name": n, "kind": "tensor"} for n in inputs]
    return _write(call, inputs, {n: tensors[n] for n in outputs}, args, {}, notes, f"from {folder.name}/")


class _Recorded(Exception):
    """Raised inside the model once the wanted call is recorded, to skip the rest of the forward."""


def forward(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, list | tuple):
        return model(*inputs)
    return model(inputs)


@dataclass
class _Call:
    """One recorded call: its arguments, its result, and the callable whose signature names the arguments."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    signature_of: Any


def _model(call: StageCall, settings: CaptureSettings) -> tuple[Any, Any]:
    """The user's model and its forward arguments, as the capture's model section builds them."""
    assert settings.model is not None  # a capture from the model keys its model section
    call.progress("building the model")
    return build_model(settings.model, list(call.unkeyed.python_path))


def _from_model(call: StageCall, settings: CaptureSettings) -> StageResult:
    import torch

    model, inputs = _model(call, settings)
    target = resolve_module(model, settings.module) if settings.module else model
    call_path = settings.call
    call.progress("running the model")
    with torch.inference_mode():
        if call_path:
            recorded = _record_function(call, call_path, settings, model, inputs, target)
        else:
            recorded = _record_module(settings, model, inputs, target)
    names = list(settings.names) if settings.names is not None else None
    tensors, extras, args = _bind(recorded.signature_of, recorded.args, recorded.kwargs, names, _module_namer(model))
    outputs = _call_outputs(recorded.result, list(settings.outputs))
    check_contract(tensors, settings, "the call", "capture.call" if call_path else "capture.module")
    where = settings.module or type(model).__name__
    return _write(call, tensors, outputs, args, extras, [], f"from {where}")


def _record_function(call: StageCall, call_path: str, settings: CaptureSettings, model: Any, inputs: Any,
                     target: Any) -> _Call:
    """The `occurrence`-th call of capture.call made while `target` runs; the rest of the forward is skipped."""
    with imports.search_path(list(call.unkeyed.python_path)):
        original = imports.resolve(call_path, "capture.call")
    recorded: list[_Call] = []
    inside = [0]
    seen = [0]

    def enter(*_: Any) -> None:
        inside[0] += 1

    def leave(*_: Any) -> None:
        inside[0] -= 1

    def recorder(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if inside[0] > 0:
            if seen[0] == settings.occurrence:
                recorded.append(_Call(args, kwargs, result, original))
                raise _Recorded
            seen[0] += 1
        return result

    handles = [target.register_forward_pre_hook(enter), target.register_forward_hook(leave, always_call=True)]
    try:
        with imports.swap(call_path, recorder, "capture.call"):
            forward(model, inputs)
    except _Recorded:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not recorded:
        where = f"inside '{settings.module}'" if settings.module else "during the forward"
        raise UserError(f"'{call_path}' was called {seen[0]} time(s) {where}; "
                        f"occurrence {settings.occurrence} was asked for", field="capture.call",
                        hint="check capture.module, or that the model calls this function by this name")
    return recorded[0]


def _record_module(settings: CaptureSettings, model: Any, inputs: Any, target: Any) -> _Call:
    """The `occurrence`-th call of the target module (its forward's signature names the arguments)."""
    recorded: list[_Call] = []
    seen = [0]

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if seen[0] == settings.occurrence:
            recorded.append(_Call(args, kwargs, result, module.forward))
        seen[0] += 1

    handle = target.register_forward_hook(hook, with_kwargs=True)
    try:
        forward(model, inputs)
    finally:
        handle.remove()
    return recorded[0]


def _call_outputs(result: Any, declared: list[str]) -> dict[str, Any]:
    """The call's tensor results by name: capture.outputs first, output_<i> for the rest."""
    results = result if isinstance(result, list | tuple) else [result]
    names = list(declared)
    while len(names) < len(results):
        names.append(f"output_{len(names)}")
    return {name: to_numpy(r) for name, r in zip(names, results, strict=False) if hasattr(r, "detach")}


def _bind(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], names: list[str] | None,
          module_path: Callable[[Any], str | None]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Name every argument (by `names`, else by the callable's signature): tensors, and typed plain values."""
    if names is None:
        try:
            parameters = [p.name for p in inspect.signature(function).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            parameters = []
        names = parameters + [f"arg{i}" for i in range(len(parameters), len(args))]
    if len(names) < len(args):
        raise UserError(f"capture.names lists {len(names)} names but the call got {len(args)} positional "
                        "arguments", field="capture.names")
    tensors: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    order = []
    for name, value in [*zip(names, args, strict=False), *kwargs.items()]:
        if hasattr(value, "detach"):
            tensors[name] = to_numpy(value)
            order.append({"name": name, "kind": "tensor", "torch_dtype": torch_dtype_name(value.dtype)})
            continue
        try:
            extras[name] = arguments.encode(value, module_path)
        except arguments.Unrecordable as exc:
            raise UserError(f"the call's argument '{name}' is {exc}, which a capture cannot record as a tensor "
                            "or as plain data", field="capture.call",
                            hint="feed the plugin from the arguments that are tensors or plain values "
                                 "(export.plugins[].inputs), compute the others with export.plugins[].derive, "
                                 "or leave out export.plugins[].replace so the catalog's kernel computes the "
                                 "call") from None
        order.append({"name": name, "kind": "extra"})
    return tensors, extras, order


def _module_namer(model: Any) -> Callable[[Any], str | None]:
    """Module -> its dotted path in the model (how `self` of a recorded method is written down)."""
    paths = {id(module): name for name, module in model.named_modules()}
    return lambda module: paths.get(id(module))


def _write(call: StageCall, inputs: dict[str, Any], outputs: dict[str, Any], args: list[dict[str, Any]],
           extras: dict[str, Any], notes: list[str], origin: str, more: dict[str, Any] | None = None) -> StageResult:
    if not outputs:
        raise UserError("the captured call returned no tensor to compare against", field="capture")
    call.progress("writing tensors")
    index_inputs = save_named(call.out / "tensors", inputs)
    index_outputs = save_named(call.out / "outputs", outputs)  # apart: an output may be named like an input
    record = {"inputs": index_inputs, "outputs": index_outputs, "args": args, "extras": extras, "notes": notes,
              **(more or {})}
    (call.out / "capture.json").write_text(json.dumps(record, indent=1))
    first = next(iter(index_inputs.items()), None)
    shown = f" ({describe(first[0], first[1]['dtype'], first[1]['shape'])} …)" if first else ""
    summary = f"{len(inputs)} inputs, {len(outputs)} output{'s' if len(outputs) != 1 else ''}{shown} {origin}"
    if notes:
        summary += f"; {'; '.join(notes)}"
    return StageResult(summary, {"inputs": index_inputs, "outputs": index_outputs, "extras": extras,
                                 "notes": notes})


# ---------------------------------------------------------------------- the whole model (export.scope: model)

def output_names(declared: list[str], flat: list[tuple[str | None, Any]]) -> list[str]:
    """`capture.outputs` first, then dict keys or output_<i> for the rest."""
    names = list(declared[:len(flat)])
    for index, (key, _) in enumerate(flat[len(names):], start=len(names)):
        names.append(key if key and key not in names else f"output_{index}")
    return names


class _PluginCalls:
    """Every call of each plugin's `replace` callable during the forward, counted; the results of those
    made inside the modules capture.calls names (or of all, with 'all') kept for verify."""

    def __init__(self, model: Any, wanted: str | tuple[str, ...] | None):
        self.wanted = wanted
        self.stack = ModuleStack(model)
        self.counts: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []

    def _inside_wanted(self) -> bool:
        if self.wanted == "all":
            return True
        return isinstance(self.wanted, tuple) and any(name in self.stack.names for name in self.wanted)

    def _recorder(self, path: str, op: str, original: list[Any]) -> Any:
        def recorder(*args: Any, **kwargs: Any) -> Any:
            result = original[0](*args, **kwargs)
            sequence = self.counts[path] = self.counts.get(path, 0) + 1
            if self._inside_wanted():
                flat = flatten_outputs(result)
                if flat:
                    names = self.stack.names
                    self.records.append({"callable": path, "op": op, "sequence": sequence - 1,
                                         "module": names[-1] if names else "", "result": to_numpy(flat[0][1])})
            return result
        return recorder

    @contextlib.contextmanager
    def swapped(self, record: tuple[Recorded, ...], python_path: list[str]) -> Iterator[None]:
        """Each callable of `record` swapped for its recorder for the duration of the block."""
        with contextlib.ExitStack() as swaps:
            with imports.search_path(python_path):
                for entry in record:
                    original: list[Any] = []  # filled by the swap, read when the model calls
                    recorder = self._recorder(entry.callable, entry.op, original)
                    original.append(swaps.enter_context(imports.swap_callable(entry.callable, recorder,
                                                                              "export.plugins.replace")))
            yield

    def close(self) -> None:
        self.stack.close()


def _whole_model(call: StageCall, settings: CaptureSettings) -> StageResult:
    import torch

    model, raw_inputs = _model(call, settings)
    inputs = name_inputs(model, raw_inputs)
    wanted = settings.calls
    for path in wanted if isinstance(wanted, tuple) else ():
        resolve_module(model, path, "capture.calls")  # a typo is an error that names the module
    record = settings.record
    plugin_calls = _PluginCalls(model, wanted)
    call.progress("running the model")
    try:
        with torch.inference_mode(), plugin_calls.swapped(record, list(call.unkeyed.python_path)):
            result = inputs.call(model, inputs.tensors)
    finally:
        plugin_calls.close()
    outputs = _model_outputs(result, list(settings.outputs))
    tensors = {name: to_numpy(tensor) for name, tensor in inputs.tensors.items()}
    args = [{"name": name, "kind": "tensor" if name in inputs.tensors else "extra"} for name in inputs.order]
    counts = plugin_calls.counts
    notes = [f"the model never called {entry.callable}" for entry in record if not counts.get(entry.callable)]
    if wanted and not plugin_calls.records:
        where = "during the forward" if wanted == "all" else f"inside {', '.join(wanted)}"
        raise UserError(f"no call of {', '.join(e.callable for e in record) or 'a plugin'} "
                        f"{where} to record", field="capture.calls",
                        hint="check capture.calls and export.plugins[].replace")
    calls = []
    for index, recorded in enumerate(plugin_calls.records):
        saved = save_named(call.out / "calls", {f"call_{index:03d}": recorded.pop("result")})
        calls.append({**recorded, "output": next(iter(saved.values()))})
    summary_calls = f", {len(calls)} plugin call result{'s' if len(calls) != 1 else ''}" if calls else ""
    counted = {entry.callable: counts.get(entry.callable, 0) for entry in record}
    return _write(call, tensors, outputs, args, inputs.extras, notes,
                  f"from the whole {type(model).__name__}{summary_calls}",
                  {"scope": "model", "input_kind": inputs.kind, "calls": calls, "call_counts": counted})


def _model_outputs(result: Any, declared: list[str]) -> dict[str, Any]:
    """The tensors the forward returned, by name (see output_names)."""
    flat = flatten_outputs(result)
    if not flat:
        raise UserError(f"the model returned a {type(result).__name__}, no tensor to compare against",
                        field="model.factory")
    names = output_names(declared, flat)
    return {name: to_numpy(tensor) for name, (_, tensor) in zip(names, flat, strict=True)}


def plan(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned:
    """The capture's key: the model and capture sections, the model's sources, or the folder's tensors."""
    data, plugins = variant.data, [dict(p) for p in variant.plugins]
    capture = data["capture"]
    expect, rules = contracts.capture_contract(data["export"], plugins)
    files: dict[str, str] = {}
    paths: dict[str, Any] = {}
    contract = {"expect": tuple(Expected.from_keyed(e) for e in expect),
                "rules": CatalogRules.from_keyed(rules) if rules else None,
                "python_path": ctx.keyed_python_path()}
    if capture.get("from_dir"):
        matched = _plan_folder(ctx, capture, [e["name"] for e in expect], files, paths)
        settings = CaptureSettings("dir", tuple(capture["outputs"]), names=tuple(matched), **contract)
    else:
        settings = _plan_model(ctx, data, plugins, files, contract)
    if expect and rules.get("catalog"):
        label, digest = ctx.source_digest(rules["catalog"], "export.plugins[0].catalog")
        files[label] = digest
    tools = environment.tools("numpy") | (environment.tools("torch"))
    env = ctx.env_digests(data.get("model")) if not capture.get("from_dir") else {}
    return Planned(settings, {}, files, tools, paths, env)


def _plan_folder(ctx: PlanContext, capture: Mapping[str, Any], expected: list[str], files: dict[str, str],
                 paths: dict[str, Any]) -> list[str]:
    """The tensors a folder capture reads (inputs, then outputs), their files digested into `files`."""
    folder = ctx.spec.resolve_path(capture["from_dir"])
    ctx.watch_folder(folder)  # a file added there can make a tensor's file ambiguous
    wanted = expected or list(capture.get("names") or [])
    try:
        matched, ignored = match_folder(folder, wanted, capture["outputs"], capture["files"])
    except UserError as exc:
        raise ctx.error(exc.message, "capture.from_dir", hint=exc.hint) from None
    for name, file in matched.items():
        files[f"tensor:{name}"] = ctx.file_digest(folder / file, "capture.from_dir")
        ctx.origins[f"tensor:{name}"] = str(folder / file)
    paths.update(folder=str(folder), files=matched, ignored=ignored)
    return list(matched)


def _plan_model(ctx: PlanContext, data: Mapping[str, Any], plugins: list[dict[str, Any]], files: dict[str, str],
                contract: dict[str, Any]) -> CaptureSettings:
    """A capture from the live model: its settings, with the model's sources (and for a whole-model
    capture each `replace` callable's) digested into `files`."""
    capture, model = data["capture"], data["model"]
    calls = capture.get("calls")
    record: tuple[Recorded, ...] = ()
    whole = data["export"]["scope"] == "model"  # config/checks.py checked the fields
    if whole:
        record = tuple(Recorded(p["replace"], p["op"]) for p in plugins if p.get("replace"))
        for index, plugin in enumerate(plugins):
            if plugin.get("replace"):
                label, digest = ctx.source_digest(plugin["replace"], f"export.plugins[{index}].replace")
                files[label] = digest
    files.update(ctx.model_sources(model))
    if capture.get("call"):
        label, digest = ctx.source_digest(capture["call"], "capture.call")
        files[label] = digest
    files.update(ctx.paths_digests(model.get("sources", []), "model.sources"))
    return CaptureSettings(
        "model", tuple(capture["outputs"]), names=tuple(capture["names"]) if "names" in capture else None,
        model=ModelSettings.from_keyed(model), module=capture.get("module"), call=capture.get("call"),
        occurrence=capture["occurrence"], calls=calls if calls is None or isinstance(calls, str) else tuple(calls),
        scope="model" if whole else None, record=record, **contract)


STAGE = Stage(
    "capture", version=2, plan=plan, run=run,
    outputs=("capture.json", "tensors/*.npy", "outputs/*.npy", "calls/*.npy"),
)

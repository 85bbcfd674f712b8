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
import copy
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import arguments, environment, imports
from orchestrator.errors import UserError
from orchestrator.planning import contracts
from orchestrator.stages.base import PlanContext, Planned, Sections, Stage, StageCall, StageResult, Variant
from orchestrator.tensors import describe, save_named, to_numpy, torch_dtype_name
from orchestrator.torch_model import ModuleStack, build_model, flatten_outputs, name_inputs, resolve_module

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node

SUFFIXES = (".npy", ".pt", ".pth")


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


def check_contract(tensors: dict[str, Any], settings: dict[str, Any], origin: str, field: str) -> None:
    """Refuse tensors the plugin cannot take (the capture's `expect`): wrong rank, or a float where an
    integer belongs (and back); then tensors that do not fit together by the shape and value rules of the
    plugin's catalog entry (`rules`: `check_shapes`, `check_values`; `orchestrate doctor` lists a plugin's
    rules). A plugin checks none of that and reads out of bounds, so it is bad input here, not a crash later.
    """
    rules = settings.get("rules")
    for rule in settings["expect"]:
        name = rule["name"]
        if name not in tensors:
            raise UserError(f"the capture has no tensor '{name}' (it has {', '.join(tensors) or 'none'})",
                            field=field)
        array = tensors[name]
        dtype = str(array.dtype)
        if array.ndim != rule["rank"]:
            raise UserError(f"tensor '{name}' from {origin} has shape {list(array.shape)} (rank {array.ndim}); "
                            f"the plugin takes rank {rule['rank']}", field=field)
        wants_int = all(d.startswith(("int", "uint")) for d in rule["dtypes"])
        is_int = dtype.startswith(("int", "uint"))
        if wants_int != is_int or not (is_int or dtype.startswith(("float", "bfloat"))):
            raise UserError(f"tensor '{name}' from {origin} is {dtype}; the plugin takes "
                            f"{' or '.join(rule['dtypes'])} (other {'integer' if wants_int else 'float'} dtypes "
                            "are cast on export)", field=field)
    if rules:
        problems = _catalog_problems(tensors, rules)
        if problems:
            raise UserError(f"the tensors from {origin} do not fit {rules['op']} together: {'; '.join(problems)}",
                            field=field, hint="capture them again, or fix the files; the plugin does not check "
                                              "them and would read outside its inputs")


def _catalog_problems(tensors: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """The catalog entry's shape and value rules on the captured tensors, in the plugin's input order;
    inputs the export derives are unknown (None) here, as the rules allow."""
    from orchestrator import plugins as catalog

    entry = catalog.lookup(rules["op"], rules.get("catalog"))
    arrays = [tensors.get(name) for name in rules["inputs"]]
    shapes = [tuple(int(d) for d in array.shape) if array is not None else None for array in arrays]
    return entry.rule_problems(shapes, arrays)


def run(call: StageCall) -> StageResult:
    settings = call.config["capture"]
    if settings["source"] == "dir":
        return _from_dir(call, settings)
    if settings.get("scope") == "model":
        return _whole_model(call, settings)
    return _from_model(call, settings)


def _from_dir(call: StageCall, settings: dict[str, Any]) -> StageResult:
    folder = Path(call.paths["folder"])
    files: dict[str, str] = call.paths["files"]
    tensors = {}
    for name, file in files.items():
        call.progress(f"loading {file}")
        tensors[name] = _load_file(folder / file)
    outputs = settings["outputs"]
    inputs = {n: t for n, t in tensors.items() if n not in outputs}
    check_contract(inputs, settings, f"{folder.name}/", "capture.from_dir")
    notes = [f"ignored {name} (no tensor asks for it)" for name in call.paths["ignored"]]
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


def _from_model(call: StageCall, settings: dict[str, Any]) -> StageResult:
    import torch

    call.progress("building the model")
    model, inputs = build_model(call.config["model"], call.paths["python_path"])
    target = resolve_module(model, settings["module"]) if settings.get("module") else model
    call_path = settings.get("call")
    call.progress("running the model")
    with torch.inference_mode():
        if call_path:
            recorded = _record_function(call, settings, model, inputs, target)
        else:
            recorded = _record_module(settings, model, inputs, target)
    tensors, extras, args = _bind(recorded.signature_of, recorded.args, recorded.kwargs, settings.get("names"),
                                  _module_namer(model))
    outputs = _call_outputs(recorded.result, settings["outputs"])
    check_contract(tensors, settings, "the call", "capture.call" if call_path else "capture.module")
    where = settings.get("module") or type(model).__name__
    return _write(call, tensors, outputs, args, extras, [], f"from {where}")


def _record_function(call: StageCall, settings: dict[str, Any], model: Any, inputs: Any, target: Any) -> _Call:
    """The `occurrence`-th call of capture.call made while `target` runs; the rest of the forward is skipped."""
    call_path = settings["call"]
    with imports.search_path(call.paths["python_path"]):
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
            if seen[0] == settings["occurrence"]:
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
        where = f"inside '{settings['module']}'" if settings.get("module") else "during the forward"
        raise UserError(f"'{call_path}' was called {seen[0]} time(s) {where}; "
                        f"occurrence {settings['occurrence']} was asked for", field="capture.call",
                        hint="check capture.module, or that the model calls this function by this name")
    return recorded[0]


def _record_module(settings: dict[str, Any], model: Any, inputs: Any, target: Any) -> _Call:
    """The `occurrence`-th call of the target module (its forward's signature names the arguments)."""
    recorded: list[_Call] = []
    seen = [0]

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if seen[0] == settings["occurrence"]:
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

    def __init__(self, model: Any, wanted: Any):
        self.wanted = wanted
        self.stack = ModuleStack(model)
        self.counts: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []

    def _inside_wanted(self) -> bool:
        if self.wanted == "all":
            return True
        return isinstance(self.wanted, list) and any(name in self.stack.names for name in self.wanted)

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
    def swapped(self, record: list[dict[str, Any]], python_path: list[str]) -> Iterator[None]:
        """Each callable of `record` swapped for its recorder for the duration of the block."""
        with contextlib.ExitStack() as swaps:
            with imports.search_path(python_path):
                for entry in record:
                    original: list[Any] = []  # filled by the swap, read when the model calls
                    recorder = self._recorder(entry["callable"], entry["op"], original)
                    original.append(swaps.enter_context(imports.swap_callable(entry["callable"], recorder,
                                                                              "export.plugins.replace")))
            yield

    def close(self) -> None:
        self.stack.close()


def _whole_model(call: StageCall, settings: dict[str, Any]) -> StageResult:
    import torch

    call.progress("building the model")
    model, raw_inputs = build_model(call.config["model"], call.paths["python_path"])
    inputs = name_inputs(model, raw_inputs)
    wanted = settings.get("calls")
    for path in wanted if isinstance(wanted, list) else []:
        resolve_module(model, path, "capture.calls")  # a typo is an error that names the module
    record = settings.get("record", [])
    plugin_calls = _PluginCalls(model, wanted)
    call.progress("running the model")
    try:
        with torch.inference_mode(), plugin_calls.swapped(record, call.paths["python_path"]):
            result = inputs.call(model, inputs.tensors)
    finally:
        plugin_calls.close()
    outputs = _model_outputs(result, settings["outputs"])
    tensors = {name: to_numpy(tensor) for name, tensor in inputs.tensors.items()}
    args = [{"name": name, "kind": "tensor" if name in inputs.tensors else "extra"} for name in inputs.order]
    counts = plugin_calls.counts
    notes = [f"the model never called {entry['callable']}" for entry in record if not counts.get(entry["callable"])]
    if wanted and not plugin_calls.records:
        where = "during the forward" if wanted == "all" else f"inside {', '.join(wanted)}"
        raise UserError(f"no call of {', '.join(e['callable'] for e in record) or 'a plugin'} "
                        f"{where} to record", field="capture.calls",
                        hint="check capture.calls and export.plugins[].replace")
    calls = []
    for index, recorded in enumerate(plugin_calls.records):
        saved = save_named(call.out / "calls", {f"call_{index:03d}": recorded.pop("result")})
        calls.append({**recorded, "output": next(iter(saved.values()))})
    summary_calls = f", {len(calls)} plugin call result{'s' if len(calls) != 1 else ''}" if calls else ""
    counted = {entry["callable"]: counts.get(entry["callable"], 0) for entry in record}
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
    capture = copy.deepcopy(data["capture"])
    export = data["export"]
    expect, rules = contracts.capture_contract(export, plugins)
    whole = export["scope"] == "model" and not capture.get("from_dir")  # config/checks.py checked the fields
    files: dict[str, str] = {}
    paths: dict[str, Any] = {"python_path": [str(p) for p in ctx.python_path]}
    if capture.get("from_dir"):
        folder = ctx.spec.resolve_path(capture["from_dir"])
        ctx.watch_folder(folder)  # a file added there can make a tensor's file ambiguous
        wanted = [e["name"] for e in expect] or list(capture.get("names") or [])
        try:
            matched, ignored = match_folder(folder, wanted, capture["outputs"], capture["files"])
        except UserError as exc:
            raise ctx.error(exc.message, "capture.from_dir", hint=exc.hint) from None
        for name, file in matched.items():
            files[f"tensor:{name}"] = ctx.file_digest(folder / file, "capture.from_dir")
            ctx.origins[f"tensor:{name}"] = str(folder / file)
        config = {"capture": {"source": "dir", "names": list(matched), "outputs": capture["outputs"],
                              "expect": expect}}
        paths.update(folder=str(folder), files=matched, ignored=ignored)
    else:
        model = data["model"]
        config = {"model": ctx.keyed_model(model),
                  "capture": {**{k: v for k, v in capture.items() if k not in ("files", "from_dir")},
                              "source": "model", "expect": expect}}
        if whole:
            recorded = [{"callable": p["replace"], "op": p["op"]} for p in plugins if p.get("replace")]
            config["capture"].update(scope="model", record=recorded)
            for index, plugin in enumerate(plugins):
                if plugin.get("replace"):
                    label, digest = ctx.source_digest(plugin["replace"], f"export.plugins[{index}].replace")
                    files[label] = digest
        files.update(ctx.model_sources(model))
        if capture.get("call"):
            label, digest = ctx.source_digest(capture["call"], "capture.call")
            files[label] = digest
        files.update(ctx.paths_digests(model.get("sources", []), "model.sources"))
    if expect:
        config["capture"]["rules"] = rules
        if rules.get("catalog"):
            label, digest = ctx.source_digest(rules["catalog"], "export.plugins[0].catalog")
            files[label] = digest
    tools = environment.tools("numpy") | (environment.tools("torch"))
    ctx.keyed_python_path(config)
    env = ctx.env_digests(data.get("model")) if not capture.get("from_dir") else {}
    return Planned(Sections(config), {}, files, tools, paths, env)


STAGE = Stage(
    "capture", version=2, plan=plan, run=run,
    outputs=("capture.json", "tensors/*.npy", "outputs/*.npy", "calls/*.npy"),
)

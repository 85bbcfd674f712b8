"""`orchestrate init`: a first pipeline, written from what one watched forward showed (orchestrator.discover).

The pipeline exports the first call of the first usable callable alone (scope call, capture at the
module that made it), with the plugin's inputs mapped by the call's parameter names, derived inputs
by the catalog's rules, `require` for argument values the plugin assumes and the integer inputs'
dtype contract written out; tolerances fit the size of the calls' results. The whole-model variant
(every call a plugin node, each compared with its call) is written beside it as a commented block.
What was found is also returned as report lines; when nothing maps, they say what was looked for.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import imports
from orchestrator.discover import Discovery, Found
from orchestrator.errors import UserError
from orchestrator.torch_model import ModelSettings

ATOL, RTOL = 1.0e-4, 1.0e-3  # fp32 tolerances of the shipped pipelines
OPSET = 17  # LayerNormalization and GridSample export as single ops from opset 17 on
INPUT_NAMES = ("{stem}_inputs", "example_inputs", "inputs", "make_inputs", "sample_inputs")
SHOWN_SITES = 6  # call sites named in the pipeline's header
_PLAIN = re.compile(r"^(\.{1,2}/)*[A-Za-z_][A-Za-z0-9_.:/\-]*$|^\.{1,2}$")
COMMENT_COLUMN = 48
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def family(factory: str) -> str:
    """The factory's name without a build_/make_/create_ prefix: the pipeline's default name."""
    attr = imports.split(factory)[1][-1] if imports.split(factory)[1] else imports.split(factory)[0]
    for prefix in ("build_", "make_", "create_"):
        attr = attr.removeprefix(prefix)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", attr) or "pipeline"


def default_inputs(factory: str) -> str:
    """The inputs callable beside the factory (`<name>_inputs`, `example_inputs`, …), for a missing --inputs."""
    module_name, _ = imports.split(factory)
    with imports.search_path():
        imports.resolve(factory, "--model")
        module = imports.resolve(module_name, "--model")
    names = [pattern.format(stem=family(factory)) for pattern in INPUT_NAMES]
    for name in names:
        if callable(getattr(module, name, None)):
            return f"{module_name}:{name}"
    raise UserError(f"no inputs callable beside {factory} (looked for {', '.join(names)} in {module_name})",
                    hint="name the callable that returns the model's forward arguments with --inputs PKG:FN")


# ------------------------------------------------------------------------------------------ the report

def _sites(found: Found) -> list[str]:
    """One line per call: module, arguments, result; a call with the first one's arguments says so."""
    lines = []
    first = found.calls[0].arguments if found.calls else {}
    for call in found.calls:
        same = call.arguments == first and call is not found.calls[0]
        shown = "arguments as above" if same else ", ".join(f"{n} {v}" for n, v in call.arguments.items())
        lines.append(f"  {call.module or '(the model)'}: {shown} -> {call.result}")
    return lines


def report(discovery: Discovery) -> list[str]:
    """What the forward showed, for the terminal."""
    lines = [f"watched one forward of {discovery.model}: {discovery.calls} Python calls of "
             f"{discovery.functions} functions"]
    for found in discovery.found:
        count = f"{len(found.calls)} call{'s' if len(found.calls) != 1 else ''} per forward"
        if found.usable:
            lines.append(f"{found.op} stands for {found.callable}, {count}")
            lines += _sites(found)
            lines.append("  plugin inputs, every one present or derivable:")
            lines += [f"    {feed}" for feed in found.feeds]
            assert found.mapping is not None
            lines += [f"  requires {name}={value!r}" for name, value in found.mapping.require.items()]
            if found.inside:
                lines.append(f"  (called inside {found.inside})")
            continue
        lines.append(f"{found.callable or found.defined} takes what {found.op} takes but cannot be it ({count}):")
        lines += _sites(found)
        lines += [f"  why: {reason}" for reason in found.reasons()]
    if not discovery.usable():
        lines += nothing_found(discovery)
    return lines


def nothing_found(discovery: Discovery) -> list[str]:
    """What was looked for, and the functions that came closest."""
    lines = ["no call maps onto a plugin; looked for"] + [f"  {looked}" for looked in discovery.looked_for]
    if discovery.closest:
        lines.append("closest: " + "; ".join(discovery.closest))
    return lines


# ------------------------------------------------------------------------------------------ YAML

def flow(value: Any) -> str:
    """`value` as a YAML flow scalar, list or mapping (floats keep a dot, so YAML 1.1 reads them as numbers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, str):
        plain = _PLAIN.match(value) and value.lower() not in _YAML_WORDS and not value.endswith(":")
        return value if plain else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{flow(str(k))}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} in a pipeline")


def _commented(line: str, comment: str) -> str:
    """A pipeline line with its comment, the comments of a file in one column where the lines allow."""
    return f"{line:<{COMMENT_COLUMN}} # {comment}" if comment else line


def _number(value: float) -> str:
    """A tolerance as the shipped pipelines write it: 1.0e-4."""
    return re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{value:.1e}")


def tolerances(found: Found) -> tuple[float, str]:
    """atol for these calls: the shipped 1e-4 where every result reaches 0.1, else 1e-3 of the smallest one's
    largest |value| (rounded down to a power of ten), so verify is not vacuous."""
    sizes = [call.result_abs_max for call in found.calls if call.result_abs_max]
    smallest = min(sizes) if sizes else None
    if smallest is None or smallest >= 0.1:
        reach = f"every call's result reaches |x| {smallest:.2g}" if smallest else ""
        return ATOL, reach
    atol = 10.0 ** math.floor(math.log10(smallest * RTOL))
    return atol, f"a call's result reaches only |x| {smallest:.2g}: an atol below it keeps verify meaningful"


def python_path(module: str, pipeline: Path) -> list[str]:
    """Where `module` was imported from, relative to the pipeline's folder (none for an installed package)."""
    top = module.split(".")[0]
    found = importlib.util.find_spec(top)
    places = list(found.submodule_search_locations or []) if found is not None else []
    if found is None or (found.origin in (None, "built-in", "frozen") and not places):
        return []
    origin = Path(found.origin).resolve() if found.origin else Path(places[0], "__init__.py").resolve()
    root = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    if root.name in ("site-packages", "dist-packages"):
        return []
    return [os.path.relpath(root, pipeline.resolve().parent)]


@dataclass(frozen=True)
class Written:
    """What the pipeline is written from: the model as given, where it goes, the command that wrote it."""

    settings: ModelSettings
    path: Path
    command: str


def _header(discovery: Discovery, found: Found, written: Written) -> list[str]:
    sites = [call.module or "(the model)" for call in found.calls]
    shown = ", ".join(sites[:SHOWN_SITES]) + (f", … ({len(sites) - SHOWN_SITES} more)" if len(sites) > SHOWN_SITES
                                              else "")
    lines = [f"# Written by `{written.command}`",
             f"# from one forward of {discovery.model}: {found.op} stands for",
             f"#   {found.callable}",
             f"# called {len(found.calls)} time{'s' if len(found.calls) != 1 else ''} per forward, in {shown}.",
             "# This file exports the first call alone (scope call); the whole model is at the end, commented."]
    for other in discovery.found:
        if other is not found:
            why = "also usable" if other.usable else "; ".join(other.reasons()[:2])
            lines.append(f"# Also recognised: {other.callable or other.defined} ({why}).")
    return lines


def _model_section(settings: ModelSettings, path: Path) -> list[str]:
    module = imports.split(settings.factory)[0]
    search = python_path(module, path)
    lines = [f"name: {re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem) or 'pipeline'}"]
    if search:
        lines.append(_commented(f"python_path: {flow(search)}", f"where {module} imports from, relative to here"))
    lines += ["", "model:", f"  factory: {settings.factory}", f"  inputs: {settings.inputs}"]
    if settings.kwargs:
        lines.append(f"  kwargs: {flow(dict(settings.kwargs))}")
    if settings.inputs_kwargs:
        lines.append(f"  inputs_kwargs: {flow(dict(settings.inputs_kwargs))}")
    if settings.device != "cpu":
        lines.append(f"  device: {settings.device}")
    return lines


def _plugin_section(found: Found) -> list[str]:
    mapping = found.mapping
    assert mapping is not None and found.callable is not None
    dtypes = {name: found.casts[contract] for contract, name in zip(_contract_names(found), mapping.inputs,
                                                                     strict=True) if contract in found.casts}
    lines = ["  plugins:", f"    - replace: {found.callable}", f"      op: {found.op}",
             "      # the plugin's inputs in its order, as this call feeds them:"]
    lines += [f"      #   {feed}" for feed in found.feeds]
    lines.append(f"      inputs: {flow(list(mapping.inputs))}")
    if mapping.require:
        lines.append(_commented(f"      require: {flow(dict(mapping.require))}", "the plugin computes only this"))
    if mapping.derive:
        lines.append(_commented("      derive:", "by the rules of the plugin's catalog entry"))
        lines += [f"        {name}: {flow(rule.written())}" for name, rule in mapping.derive.items()]
    if dtypes:
        lines.append(_commented(f"      dtypes: {flow(dtypes)}", "the plugin's contract, cast in the graph"))
    return lines


def _contract_names(found: Found) -> list[str]:
    from orchestrator import plugins as catalog

    return catalog.lookup(found.op).input_names()


def _checks(found: Found) -> list[str]:
    atol, why = tolerances(found)
    return ["", "verify:", _commented(f"  atol: {_number(atol)}", why), f"  rtol: {_number(RTOL)}", "",
            "bench:", _commented("  enabled: false", "true times the built engine (warmup, iterations)")]


def _whole_model(discovery: Discovery, atol: float) -> list[str]:
    """The model-scope variant, as comments to swap in."""
    lines = ["", "# The whole model instead: every call a plugin node, each compared with the call it stands for.",
             "# Replace the capture section by this one and set export.scope to model:",
             "# capture:", "#   calls: all", "# export:", "#   scope: model"]
    largest = discovery.output_abs_max
    if largest is not None and largest < 10 * atol:
        lines.insert(3, f"# (the model's outputs reach only |x| {largest:.2g}: lower verify.atol for them)")
    integers = [name for name, dtype in discovery.model_inputs.items() if not dtype.startswith(("float", "bfloat"))]
    if integers:
        lines += ["#   # Where the export stops at an op no exporter writes (it names the op and the module),",
                  "#   # freeze the integer model inputs that op reads, so it folds away (the engine then serves",
                  "#   # these values):",
                  f"#   constants: {flow(integers)}"]
    return lines


def pipeline(discovery: Discovery, found: Found, written: Written) -> str:
    """The pipeline file's text: scope call at the first call site of `found`, the whole model commented."""
    first = found.calls[0]
    lines = [*_header(discovery, found, written), "version: 1", *_model_section(written.settings, written.path),
             "", "capture:"]
    if first.module:
        lines.append(_commented(f"  module: {first.module}", "the first call site (model.named_modules() path)"))
    lines += [f"  call: {found.callable}", "", "export:", "  exporter: torchscript",
              _commented(f"  opset: {OPSET}", "LayerNormalization and GridSample as one op each"),
              _commented("  scope: call", "the call alone, as the plugin; model: the whole model (below)"),
              *_plugin_section(found), *_checks(found), *_whole_model(discovery, tolerances(found)[0])]
    return "\n".join(lines) + "\n"

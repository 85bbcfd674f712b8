"""Each declared plugin with its catalog contract resolved, and the checks that need the contract.

The contract (input names, ranks, dtypes) shapes the capture, the export and the surgery, so it is
resolved once per variant, here, and handed to every stage's `plan` with the variant. So is the
plugin's version: the export writes it into the node (plugin_version), so `version: auto` must be
known before the export, and it depends on the build: the build backend says which versions its
TensorRT registers (Backend.plugin_versions) and the catalog entry picks (PluginEntry.choose_version).
The resolved version replaces `auto`, so it is what the export's and the build's keys hold; why it
was chosen, and a deprecation warning, go to the export's summary as `version_note` (in no key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.config.spec import Spec
from orchestrator.plugins.versions import AUTO

NOTE = "version_note"  # why the version was chosen, and any deprecation warning (for the export's summary)


def resolve(spec: Spec, export: dict[str, Any], build: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each plugin with its catalog contract and its version resolved (both shape the export); `build` is
    the variant's build section (None: no TensorRT is asked, as for the embedded backend)."""
    from orchestrator import plugins as catalog

    resolved = []
    for index, plugin in enumerate(export["plugins"]):
        entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
        plugin = {**plugin, **version_of(spec, entry, plugin, build)}
        names = plugin.get("inputs") or entry.input_names()
        for name, rule in plugin.get("derive", {}).items():
            check_derivation(spec, entry, names, name, rule, f"export.plugins[{index}].derive.{name}")
        dtypes = {}
        for contract, name in zip(entry.inputs, names, strict=True):
            wanted = plugin["dtypes"].get(name)
            dtypes[name] = wanted or (contract.dtypes[0] if contract.is_integer else None)
        resolved.append({**plugin, "inputs": names, "dtypes": {k: v for k, v in dtypes.items() if v},
                         "contract": [{"name": c.name, "rank": c.rank, "dtypes": list(c.dtypes)}
                                      for c in entry.inputs]})
    return resolved


def version_of(spec: Spec, entry: Any, plugin: Mapping[str, Any], build: Mapping[str, Any] | None
               ) -> dict[str, Any]:
    """The plugin's version (`auto` resolved against the build backend's TensorRT) and, where there is
    something to say, its note: {"version": ..., "version_note": ...}."""
    from orchestrator import backends
    from orchestrator.backends.base import RegisteredVersions

    requested = str(plugin.get("version", "1"))
    facts = RegisteredVersions()
    if build is not None:
        backend = backends.get(backends.resolve(build.get("backend", "auto"))[0])
        libraries = [str(spec.resolve_path(lib)) for lib in build.get("plugin_libraries", [])]
        facts = backend.plugin_versions(entry.op, entry.versions, str(plugin.get("namespace", "")), libraries,
                                        ask_registry=requested == AUTO)
    choice = entry.choose_version(requested, facts.versions, facts.release)
    notes = ([f"{entry.op} v{choice.version} ({choice.reason})"] if requested != choice.version else []) + \
        ([f"warning: {choice.warning}"] if choice.warning else [])
    return {"version": choice.version, **({NOTE: "; ".join(notes)} if notes else {})}


def check_derivation(spec: Spec, entry: Any, names: list[str], name: str, rule: dict[str, Any], at: str) -> None:
    """A derived input names a rule of the plugin's catalog entry, with as many sources as the rule reads."""
    if name not in names:
        raise spec.error(f"'{name}' is not a plugin input; inputs are {', '.join(names)}", at)
    if rule["rule"] not in entry.derivations:
        rules = "; ".join(f"{key} ({d.doc})" for key, d in entry.derivations.items()) or "none"
        raise spec.error(f"{entry.op} has no derivation '{rule['rule']}'; its rules are: {rules}", f"{at}.rule")
    derivation = entry.derivations[rule["rule"]]
    sources = rule["from"] if isinstance(rule["from"], list) else [rule["from"]]
    if not len(derivation.sources) - derivation.optional <= len(sources) <= len(derivation.sources):
        raise spec.error(f"rule '{rule['rule']}' reads {derivation.arity()} source(s): "
                         f"{'; '.join(derivation.sources)}; {len(sources)} given", f"{at}.from")


def check_sources(spec: Spec, plugin: dict[str, Any], parameters: list[str], at: str) -> None:
    """Every source a derivation reads is a parameter of the replaced callable or another derived input."""
    derived = plugin.get("derive", {})
    for name, rule in derived.items():
        for source in rule["from"] if isinstance(rule["from"], list) else [rule["from"]]:
            if source not in parameters and (source not in derived or source == name):
                raise spec.error(
                    f"'{source}' must be a parameter of '{plugin['replace']}' ({', '.join(parameters)}) or "
                    f"another derived input; the plugin input is computed from what the call passes",
                    f"{at}.{name}.from")


def capture_contract(export: dict[str, Any], plugins: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                                      dict[str, Any]]:
    """What a one-call capture must hold: each captured plugin input's rank and dtypes, and whose catalog
    rules the tensors must meet together (the entry's own checks across its inputs); none for scope model.

    Checked by the capture, so that tensors the plugin would read out of bounds are bad input there.
    A given graph (export.onnx) decides itself what feeds its plugin (it may fix an input as an
    initializer), so its tensors are held to ranks and dtypes only; the build checks what it fixes.
    """
    if export["scope"] != "call" or not plugins:
        return [], {}
    plugin = plugins[0]
    expect = [{"name": name, "rank": contract["rank"], "dtypes": contract["dtypes"]}
              for name, contract in zip(plugin["inputs"], plugin["contract"], strict=True)
              if name not in plugin.get("derive", {})]
    rules = {} if export.get("onnx") else {"op": plugin["op"], "inputs": plugin["inputs"],
                                           **({"catalog": plugin["catalog"]} if plugin.get("catalog") else {})}
    return expect, rules

"""Each declared plugin with its catalog contract resolved, and the checks that need the contract.

The contract (input names, ranks, dtypes) shapes the capture, the export and the surgery, so it is
resolved once per variant, here, and handed to every stage's `plan` with the variant.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config.spec import Spec


def resolve(spec: Spec, export: dict[str, Any]) -> list[dict[str, Any]]:
    """Each plugin with its catalog contract resolved (the contract shapes the export)."""
    from orchestrator import plugins as catalog

    resolved = []
    for index, plugin in enumerate(export["plugins"]):
        entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
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

"""Every check on a pipeline's config that the schema cannot state, made once per variant at load.

These need no file content and run no user code: one capture source, combinations of sections that
contradict each other, plugins the catalog knows with the versions, inputs and dtypes it has, and paths
that exist. Checks that read the user's sources (does the factory take these keywords?) are made
where those files are read, while planning (planning/inputs.py), and are located the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config.spec import Spec, Variant


def check_variant(spec: Spec, variant: Variant) -> None:
    """Raise the first problem of `variant` as a UserError located in the pipeline file."""
    data = variant.data
    where = f" (variant {variant.name})" if variant.name else ""
    _capture_source(spec, data, where)
    _capture_scope(spec, data)
    _export(spec, data)
    _plugins(spec, data["export"])
    _patterns(spec, data)
    _plugin_nodes_made(spec, data)
    for index, library in enumerate(data.get("build", {}).get("plugin_libraries", [])):
        if not spec.resolve_path(library).is_file():
            raise spec.error(f"plugin library '{library}' does not exist", ("build", "plugin_libraries", index))


def _capture_source(spec: Spec, data: dict[str, Any], where: str) -> None:
    """Tensors come from a saved folder or a live model, and the fields of the other source are not given."""
    capture = data.get("capture", {})
    if capture.get("from_dir"):
        for key in ("module", "call", "names"):
            if key in capture:
                raise spec.error(f"'{key}' applies to a live model; capture.from_dir reads saved tensors{where}",
                                 f"capture.{key}")
        folder = spec.resolve_path(capture["from_dir"])
        if not folder.is_dir():
            raise spec.error(f"capture folder '{capture['from_dir']}' does not exist (looked in {folder})",
                             "capture.from_dir")
        return
    if capture.get("files"):
        raise spec.error("capture.files only applies with capture.from_dir", "capture.files")
    if data.get("model") is None:
        raise spec.error("give either capture.from_dir (saved tensors) or a model to capture from",
                         "capture", hint="add model: {factory: pkg.mod:build, inputs: pkg.mod:inputs}")


def _capture_scope(spec: Spec, data: dict[str, Any]) -> None:
    """A whole-model export records the model's forward: the fields that pick one call do not apply."""
    capture = data.get("capture", {})
    if data["export"]["scope"] == "model" and not capture.get("from_dir"):
        for key in ("module", "call", "names"):
            if key in capture:
                raise spec.error(f"capture.{key} picks one call; export.scope 'model' records the whole "
                                 "model's forward (capture.calls records the plugin calls)", f"capture.{key}")
    elif capture.get("calls"):
        raise spec.error("capture.calls applies to export.scope 'model'", "capture.calls")


def _export(spec: Spec, data: dict[str, Any]) -> None:
    export = data["export"]
    if export["scope"] == "model" and data.get("model") is None:
        raise spec.error("export.scope 'model' exports the whole model; add a model section", "export.scope")
    if export.get("onnx"):
        onnx_path = spec.resolve_path(export["onnx"])
        if not onnx_path.is_file():
            raise spec.error(f"ONNX file '{export['onnx']}' does not exist (looked in {onnx_path})", "export.onnx")


def _plugins(spec: Spec, export: dict[str, Any]) -> None:
    """Each plugin is one its catalog knows, with a version, inputs and dtypes its contract has."""
    from orchestrator import plugins as catalog

    for index, plugin in enumerate(export["plugins"]):
        at = ("export", "plugins", index)
        try:
            entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
        except catalog.CatalogError as exc:
            raise spec.error(exc.message, (*at, exc.leaf), hint=exc.hint) from None
        if plugin["version"] not in (*entry.versions, "auto"):
            raise spec.error(f"{entry.op} has versions {', '.join(entry.versions)} (or auto: the newest the build's "
                             f"TensorRT registers); got '{plugin['version']}'", (*at, "version"))
        names = plugin.get("inputs") or [i.name for i in entry.inputs]
        if len(names) != len(entry.inputs):
            raise spec.error(f"{entry.op} takes {len(entry.inputs)} inputs "
                             f"({', '.join(i.name for i in entry.inputs)}); {len(names)} are listed", (*at, "inputs"))
        for name, wanted in plugin["dtypes"].items():
            if name not in names:
                raise spec.error(f"'{name}' is not an input of this plugin; inputs are {', '.join(names)}",
                                 (*at, "dtypes", name))
            contract = entry.inputs[names.index(name)]
            if wanted not in contract.dtypes:
                raise spec.error(f"{entry.op} input '{contract.name}' takes {' or '.join(contract.dtypes)}, "
                                 f"not {wanted}", (*at, "dtypes", name),
                                 hint="the plugin's contract comes from its catalog entry; see `orchestrate doctor`")
        if export["scope"] == "model" and not plugin.get("replace") and export.get("plugin_nodes") != "surgery":
            raise spec.error("scope 'model' needs the callable to replace", (*at, "replace"))
        if export["scope"] != "model" and index == 0 and not plugin.get("replace") \
                and export.get("plugin_nodes") == "surgery" and not export.get("onnx"):
            raise spec.error("plugin_nodes 'surgery' with scope 'call' exports the replaced callable as written; "
                             "name it in export.plugins[0].replace", (*at, "replace"))


def _plugin_nodes_made(spec: Spec, data: dict[str, Any]) -> None:
    """With export.plugin_nodes 'surgery', something in the surgery makes each plugin's node."""
    export = data["export"]
    if export.get("plugin_nodes") != "surgery" or export.get("onnx"):
        return
    edits = data.get("surgery") or []
    made = {p["op"] for p in export["plugins"] if p.get("subgraph")}
    made |= {e["replace_subgraph"]["op"] for e in edits if "replace_subgraph" in e}
    made |= {e["replace_pattern"]["op"] for e in edits if "replace_pattern" in e}
    made |= {e["rename_op"]["to"] for e in edits if "rename_op" in e}
    for index, plugin in enumerate(export["plugins"]):
        if plugin["op"] not in made:
            raise spec.error(
                f"export.plugin_nodes is 'surgery' but nothing makes the {plugin['op']} node",
                f"export.plugins[{index}]", hint="give the surgery a replace_pattern edit for it, the plugin a "
                "`subgraph` (where its code sits in the plain export), or a surgery edit replace_subgraph / "
                "rename_op that makes it")


def _patterns(spec: Spec, data: dict[str, Any]) -> None:
    """A replace_pattern edit names a plugin declared in export.plugins whose catalog entry has a pattern."""
    from orchestrator import plugins as catalog

    declared = {p["op"]: p for p in data["export"]["plugins"]}
    for index, edit in enumerate(data.get("surgery") or []):
        if "replace_pattern" not in edit:
            continue
        op = edit["replace_pattern"]["op"]
        at = ("surgery", index, "replace_pattern", "op")
        if op not in declared:
            raise spec.error(f"replace_pattern makes {op} nodes, but export.plugins declares no {op} "
                             f"(it declares {', '.join(declared)})", at,
                             hint="declare the plugin in export.plugins: the build and verify need its contract")
        if not catalog.lookup(op, declared[op].get("catalog")).patterns:
            raise spec.error(f"the catalog entry of {op} has no pattern for replace_pattern to look for", at,
                             hint="name the subgraph by its tensors with replace_subgraph instead")

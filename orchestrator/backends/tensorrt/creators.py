"""Plugin creators: registering NVIDIA's and the user's libraries, the preflight that every plugin node has
a creator, and the messages for a missing creator or a parser error."""

from __future__ import annotations

import ctypes
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import plugins as catalog
from orchestrator.backends.base import CheckedNode
from orchestrator.backends.tensorrt.api import ApiFeatures
from orchestrator.errors import UserError


@dataclass(frozen=True, order=True)
class Creator:
    name: str
    version: str
    namespace: str = ""

    def __str__(self) -> str:
        return f"{self.name} v{self.version}" + (f" (namespace '{self.namespace}')" if self.namespace else "")


def missing_creator_error(missing: Sequence[Mapping[str, str]], available: Sequence[Creator], trt_version: str,
                          libraries: Sequence[str], catalogs: Mapping[str, str | None] | None = None) -> UserError:
    """A UserError for plugin nodes whose (name, version, namespace) has no registered creator.

    It lists the creators that do exist under the same or a similar name and says which library
    provides the plugin (the `library` of its catalog entry: the user's where `catalogs` names one for
    the op, else the built-in one), and which libraries were loaded.
    """
    names = sorted({c.name for c in available})
    lines = []
    hint = None
    field_name = "build.plugin_libraries"
    for node in missing:
        op, version, namespace = node["op"], node["version"], node.get("namespace", "")
        text = (f"plugin node '{node.get('node') or op}' needs creator {Creator(op, version, namespace)}, which "
                f"TensorRT {trt_version} does not have registered")
        same = sorted(c for c in available if c.name == op)
        similar = [c for c in sorted(available) if c.name in difflib.get_close_matches(op, names, n=3, cutoff=0.6)
                   and c.name != op]
        if same:
            text += f"; registered under that name: {', '.join(str(c) for c in same)}"
            field_name = "export.plugins"
            hint = (f"set export.plugins[].version to '{same[0].version}' and namespace to '{same[0].namespace}' "
                    "(a registered creator), or load a library that has the one requested")
        elif similar:
            text += f"; similar names registered: {', '.join(str(c) for c in similar[:5])}"
        else:
            text += f"; none of the {len(available)} registered creators has a similar name"
        entry = _entry(op, (catalogs or {}).get(op))
        provider = entry.library if entry is not None else "the plugin's own library (build.plugin_libraries)"
        text += f". It comes from {provider}"
        lines.append(text)
    loaded = ", ".join(libraries) if libraries else "none besides NVIDIA's libnvinfer_plugin"
    if hint is None:
        hint = ("NVIDIA's plugins are initialised with init_libnvinfer_plugins; any other plugin library must be "
                "listed in build.plugin_libraries")
    return UserError("; ".join(lines) + f" (plugin libraries loaded: {loaded})", field=field_name, hint=hint)


def _entry(op: str, catalog_path: str | None) -> catalog.PluginEntry | None:
    try:
        return catalog.lookup(op, catalog_path)
    except UserError:
        return None


def parser_error_lines(errors: Sequence[Mapping[str, Any]], nodes: Sequence[tuple[str, str]]) -> list[str]:
    """One line per ONNX parser error, naming the node and its op.

    TensorRT 10 reports the node's name and operator itself; 8.6 reports only its index, which is
    looked up in the graph's node list (name, op_type).
    """
    lines = []
    for error in errors:
        index = int(error.get("node", -1))
        name, op = str(error.get("node_name") or ""), str(error.get("node_operator") or "")
        if 0 <= index < len(nodes):
            name = name or nodes[index][0]
            op = op or nodes[index][1]
        where = f"node {index}" if index >= 0 else "graph"
        if name or op:
            where += f" '{name or '?'}' ({op or '?'})"
        desc = str(error.get("desc", "")).strip()
        code = str(error.get("code", "")).rsplit(".", 1)[-1]
        lines.append(f"{where}: {desc}" + (f" [{code}]" if code else ""))
    return lines


def register_plugins(logger: Any, libraries: Sequence[str], namespaces: Sequence[str]) -> Any:
    """NVIDIA's plugins (in every namespace the graph uses), then the user's libraries; returns the registry."""
    import tensorrt as trt

    for namespace in sorted(set(namespaces) | {""}):
        trt.init_libnvinfer_plugins(logger, namespace)
    registry = trt.get_plugin_registry()
    for library in libraries:
        handle = None
        if hasattr(registry, "load_library"):
            try:
                handle = registry.load_library(str(library))
            except (RuntimeError, TypeError, ValueError):
                handle = None
        if handle is None:  # libraries that register their creators when loaded (REGISTER_TENSORRT_PLUGIN)
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise UserError(f"cannot load plugin library '{library}': {exc}",
                                field="build.plugin_libraries") from None
    return registry


def registered_creators(registry: Any, features: ApiFeatures) -> list[Creator]:
    listing = getattr(registry, features.creator_listing, None) or []
    found = []
    for creator in listing:
        name = getattr(creator, "name", None)
        if name:
            found.append(Creator(str(name), str(getattr(creator, "plugin_version", "")),
                                 str(getattr(creator, "plugin_namespace", ""))))
    return sorted(set(found))


def has_creator(registry: Any, features: ApiFeatures, op: str, version: str, namespace: str) -> bool:
    lookup = getattr(registry, features.creator_lookup)
    return lookup(op, version, namespace) is not None


def check_creators(registry: Any, features: ApiFeatures, checked: Sequence[CheckedNode], libraries: Sequence[str],
                   catalogs: Mapping[str, str | None]) -> None:
    """Preflight: every plugin node's (name, version, namespace) resolves in the registry."""
    missing = [{"node": node.name, "op": node.op, "version": node.version, "namespace": node.namespace}
               for node in checked if not has_creator(registry, features, node.op, node.version, node.namespace)]
    if missing:
        raise missing_creator_error(missing, registered_creators(registry, features), features.version, libraries,
                                    catalogs)

"""Spec → DAG of stage nodes, each with a content key. All cache-key logic lives here.

A key covers exactly what can change a stage's output:
  * the stage's normalised config (defaults filled, canonical JSON: key order and YAML layout
    do not matter), without file locations;
  * the content digests of the files it reads (capture folders, plugin libraries, the source
    files of the model factory, the inputs callable and the replaced callables, `model.sources`);
  * the keys of its input artifacts;
  * the versions of the tools that produce it (torch, onnx, onnxruntime, tensorrt + GPU);
  * the stage implementation's version (STAGE_VERSIONS, bumped when a stage's output changes);
  * for the stages that import user code (capture, export): python_path as written, and the values
    (hashed) of the environment variables declared in model.env; no other variable.
The pipeline's name and file path are in no key. Variants whose stages coincide share nodes.

What a stage's code imports beyond the files named here (a helper module the factory imports, the
library a model comes from) is known only once it has run: discovered.py records it in the
artifact's manifest and re-checks it before the artifact is reused.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import environment, imports
from orchestrator.config.spec import Spec, Variant
from orchestrator.errors import UserError
from orchestrator.signatures import Accepts
from orchestrator.store.digest import DigestCache, digest_bytes, digest_json, vouching_signature

# Bump a stage's number when its code changes what it writes for the same inputs.
STAGE_VERSIONS = {"capture": 2, "export": 4, "surgery": 2, "build": 4, "verify": 5, "bench": 1}
STAGE_ORDER = ("capture", "export", "surgery", "build", "verify", "bench")


@dataclass
class Node:
    """One stage to run (or reuse): what it gets, and what its key is made of."""

    kind: str
    key: str
    config: dict[str, Any]  # keyed settings, by YAML section ({"verify": {...}})
    paths: dict[str, Any]  # where files are; not keyed (their digests are, in parts["files"])
    inputs: dict[str, str]  # role -> key of the upstream node
    parts: dict[str, Any]  # everything that went into the key
    variants: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # label in parts["files"] -> the file it digests

    @property
    def short(self) -> str:
        return self.key[:8]


@dataclass
class Plan:
    spec: Spec
    nodes: dict[str, Node]  # by key, in topological order
    by_variant: dict[str, list[str]]  # variant name -> its node keys in stage order
    backend_reason: dict[str, str]  # variant -> why this backend
    # Files and folders the keys were computed from, with the stat signature each had when it was read
    # (None: modified too recently to vouch for its content). The no-op fast path re-checks these.
    watched: dict[str, list[int] | None] = field(default_factory=dict)

    def order(self) -> list[Node]:
        return list(self.nodes.values())

    def node(self, variant: str, kind: str) -> Node | None:
        for key in self.by_variant.get(variant, []):
            if self.nodes[key].kind == kind:
                return self.nodes[key]
        return None


class Planner:
    def __init__(self, spec: Spec, digests: DigestCache):
        self.spec = spec
        self.digests = digests
        self.watched: dict[str, list[int] | None] = {}
        self.origins: dict[str, str] = {}  # file label -> path, for `plan --why`

    # ------------------------------------------------------------------ file digests
    def file_digest(self, path: Path, field: str) -> str:
        try:
            value = self.digests.file(path)
        except OSError as exc:
            raise self.spec.error(f"cannot read '{path}': {exc.strerror}", field) from None
        real = os.path.realpath(path)
        self.watched[real] = self.digests.vouched.get(real)
        return value

    def watch_folder(self, path: Path) -> None:
        """A folder whose entries matter: adding, removing or renaming a file in it changes its signature."""
        real = os.path.realpath(path)
        if real not in self.watched:
            try:
                self.watched[real] = vouching_signature(real)
            except OSError:
                self.watched[real] = None

    def source_digest(self, import_path: str, field: str) -> tuple[str, str]:
        """Digest of the source file of the module an import path ('pkg.mod:attr') points into.

        Also checks, without running the module, that it defines the attribute, so a misspelt
        callable is reported before any stage runs.
        """
        module, attrs = imports.split(import_path)
        label, digest = self.module_digest(module, field)
        if attrs and _defines(Path(self.origins[label]), attrs[0]) is False:
            raise self.spec.error(f"module '{module}' ({self.origins[label]}) defines no '{attrs[0]}'", field)
        return label, digest

    def model_sources(self, model: dict[str, Any]) -> dict[str, str]:
        """The source digests of the factory and the inputs callable, once their kwargs fit their signatures.

        Checked here, from the source, so that a misspelt keyword is a located error before any stage
        runs (and in `validate`), not a TypeError from inside the capture.
        """
        files = {}
        for callable_field, kwargs_field in (("factory", "kwargs"), ("inputs", "inputs_kwargs")):
            path = model[callable_field]
            label, digest = self.source_digest(path, f"model.{callable_field}")
            files[label] = digest
            accepts = _accepts(Path(self.origins[label]), imports.split(path)[1])
            problem = accepts.problem(model.get(kwargs_field) or {}, path, f"model.{kwargs_field}") if accepts else None
            if problem is not None:
                raise self.spec.error(problem.message, problem.field or f"model.{kwargs_field}", problem.hint)
        return files

    def module_digest(self, module: str, field: str) -> tuple[str, str]:
        try:
            with imports.search_path(self.python_path):
                source = imports.module_file(module)
        except UserError as exc:
            raise self.spec.error(exc.message, field, hint=exc.hint) from None
        label = f"module:{module}"
        self.origins[label] = str(source)
        # Where the import system found it: a new module or package in one of these folders would
        # shadow it. (sys.path's own folders are watched by the fast path.)
        depth = module.count(".") + 1 + (source.name == "__init__.py")
        for folder in [*source.parents[:depth], *self.python_path, Path.cwd()]:
            self.watch_folder(folder)
        return label, self.file_digest(source, field)

    def paths_digests(self, entries: list[str], field: str) -> dict[str, str]:
        found = {}
        for index, entry in enumerate(entries):
            target = self.spec.resolve_path(entry)
            where = f"{field}[{index}]"
            if target.is_dir():
                self.watch_folder(target)
                for folder in target.rglob("*"):
                    if folder.is_dir() and "__pycache__" not in folder.parts:
                        self.watch_folder(folder)
                for relative, digest in self.digests.tree(target).items():
                    if "__pycache__" not in relative and not relative.endswith(".pyc"):
                        found[f"source:{entry}/{relative}"] = digest
                        self.origins[f"source:{entry}/{relative}"] = str(target / relative)
                        real = os.path.realpath(target / relative)
                        self.watched[real] = self.digests.vouched.get(real)
            elif target.is_file():
                found[f"source:{entry}"] = self.file_digest(target, where)
                self.origins[f"source:{entry}"] = str(target)
            else:
                raise self.spec.error(f"'{entry}' does not exist (looked in {target})", where)
        return found

    def check_onnx(self, path: Path, value: str) -> None:
        """Refuse a file that is not an ONNX model now, before any stage runs (the graph is not checked)."""
        import onnx

        try:
            onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - whatever the parser says, the user's file is not ONNX
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise self.spec.error(f"'{value}' is not an ONNX model ({detail})", "export.onnx") from None

    @property
    def python_path(self) -> list[Path]:
        return [self.spec.resolve_path(p) for p in self.spec.data.get("python_path", [])]

    # ------------------------------------------------------------------ nodes
    def keyed_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """The model section as keyed config: its sources are keyed by content, its env by value (`env_digests`)."""
        return {k: v for k, v in model.items() if k not in ("sources", "env")}

    def env_digests(self, model: dict[str, Any] | None) -> dict[str, str | None]:
        """The digest of each environment variable the pipeline declares in model.env (None: unset).

        Values are hashed, so that the run record and `plan --why` name the variable and never show its
        value. A variable not declared is in no key, whatever the model's code reads.
        """
        found: dict[str, str | None] = {}
        for name in (model or {}).get("env") or []:
            value = os.environ.get(name)
            found[name] = None if value is None else digest_bytes(value.encode("utf-8", "surrogateescape"))
        return found

    def keyed_python_path(self, config: dict[str, Any]) -> None:
        """python_path as written (normalised) goes into the keys of the stages that import user code: which
        folders come first decides which helper module an import finds. Their content is checked through
        the stage's discovered inputs."""
        entries = [os.path.normpath(entry) for entry in self.spec.data.get("python_path") or []]
        if entries:
            config["python_path"] = entries

    def make(self, kind: str, config: dict[str, Any], paths: dict[str, Any], inputs: dict[str, Node],
             files: dict[str, str], tools: dict[str, str], env: dict[str, str | None] | None = None) -> Node:
        parts: dict[str, Any] = {
            "stage": kind,
            "stage_version": STAGE_VERSIONS[kind],
            "config": config,
            "inputs": {role: node.key for role, node in sorted(inputs.items())},
            "files": dict(sorted(files.items())),
            "tools": dict(sorted(tools.items())),
        }
        if env:  # only when declared, so that the keys of pipelines without model.env stay as they were
            parts["env"] = dict(sorted(env.items()))
        # Not keyed: where the import system looks, for re-checking the modules any stage's run imported.
        paths = {"python_path": [str(p) for p in self.python_path], **paths}
        origins = {label: self.origins[label] for label in files if label in self.origins}
        return Node(kind, digest_json(parts), config, paths, parts["inputs"], parts, origins=origins)

    def plugins(self, export: dict[str, Any]) -> list[dict[str, Any]]:
        """Each plugin with its catalog contract resolved (the contract shapes the export)."""
        from orchestrator import plugins as catalog

        resolved = []
        for index, plugin in enumerate(export["plugins"]):
            entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
            names = plugin.get("inputs") or entry.input_names()
            for name, rule in plugin.get("derive", {}).items():
                self.check_derivation(entry, names, name, rule, f"export.plugins[{index}].derive.{name}")
            dtypes = {}
            for contract, name in zip(entry.inputs, names, strict=True):
                wanted = plugin["dtypes"].get(name)
                dtypes[name] = wanted or (contract.dtypes[0] if contract.is_integer else None)
            resolved.append({**plugin, "inputs": names, "dtypes": {k: v for k, v in dtypes.items() if v},
                             "contract": [{"name": c.name, "rank": c.rank, "dtypes": list(c.dtypes)}
                                          for c in entry.inputs]})
        return resolved

    def check_derivation(self, entry: Any, names: list[str], name: str, rule: dict[str, Any], at: str) -> None:
        """A derived input names a rule of the plugin's catalog entry, with as many sources as the rule reads."""
        if name not in names:
            raise self.spec.error(f"'{name}' is not a plugin input; inputs are {', '.join(names)}", at)
        if rule["rule"] not in entry.derivations:
            rules = "; ".join(f"{key} ({d.doc})" for key, d in entry.derivations.items()) or "none"
            raise self.spec.error(f"{entry.op} has no derivation '{rule['rule']}'; its rules are: {rules}",
                                  f"{at}.rule")
        derivation = entry.derivations[rule["rule"]]
        sources = rule["from"] if isinstance(rule["from"], list) else [rule["from"]]
        if not len(derivation.sources) - derivation.optional <= len(sources) <= len(derivation.sources):
            raise self.spec.error(f"rule '{rule['rule']}' reads {derivation.arity()} source(s): "
                                  f"{'; '.join(derivation.sources)}; {len(sources)} given", f"{at}.from")

    def check_sources(self, plugin: dict[str, Any], parameters: list[str], at: str) -> None:
        """Every source a derivation reads is a parameter of the replaced callable or another derived input."""
        derived = plugin.get("derive", {})
        for name, rule in derived.items():
            for source in rule["from"] if isinstance(rule["from"], list) else [rule["from"]]:
                if source not in parameters and (source not in derived or source == name):
                    raise self.spec.error(
                        f"'{source}' must be a parameter of '{plugin['replace']}' ({', '.join(parameters)}) or "
                        f"another derived input; the plugin input is computed from what the call passes",
                        f"{at}.{name}.from")

    def capture(self, data: dict[str, Any], plugins: list[dict[str, Any]]) -> Node:
        capture = copy.deepcopy(data["capture"])
        export = data["export"]
        expect, rules = capture_contract(export, plugins)
        whole = export["scope"] == "model" and not capture.get("from_dir")
        if whole:
            for key in ("module", "call", "names"):
                if key in capture:
                    raise self.spec.error(f"capture.{key} picks one call; export.scope 'model' records the whole "
                                          "model's forward (capture.calls records the plugin calls)", f"capture.{key}")
        elif capture.get("calls"):
            raise self.spec.error("capture.calls applies to export.scope 'model'", "capture.calls")
        files: dict[str, str] = {}
        paths: dict[str, Any] = {"python_path": [str(p) for p in self.python_path]}
        if capture.get("from_dir"):
            from orchestrator.stages.capture import match_folder

            folder = self.spec.resolve_path(capture["from_dir"])
            self.watch_folder(folder)  # a file added there can make a tensor's file ambiguous
            wanted = [e["name"] for e in expect] or list(capture.get("names") or [])
            try:
                matched, ignored = match_folder(folder, wanted, capture["outputs"], capture["files"])
            except UserError as exc:
                raise self.spec.error(exc.message, "capture.from_dir", hint=exc.hint) from None
            for name, file in matched.items():
                files[f"tensor:{name}"] = self.file_digest(folder / file, "capture.from_dir")
                self.origins[f"tensor:{name}"] = str(folder / file)
            config = {"capture": {"source": "dir", "names": list(matched), "outputs": capture["outputs"],
                                  "expect": expect}}
            paths.update(folder=str(folder), files=matched, ignored=ignored)
        else:
            model = data["model"]
            config = {"model": self.keyed_model(model),
                      "capture": {**{k: v for k, v in capture.items() if k not in ("files", "from_dir")},
                                  "source": "model", "expect": expect}}
            if whole:
                recorded = [{"callable": p["replace"], "op": p["op"]} for p in plugins if p.get("replace")]
                config["capture"].update(scope="model", record=recorded)
                for index, plugin in enumerate(plugins):
                    if plugin.get("replace"):
                        label, digest = self.source_digest(plugin["replace"], f"export.plugins[{index}].replace")
                        files[label] = digest
            files.update(self.model_sources(model))
            if capture.get("call"):
                label, digest = self.source_digest(capture["call"], "capture.call")
                files[label] = digest
            files.update(self.paths_digests(model.get("sources", []), "model.sources"))
        if expect:
            config["capture"]["rules"] = rules
            if rules.get("catalog"):
                label, digest = self.source_digest(rules["catalog"], "export.plugins[0].catalog")
                files[label] = digest
        tools = environment.tools("numpy") | (environment.tools("torch"))
        self.keyed_python_path(config)
        env = self.env_digests(data.get("model")) if not capture.get("from_dir") else {}
        return self.make("capture", config, paths, {}, files, tools, env)

    def export(self, data: dict[str, Any], plugins: list[dict[str, Any]], capture: Node) -> Node:
        export = {k: v for k, v in data["export"].items() if k not in ("plugins", "onnx")}
        config: dict[str, Any] = {"export": {**export, "plugins": plugins}}
        files: dict[str, str] = {}
        env: dict[str, str | None] = {}
        paths: dict[str, Any] = {"python_path": [str(p) for p in self.python_path]}
        for index, plugin in enumerate(plugins):
            if plugin.get("replace"):
                where = f"export.plugins[{index}].replace"
                label, digest = self.source_digest(plugin["replace"], where)
                files[label] = digest
                parameters = _parameters(Path(self.origins[label]), imports.split(plugin["replace"])[1])
                missing = [name for name in plugin["inputs"] if parameters is not None and name not in parameters
                           and name not in plugin.get("derive", {})]
                if missing:
                    raise self.spec.error(
                        f"'{plugin['replace']}' takes ({', '.join(parameters or [])}); the plugin's inputs are passed "
                        f"to it by name and it has no parameter {', '.join(missing)}", where,
                        hint="name the callable's parameters in export.plugins[].inputs, in the plugin's order; "
                             "compute the others with export.plugins[].derive")
                if parameters is not None:
                    self.check_sources(plugin, parameters, f"export.plugins[{index}].derive")
            if plugin.get("catalog"):  # a user's own PluginEntry: its output-shape rule shapes the export
                label, digest = self.source_digest(plugin["catalog"], f"export.plugins[{index}].catalog")
                files[label] = digest
        if data["export"].get("onnx"):
            onnx_path = self.spec.resolve_path(data["export"]["onnx"])
            files["onnx"] = self.file_digest(onnx_path, "export.onnx")
            self.origins["onnx"] = str(onnx_path)
            paths["onnx"] = str(onnx_path)
            self.check_onnx(onnx_path, data["export"]["onnx"])
        if data.get("model") and not data["capture"].get("from_dir"):  # scope call: a method's `self` is rebuilt
            model = data["model"]
            config["model"] = self.keyed_model(model)
            env = self.env_digests(model)
            files.update(self.model_sources(model))
            files.update(self.paths_digests(model.get("sources", []), "model.sources"))
        tools = environment.tools("onnx") if data["export"].get("onnx") else environment.tools("torch", "onnx")
        if data["export"]["exporter"] == "dynamo":
            tools |= environment.tools("onnxscript")
        self.keyed_python_path(config)
        return self.make("export", config, paths, {"capture": capture}, files, tools, env)

    def surgery_edits(self, data: dict[str, Any], plugins: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
        """The edits of the surgery stage, and the field each comes from.

        With `export.plugin_nodes: surgery`, each plugin's `subgraph` becomes a replace_subgraph
        edit (every occurrence), ahead of the pipeline's own `surgery` list.
        """
        export = data["export"]
        edits: list[Any] = []
        fields: list[str] = []
        if export.get("plugin_nodes") == "surgery" and not export.get("onnx"):
            for index, plugin in enumerate(plugins):
                if plugin.get("subgraph"):
                    edits.append({"replace_subgraph": {"every": True, **plugin["subgraph"], "op": plugin["op"],
                                                       "domain": plugin["domain"]}})
                    fields.append(f"export.plugins[{index}].subgraph")
            made = {e["replace_subgraph"]["op"] for e in [*edits, *data.get("surgery", [])] if "replace_subgraph" in e}
            made |= {e["rename_op"]["to"] for e in data.get("surgery", []) if "rename_op" in e}
            for index, plugin in enumerate(plugins):
                if plugin["op"] not in made:
                    raise self.spec.error(
                        f"export.plugin_nodes is 'surgery' but nothing makes the {plugin['op']} node",
                        f"export.plugins[{index}]", hint="give the plugin a `subgraph` (where its code sits in the "
                        "plain export), or a surgery edit replace_subgraph / rename_op that makes it")
        for index, edit in enumerate(data.get("surgery") or []):
            edits.append(edit)
            fields.append(f"surgery[{index}]")
        return edits, fields

    def surgery(self, data: dict[str, Any], plugins: list[dict[str, Any]], export: Node) -> Node:
        edits, fields = self.surgery_edits(data, plugins)
        config = {"surgery": edits, "contracts": plugins}
        return self.make("surgery", config, {"fields": fields}, {"onnx": export}, {},
                         environment.tools("onnx", "onnx-graphsurgeon", "onnxruntime"))

    def build(self, data: dict[str, Any], plugins: list[dict[str, Any]], graph: Node, variant: str) -> tuple[Node, str]:
        from orchestrator import plugins as catalog

        build = data["build"]
        backend, reason = environment.resolve_backend(build["backend"])
        if backend == "tensorrt" and not environment.importable("tensorrt"):
            raise self.spec.error("backend 'tensorrt' needs the tensorrt Python package, which is not importable",
                                  "build.backend", hint="pip install tensorrt (from NVIDIA's index), or use "
                                  "backend: onnxruntime to run the plugin graph on the CPU")
        config_build = {k: v for k, v in build.items() if k not in ("threads", "plugin_libraries", "backend")}
        config = {"build": {**config_build, "backend": backend}, "plugins": [
            {"op": p["op"], "version": p["version"], "namespace": p["namespace"],
             **({"catalog": p["catalog"]} if p.get("catalog") else {})} for p in plugins]}
        files: dict[str, str] = {}
        libraries = []
        for index, library in enumerate(build["plugin_libraries"]):
            path = self.spec.resolve_path(library)
            files[f"library:{Path(library).name}#{index}"] = self.file_digest(path, f"build.plugin_libraries[{index}]")
            self.origins[f"library:{Path(library).name}#{index}"] = str(path)
            libraries.append(str(path))
        if backend == "onnxruntime":
            tools = environment.tools("onnxruntime", "onnx", "numpy", "numba")
            for plugin in plugins:
                entry = catalog.lookup(plugin["op"], plugin.get("catalog"))
                label, digest = self.module_digest(entry.kernel.partition(":")[0], "build.backend")
                files[f"kernel:{label}"] = digest
        else:
            tools = {"tensorrt": environment.tool_identity("tensorrt"),
                     "gpu": environment.gpu_identity(build.get("gpu_type"))}
            if backend == "trtexec":
                tools["trtexec"] = environment.tool_identity("trtexec")
        paths = {"plugin_libraries": libraries, "threads": build["threads"],
                 "backend_reason": reason if build["backend"] == "auto" else None}
        return self.make("build", config, paths, {"graph": graph}, files, tools), reason

    def verify(self, data: dict[str, Any], build: Node, capture: Node) -> Node:
        return self.make("verify", {"verify": data["verify"]}, {}, {"build": build, "capture": capture}, {},
                         environment.tools("numpy"))

    def bench(self, data: dict[str, Any], build: Node, capture: Node) -> Node:
        settings = {k: v for k, v in data["bench"].items() if k != "enabled"}
        return self.make("bench", {"bench": settings}, {"threads": data["build"]["threads"]},
                         {"build": build, "capture": capture}, {}, environment.tools("numpy"))

    def variant_nodes(self, variant: Variant) -> tuple[list[Node], str]:
        data = variant.data
        try:
            plugins = self.plugins(data["export"])
        except UserError as exc:
            raise exc.located(str(self.spec.path), self.spec.line_of("export.plugins")) from None
        capture = self.capture(data, plugins)
        export = self.export(data, plugins, capture)
        nodes = [capture, export]
        graph = export
        if self.surgery_edits(data, plugins)[0]:
            graph = self.surgery(data, plugins, export)
            nodes.append(graph)
        build, reason = self.build(data, plugins, graph, variant.name)
        nodes += [build, self.verify(data, build, capture)]
        if data["bench"]["enabled"]:
            nodes.append(self.bench(data, build, capture))
        return nodes, reason


def capture_contract(export: dict[str, Any], plugins: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                                      dict[str, Any]]:
    """What a one-call capture must hold: each captured plugin input's rank and dtypes, and whose catalog
    rules the tensors must meet together (MSDA: S = sum of H·W, level starts); none for scope model.

    Checked by the capture, so that tensors the plugin would read out of bounds are bad input there.
    A given graph (export.onnx) decides itself what feeds its plugin (it may fix spatial_shapes as an
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


def _definition(source: Path, attrs: list[str]) -> ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | None:
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


def _parameters(source: Path, attrs: list[str]) -> list[str] | None:
    """The parameter names of a plain top-level function, read from its source; None when not that simple."""
    function = _definition(source, attrs)
    if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    arguments = function.args
    if arguments.vararg or arguments.kwarg:
        return None
    return [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]


def _accepts(source: Path, attrs: list[str]) -> Accepts | None:
    """What keyword arguments a top-level function, or a class (its own `__init__`), takes; None when unsure.

    A class is read only when calling it plainly runs an `__init__` written in its body (or, without
    bases, object's): no decorator, metaclass, `__new__`, or `__init__` bound another way.
    """
    definition = _definition(source, attrs)
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


def _defines(source: Path, name: str) -> bool | None:
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

    def bind(target: ast.AST) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.add(node.id)

    def visit(statements: list[ast.stmt]) -> bool:
        """Collect bound names; False when a construct makes the answer unknowable."""
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    bind(target)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                bind(node.target)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        return False
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.For | ast.AsyncFor):
                bind(node.target)
                if not (visit(node.body) and visit(node.orelse)):
                    return False
            elif isinstance(node, ast.With | ast.AsyncWith):
                for item in node.items:
                    if item.optional_vars is not None:
                        bind(item.optional_vars)
                if not visit(node.body):
                    return False
            elif isinstance(node, ast.If | ast.While):
                if not (visit(node.body) and visit(node.orelse)):
                    return False
            elif isinstance(node, ast.Try):
                for handler in node.handlers:
                    if handler.name:
                        names.add(handler.name)
                    if not visit(handler.body):
                        return False
                if not (visit(node.body) and visit(node.orelse) and visit(node.finalbody)):
                    return False
            elif not isinstance(node, _BINDS_NOTHING) or any(isinstance(n, ast.NamedExpr) for n in ast.walk(node)):
                return False  # match, try/except*, type aliases, walrus: not worth modelling
        return True

    if not visit(tree.body):
        return None
    return name in names


def make_plan(spec: Spec, digests: DigestCache, only: dict[str, list[str]] | None = None) -> Plan:
    """Plan every variant (or those matching `only`: {field or its last part: [values]})."""
    planner = Planner(spec, digests)
    nodes: dict[str, Node] = {}
    by_variant: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}
    variants = [v for v in spec.variants if _selected(v, only)]
    if not variants:
        raise UserError(f"--only matches no variant; variants are: {', '.join(v.name for v in spec.variants)}")
    for variant in variants:
        variant_nodes, reasons[variant.name] = planner.variant_nodes(variant)
        keys = []
        for node in variant_nodes:
            node = nodes.setdefault(node.key, node)
            node.variants.append(variant.name)
            keys.append(node.key)
        by_variant[variant.name] = keys
    ordered = sorted(nodes.values(), key=lambda n: STAGE_ORDER.index(n.kind))
    return Plan(spec, {n.key: n for n in ordered}, by_variant, reasons, dict(sorted(planner.watched.items())))


def _selected(variant: Variant, only: dict[str, list[str]] | None) -> bool:
    if not only:
        return True
    for wanted_field, values in only.items():
        matched = False
        for full, value in variant.choices.items():
            if full == wanted_field or full.rsplit(".", 1)[-1] == wanted_field:
                shown = value if isinstance(value, str) else str(value)
                matched = matched or shown in values or str(value).lower() in [v.lower() for v in values]
        if not matched:
            return False
    return True


# ---------------------------------------------------------------------- why is it stale

def _first_difference(old: Any, new: Any, at: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key not in old:
                return (f"{at}.{key}" if at else key, "(unset)", new[key])
            if key not in new:
                return (f"{at}.{key}" if at else key, old[key], "(unset)")
            found = _first_difference(old[key], new[key], f"{at}.{key}" if at else key)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{at}[{index}]")
            if found:
                return found
        return None
    return None if old == new else (at, old, new)


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 48 else text[:45] + "..."


NEVER_RUN = "no earlier run of this stage"


def _file_label(label: str, origin: str | None) -> str:
    """'module:examples.ops.msda' -> 'examples/ops/msda.py (module examples.ops.msda)'."""
    kind, _, name = label.partition(":")
    if origin is None:
        return name or label
    shown = origin
    with contextlib.suppress(ValueError):  # another drive (Windows)
        shown = os.path.relpath(origin)
    if len(shown) > len(origin):
        shown = origin
    described = {"module": f"module {name}", "tensor": f"tensor {name}", "library": "plugin library",
                 "onnx": "export.onnx", "source": "model.sources"}.get(kind, kind)
    return f"{shown} ({described})"


def _env_difference(old: dict[str, str | None], new: dict[str, str | None]) -> str | None:
    """The first declared environment variable whose value differs, by name only (values are hashed)."""
    for name in sorted(set(old) | set(new)):
        if name not in old:
            return f"environment variable added to model.env: {name}"
        if name not in new:
            return f"environment variable no longer in model.env: {name}"
        if old[name] != new[name]:
            before, after = ("unset" if value is None else "set" for value in (old[name], new[name]))
            change = "value changed" if before == after else f"{before} -> {after}"
            return f"environment variable changed: {name} ({change})"
    return None


def explain(node: Node, previous: dict[str, Any] | None) -> str:
    """Why `node` must run, compared with the parts of the artifact of the last run (if any)."""
    if previous is None:
        return NEVER_RUN
    if previous.get("stage_version") != node.parts["stage_version"]:
        return (f"stage implementation changed (version {previous.get('stage_version')} -> "
                f"{node.parts['stage_version']})")
    found = _first_difference(previous.get("config", {}), node.parts["config"])
    if found:
        return f"config changed: {found[0]} {_show(found[1])} -> {_show(found[2])}"
    old_files, new_files = previous.get("files", {}), node.parts["files"]
    for label in sorted(set(old_files) | set(new_files)):
        if old_files.get(label) != new_files.get(label):
            what = _file_label(label, node.origins.get(label))
            if label not in old_files:
                return f"file added: {what}"
            if label not in new_files:
                return f"file no longer used: {what}"
            return f"file changed: {what} (content {old_files[label][:8]} -> {new_files[label][:8]})"
    changed = _env_difference(previous.get("env", {}), node.parts.get("env", {}))
    if changed:
        return changed
    found = _first_difference(previous.get("tools", {}), node.parts["tools"])
    if found:
        return f"tool changed: {found[0]} {_show(found[1])} -> {_show(found[2])}"
    old_inputs = previous.get("inputs", {})
    for role, key in node.parts["inputs"].items():
        if old_inputs.get(role) != key:
            return f"input changed: {role}"
    return "artifact missing (removed, or damaged and discarded)"


class Explainer:
    """Why stale nodes must run, compared with the pipeline's last run record (asked in plan order).

    An "input changed" reason also names why that input changed, which was asked for before it.
    """

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.reasons: dict[str, str] = {}

    def previous_parts(self, node: Node) -> dict[str, Any] | None:
        for variant in node.variants:
            entry = self.record.get("stages", {}).get(f"{variant}/{node.kind}")
            if entry:
                return entry.get("parts")  # type: ignore[no-any-return]
        return None

    def why(self, node: Node, reason: str | None = None) -> str:
        """`reason` if given (e.g. a damaged artifact), else the first difference from the last run."""
        reason = reason or explain(node, self.previous_parts(node))
        if reason.startswith("input changed: "):
            upstream = self.reasons.get(node.inputs.get(reason.split(": ", 1)[1], ""))
            if upstream:
                reason += f" ({upstream})"
        self.reasons[node.key] = reason
        return reason

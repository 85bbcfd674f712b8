"""Spec → DAG of stage nodes, each with a content key. All cache-key logic lives here.

A key covers exactly what can change a stage's output:
  * the stage's normalised settings (defaults filled, canonical JSON: key order and YAML layout
    do not matter), without file locations;
  * the content digests of the files it reads (capture folders, plugin libraries, the source
    files of the model factory, the inputs callable and the replaced callables, `model.sources`);
  * the keys of its input artifacts;
  * the versions of the tools that produce it (torch, onnx, the build backend's runtime + GPU);
  * the stage implementation's version (`Stage.version`, bumped when a stage's output changes);
  * for the stages that import user code (capture, export): python_path as written, and the values
    (hashed) of the environment variables declared in model.env; no other variable.
The pipeline's name and file path are in no key. Variants whose stages coincide share nodes.

What goes into a key is each stage's `plan` (stages/<name>.py) to say; how it becomes a key is
`make_node`, here. What a stage's code imports beyond the files named there (a helper module the
factory imports, the library a model comes from) is known only once it has run: discovered.py records
it in the artifact's manifest and re-checks it before the artifact is reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator import stages
from orchestrator.config.spec import Spec, Variant
from orchestrator.errors import UserError
from orchestrator.planning import contracts
from orchestrator.planning.inputs import Inputs
from orchestrator.stages.base import Planned, Settings, Unkeyed
from orchestrator.stages.base import Variant as PlannedVariant
from orchestrator.store.digest import DigestCache, digest_json


@dataclass
class Node:
    """One stage to run (or reuse): what it gets, and what its key is made of."""

    kind: str
    key: str
    settings: Settings  # keyed, typed; `settings.keyed()` is parts["config"]
    unkeyed: Unkeyed  # where files are, run-time knobs; not keyed (file digests are, in parts["files"])
    inputs: dict[str, str]  # role -> key of the upstream node
    parts: dict[str, Any]  # everything that went into the key
    variants: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # label in parts["files"] -> the file it digests

    @property
    def short(self) -> str:
        return self.key[:8]

    @property
    def config(self) -> dict[str, Any]:
        """The keyed settings as JSON, by YAML section ({"verify": {...}})."""
        return self.parts["config"]  # type: ignore[no-any-return]


@dataclass
class Plan:
    spec: Spec
    nodes: dict[str, Node]  # by key, in topological order
    by_variant: dict[str, list[str]]  # variant name -> its node keys in stage order
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


def make_node(stage: stages.Stage, planned: Planned, context: Inputs) -> Node:
    """The node of `stage` for what its plan says: the one place a key is made."""
    parts: dict[str, Any] = {
        "stage": stage.name,
        "stage_version": stage.version,
        "config": planned.settings.keyed(),
        "inputs": {role: node.key for role, node in sorted(planned.inputs.items())},
        "files": dict(sorted(planned.files.items())),
        "tools": dict(sorted(planned.tools.items())),
    }
    if planned.env:  # only when declared, so that the keys of pipelines without model.env stay as they were
        parts["env"] = dict(sorted(planned.env.items()))
    # Not keyed: where the import system looks (every stage's, for re-checking the modules its run imported).
    unkeyed = Unkeyed(tuple(str(p) for p in context.python_path), dict(planned.unkeyed))
    origins = {label: context.origins[label] for label in planned.files if label in context.origins}
    return Node(stage.name, digest_json(parts), planned.settings, unkeyed, parts["inputs"], parts, origins=origins)


def variant_nodes(context: Inputs, variant: Variant) -> list[Node]:
    """The nodes of one variant, each stage planned with the nodes planned before it."""
    spec = context.spec
    try:
        plugins = contracts.resolve(spec, variant.data["export"], variant.data["build"])
    except UserError as exc:
        raise exc.located(str(spec.path), spec.line_of("export.plugins")) from None
    planning = PlannedVariant(variant.name, variant.data, tuple(plugins))
    planned: dict[str, Node] = {}
    for stage in stages.STAGES:
        made = stage.plan(context, planning, planned)
        if made is not None:
            planned[stage.name] = make_node(stage, made, context)
    return list(planned.values())


def make_plan(spec: Spec, digests: DigestCache, only: dict[str, list[str]] | None = None) -> Plan:
    """Plan every variant (or those matching `only`: {field or its last part: [values]})."""
    context = Inputs(spec, digests)
    nodes: dict[str, Node] = {}
    by_variant: dict[str, list[str]] = {}
    variants = [v for v in spec.variants if _selected(v, only)]
    if not variants:
        raise UserError(f"--only matches no variant; variants are: {', '.join(v.name for v in spec.variants)}")
    for variant in variants:
        keys = []
        for node in variant_nodes(context, variant):
            node = nodes.setdefault(node.key, node)
            node.variants.append(variant.name)
            keys.append(node.key)
        by_variant[variant.name] = keys
    order = stages.names()
    ordered = sorted(nodes.values(), key=lambda n: order.index(n.kind))
    return Plan(spec, {n.key: n for n in ordered}, by_variant, dict(sorted(context.watched.items())))


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



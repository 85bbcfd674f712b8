"""The plugin catalog: one entry per TensorRT plugin orchestrate knows.

An entry is the single source of truth for its plugin: input names, ranks and dtypes, attributes,
versions, the output shape rule, the precisions it runs, and the reference kernel that the
embedded backend runs in place of the plugin. The exporter, the build preflight and the verifier
all read it from here, so a new plugin is one new module and one line in `BUILTIN` (or, for a
user's own plugin, an entry in the user's code that `export.plugins[].catalog` points at).

Registration with ONNX Runtime, two ways, both driven by the entry alone:

* partitioned (the embedded backend's default): the build cuts the graph at every node whose op
  type is a declared plugin and records the node's op, domain and plugin version in runplan.json;
  the runner looks the entry up here (built in, or at the catalog path the pipeline declares for
  that op: never an import path read from the artifact) and calls its `kernel(arrays, attributes)`
  between ONNX Runtime sessions of the standard parts, handing NumPy arrays over without copies.
* one session: the embedded backend can also register the kernel as a Python op typed from the
  contract and run the whole graph in one session (the embedded backend: `register_python_op`,
  `single_session`); simpler to embed elsewhere, but slower at real sizes.

Importing the catalog is cheap: kernels (NumPy, Numba) load only when a plugin node runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import imports
from orchestrator.errors import UserError
from orchestrator.plugins.derive import Derivation
from orchestrator.plugins.versions import PluginVersion, VersionChoice, choose_version

if TYPE_CHECKING:
    from orchestrator.patterns import Pattern
    from orchestrator.plugins.recognise import Recogniser

Shape = tuple[int, ...]
Dim = int | str | None  # a known size, a symbolic dimension's name, or unknown
Dims = tuple[Dim, ...]  # a shape as the build knows it from ONNX shape inference

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
INT_DTYPES = ("int32", "int64", "int8", "uint8")


@dataclass(frozen=True)
class TensorContract:
    """One plugin input: its name, rank and the dtypes the plugin accepts."""

    name: str
    rank: int
    dtypes: tuple[str, ...]
    same_dtype_as: str | None = None  # e.g. sampling_locations must match value's dtype
    doc: str = ""

    @property
    def is_integer(self) -> bool:
        return all(d in INT_DTYPES for d in self.dtypes)


@dataclass(frozen=True)
class PluginEntry:
    """Everything orchestrate needs to export, check, build and emulate one plugin."""

    op: str
    versions: tuple[str, ...]
    inputs: tuple[TensorContract, ...]
    output_shape: Callable[[Sequence[Shape]], Shape]
    kernel: str  # import path of `kernel(inputs: list[np.ndarray], attrs: dict) -> list[np.ndarray]`
    precisions: tuple[str, ...] = ("fp32", "fp16")
    attributes: dict[str, str] = field(default_factory=dict)  # plugin field name -> "int", "float" or "string"
    # Per version: the TensorRT release that added it and the one that deprecated it (`version: auto`).
    lifecycle: Mapping[str, PluginVersion] = field(default_factory=dict)
    # Cross-input shape rules. Shapes may hold unknown dims (None, or a symbolic name) and be None
    # where the rank is unknown: only what is known can be compared.
    check_shapes: Callable[[Sequence[Dims | None]], list[str]] | None = None
    # Rules on the values of inputs the graph fixes (initializers, constants), None where not fixed.
    check_values: Callable[[Sequence[Dims | None], Sequence[Any]], list[str]] | None = None
    result_shape: Callable[[Shape], Shape] | None = None  # how the model used the output (e.g. merge heads)
    library: str = "libnvinfer_plugin (NVIDIA's plugins, initialised with init_libnvinfer_plugins)"
    output_dtype_from: int = 0  # the output has the dtype of this input
    # Rules that compute a plugin input from what a call has (see orchestrator.plugins.derive), by name.
    derivations: Mapping[str, Derivation] = field(default_factory=dict)
    # How the plugin's computation looks in a graph written without it (see orchestrator.patterns): what
    # the replace_pattern surgery edit looks for.
    patterns: tuple[Pattern, ...] = ()
    # Which calls of a live model the plugin can stand for (see orchestrator.plugins.recognise): what
    # `orchestrate init` looks for.
    recogniser: Recogniser | None = None
    doc: str = ""

    def derivation(self, rule: str) -> Derivation:
        """The rule named `rule`; a UserError listing the entry's rules when it has none of that name."""
        if rule not in self.derivations:
            known = ", ".join(self.derivations) or "none"
            raise UserError(f"{self.op} has no derivation '{rule}'; its rules are: {known}")
        return self.derivations[rule]

    def choose_version(self, requested: str, registered: Sequence[str] | frozenset[str] | None = None,
                       release: str | None = None) -> VersionChoice:
        """The version a node gets for `requested` ('auto' or a version), given what the build's TensorRT
        registers and its release where known (see orchestrator.plugins.versions)."""
        return choose_version(self.op, self.versions, self.lifecycle, requested, registered, release)

    def input_names(self) -> list[str]:
        return [contract.name for contract in self.inputs]

    @property
    def kernel_module(self) -> str:
        """The module the kernel lives in (what a build's key fingerprints)."""
        return imports.split(self.kernel)[0]

    def load_kernel(self) -> Callable[[list[Any], dict[str, Any]], list[Any]]:
        return imports.load(self.kernel)  # type: ignore[no-any-return]

    def summary_lines(self) -> list[str]:
        """The entry as `orchestrate doctor` lists it: versions, precisions, inputs, then its derivation rules."""
        inputs = ", ".join(f"{c.name}:{'|'.join(c.dtypes)}[rank {c.rank}]" for c in self.inputs)
        lines = [f"{self.op} v{'/'.join(self.versions)} ({', '.join(self.precisions)}): {inputs}"]
        for name, rule in self.derivations.items():
            lines.append(f"  derive rule {name}" + (f": {rule.doc}" if rule.doc else "")
                         + f" (from {'; '.join(rule.sources)})")
        for pattern in self.patterns:
            lines.append(f"  replace_pattern finds {pattern.looks_for}")
        return lines

    def output_dtype(self, dtypes: Sequence[str]) -> str:
        return dtypes[self.output_dtype_from]

    def contract_problems(self, shapes: Sequence[Dims | None], dtypes: Sequence[str],
                          names: Sequence[str] | None = None, cast_integers: bool = False,
                          values: Sequence[Any] | None = None) -> list[str]:
        """Everything wrong with these inputs for this plugin, as sentences (empty when they fit).

        Whole-model exports leave some dims (or a whole shape, None) unknown after shape inference;
        those are not mismatches, since the graph may well run: only known ranks and sizes are
        compared. `values` holds the inputs' values where the graph fixes them (None elsewhere), for
        rules the plugin itself never checks at run time. With `cast_integers`, an integer tensor of
        another integer dtype is accepted, because the exporter casts it to the contract's dtype.
        """
        names = list(names or self.input_names())
        problems: list[str] = []
        if len(shapes) != len(self.inputs):
            return [f"{self.op} takes {len(self.inputs)} inputs ({', '.join(self.input_names())}), got {len(shapes)}"]
        by_name = dict(zip(self.input_names(), dtypes, strict=True))
        for contract, label, shape, dtype in zip(self.inputs, names, shapes, dtypes, strict=True):
            shown = f"input '{label}'" + (f" ({contract.name})" if label != contract.name else "")
            if shape is not None and len(shape) != contract.rank:
                problems.append(f"{shown} must have rank {contract.rank}, got shape {list(shape)}")
            accepted = dtype in contract.dtypes or (cast_integers and contract.is_integer and dtype in INT_DTYPES)
            if not accepted:
                problems.append(f"{shown} must be {' or '.join(contract.dtypes)}, got {dtype}")
            if contract.same_dtype_as and by_name.get(contract.same_dtype_as) != dtype and accepted:
                problems.append(f"{shown} must have the same dtype as '{contract.same_dtype_as}' "
                                f"({by_name.get(contract.same_dtype_as)}), got {dtype}")
        return problems or self.rule_problems(shapes, values)

    def rule_problems(self, shapes: Sequence[Dims | None], values: Sequence[Any] | None = None) -> list[str]:
        """The entry's own rules on inputs of the right ranks and dtypes: how their shapes fit together
        (check_shapes), then the values the graph or the capture fixes (check_values; None where unknown)."""
        problems = self.check_shapes(shapes) if self.check_shapes is not None else []
        if not problems and self.check_values is not None and values is not None \
                and any(value is not None for value in values):
            problems = self.check_values(shapes, values)
        return problems


BUILTIN = {
    "MultiscaleDeformableAttnPlugin_TRT": "orchestrator.plugins.msda:ENTRY",
}


class CatalogError(UserError):
    """No entry for a plugin; `leaf` is the field of export.plugins[] at fault ('op' or 'catalog')."""

    def __init__(self, message: str, *, leaf: str = "op", **located: Any):
        super().__init__(message, **located)
        self.leaf = leaf


def _load_entry(path: str) -> PluginEntry:
    entry = imports.load(path)
    if not isinstance(entry, PluginEntry):
        raise TypeError(f"{path} is a {type(entry).__name__}, not a PluginEntry")
    return entry


def builtin(op: str) -> PluginEntry | None:
    path = BUILTIN.get(op)
    return _load_entry(path) if path else None


def lookup(op: str, catalog_path: str | None = None) -> PluginEntry:
    """The catalog entry for `op`: the user's own (at export.plugins[].catalog) or a built-in one.

    Every reader of an entry asks here with the pipeline's catalog path, so a user's entry counts
    wherever a built-in one does. A CatalogError names the field at fault (its `leaf`).
    """
    if catalog_path:
        try:
            entry = _load_entry(catalog_path)
        except (ImportError, AttributeError, TypeError) as exc:
            raise CatalogError(f"cannot load catalog entry '{catalog_path}': {exc}", leaf="catalog") from None
        if entry.op != op:
            raise CatalogError(f"catalog entry '{catalog_path}' describes {entry.op}, not {op}")
        return entry
    entry = builtin(op)
    if entry is None:
        import difflib

        close = difflib.get_close_matches(op, list(BUILTIN), n=1)
        raise CatalogError(f"no catalog entry for plugin '{op}'; known: {', '.join(BUILTIN)}",
                           hint=(f"did you mean '{close[0]}'?" if close else
                                 "point export.plugins[].catalog at your own PluginEntry"))
    return entry

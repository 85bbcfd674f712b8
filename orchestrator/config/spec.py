"""Pipeline file → validated, defaulted spec. Every user mistake becomes a `UserError` with file:line.

This is the only module that reads the YAML. It checks the file's size and encoding, parses it
while remembering the line of every key, bounds alias expansion (YAML bombs), validates against
`schemas/pipeline.schema.json`, fills the schema's defaults, expands the `matrix` into variants and
runs the checks that a schema cannot express (which capture source, known plugins).
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from orchestrator.config import checks
from orchestrator.errors import UserError

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_VARIANTS = 1000  # variants a matrix may make; ORCHESTRATE_MAX_VARIANTS overrides it
MAX_VARIANTS_ENV = "ORCHESTRATE_MAX_VARIANTS"
MATRIX_LISTS = ("include", "exclude")  # matrix keys that are not field paths
SCHEMA_PATH_CANDIDATES = (
    Path(__file__).resolve().parents[1] / "schemas" / "pipeline.schema.json",  # installed wheel
    Path(__file__).resolve().parents[2] / "schemas" / "pipeline.schema.json",  # source tree
)

FieldPath = tuple[str | int, ...]


def schema_path() -> Path:
    for candidate in SCHEMA_PATH_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("pipeline.schema.json is missing from the orchestrate installation")


def load_schema() -> dict[str, Any]:
    """The published schema, with build.backend's choices taken from the backends' registry: the file lists
    the built-in ones for editors; a backend registered beside them is a valid choice too."""
    from orchestrator import backends

    schema: dict[str, Any] = json.loads(schema_path().read_text())
    choice = schema["$defs"]["build"]["properties"]["backend"]
    choice["enum"] = ["auto", *backends.names()]
    return schema


def dotted(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class Variant:
    """One combination of the matrix (or the whole pipeline when there is no matrix)."""

    name: str  # "" for the single variant; e.g. "precision=fp16,module=encoder.layers.3.self_attn"
    data: dict[str, Any]
    choices: dict[str, Any] = field(default_factory=dict)  # every matrix field (dotted) → its value here
    extra: dict[str, Any] = field(default_factory=dict)  # fields a matrix include adds → their values
    origins: dict[str, FieldPath] = field(default_factory=dict)  # each field set here → where the matrix gives it


@dataclass
class Spec:
    """A validated pipeline: its data with defaults filled, and where each field was written."""

    path: Path
    data: dict[str, Any]
    lines: dict[FieldPath, int]
    variants: list[Variant]
    source: bytes = b""  # the file's bytes as read and validated (the fast path is keyed by them)

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.path.stem)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def line_of(self, field_path: str | FieldPath | None) -> int | None:
        """The line of the deepest written field on `field_path` ('capture.from_dir', ('export', 'plugins', 0))."""
        if field_path is None:
            return None
        parts = parse_field(field_path) if isinstance(field_path, str) else tuple(field_path)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None

    def error(self, message: str, field_path: str | FieldPath, hint: str | None = None) -> UserError:
        text = field_path if isinstance(field_path, str) else dotted(field_path)
        return UserError(message, field=text, file=str(self.path), line=self.line_of(field_path), hint=hint)

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)


def parse_field(text: str) -> FieldPath:
    parts: list[str | int] = []
    for piece in text.replace("[", ".").replace("]", "").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


# ----------------------------------------------------------------------------- reading YAML

def _file_kind(mode: int) -> str:
    for test, words in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def _not_regular(path: Path, mode: int) -> UserError:
    return UserError(f"is {_file_kind(mode)}, not a regular file; expected a pipeline YAML file", file=str(path),
                     hint="a pipeline is read from a file on disk; write generated text to a file first")


def _read(path: Path) -> tuple[bytes, str]:
    """The file's bytes, refusing before any open what is not a regular file (a device never ends, a FIFO blocks)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError("no such pipeline file", file=str(path)) from None
    except OSError as exc:
        raise UserError(f"cannot read pipeline file: {exc.strerror}", file=str(path)) from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError("is a directory, expected a pipeline YAML file", file=str(path))
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    if st.st_size > MAX_FILE_BYTES:
        raise UserError(f"file is {st.st_size / 1e6:.1f} MB; a pipeline file may be at most {MAX_FILE_BYTES >> 10} KiB",
                        file=str(path), hint="is this the right file? tensors belong in capture.from_dir")
    try:  # non-blocking and re-checked: the path may have been replaced by a FIFO since the stat
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(path, mode)
            raw = handle.read(MAX_FILE_BYTES + 1)  # bounded: a growing file cannot make us read forever
    except OSError as exc:
        raise UserError(f"cannot read pipeline file: {exc.strerror}", file=str(path)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise UserError(f"file is larger than {MAX_FILE_BYTES >> 10} KiB; a pipeline file may be at most that",
                        file=str(path))
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot be decoded",
                        file=str(path), line=line) from None


_YAML_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = (_YAML_TAG + "map", _YAML_TAG + "seq")
_SCALAR_TAGS = tuple(_YAML_TAG + kind for kind in ("str", "int", "float", "bool", "null"))
PLAIN_VALUES = "a pipeline holds plain JSON-like values: strings, numbers, booleans, null, lists and mappings"
# A plain scalar that YAML 1.2's core schema reads as a number; YAML 1.1 (PyYAML) reads 1e-4, 1E5, -.5 as text.
NUMBER_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
NUMBER_TEXT_TAG = "tag:orchestrate.dev,2024:number-text"
FINITE = "keys and results are plain JSON numbers"
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # integers are 64-bit, as ONNX and NumPy hold them


@functools.cache
def _loader_class() -> Any:
    """The safe loader, marking plain scalars that YAML 1.2 reads as numbers and YAML 1.1 as text.

    The mark lets the schema decide afterwards: a number where the schema wants one, text elsewhere.
    """
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            tag: str = super().resolve(kind, value, implicit)
            plain = kind is yaml.ScalarNode and implicit[0]
            if plain and tag == _YAML_TAG + "str" and NUMBER_TEXT.fullmatch(value):
                return NUMBER_TEXT_TAG
            return tag

    return Loader


def _out_of_range(text: str) -> str:
    shown = text if len(text) <= 24 else f"{text[:12]}… ({len(text)} characters)"
    return f"integer {shown} is out of range; integers must lie between -2**63 and 2**63-1 (64-bit)"


class _Builder:
    """Composed YAML nodes → plain data, with the line of every key and item and the paths of number text."""

    def __init__(self, path: Path):
        import yaml

        self.path = path
        self.constructor = yaml.SafeLoader("")
        self.lines: dict[FieldPath, int] = {}
        self.number_text: set[FieldPath] = set()
        self.budget = MAX_NODES

    def fail(self, message: str, node: Any, at: FieldPath | None, hint: str | None = None) -> UserError:
        return UserError(message, field=dotted(at) if at else None, file=str(self.path),
                         line=node.start_mark.line + 1, hint=hint)

    def build(self, node: Any, at: FieldPath, key: bool = False) -> Any:
        import yaml

        self.budget -= 1
        if self.budget < 0:
            raise self.fail(f"the document expands to more than {MAX_NODES} values (aliases repeated too often?)",
                            node, None)
        if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_TAGS:
            raise self.fail(f"the tag {node.tag} is not allowed; a pipeline holds plain mappings, lists and scalars "
                            "(strings, numbers, booleans, null)", node, at)
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, at)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*at, index)] = item.start_mark.line + 1
                items.append(self.build(item, (*at, index)))
            return items
        return self.scalar(node, at, key)

    def mapping(self, node: Any, at: FieldPath) -> dict[str, Any]:
        self.constructor.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.build(key_node, at, key=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise self.fail("mapping keys must be plain scalars", key_node, None)
            key = str(key)
            if key in result:
                raise self.fail(f"duplicate key '{key}'", key_node, (*at, key))
            self.lines[(*at, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*at, key))
        return result

    def scalar(self, node: Any, at: FieldPath, key: bool) -> Any:
        import yaml

        if node.tag == NUMBER_TEXT_TAG:
            if not key:
                self.number_text.add(at)
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise self.not_plain(node, at)
        if node.tag == _YAML_TAG + "int" and len(node.value) > 100:  # before int(): 4300 digits would raise
            raise self.fail(_out_of_range(node.value), node, at, hint="quote it to pass it as text")
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
            problem = " ".join(str(exc).split())
            raise self.fail(f"cannot read value: {problem}", node, at) from None
        if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            raise self.fail(_out_of_range(node.value), node, at, hint="quote it to pass it as text")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"{node.value} is not a finite number; {FINITE}", node, at,
                            hint="leave the field out to get its default")
        return value

    def not_plain(self, node: Any, at: FieldPath) -> UserError:
        """A date, binary data or another typed scalar: JSON has no such value, so no key could hold it."""
        kind = node.tag[len(_YAML_TAG):] if node.tag.startswith(_YAML_TAG) else None
        if kind == "timestamp":
            return self.fail(f"{node.value} is a YAML date or time; {PLAIN_VALUES}", node, at,
                             hint=f"quote it ('{node.value}') to pass it as text")
        if kind == "binary":
            return self.fail(f"!!binary data is not allowed; {PLAIN_VALUES}", node, at,
                             hint="give the data as text, or as the path of a file holding it")
        return self.fail(f"the tag {node.tag} is not allowed; {PLAIN_VALUES}", node, at)


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[FieldPath, int], set[FieldPath]]:
    """Parse YAML into plain data, the line of every mapping key and list item, and where number text stands."""
    import yaml

    try:
        root = yaml.compose(text, Loader=_loader_class())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise UserError(f"YAML syntax error: {problem}", file=str(path), line=line) from None
    except yaml.YAMLError as exc:
        raise UserError(f"YAML error: {exc}", file=str(path)) from None
    if root is None:
        raise UserError("the pipeline file is empty; expected a mapping with version, export, …", file=str(path))
    builder = _Builder(path)
    data = builder.build(root, ())
    builder.lines[()] = root.start_mark.line + 1
    return data, builder.lines, builder.number_text


# ----------------------------------------------------------------------------- schema

_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return "string"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Any, schema_root: dict[str, Any]) -> tuple[str, FieldPath, str | None]:
    """Turn one jsonschema error into (message, field path to point at, hint)."""
    at: FieldPath = tuple(error.absolute_path)
    validator, value, schema = error.validator, error.instance, error.schema
    description = schema.get("description") if isinstance(schema, dict) else None
    if validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = [key for key in value if key not in schema.get("properties", {})]
        key = unknown[0] if unknown else "?"
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        expected = ", ".join(allowed) if allowed else "no keys"
        return f"unknown key '{key}'; expected one of: {expected}", (*at, key), hint
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"missing required key '{missing}'", at, None
    if validator == "type":
        wanted = schema["type"]
        words = " or ".join(str(_TYPE_WORDS.get(t, t)) for t in (wanted if isinstance(wanted, list) else [wanted]))
        return f"expected {words}, got {_kind(value)} {_short(value)}", at, description
    if validator == "enum":
        return f"expected one of {', '.join(map(str, schema['enum']))}; got {_short(value)}", at, None
    if validator == "const":
        return f"expected {_short(schema['const'])}; got {_short(value)}", at, description
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
        return f"must be {sign} {error.validator_value}; got {_short(value)}", at, description
    if validator == "pattern" and "propertyNames" in error.schema_path:  # a key: point at the key itself
        return f"key {_short(value)} is not valid here", (*at, value), description
    if validator == "pattern":
        return f"{_short(value)} is not valid here", at, description
    if validator == "oneOf":
        return f"{_short(value)} is not valid here", at, description
    if validator in ("minItems", "minProperties", "maxProperties", "minLength"):
        if validator == "maxProperties" and "surgery" in at:
            return "each surgery edit must have exactly one key (rename_op, set_attrs, …)", at, None
        return f"{error.message}", at, description
    if validator == "propertyNames":
        return f"{error.message}", at, "matrix keys are dotted field paths such as build.precision"
    return error.message, at, description


def _resolve_ref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **merged}
    return schema


def _types_at(parts: FieldPath, node: dict[str, Any], root: dict[str, Any]) -> set[str]:
    """The JSON types the schema accepts at `parts`, over every oneOf/anyOf alternative on the way."""
    node = _resolve_ref(node, root)
    found: set[str] = set()
    for alternative in [*node.get("oneOf", []), *node.get("anyOf", [])]:
        found |= _types_at(parts, alternative, root)
    if not parts:
        kind = node.get("type")
        return found | set(kind if isinstance(kind, list) else [kind] if kind else [])
    part = parts[0]
    if isinstance(part, int):
        child = node.get("items")
    else:
        child = node.get("properties", {}).get(part, node.get("additionalProperties"))
    if isinstance(child, dict):
        found |= _types_at(parts[1:], child, root)
    return found


def _schema_place(at: FieldPath) -> FieldPath:
    """Where the schema describes the value at `at`: a matrix value, include or exclude entry stands for its field."""
    if len(at) < 3 or at[0] != "matrix" or not isinstance(at[1], str):
        return at
    if at[1] not in MATRIX_LISTS:
        return (*parse_field(at[1]), *at[3:])
    if len(at) >= 4 and isinstance(at[3], str):
        return (*parse_field(at[3]), *at[4:])
    return at


def _number(text: str, integer: bool) -> int | float | None:
    """YAML 1.2's number for `text`: an int where the text is one, or where an integer field gets an integral
    value (1e5 is 100000); else a float. None when out of range."""
    if not (integer or re.fullmatch(r"[-+]?[0-9]+", text)):
        return float(text)
    exact = Decimal(text)
    if exact.adjusted() > 19:
        return None
    if exact != exact.to_integral_value():
        return float(text)  # an integer field refuses it by its type, with the number in the message
    whole = int(exact)
    return whole if INT_MIN <= whole <= INT_MAX else None


def coerce_numbers(data: Any, number_text: set[FieldPath], lines: dict[FieldPath, int], path: Path,
                   schema: dict[str, Any]) -> None:
    """Read plain 1e-4, 1E5 or -.5 as numbers where the schema wants a number (in place); text stays text
    elsewhere, and free-form mappings (kwargs) keep what YAML gave."""
    for at in sorted(number_text, key=str):
        kinds = _types_at(_schema_place(at), schema, schema)
        if not kinds & {"number", "integer"}:
            continue
        parent: Any = data
        for part in at[:-1]:
            parent = parent[part]
        text = parent[at[-1]]
        value = _number(text, integer="number" not in kinds)
        if value is None or not math.isfinite(value):
            problem = _out_of_range(text) if value is None else f"{text} is not a finite number; {FINITE}"
            raise UserError(problem, field=dotted(at), file=str(path), line=_line_of(at, lines))
        parent[at[-1]] = value


def _line_of(at: FieldPath, lines: dict[FieldPath, int]) -> int | None:
    while at and at not in lines:
        at = at[:-1]
    return lines.get(at)


def fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Write every default the schema declares into `instance` (recursively, in place)."""
    schema = _resolve_ref(schema, root)
    if isinstance(instance, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            sub_resolved = _resolve_ref(sub, root)
            if key not in instance and "default" in sub_resolved:
                instance[key] = copy.deepcopy(sub_resolved["default"])
            if key in instance:
                instance[key] = fill_defaults(instance[key], sub_resolved, root)
    if isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key in list(instance):
            if key not in schema.get("properties", {}):
                instance[key] = fill_defaults(instance[key], schema["additionalProperties"], root)
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [fill_defaults(item, schema["items"], root) for item in instance]
    return instance


def validate(data: Any, lines: dict[FieldPath, int], path: Path) -> None:
    import jsonschema

    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    problems = []
    for error in errors:
        message, at, hint = _describe(error, schema)
        line = None
        probe = at
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        problems.append((line or lines.get((), 0), dotted(at), message, hint))
    # A misspelt required key is reported as unknown and as missing: the unknown one says more.
    problems.sort(key=lambda p: (p[2].startswith("missing required key"), p[0], p[1]))
    first = problems[0]
    extra = ""
    if len(problems) > 1:
        extra = "\n" + "\n".join(
            f"{path}:{line}: {fld + ': ' if fld else ''}{msg}" for line, fld, msg, _ in problems[1:10])
        if len(problems) > 10:
            extra += f"\n… and {len(problems) - 10} more"
    raise UserError(first[2] + extra, field=first[1] or None, file=str(path), line=first[0], hint=first[3])


# ----------------------------------------------------------------------------- matrix

def _set_field(data: dict[str, Any], parts: FieldPath, value: Any) -> None:
    target: Any = data
    for part in parts[:-1]:
        if isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
            continue
        if not isinstance(target, dict):
            raise KeyError(part)
        target = target.setdefault(part, {})
    if isinstance(target, list):
        target[int(parts[-1])] = value
    else:
        target[parts[-1]] = value


def _schema_knows(parts: FieldPath, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    """Whether the schema has a place for the field `parts` (free-form mappings such as kwargs accept any key)."""
    node = schema
    for part in parts:
        node = _resolve_ref(node, root)
        if isinstance(part, int):
            if not isinstance(node.get("items"), dict):
                return False
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:  # a free-form mapping (kwargs) takes any key; a closed one or a scalar takes none
            return node.get("additionalProperties") is not False and node.get("type") in (None, "object")
    return True


def _field_names(schema: dict[str, Any], root: dict[str, Any], prefix: str = "", depth: int = 2) -> list[str]:
    names = []
    for key, sub in _resolve_ref(schema, root).get("properties", {}).items():
        names.append(prefix + key)
        if depth > 1:
            names += _field_names(sub, root, f"{prefix}{key}.", depth - 1)
    return names


def max_variants() -> int:
    """The most variants a matrix may make: MAX_VARIANTS, or ORCHESTRATE_MAX_VARIANTS where set."""
    raw = os.environ.get(MAX_VARIANTS_ENV, "").strip()
    if not raw:
        return MAX_VARIANTS
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{MAX_VARIANTS_ENV} must be a positive integer, got '{raw}'")
    return int(raw)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _matches(entry: dict[str, Any], choices: dict[str, Any]) -> bool:
    """Whether a combination has every value `entry` gives for a matrix field (its other fields aside)."""
    return all(_same(value, choices[key]) for key, value in entry.items() if key in choices)


def _get_field(data: Any, parts: FieldPath) -> Any:
    for part in parts:
        listed = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not listed and not (isinstance(data, dict) and part in data):
            return None
        data = data[part]
    return copy.deepcopy(data)


def _short_names(keys: list[str], others: list[str]) -> dict[str, str]:
    """'build.precision' → 'precision' where the last part tells the field apart (matrix fields among
    themselves; fields an include adds also from those)."""
    def leaf(key: str) -> str:
        return key.rsplit(".", 1)[-1]

    short = {k: leaf(k) if sum(leaf(o) == leaf(k) for o in keys) == 1 else k for k in keys}
    taken = set(short.values())
    for key in others:
        unique = sum(leaf(o) == leaf(key) for o in others) == 1 and leaf(key) not in taken
        short[key] = leaf(key) if unique else key
    return short


class _Expansion:
    """The matrix → variants: every combination of the field lists, less `exclude`, plus `include`."""

    def __init__(self, matrix: dict[str, Any], path: Path, lines: dict[FieldPath, int],
                 schema: dict[str, Any] | None):
        self.lists: dict[str, list[Any]] = {k: v for k, v in matrix.items() if k not in MATRIX_LISTS}
        self.includes: list[dict[str, Any]] = matrix.get("include") or []
        self.excludes: list[dict[str, Any]] = matrix.get("exclude") or []
        self.path, self.lines, self.schema = path, lines, schema
        added = [k for entry in self.includes for k in entry if k not in self.lists]
        self.short = _short_names(list(self.lists), list(dict.fromkeys(added)))
        self.limit = max_variants()

    def error(self, message: str, at: FieldPath, hint: str | None = None) -> UserError:
        return UserError(message, field=dotted(at), file=str(self.path), line=_line_of(at, self.lines), hint=hint)

    def unknown(self, key: str, at: FieldPath) -> UserError:
        close = difflib.get_close_matches(key, _field_names(self.schema, self.schema), n=1) if self.schema else []
        return self.error(f"matrix field '{key}' does not name a field of the pipeline", at,
                          hint=f"did you mean '{close[0]}'?" if close else None)

    def check_fields(self) -> None:
        schema = self.schema
        for key in self.lists:
            if schema is not None and not _schema_knows(parse_field(key), schema, schema):
                raise self.unknown(key, ("matrix", key))
        for name, entries in (("include", self.includes), ("exclude", self.excludes)):
            for index, entry in enumerate(entries):
                for key in entry:
                    at: FieldPath = ("matrix", name, index, key)
                    if schema is not None and not _schema_knows(parse_field(key), schema, schema):
                        raise self.unknown(key, at)
                    if name == "exclude" and key not in self.lists:
                        fields = ", ".join(self.lists) or "none is given"
                        raise self.error(f"'{key}' is not a matrix field; exclude removes combinations of the "
                                         f"matrix fields ({fields})", at)

    def check_count(self, count: int, what: str) -> None:
        """Refuse more variants than the limit, before any is made (a 10**6 matrix is refused at once)."""
        if count > self.limit:
            shown = str(count) if count < 10**18 else f"about 10^{int(math.log10(count))}"
            raise self.error(f"the matrix makes {shown} {what}; at most {self.limit} variants are allowed",
                             ("matrix",), hint=f"use fewer values, exclude some, or set {MAX_VARIANTS_ENV}")

    def combinations(self) -> list[Variant]:
        """Every combination of the field lists that no exclude entry matches (each entry must match one)."""
        if not self.lists:
            return []
        sizes = [len(values) for values in self.lists.values()]
        self.check_count(math.prod(sizes), f"combinations ({' × '.join(map(str, sizes))})")
        hit = [False] * len(self.excludes)
        kept = []
        for combo in itertools.product(*self.lists.values()):
            choices = dict(zip(self.lists, combo, strict=True))
            dropped = [index for index, entry in enumerate(self.excludes) if _matches(entry, choices)]
            for index in dropped:
                hit[index] = True
            if not dropped:
                kept.append(Variant(self.name(choices, {}), {}, choices, {}, {k: ("matrix", k) for k in choices}))
        for index, entry in enumerate(self.excludes):
            if not hit[index]:
                values = "; ".join(f"{k}: {', '.join(map(_label, self.lists[k]))}" for k in entry)
                raise self.error("this exclude matches no combination of the matrix", ("matrix", "exclude", index),
                                 hint=f"the matrix has {values}")
        return kept

    def include(self, variants: list[Variant], base: dict[str, Any]) -> list[Variant]:
        """Add each include's other fields to the combinations it matches, or make it a variant of its own."""
        added = []
        for index, entry in enumerate(self.includes):
            at: FieldPath = ("matrix", "include", index)
            extra = {k: v for k, v in entry.items() if k not in self.lists}
            matching = [v for v in variants if _matches(entry, v.choices)]
            for variant in matching:
                variant.extra.update(copy.deepcopy(extra))
                variant.origins.update({k: (*at, k) for k in extra})
            if not matching:  # its own variant: the pipeline's values for the matrix fields it does not give
                choices = {k: copy.deepcopy(entry[k]) if k in entry else _get_field(base, parse_field(k))
                           for k in self.lists}
                added.append(Variant(self.name(choices, extra), {}, choices, copy.deepcopy(extra),
                                     {k: (*at, k) for k in entry}))
        return variants + added

    def name(self, choices: dict[str, Any], extra: dict[str, Any]) -> str:
        return ",".join(f"{self.short[k]}={_label(v)}" for k, v in [*choices.items(), *extra.items()])

    def resolved(self, base: dict[str, Any], variant: Variant) -> dict[str, Any]:
        data = copy.deepcopy(base)
        data.pop("matrix", None)
        for key, at in variant.origins.items():
            value = variant.choices[key] if key in variant.choices else variant.extra[key]
            try:
                _set_field(data, parse_field(key), copy.deepcopy(value))
            except (KeyError, IndexError, ValueError):
                raise self.unknown(key, at) from None
        return data

    def expand(self, base: dict[str, Any]) -> list[Variant]:
        self.check_fields()
        variants = self.include(self.combinations(), base)
        if not variants:
            raise self.error("exclude removes every combination of the matrix", ("matrix", "exclude"))
        self.check_count(len(variants), "variants")
        seen: dict[str, Variant] = {}
        for variant in variants:
            if variant.name in seen:
                at = next(iter(variant.origins.values()))[:3]
                raise self.error(f"this include makes variant '{variant.name}' a second time", at)
            seen[variant.name] = variant
            variant.data = self.resolved(base, variant)
        return variants


def expand_matrix(data: dict[str, Any], path: Path, lines: dict[FieldPath, int],
                  schema: dict[str, Any] | None = None) -> list[Variant]:
    """One variant per matrix combination (none: the whole pipeline as the one variant)."""
    matrix: dict[str, Any] = data.get("matrix") or {}
    if not matrix:
        return [Variant("", data)]
    return _Expansion(matrix, path, lines, schema).expand(data)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def load(path: str | Path) -> Spec:
    """Read, validate and default a pipeline file; raise `UserError` naming file:line:field on any problem."""
    path = Path(path)
    raw, text = _read(path)
    data, lines, number_text = _parse_yaml(text, path)
    if not isinstance(data, dict):
        raise UserError(f"expected a mapping at the top of the file, got {_kind(data)}", file=str(path), line=1)
    schema = load_schema()
    coerce_numbers(data, number_text, lines, path, schema)
    validate(data, lines, path)
    fill_defaults(data, schema, schema)
    variants = expand_matrix(data, path, lines, schema)
    spec = Spec(path=path, data=data, lines=lines, variants=variants, source=raw)
    for variant in variants:
        if variant.name:
            try:
                validate(variant.data, lines, path)
            except UserError as exc:
                raise _in_matrix(exc, variant, lines) from None
            fill_defaults(variant.data, schema, schema)
        checks.check_variant(spec, variant)
    return spec


def _in_matrix(error: UserError, variant: Variant, lines: dict[FieldPath, int]) -> UserError:
    """An error in a variant points at the matrix entry (a field's list, an include) whose value caused it."""
    for key in sorted(variant.origins, key=len, reverse=True):
        wanted = dotted(parse_field(key))
        if error.field and (error.field == wanted or error.field.startswith((wanted + ".", wanted + "["))):
            at = variant.origins[key]
            message = error.message.split("\n", 1)[0]
            return UserError(f"{message} (variant {variant.name})", field=dotted(at), file=error.file,
                             line=lines.get(at, error.line), hint=error.hint)
    return error

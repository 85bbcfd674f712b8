"""The package's structure, measured: no import cycles, backend and plugin names only in their homes,
functions short enough to read at once. `python tests/test_structure.py` prints the counts."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "orchestrator"
LONGEST_FUNCTION = 60
# Mentions of a backend's name that are not the backend: graphsurgeon's constant folding evaluates with the
# onnxruntime library, whose version is therefore in the surgery key; verify runs the graph a replace_pattern
# surgery edited with it, to compare each plugin node with the subgraph it replaced; and every build writes the
# equivalent trtexec command line, which the reports show under that tool's name (report.json's "trtexec").
NOT_THE_BACKEND = {"stages/surgery.py": ("onnxruntime",), "patterns.py": ("onnxruntime",),
                   "reports/": ("trtexec",)}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {sub.lineno for statement in node.body for sub in ast.walk(statement) if hasattr(sub, "lineno")}
    return lines


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports, at any depth of its code (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                found.add(target)
    return found


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan), counting imports inside functions too."""
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def mentions(words: tuple[str, ...], home: str, allowed: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Lines outside `home` (a folder of the package) that name one of `words` (but the `allowed` ones, by place)."""
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(home):
            continue
        exempt = {word for place, names in (allowed or {}).items() if relative.startswith(place) for word in names}
        words_here = tuple(word for word in words if word not in exempt)
        for number, line in enumerate(path.read_text().splitlines(), 1):
            hits += [f"{relative}:{number}: {word}" for word in words_here
                     if re.search(rf"\b{re.escape(word)}\b", line)]
    return hits


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    return found


def backend_names() -> tuple[str, ...]:
    from orchestrator import backends

    return backends.names()


def plugin_words() -> tuple[str, ...]:
    """Each built-in plugin's op and input names."""
    from orchestrator import plugins as catalog

    words: set[str] = set()
    for op in catalog.BUILTIN:
        entry = catalog.lookup(op)
        words |= {entry.op, *(contract.name for contract in entry.inputs if "_" in contract.name)}
    return tuple(sorted(words))


def unlisted_modules() -> list[str]:
    """Modules of the package that README's Layout section does not name."""
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    words = set(re.findall(r"[A-Za-z_]+", layout))
    return [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
            if path.stem not in ("__init__", "__main__") and path.stem not in words]


def test_readme_layout_names_every_module() -> None:
    assert unlisted_modules() == []


def test_no_import_cycle() -> None:
    assert import_cycles() == []


def test_backend_names_only_in_backends() -> None:
    assert mentions(backend_names(), "backends/", NOT_THE_BACKEND) == []


def test_plugin_names_only_in_plugins() -> None:
    assert mentions(plugin_words(), "plugins/") == []


def test_no_function_longer_than_a_screen() -> None:
    assert long_functions() == []


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    cycles = import_cycles()
    print(f"import cycles: {len(cycles)}", *(" <-> ".join(c) for c in cycles), sep="\n  ")
    for title, hits in (("backend names outside backends/", mentions(backend_names(), "backends/", NOT_THE_BACKEND)),
                        ("plugin names outside plugins/", mentions(plugin_words(), "plugins/")),
                        (f"functions over {LONGEST_FUNCTION} lines", long_functions()),
                        ("modules README's Layout does not name", unlisted_modules())):
        print(f"{title}: {len(hits)}", *hits, sep="\n  ")

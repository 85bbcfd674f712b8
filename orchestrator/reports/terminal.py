"""Terminal tables for `plan` and `show` (rich)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator import ui
from orchestrator.planning.plan import Node, Plan
from orchestrator.run.executor import variant_label
from orchestrator.store.store import Artifact, Store
from orchestrator.ui import shown_path

if TYPE_CHECKING:
    from orchestrator.api import PlanResult


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def print_plan(result: PlanResult) -> None:
    """The variants of a matrix as a table, then one line per stage: cached, failed or run (and why)."""
    from rich.table import Table

    plan = result.plan
    console = _console()
    matrix = [v for v in plan.spec.variants if v.name and v.name in plan.by_variant]
    if matrix:
        table = Table(title=f"{plan.spec.name}: {len(matrix)} variants", title_justify="left")
        added = list(dict.fromkeys(key for variant in matrix for key in variant.extra))  # from matrix.include
        for field in [*matrix[0].choices, *added]:
            table.add_column(field)
        table.add_column("stages")
        for variant in matrix:
            extra = [str(variant.extra[key]) if key in variant.extra else "" for key in added]
            table.add_row(*[str(v) for v in variant.choices.values()], *extra,
                          str(len(plan.by_variant[variant.name])))
        console.print(table)
    colour = ui.colour_enabled()
    for row in result.rows:
        print(ui.stage_line(row.kind, row.short, row.state, None, row.detail, row.label, colour))
    print(f"{result.stale} of {len(plan.nodes)} stages would run" if result.stale else "nothing to do: all cached")


def print_show(plan: Plan, store: Store, stage: str | None) -> None:
    """The last results of every stage (or of one), where each artifact is, then the details per stage."""
    console = _console()
    nodes = [node for node in plan.order() if not stage or node.kind == stage]
    details = _results_table(console, plan, store, nodes)
    _folders(console, plan, store, nodes)
    for node, artifact in details:
        tables = DETAILS.get(node.kind)
        if tables is not None:
            tables(console, node, artifact, plan, stage == node.kind)
        elif stage and node.kind == stage:  # a stage with no tables of its own: its result as JSON
            import json

            console.print_json(json.dumps(artifact.result, default=str))
    if stage is None:
        _report_extras(console, plan, store)


def _results_table(console: Any, plan: Plan, store: Store, nodes: list[Node]) -> list[tuple[Node, Artifact]]:
    """One row per stage: key, variant, state, time, summary; returns the stages that have an artifact."""
    from rich.table import Table

    table = Table(title=f"{plan.spec.name}: last results", title_justify="left")
    for column in ("stage", "key", "variant", "state", "seconds", "summary"):
        table.add_column(column, overflow="fold")
    details = []
    for node in nodes:
        artifact = store.get(node.kind, node.key)
        if artifact is None:
            table.add_row(node.kind, node.short, variant_label(node, plan) or "-", "[yellow]not built[/yellow]", "",
                          "")
            continue
        manifest = artifact.manifest
        state = "[green]ok[/green]" if manifest.get("passed", True) else "[red]failed[/red]"
        table.add_row(node.kind, node.short, variant_label(node, plan) or "-", state,
                      f"{manifest.get('seconds', 0):.2f}", manifest.get("summary", ""))
        details.append((node, artifact))
    console.print(table)
    return details


def _folders(console: Any, plan: Plan, store: Store, nodes: list[Node]) -> None:
    """Where each stage's files are, one line per stage and never folded, so a path can be copied whole."""
    from rich.markup import escape

    console.print("[bold]artifact folders[/bold]")
    for node in nodes:
        label = variant_label(node, plan)
        prefix = f"{node.kind:<8} {node.short}  " + (f"[{label}] " if label else "")
        artifact = store.get(node.kind, node.key)
        if artifact is None:
            line = prefix + f"not built: run `orchestrate run {plan.spec.path}`"
        else:
            line = prefix + shown_path(artifact.path) + "  " + " ".join(contents(artifact))
        console.print(escape(line), soft_wrap=True)


def contents(artifact: Artifact) -> list[str]:
    """The top-level files and folders (with '/') of an artifact, from its manifest."""
    names = {relative.split("/", 1)[0] + ("/" if "/" in relative else "") for relative in artifact.manifest["files"]}
    return sorted(names)


def _report_extras(console: Any, plan: Plan, store: Store) -> None:
    """The rest of what report.html shows: the equivalent trtexec commands, tool versions, the report's path."""
    from rich.markup import escape
    from rich.table import Table

    from orchestrator.reports import html as report

    record = report.collect(plan, store, shown=shown_path)
    for variant, command in record["trtexec"].items():
        label = escape(f" [{variant}]") if variant else ""
        console.print(f"[bold]trtexec{label}:[/bold] {escape(command)}", soft_wrap=True)
    tools = Table(title="tools", title_justify="left")
    tools.add_column("tool")
    tools.add_column("version")
    for name, version in record["tools"].items():
        tools.add_row(name, version)
    console.print(tools)
    page = report.report_dir(store, plan.spec.name) / "report.html"
    if page.is_file():
        console.print(f"report: {page}")


VERIFY_COLUMNS = ("output", "max abs", "mean abs", "max rel (|ref|>atol)", "outside tol", "atol to pass", "NaN",
                  "Inf", "all-zero", "result")


def _verify_table(console: Any, node: Node, artifact: Artifact, plan: Plan, full: bool) -> None:
    """Statistics per output and plugin node; the reasons a check failed follow the table in full. An
    output left out by verify.skip is a row that says so; a vacuous check that was allowed says so."""
    from rich.markup import escape

    label = variant_label(node, plan)
    rows = list(artifact.result.get("outputs", {}).items())
    rows += [(f"plugin {stats.get('module') or name}", stats)
             for name, stats in artifact.result.get("plugin_nodes", {}).items()]
    cells = []
    reasons = []
    for name, stats in rows:
        if stats.get("shape_mismatch"):
            cells.append([name, *[""] * 8, "shape mismatch"])
            continue
        relative = "no |ref|>atol" if stats.get("max_rel") is None else f"{stats['max_rel']:.2e}"
        verdict = "failed" if stats["failed"] else ("vacuous" if stats.get("vacuous") else "passed")
        cells.append([name, _number(stats["max_abs"]), _number(stats["mean_abs"]), relative,
                      f"{stats['outside']}/{stats['elements']}", _number(stats["min_atol_to_pass"]),
                      str(stats["nan"]), str(stats["inf"]), "yes" if stats["all_zero"] else "no", verdict])
        reasons += [f"{name}: {reason}" for reason in stats["failed"]]
    cells += [[name, *[""] * 8, "skipped"] for name in artifact.result.get("skipped", [])]
    _statistics(console, f"verify {node.short}{f' [{label}]' if label else ''}", list(VERIFY_COLUMNS), cells)
    for reason in reasons:
        console.print(f"[red]{escape(reason)}[/red]", soft_wrap=True)


def _number(value: float | None) -> str:
    """A statistic for the verify table: 'n/a' where it was taken over no element."""
    return "n/a" if value is None else f"{value:.2e}"


def _bench_table(console: Any, node: Node, artifact: Artifact, plan: Plan, full: bool) -> None:
    figures = artifact.result
    label = variant_label(node, plan)
    title = (f"bench {node.short}{f' [{label}]' if label else ''} ({figures.get('backend')}, "
             f"{figures.get('timer')})")
    headers = ["", "min ms", "median ms", "p90 ms", "p99 ms", "runs", "per s", "MB in", "MB out", "GB/s"]
    row = ["latency", f"{figures['min_ms']:.2f}", f"{figures['median_ms']:.2f}", f"{figures['p90_ms']:.2f}",
           f"{figures['p99_ms']:.2f}", str(figures["iterations"]), f"{figures['throughput_per_s']:.1f}",
           f"{figures['bytes_in'] / 1e6:.1f}", f"{figures['bytes_out'] / 1e6:.1f}", f"{figures['bandwidth_gb_s']:.2f}"]
    _statistics(console, title, headers, [row])


COLOURS = {"passed": "green", "failed": "red", "shape mismatch": "red", "vacuous": "yellow", "skipped": "yellow"}


def _statistics(console: Any, title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A row per entry (the first cell names it) when that fits the terminal; else one row per statistic
    with the entries as columns, as many per table as fit. Column widths are set here, not left to rich,
    which would shorten numbers to '3.83…' to fit a narrow terminal."""
    from rich.table import Table
    from rich.text import Text

    widths = _widths(headers, rows)
    if 1 + sum(width + 3 for width in widths) <= console.width:
        natural = 1 + sum(max(width, len(header)) + 3 for width, header in zip(widths, headers, strict=True))
        table = Table(title=title, title_justify="left")
        for header, width in zip(headers, widths, strict=True):
            table.add_column(header, width=None if natural <= console.width else width)
        for row in rows:
            table.add_row(*[Text(cell, style=COLOURS.get(cell, "")) for cell in row])
        console.print(table)
        return
    label_width = _cell_width(headers[1:])
    for index, chunk in enumerate(_chunks(label_width, rows, console.width)):
        table = Table(title=title if index == 0 else f"{title} (continued)", title_justify="left")
        table.add_column("", width=label_width)
        for row, width in chunk:
            table.add_column(row[0], overflow="fold", width=width)
        for position, header in enumerate(headers[1:], start=1):
            table.add_row(header, *[Text(row[position], style=COLOURS.get(row[position], ""))
                                    for row, _ in chunk])
        console.print(table)


def _cell_width(cells: list[str]) -> int:
    return max([len(cell) for cell in cells] + [1])


def _widths(headers: list[str], rows: list[list[str]]) -> list[int]:
    """Each column of a row-per-entry table as wide as its widest cell or header word (headers wrap)."""
    return [max([len(word) for word in header.split()] + [len(row[i]) for row in rows] + [1])
            for i, header in enumerate(headers)]


def _chunks(label_width: int, rows: list[list[str]], width: int) -> list[list[tuple[list[str], int]]]:
    """Entries, each with its column width, grouped so that each statistic-per-row table fits `width`
    (a border and two padding characters per column; at least one entry per table)."""
    room = width - 1 - (label_width + 3)
    chunks: list[list[tuple[list[str], int]]] = [[]]
    used = 0
    for row in rows:
        column = max(1, min(max([_cell_width(row[1:])] + [len(word) for word in row[0].split()]), room - 3))
        if chunks[-1] and used + column + 3 > room:
            chunks.append([])
            used = 0
        chunks[-1].append((row, column))
        used += column + 3
    return chunks


def _surgery_tables(console: Any, node: Node, artifact: Artifact, plan: Plan, full: bool) -> None:
    """What each edit did, the op counts before -> after, and (full) the removed, added and changed nodes."""
    import json

    from rich.table import Table

    path = artifact.path / "surgery.json"
    if not path.is_file():
        return
    record = json.loads(path.read_text())
    label = variant_label(node, plan)
    edits = Table(title=f"surgery {node.short}{f' [{label}]' if label else ''}", title_justify="left")
    edits.add_column("edit")
    edits.add_column("what it did", overflow="fold")
    for report in record["edits"]:
        edits.add_row(report["field"], report["summary"])
    console.print(edits)
    changes = record["diff"]
    ops = Table(title=f"ops before -> after ({changes['nodes'][0]} -> {changes['nodes'][1]} nodes)",
                title_justify="left")
    for column in ("op", "before", "after"):
        ops.add_column(column)
    for op, (before, after) in changes["ops"].items():
        ops.add_row(op, str(before), str(after))
    console.print(ops)
    if not full:
        return
    for title, nodes in (("removed", changes["removed"]), ("added", changes["added"])):
        table = Table(title=f"{title} nodes ({len(nodes)})", title_justify="left")
        table.add_column("op")
        table.add_column("count")
        table.add_column("nodes", overflow="fold")
        grouped: dict[str, list[str]] = {}
        for entry in nodes:
            grouped.setdefault(entry["op"], []).append(entry["name"])
        for op, names in sorted(grouped.items(), key=lambda item: -len(item[1])):
            table.add_row(op, str(len(names)), ", ".join(names))
        console.print(table)
    if changes["changed"]:
        table = Table(title=f"changed nodes ({len(changes['changed'])})", title_justify="left")
        for column in ("node", "op before", "op after", "domain before -> after"):
            table.add_column(column, overflow="fold")
        for entry in changes["changed"]:
            table.add_row(entry["name"], entry["before"], entry["after"], " -> ".join(repr(d) for d in entry["domain"]))
        console.print(table)


# The tables `show` prints after the summary, by stage name: (console, node, artifact, plan, full), where
# full is whether `show --stage` asked for this stage. A stage not listed prints its result as JSON there.
Details = Callable[[Any, Node, Artifact, Plan, bool], None]
DETAILS: dict[str, Details] = {"verify": _verify_table, "bench": _bench_table, "surgery": _surgery_tables}

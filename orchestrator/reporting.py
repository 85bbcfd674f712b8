"""Terminal tables for `plan` and `show` (rich)."""

from __future__ import annotations

from typing import Any

from orchestrator import plan as planning
from orchestrator import ui
from orchestrator.executor import variant_label
from orchestrator.plan import Plan
from orchestrator.store import Store


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def print_plan(plan: Plan, store: Store, why: bool) -> None:
    from rich.table import Table

    console = _console()
    explainer = planning.Explainer(store.run_record(plan.spec.name))
    matrix = [v for v in plan.spec.variants if v.name and v.name in plan.by_variant]
    if matrix:
        table = Table(title=f"{plan.spec.name}: {len(matrix)} variants", title_justify="left")
        for field in matrix[0].choices:
            table.add_column(field)
        table.add_column("stages")
        for variant in matrix:
            table.add_row(*[str(v) for v in variant.choices.values()], str(len(plan.by_variant[variant.name])))
        console.print(table)
    colour = ui.colour_enabled()
    stale = 0
    for node in plan.order():
        artifact, damage = store.check(node.kind, node.key)
        if artifact is not None:
            state = "failed" if not artifact.manifest.get("passed", True) else "cached"
            detail = ""
        else:
            stale += 1
            state = "run"
            detail = explainer.why(node, None if damage == "missing" else f"artifact {damage}")
        if not why:
            detail = " ".join(f"{role}={key[:8]}" for role, key in node.inputs.items())
        print(ui.stage_line(node.kind, node.short, state, None, detail, variant_label(node, plan), colour))
    print(f"{stale} of {len(plan.nodes)} stages would run" if stale else "nothing to do: all cached")


def print_show(plan: Plan, store: Store, stage: str | None) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"{plan.spec.name}: last results", title_justify="left")
    for column in ("stage", "key", "variant", "state", "seconds", "summary"):
        table.add_column(column, overflow="fold")
    details = []
    for node in plan.order():
        if stage and node.kind != stage:
            continue
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
    for node, artifact in details:
        if node.kind == "verify":
            _verify_table(console, node, artifact, plan)
        elif node.kind == "bench":
            _bench_table(console, node, artifact, plan)
        elif node.kind == "surgery":
            _surgery_tables(console, node, artifact, plan, full=stage == "surgery")
        elif stage and node.kind == stage:
            import json

            console.print_json(json.dumps(artifact.result, default=str))
    if stage is None:
        _report_extras(console, plan, store)


def _report_extras(console: Any, plan: Plan, store: Store) -> None:
    """The rest of what report.html shows: the equivalent trtexec commands, tool versions, the report's path."""
    from rich.markup import escape
    from rich.table import Table

    from orchestrator import report

    record = report.collect(plan, store)
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


def _verify_table(console: Any, node: Any, artifact: Any, plan: Plan) -> None:
    from rich.table import Table

    label = variant_label(node, plan)
    table = Table(title=f"verify {node.short}{f' [{label}]' if label else ''}", title_justify="left")
    for column in ("output", "max abs", "mean abs", "max rel (|ref|>atol)", "outside tol", "atol to pass", "NaN", "Inf",
                   "all-zero", "result"):
        table.add_column(column)
    rows = list(artifact.result.get("outputs", {}).items())
    rows += [(f"plugin {stats.get('module') or name}", stats)
             for name, stats in artifact.result.get("plugin_nodes", {}).items()]
    for name, stats in rows:
        if stats.get("shape_mismatch"):
            table.add_row(name, *[""] * 8, "[red]shape mismatch[/red]")
            continue
        relative = "no |ref|>atol" if stats.get("max_rel") is None else f"{stats['max_rel']:.2e}"
        table.add_row(name, f"{stats['max_abs']:.2e}", f"{stats['mean_abs']:.2e}", relative,
                      f"{stats['outside']}/{stats['elements']}", f"{stats['min_atol_to_pass']:.2e}",
                      str(stats["nan"]), str(stats["inf"]), str(stats["all_zero"]),
                      "[red]" + "; ".join(stats["failed"]) + "[/red]" if stats["failed"] else "[green]passed[/green]")
    console.print(table)


def _bench_table(console: Any, node: Any, artifact: Any, plan: Plan) -> None:
    from rich.table import Table

    figures = artifact.result
    label = variant_label(node, plan)
    table = Table(title=f"bench {node.short}{f' [{label}]' if label else ''} ({figures.get('backend')}, "
                        f"{figures.get('timer')})", title_justify="left")
    for column in ("min ms", "median ms", "p90 ms", "p99 ms", "runs", "per s", "MB in", "MB out", "GB/s"):
        table.add_column(column)
    table.add_row(f"{figures['min_ms']:.2f}", f"{figures['median_ms']:.2f}", f"{figures['p90_ms']:.2f}",
                  f"{figures['p99_ms']:.2f}", str(figures["iterations"]), f"{figures['throughput_per_s']:.1f}",
                  f"{figures['bytes_in'] / 1e6:.1f}", f"{figures['bytes_out'] / 1e6:.1f}",
                  f"{figures['bandwidth_gb_s']:.2f}")
    console.print(table)


def _surgery_tables(console: Any, node: Any, artifact: Any, plan: Plan, full: bool) -> None:
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

"""report.json and a self-contained report.html for a pipeline's latest run.

The JSON is the record: pipeline and resolved config per variant, the stage DAG with keys, times
and cached/ran, verify statistics per variant and output (with the error histogram and a sample of
reference/result pairs recorded by verify), bench figures, the equivalent trtexec command and tool
versions. The HTML renders the same record with inline SVG pictures (matplotlib), so it opens with
no network and no other file.

Both stay proportional to what a person reads, not to the size of the matrix: only the variants
`figured` picks (those that failed verify, and the first few; ORCHESTRATE_REPORT_FIGURES, default
FIGURES) are drawn in full and keep their reference/result sample in report.json; every other variant
is a row of a compact table (its verify.json, in its stage folder, holds the rest).
"""

from __future__ import annotations

import html
import io
import itertools
import json
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import backends
from orchestrator.planning.plan import Node, Plan
from orchestrator.run.executor import Outcome, variant_label
from orchestrator.stages import names as stage_names
from orchestrator.store.store import Artifact, Store, write_json_atomic
from orchestrator.ui import shown_path

FIGURES = 4  # variants drawn in full: the first failing ones, and the first ones of the matrix
FIGURES_ENV = "ORCHESTRATE_REPORT_FIGURES"  # a count, or 'all'


def report_dir(store: Store, pipeline: str) -> Path:
    return store.root / "reports" / pipeline


def collect(plan: Plan, store: Store, outcomes: list[Outcome] | None = None,
            shown: Callable[[Path], str] = str) -> dict[str, Any]:
    """The report record, from the plan and what the store holds for it.

    Each stage carries its artifact folder (absolute: the record is read from anywhere). `shown`
    writes the file paths inside the trtexec commands: absolute in report.json, relative to the
    working directory in `show`.
    """
    by_key = {o.node.key: o for o in outcomes or []}
    stages = []
    tools: dict[str, str] = {}
    found: dict[str, dict[str, Any]] = {section: {} for section, _ in GATHERED.values()}
    for node in plan.order():
        artifact = store.get(node.kind, node.key)
        outcome = by_key.get(node.key)
        manifest = artifact.manifest if artifact else {}
        tools.update(node.parts.get("tools", {}))
        status = outcome.status if outcome else ("cached" if artifact else "not built")
        stages.append({
            "kind": node.kind, "key": node.key, "label": variant_label(node, plan), "variants": node.variants,
            "inputs": node.inputs, "status": status, "passed": manifest.get("passed", True) if artifact else None,
            "seconds": manifest.get("seconds"), "ran_now": bool(outcome and outcome.seconds is not None),
            "summary": manifest.get("summary", ""), "reason": outcome.reason if outcome else "",
            "path": str(artifact.path) if artifact else None,
        })
        if artifact is not None:
            _gather(plan, store, node, artifact, shown, found)
    variants = [{"name": v.name, "choices": v.choices, "config": v.data} for v in plan.spec.variants
                if v.name in plan.by_variant]
    record = {
        "format": 1,
        "generated": time.time(),
        "pipeline": {"name": plan.spec.name, "file": str(plan.spec.path), "cwd": os.getcwd()},
        "passed": all(s["passed"] is not False for s in stages),
        "variants": variants,
        "stages": stages,
        **found,
        "tools": dict(sorted(tools.items())),
    }
    record["figures"] = figured(record)
    _restore_samples(record)
    return record


def figure_budget() -> int | None:
    """How many variants (failing ones, and the first ones) are drawn in full; None: every variant."""
    text = os.environ.get(FIGURES_ENV, "").strip().lower()
    if text == "all":
        return None
    return int(text) if text.isdigit() else FIGURES


def figured(record: dict[str, Any]) -> list[str]:
    """The variants drawn in full, in matrix order: the first `figure_budget()` that failed verify (what a
    person opens the report for) and the first `figure_budget()` of the matrix (what passing looks like)."""
    names = [v["name"] for v in record["variants"]] or list(record["verify"])
    budget = figure_budget()
    if budget is None:
        return names
    failing = [name for name in names if record["verify"].get(name, {}).get("passed") is False]
    chosen = set(failing[:budget]) | set(names[:budget])
    return [name for name in names if name in chosen]


def _without_samples(data: dict[str, Any]) -> dict[str, Any]:
    """verify.json without its reference/result samples, which only the pictures of a figured variant use
    (a sample is most of the file: 500 of them would make the record some 40 MB)."""
    for group in ("outputs", "plugin_nodes"):
        for stats in (data.get(group) or {}).values():
            if isinstance(stats, dict):
                stats.pop("sample", None)
    return data


def _restore_samples(record: dict[str, Any]) -> None:
    """Read the samples back, for the figured variants only, from the verify.json they came from."""
    wanted = set(record["figures"])
    for stage in record["stages"]:
        if stage["kind"] == "verify" and stage.get("path") and wanted & set(stage["variants"]):
            data = json.loads((Path(stage["path"]) / "verify.json").read_text())
            for variant in wanted & set(stage["variants"]) & set(record["verify"]):
                record["verify"][variant] = data


def _gather(plan: Plan, store: Store, node: Node, artifact: Artifact, shown: Callable[[Path], str],
            found: dict[str, dict[str, Any]]) -> None:
    """Per variant, what this stage's artifact adds to the record (GATHERED says what, by stage name)."""
    gathered = GATHERED.get(node.kind)
    if gathered is None:
        return
    section, read = gathered
    for variant in node.variants:
        value = read(plan, store, node, artifact, shown)
        if value is not None:
            found[section][variant] = value


def _verify_record(plan: Plan, store: Store, node: Node, artifact: Artifact, shown: Callable[[Path], str]) -> Any:
    return _without_samples(json.loads((artifact.path / "verify.json").read_text()))


def _bench_record(plan: Plan, store: Store, node: Node, artifact: Artifact, shown: Callable[[Path], str]) -> Any:
    return json.loads((artifact.path / "bench.json").read_text())


def _build_command(plan: Plan, store: Store, node: Node, artifact: Artifact, shown: Callable[[Path], str]) -> Any:
    """The equivalent trtexec command of a build, with its graph's path (None: the build wrote none)."""
    written = artifact.path / backends.COMMAND_FILE
    if not written.exists():
        return None
    graph = plan.nodes[node.inputs["graph"]]
    return trtexec_command(written.read_text(), store.path_of(graph.kind, graph.key), artifact.path, shown)


# What a stage's artifact adds to the record, by stage name: the record's section, and how it is read.
Gathered = tuple[str, Callable[[Plan, Store, Node, Artifact, Callable[[Path], str]], Any]]
GATHERED: dict[str, Gathered] = {"verify": ("verify", _verify_record), "bench": ("bench", _bench_record),
                                 "build": ("trtexec", _build_command)}


def trtexec_command(text: str, graph: Path, build: Path, shown: Callable[[Path], str] = str) -> str:
    """trtexec.txt names the graph as a bare 'model.onnx', the file name inside the graph's own artifact
    (export, or surgery when there is one), or 'model.fp16.onnx', the copy a build wrote into its own
    folder. Name the real files, so the command runs as printed; the build artifact itself stays as it
    was written (its digest is in its manifest). --saveEngine keeps its bare name: running the command
    must not overwrite the engine in the store."""
    words = text.split()
    for index, word in enumerate(words):
        if word.startswith("--onnx="):
            name = word.removeprefix("--onnx=")
            if not Path(name).is_absolute():
                folder = build if (build / name).is_file() else graph
                words[index] = "--onnx=" + shlex.quote(shown(folder / name))
    return " ".join(words)


def write(plan: Plan, store: Store, outcomes: list[Outcome] | None = None) -> Path:
    """Write report.json and report.html; return the folder."""
    record = collect(plan, store, outcomes)
    folder = report_dir(store, plan.spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "report.json", record)
    page = render_html(record)
    tmp = folder / f".report.html.{os.getpid()}.tmp"  # concurrent runs of one pipeline each write their own
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(folder / "report.html")
    return folder


# ------------------------------------------------------------------------------------------ pictures

def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none"})
    return plt.subplots(figsize=(width, height))


def dag_picture(record: dict[str, Any], variants: set[str] | None = None) -> str:
    """Stages as boxes in columns (capture → … → bench), arrows from inputs; colour = ran/cached/failed.

    With `variants`, only their stages: a picture of every stage of 500 variants is 2500 boxes that
    take a minute to draw and that nobody can read (the stage table lists them all)."""
    stages = [s for s in record["stages"] if variants is None or variants & set(s["variants"])]
    columns = [c for c in stage_names() if any(s["kind"] == c for s in stages)]
    rows = max(sum(s["kind"] == c for s in stages) for c in columns)
    figure, axes = _figure(2.3 * len(columns) + 0.5, 0.8 * rows + 0.8)
    position = {}
    for col, kind in enumerate(columns):
        members = [s for s in stages if s["kind"] == kind]
        for row, stage in enumerate(members):
            y = (rows - 1) / 2 - row + (len(members) - 1) / 2 - (rows - 1) / 2
            position[stage["key"]] = (col, y)
    for stage in stages:
        for key in stage["inputs"].values():
            if key in position:
                (x0, y0), (x1, y1) = position[key], position[stage["key"]]
                adjacent = x1 - x0 == 1  # longer edges (capture -> verify) are drawn faint
                axes.annotate("", xy=(x1 - 0.42, y1), xytext=(x0 + 0.42, y0), zorder=0,
                              arrowprops={"arrowstyle": "->", "color": "#777" if adjacent else "#ccd",
                                          "lw": 1 if adjacent else 0.6})
    colours = {"failed": "#f4b6b6", "ran": "#b9e4c0", "passed": "#b9e4c0", "cached": "#e3e7ee",
               "waited": "#e3e7ee", "not built": "#fff3c4"}
    for stage in stages:
        x, y = position[stage["key"]]
        status = "failed" if stage["passed"] is False else stage["status"]
        axes.add_patch(_box(x, y, colours.get(status, "#e3e7ee")))
        label = stage["label"] if stage["label"] and stage["label"] != "all variants" else ""
        values = ",".join(_short_choice(part.split("=", 1)[-1]) for part in label.split(",")) if label else ""
        text = f"{stage['kind']} {stage['key'][:8]}\n{status}" + (f" · {values[:20]}" if values else "")
        axes.text(x, y, text, ha="center", va="center", fontsize=7.5, family="monospace")
    axes.set_xlim(-0.6, len(columns) - 0.4)
    axes.set_ylim(-rows / 2 - 0.1, rows / 2 + 0.1)
    axes.axis("off")
    return _svg(figure)


def _short_choice(value: str) -> str:
    """'encoder.layers.3.self_attn' -> '3.self_attn': enough to tell variants apart in a small box."""
    return ".".join(value.split(".")[-2:]) if len(value) > 12 and "." in value else value


def _box(x: float, y: float, colour: str) -> Any:
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x - 0.42, y - 0.28), 0.84, 0.56, boxstyle="round,pad=0.02", facecolor=colour,
                          edgecolor="#667")


def error_histogram(stats: dict[str, Any]) -> str | None:
    """Bars of log10 |error|; None when no element has a nonzero finite error to draw (all exact, or a
    reference NaN throughout), where a log-scaled axis would have nothing to scale."""
    histogram = stats.get("histogram")
    if not histogram or not any(histogram["counts"]):
        return None
    from matplotlib.ticker import FuncFormatter, NullLocator

    figure, axes = _figure(4.2, 2.4)
    edges, counts = histogram["log10_edges"], histogram["counts"]
    axes.bar(edges[:-1], counts, width=[b - a for a, b in itertools.pairwise(edges)],
             align="edge", color="#4a78c2", edgecolor="white", linewidth=0.3)
    if histogram.get("exact"):
        axes.set_title(f"|error| (log10); {histogram['exact']} elements exact", fontsize=9)
    else:
        axes.set_title("|error| (log10)", fontsize=9)
    axes.axvline(_log10(stats["atol"]), color="#c0392b", linestyle="--", linewidth=1, label="atol")
    axes.set_yscale("log")
    # Counts as plain numbers, no minor ticks: laying out 10^k labels and minor ticks was most of the drawing time.
    axes.yaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel("log10 |result - reference|")
    axes.set_ylabel("elements")
    axes.legend(loc="upper left", fontsize=7)
    return _svg(figure)


def _log10(value: float) -> float:
    import math

    return math.log10(value) if value > 0 else -12.0


def scatter(stats: dict[str, Any]) -> str | None:
    """Sampled (reference, result) pairs around the diagonal; None when no pair has two numbers."""
    import math

    sample = stats.get("sample")
    pairs = [(r, g) for r, g in zip(sample["reference"], sample["result"], strict=True)
             if math.isfinite(r) and math.isfinite(g)] if sample else []
    if not pairs:
        return None
    figure, axes = _figure(2.8, 2.6)
    reference, result = [r for r, _ in pairs], [g for _, g in pairs]
    low, high = min(reference + result), max(reference + result)
    axes.plot([low, high], [low, high], color="#c0392b", linewidth=0.6, linestyle="--", zorder=1)
    axes.scatter(reference, result, s=4, alpha=0.6, color="#4a78c2", linewidths=0, zorder=2)
    axes.set_xlabel("reference")
    axes.set_ylabel("result")
    axes.set_title(f"{len(reference)} sampled elements", fontsize=9)
    return _svg(figure)


def bench_picture(bench: dict[str, dict[str, Any]]) -> str | None:
    """Every timed iteration of every variant, one line each, with its median dashed."""
    series = {variant: figures["timings_ms"] for variant, figures in bench.items() if figures.get("timings_ms")}
    if not series:
        return None
    figure, axes = _figure(6.0, 2.6)
    for index, (variant, timings) in enumerate(series.items()):
        colour = f"C{index % 10}"
        axes.plot(range(1, len(timings) + 1), timings, marker=".", color=colour, linewidth=0.8,
                  label=variant or "latency")
        axes.axhline(bench[variant]["median_ms"], color=colour, linestyle="--", linewidth=0.7)
    axes.set_xlabel("iteration")
    axes.set_ylabel("ms")
    axes.set_title("latency per iteration (dashed: median)", fontsize=9)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(figure)


# ------------------------------------------------------------------------------------------ HTML

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;padding:0 16px}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
.muted{color:#667}.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;font-size:13px}
.ok{background:#d6f5dc;color:#17612a}.bad{background:#fbd9d9;color:#8a1c1c}.run{background:#e0ecff;color:#1d4ea0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f6fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px;border-radius:4px}
.figs{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.figs svg{max-width:100%;height:auto}
details summary{cursor:pointer;color:#1d4ea0}
code.path{word-break:break-all;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{_e(c)}</td>" if i in numeric else f"<td>{c if str(c).startswith('<') else _e(c)}</td>"
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    """A figure for a table cell; None (a statistic over no element) is 'n/a', NaN and Inf as such."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}"
    return str(value)


def render_html(record: dict[str, Any]) -> str:
    pipeline = record["pipeline"]
    passed = record["passed"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>orchestrate report: "
             f"{_e(pipeline['name'])}</title><style>{STYLE}</style></head><body>"]
    badge = "<span class='badge ok'>passed</span>" if passed else "<span class='badge bad'>failed</span>"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["generated"]))
    parts.append(f"<h1>{_e(pipeline['name'])} {badge}</h1><div class='muted'>{_e(pipeline['file'])} · {when}"
                 f"{_relative_note(record)}</div>")

    variants = record["variants"]
    if len(variants) > 1 or (variants and variants[0]["name"]):
        keys = list(variants[0]["choices"])
        rows = [[v["choices"][k] for k in keys] + [_variant_verdict(record, v["name"])] for v in variants]
        parts.append("<h2>Variants</h2>" + _table([*keys, "verify"], rows))

    shown = record["figures"] if "figures" in record else figured(record)
    everyone = [v["name"] for v in variants] or list(record["verify"])
    partial = set(shown) if len(shown) < len(everyone) else None
    note = (f"<p class='muted'>Drawn: the stages of the {len(shown)} variants shown in full below (failing ones "
            f"first; {FIGURES_ENV}=all draws every one). The table lists all {len(record['stages'])} stages."
            "</p>") if partial is not None else ""
    parts.append("<h2>Stages</h2>" + note + "<div class='figs'>" + dag_picture(record, partial) + "</div>")
    parts.append(_stages_html(record))
    parts += _verify_html(record, shown)
    parts += _bench_html(record, partial)

    if record["trtexec"]:
        parts.append("<h2>Equivalent trtexec command</h2>")
        for variant, command in record["trtexec"].items():
            parts.append((f"<h3>{_e(variant)}</h3>" if variant else "") + f"<pre>{_e(command)}</pre>")

    parts.append("<h2>Tools</h2>" + _table(["tool", "version"], [[k, v] for k, v in record["tools"].items()]))
    parts.append("<h2>Resolved configuration</h2>")
    for variant in variants:
        summary = _e(variant["name"] or pipeline["name"])
        parts.append(f"<details><summary>{summary}</summary><pre>{_e(json.dumps(variant['config'], indent=2))}"
                     "</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)


def _bench_html(record: dict[str, Any], drawn: set[str] | None) -> list[str]:
    """The bench table, every variant a row; the latency chart for the `drawn` variants (None: all), since
    500 lines in one chart are a smear."""
    if not record["bench"]:
        return []
    rows = []
    for variant, figures in record["bench"].items():
        rows.append([variant or "-", figures.get("backend"), figures.get("timer"), _fmt(figures["min_ms"]),
                     _fmt(figures["median_ms"]), _fmt(figures["p90_ms"]), _fmt(figures["p99_ms"]),
                     figures["iterations"], _fmt(figures["throughput_per_s"]),
                     _fmt((figures["bytes_in"] + figures["bytes_out"]) / 1e6), _fmt(figures["bandwidth_gb_s"])])
    parts = ["<h2>Benchmark</h2>", _table(["variant", "backend", "timer", "min ms", "median ms", "p90 ms", "p99 ms",
                                           "runs", "per s", "MB moved", "GB/s"], rows, set(range(3, 11)))]
    picture = bench_picture({v: f for v, f in record["bench"].items() if drawn is None or v in drawn})
    if picture:
        parts.append("<div class='figs'>" + picture + "</div>")
    return parts


def _relative_note(record: dict[str, Any]) -> str:
    """' · folders relative to DIR' when the stage table names a folder relative to the run's directory."""
    cwd = record["pipeline"].get("cwd")
    shown = [shown_path(Path(stage["path"]), cwd) for stage in record["stages"] if stage.get("path")]
    return f" · folders relative to {_e(cwd)}" if any(not Path(text).is_absolute() for text in shown) else ""


def _stages_html(record: dict[str, Any]) -> str:
    """The stage table; each built stage links its artifact folder, named as `orchestrate show` names it
    (relative to the directory the run started in, absolute when outside it)."""
    cwd = record["pipeline"].get("cwd")
    rows = []
    for stage in record["stages"]:
        state = stage["status"] if stage["passed"] is not False else "failed"
        cls = "bad" if state == "failed" else ("run" if stage["ran_now"] else "ok")
        seconds = f"{stage['seconds']:.2f}" if stage["seconds"] is not None else ""
        folder = ""
        if stage.get("path"):
            href = html.escape(f"../../{stage['kind']}/{stage['key']}/", quote=True)
            folder = (f"<a href='{href}' title='{html.escape(stage['path'], quote=True)}'>"
                      f"<code class='path'>{_e(shown_path(Path(stage['path']), cwd))}</code></a>")
        rows.append([stage["kind"], f"<code>{_e(stage['key'][:12])}</code>", stage["label"] or "-",
                     f"<span class='badge {cls}'>{_e(state)}</span>", seconds, stage["summary"], folder])
    return _table(["stage", "key", "variant", "state", "seconds", "summary", "folder"], rows, {4})


def relative_cell(stats: dict[str, Any]) -> str:
    """max_rel is taken over the elements whose |reference| exceeds atol; there may be none."""
    value = stats.get("max_rel")
    return "no |ref|>atol" if value is None else _fmt(value)


def _verify_html(record: dict[str, Any], shown: list[str]) -> list[str]:
    """Per `shown` variant: the verify verdict, a row of statistics per output, failed checks, and the
    pictures; then the other variants in one compact table."""
    parts = ["<h2>Verification</h2>"] if record["verify"] else []
    for variant, data in ((v, d) for v, d in record["verify"].items() if v in shown):
        title = variant or "result"
        verdict = "<span class='badge ok'>passed</span>" if data.get("passed") else \
            "<span class='badge bad'>failed</span>"
        parts.append(f"<h3>{_e(title)} {verdict}</h3>")
        rows = []
        for name, stats in data.get("outputs", {}).items():
            if stats.get("shape_mismatch"):
                rows.append([name, "shape mismatch", "", "", "", "", "", "", "", ""])
                continue
            rows.append([name, _fmt(stats["max_abs"]), _fmt(stats["mean_abs"]), relative_cell(stats),
                         f"{stats['outside']} / {stats['elements']}", _fmt(stats["min_atol_to_pass"]),
                         f"{_fmt(stats['atol'])} / {_fmt(stats['rtol'])}", stats["nan"], stats["inf"],
                         "yes" if stats["all_zero"] else "no"])
        rows += [[name, "not compared (verify.skip)", "", "", "", "", "", "", "", ""]
                 for name in data.get("skipped", [])]
        parts.append(_table(["output", "max abs", "mean abs", "max rel (|ref|>atol)", "outside tol",
                             "smallest passing atol", "atol / rtol", "NaN", "Inf", "all-zero"], rows,
                            {1, 2, 3, 5, 7, 8}))
        for check in data.get("failed_checks", []):
            parts.append(f"<div class='badge bad'>{_e(check)}</div>")
        pictures = []
        for stats in data.get("outputs", {}).values():
            pictures += [p for p in (error_histogram(stats), scatter(stats)) if p]
        if pictures:
            parts.append("<div class='figs'>" + "".join(pictures) + "</div>")
    return parts + _compact_verify_html(record, [v for v in record["verify"] if v not in shown])


def _compact_verify_html(record: dict[str, Any], names: list[str]) -> list[str]:
    """The variants not drawn in full, in one table: per output what decides its verdict (max abs, max rel,
    how many elements fall outside, the smallest atol that passes), and the variant's failed checks."""
    if not names:
        return []
    rows = []
    for variant in names:
        data = record["verify"][variant]
        state = "passed" if data.get("passed") else "failed"
        verdict = f"<span class='badge {'ok' if state == 'passed' else 'bad'}'>{state}</span>"
        checks = "; ".join(data.get("failed_checks", []))
        for index, (name, stats) in enumerate(data.get("outputs", {}).items()):
            cells = ["shape mismatch", "", "", "", ""] if stats.get("shape_mismatch") else [
                _fmt(stats.get("max_abs")), relative_cell(stats), f"{stats.get('outside')} / {stats.get('elements')}",
                _fmt(stats.get("min_atol_to_pass")), f"{_fmt(stats.get('atol'))} / {_fmt(stats.get('rtol'))}"]
            rows.append([variant or "-", verdict, name, *cells, "" if index else checks])
        rows += [[variant or "-", verdict, name, "not compared (verify.skip)", "", "", "", "", ""]
                 for name in data.get("skipped", [])]
    return [f"<h3>The other {len(names)} variants</h3><div class='muted'>Not drawn; the histogram and sample "
            "of each are in the verify.json of its stage folder.</div>",
            _table(["variant", "verify", "output", "max abs", "max rel (|ref|>atol)", "outside tol",
                    "smallest passing atol", "atol / rtol", "failed checks"], rows, {3, 4, 6})]


def _variant_verdict(record: dict[str, Any], variant: str) -> str:
    data = record["verify"].get(variant)
    if data is None:
        return "not run"
    return "passed" if data.get("passed") else "failed"

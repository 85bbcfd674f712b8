"""verify: run the built artifact on the captured inputs and compare with the captured outputs.

Per output: max/mean absolute error; max relative error over the elements whose |reference|
exceeds atol (`max_rel`: near zero, |err|/|ref| is huge and says nothing, so the ratio over all
elements is kept apart as `max_rel_all`); the count of elements outside `atol + rtol*|ref|`; the
smallest atol that would pass at this rtol; NaN/Inf counts; and whether the result is all zeros or
constant (the classic sign of int64 indices read as int32). Writes verify.json; any failed check
marks the stage failed (exit code 1), naming the check.

Every check is held against the reference. Where both sides are NaN, or both the same infinity
(masked logits are -inf in both), the element matches; NaN or Inf on one side only fails it at any
tolerance (a NaN reference makes `atol + rtol*|ref|` NaN, which no error exceeds). `fail_on`
counts NaN and Inf in the result only where the reference has none there, and a constant result
only when the reference is not that constant. A reference that is NaN everywhere fails: nothing
can be compared with it. A check that an all-zero result would pass as well (no |reference| above
the tolerance) is vacuous and fails unless `verify.allow_vacuous`. `verify.skip` leaves outputs out.

When the capture recorded the plugin calls of a whole model (`capture.calls`), every plugin node's
output is compared as well with the call it stands for (the k-th node of an op with the k-th call
of its callable), so an error is traced to the layer where it starts, with the tolerances of
`verify.plugin_nodes` (default: the global ones). This needs a backend that can return
intermediate tensors (the embedded ONNX Runtime one).

When the surgery's replace_pattern made plugin nodes, each is compared as well with the subgraph it
replaced: the surgery's input graph runs on ONNX Runtime with the replaced tensors as extra outputs
(surgery.json says which tensor each node stands for), with the tolerances of `verify.plugin_nodes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchestrator import environment

if TYPE_CHECKING:
    from orchestrator.planning.plan import Node

import json
from dataclasses import dataclass
from typing import Any

from orchestrator import backends, patterns
from orchestrator import plugins as catalog
from orchestrator.backends.base import PluginNodeRun
from orchestrator.errors import UserError
from orchestrator.stages.base import PlanContext, Planned, Stage, StageCall, StageResult, Variant
from orchestrator.tensors import feeds_for, load_named


@dataclass(frozen=True)
class Tolerance:
    """An atol/rtol pair where either may be left to the global one."""

    atol: float | None = None
    rtol: float | None = None

    @classmethod
    def read(cls, given: Mapping[str, float]) -> Tolerance:
        return cls(given.get("atol"), given.get("rtol"))

    def keyed(self) -> dict[str, float]:
        return {name: value for name, value in (("atol", self.atol), ("rtol", self.rtol)) if value is not None}


@dataclass(frozen=True)
class VerifySettings:
    """The verify section, defaults filled: tolerances, the checks that fail it, what it leaves out."""

    atol: float
    rtol: float
    max_mismatch: int
    fail_on: tuple[str, ...]
    per_output: Mapping[str, Tolerance]
    skip: tuple[str, ...]
    plugin_nodes: Tolerance
    allow_vacuous: bool

    @classmethod
    def from_keyed(cls, config: Mapping[str, Any]) -> VerifySettings:
        section = config["verify"]
        return cls(section["atol"], section["rtol"], section["max_mismatch"], tuple(section["fail_on"]),
                   {name: Tolerance.read(given) for name, given in section["per_output"].items()},
                   tuple(section["skip"]), Tolerance.read(section.get("plugin_nodes") or {}),
                   section.get("allow_vacuous", False))

    def keyed(self) -> dict[str, Any]:
        return {"verify": {
            "atol": self.atol, "rtol": self.rtol, "max_mismatch": self.max_mismatch, "fail_on": list(self.fail_on),
            "per_output": {name: tolerance.keyed() for name, tolerance in self.per_output.items()},
            "skip": list(self.skip), "plugin_nodes": self.plugin_nodes.keyed(), "allow_vacuous": self.allow_vacuous,
        }}

    def tolerance(self, output: str) -> tuple[float, float]:
        own = self.per_output.get(output, Tolerance())
        return (self.atol if own.atol is None else own.atol), (self.rtol if own.rtol is None else own.rtol)


def reference_outputs(runner: Any, capture: Any) -> list[tuple[str, Any, Any]]:
    """Pairs (name, graph output name, captured array): by name, or in order when names differ."""
    record = json.loads((capture.path / "capture.json").read_text())
    captured = load_named(capture.path, record["outputs"], mmap=False)
    produced = [o.name for o in runner.outputs]
    pairs = []
    for index, (name, array) in enumerate(captured.items()):
        if name in produced:
            pairs.append((name, name, array))
        elif index < len(produced):
            pairs.append((name, produced[index], array))
    if not pairs:
        raise UserError("no graph output corresponds to a captured output", field="capture.outputs")
    return pairs


HISTOGRAM_EDGES = [x / 4 for x in range(-48, 9)]  # log10 |error| from 1e-12 to 1e2, quarter decades
SAMPLE_SIZE = 2000


def agreement(got: Any, ref: Any) -> tuple[Any, Any, Any]:
    """Masks (both finite, equal non-finite, non-finite on one side or different infinities).

    Equal non-finite elements match: a -inf logit masked in the model is -inf in the engine too, and a
    NaN the model itself computed is not the engine's fault (fail_on and the NaN-reference check see to
    a capture that is broken). Any other NaN or Inf is an element no tolerance can pass."""
    import numpy as np

    both = np.isfinite(got) & np.isfinite(ref)
    same = (np.isnan(got) & np.isnan(ref)) | (np.isinf(got) & (got == ref))
    return both, same, ~(both | same)


def distribution(got: Any, ref: Any, diff: Any, counted: Any) -> dict[str, Any]:
    """What the report draws: a histogram of log10 |error| and a sample of (reference, result) pairs.

    Only elements with a number on both sides are drawn; `non_finite` counts those NaN or Inf on one
    side only and `matched_non_finite` those equal non-finite on both, so that no bar hides them."""
    import numpy as np

    both = np.isfinite(got) & np.isfinite(ref)
    finite = diff[both]
    exact = int((finite == 0).sum())
    logs = np.log10(finite[finite > 0])
    counts, _ = np.histogram(np.clip(logs, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]), bins=HISTOGRAM_EDGES)
    flat_ref, flat_got, flat_diff = ref.reshape(-1), got.reshape(-1), diff.reshape(-1)
    step = max(1, flat_ref.size // SAMPLE_SIZE)
    picked = np.arange(0, flat_ref.size, step)[:SAMPLE_SIZE]
    if both.any():
        picked = np.unique(np.append(picked, int(np.argmax(np.where(both.reshape(-1), flat_diff, -1)))))
    picked = picked[both.reshape(-1)[picked]]
    return {
        "histogram": {"log10_edges": HISTOGRAM_EDGES, "counts": counts.tolist(), "exact": exact,
                      "non_finite": int((~counted).sum()), "matched_non_finite": int((counted & ~both).sum())},
        "sample": {"reference": flat_ref[picked].tolist(), "result": flat_got[picked].tolist()},
    }


def compare(result: Any, reference: Any, atol: float, rtol: float,
            with_distribution: bool = False) -> dict[str, Any]:
    """Statistics of `result` against `reference`; `failures` turns them into verdicts.

    Errors are taken over the elements that match or have a number on both sides (None when there is
    none); NaN or Inf on one side only counts in `outside` and `non_finite_mismatch`, never in max_abs,
    so that a figure such as `max|err| inf` cannot stand beside a check that passed."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(result, dtype=np.float64)
    reshaped = False
    if got.shape != ref.shape and got.size == ref.size:
        got = got.reshape(ref.shape)
        reshaped = True
    if got.shape != ref.shape:
        return {"shape_mismatch": True, "result_shape": list(got.shape), "reference_shape": list(ref.shape)}
    both, same, mismatch = agreement(got, ref)
    counted = both | same
    with np.errstate(invalid="ignore"):
        diff = np.where(both, np.abs(got - ref), np.where(same, 0.0, np.inf))
    magnitude = np.where(np.isfinite(ref), np.abs(ref), 0.0)  # no NaN limit, which nothing exceeds
    limit = atol + rtol * magnitude
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(magnitude > 0, diff / magnitude, np.where(diff > 0, np.inf, 0.0))
    significant = np.isfinite(ref) & (magnitude > atol)
    needed = np.maximum(diff - rtol * magnitude, 0.0)[counted]
    return {
        "shape": list(ref.shape), "elements": int(ref.size), "reshaped": reshaped,
        "max_abs": float(diff[counted].max()) if counted.any() else None,
        "mean_abs": float(diff[counted].mean()) if counted.any() else None,
        "max_rel": float(rel[significant].max()) if significant.any() else None,
        "rel_elements": int(significant.sum()),
        "max_rel_all": float(rel[counted].max()) if counted.any() else None,
        "outside": int((diff > limit).sum()), "atol": atol, "rtol": rtol,
        "min_atol_to_pass": float(needed.max()) if needed.size else None,
        "non_finite_mismatch": int(mismatch.sum()), "non_finite_matched": int(same.sum()),
        "vacuous": bool(np.isfinite(ref).any() and not (magnitude > limit).any()),
        **_special_values(got, ref, magnitude),
        **(distribution(got, ref, diff, counted) if with_distribution else {}),
    }


def _special_values(got: Any, ref: Any, magnitude: Any) -> dict[str, Any]:
    """NaN/Inf counts (in the result where the reference has none there: those fail_on counts) and
    whether each side is all zero or one constant, so that `failures` can hold them against each other."""
    import numpy as np

    finite_got, finite_ref = got[np.isfinite(got)], ref[np.isfinite(ref)]
    constant = bool(finite_got.size > 1 and finite_got.min() == finite_got.max())
    ref_constant = bool(finite_ref.size and finite_ref.min() == finite_ref.max())
    return {
        "nan": int((np.isnan(got) & ~np.isnan(ref)).sum()),
        "inf": int((np.isinf(got) & (got != ref)).sum()),
        "reference_nan": int(np.isnan(ref).sum()), "reference_inf": int(np.isinf(ref).sum()),
        "all_zero": bool(got.size and not np.any(got)),
        "constant": constant, "constant_value": float(finite_got[0]) if constant else None,
        "reference_all_zero": bool(ref.size and not np.any(ref)),
        "reference_constant_value": float(finite_ref[0]) if ref_constant else None,
        "reference_abs_max": float(magnitude.max()) if finite_ref.size else None,
    }


def number(value: float | None, spec: str = ".1e") -> str:
    """A statistic as text; 'n/a' where there is none (no element to take it over)."""
    return "n/a" if value is None else format(value, spec)


def relative_text(stats: dict[str, Any], digits: int = 1) -> str:
    """`max rel 3.1e-04 (|ref|>atol)`: the relative error and, in one phrase, over which elements it is
    taken, so that a reader does not mistake it for the ratio over near-zero references."""
    value = stats.get("max_rel")
    if value is None:
        return "max rel n/a (no |ref|>atol)"
    return f"max rel {value:.{digits}e} (|ref|>atol)"


def failures(stats: dict[str, Any], fail_on: list[str], max_mismatch: int, allow_vacuous: bool = False,
             atol_field: str = "verify.atol") -> list[str]:
    """Why an output (or plugin node) fails, each check held against the reference: a result may be
    NaN, Inf, all zero or constant where the reference is so too. `atol_field` is the setting the
    message of a vacuous check points at."""
    if stats.get("shape_mismatch"):
        return [f"shape {stats['result_shape']} differs from the captured {stats['reference_shape']}"]
    if stats["elements"] and stats["reference_nan"] == stats["elements"]:
        return ["reference is NaN everywhere: the capture is broken (did the model compute NaN on these inputs?)"]
    found = []
    if "nan" in fail_on and stats["nan"]:
        found.append(f"{stats['nan']} NaN where the reference has a number")
    if "inf" in fail_on and stats["inf"]:
        found.append(f"{stats['inf']} Inf where the reference has none (or the other sign)")
    if "all_zero" in fail_on and stats["all_zero"] and not stats["reference_all_zero"]:
        found.append("all-zero output (are int64 index tensors read as int32?)")
    elif "constant" in fail_on and stats["constant"] and not _same_constant(stats):
        found.append(f"constant output ({stats['constant_value']:g}) where the reference is not that constant")
    if stats["outside"] > max_mismatch:
        found.append(_outside_text(stats))
    if stats["vacuous"] and not allow_vacuous:
        found.append(vacuous_text(stats, atol_field))
    return found


def _same_constant(stats: dict[str, Any]) -> bool:
    """The reference is one constant too, and the result's constant is within the tolerance of it."""
    mine, theirs = stats["constant_value"], stats["reference_constant_value"]
    return theirs is not None and abs(mine - theirs) <= stats["atol"] + stats["rtol"] * abs(theirs)


def _outside_text(stats: dict[str, Any]) -> str:
    """How many elements fail and why: beyond the tolerance, or NaN/Inf on one side only."""
    odd = stats["non_finite_mismatch"]
    beyond = (f"outside atol {stats['atol']:g} + rtol {stats['rtol']:g}·|ref| (max|err| "
              f"{number(stats['max_abs'], '.2e')}; passes with atol >= {number(stats['min_atol_to_pass'], '.2e')})")
    if not odd:
        return f"{stats['outside']} of {stats['elements']} elements {beyond}"
    text = (f"{stats['outside']} of {stats['elements']} elements fail: {odd} NaN or Inf on one side only "
            f"(the reference has {stats['reference_nan']} NaN, {stats['reference_inf']} Inf), which no "
            "tolerance passes")
    rest = stats["outside"] - odd
    return text + (f"; {rest} {beyond}" if rest else "")


def vacuous_text(stats: dict[str, Any], atol_field: str = "verify.atol") -> str:
    """Why a check that cannot fail is one, and the three ways out."""
    return (f"vacuous check: max |reference| {number(stats['reference_abs_max'], '.1e')} is within the tolerance "
            f"(atol {stats['atol']:g}), so an all-zero result would pass as well; lower {atol_field} well below "
            "the reference's magnitude, re-draw the model's weights so its activations are not near zero, or "
            "set verify.allow_vacuous: true")


def as_call_result(output: Any, entry: catalog.PluginEntry) -> Any:
    """A plugin node's own output in the shape the replaced call returned, by the catalog's rule
    (its result_shape, e.g. [N, Lq, M, D] -> [N, Lq, M*D])."""
    if entry.result_shape is None:
        return output
    return output.reshape(entry.result_shape(tuple(output.shape)))


def pair_plugin_calls(steps: list[PluginNodeRun], record: dict[str, Any]) -> tuple[list[tuple[PluginNodeRun,
                                                                                                  dict[str, Any]]],
                                                                                       list[str]]:
    """(plugin node, recorded call) pairs: the k-th node of an op is the k-th call of its callable."""
    by_op: dict[str, list[PluginNodeRun]] = {}
    for step in steps:
        by_op.setdefault(step.op, []).append(step)
    counts: dict[str, int] = {}
    callables: dict[str, str] = {}
    for entry in record.get("calls", []):
        callables[entry["op"]] = entry["callable"]
    for path, count in record.get("call_counts", {}).items():
        for op, callable_path in callables.items():
            if callable_path == path:
                counts[op] = count
    pairs = []
    problems = []
    for op, total in counts.items():
        nodes = by_op.get(op, [])
        if len(nodes) != total:
            problems.append(f"the graph has {len(nodes)} {op} node(s), the model made {total} call(s) of "
                            f"{callables[op]}; plugin nodes cannot be matched with calls")
            continue
        for entry in record.get("calls", []):
            if entry["op"] == op:
                pairs.append((nodes[entry["sequence"]], entry))
    return pairs, problems


def run(call: StageCall) -> StageResult:
    settings: VerifySettings = call.settings
    build, capture = call.inputs["build"], call.inputs["capture"]
    call.progress("loading the built artifact")
    runner = backends.open_built(build, call.unkeyed.get("threads", 0))
    feeds = feeds_for(runner.inputs, capture.path)
    record = json.loads((capture.path / "capture.json").read_text())
    replaced = replaced_nodes(call)
    steps = runner.plugin_nodes() if record.get("calls") or replaced else None
    pairs, pairing_problems = pair_plugin_calls(steps, record) if steps is not None else ([], [])
    references = reference_outputs(runner, capture)
    skipped = left_out(settings, references, bool(pairs) or bool(replaced and steps is not None))
    call.progress("running")
    keep = [node.outputs[0] for node, _ in pairs]
    keep += [step.outputs[0] for step in steps or [] if step.name in {entry["node"] for entry in replaced}]
    results = runner.run(feeds, keep=keep)
    notes = runner.result_notes()
    runner.close()
    report: dict[str, Any] = {"outputs": {}, "plugin_nodes": {}, "skipped": skipped, "passed": True,
                              "failed_checks": [], "notes": list(notes)}
    lines = [_compare_output(name, results[produced], reference, settings, report)
             for name, produced, reference in references if name not in skipped]
    if skipped:
        lines.append(f"not compared (verify.skip): {', '.join(skipped)}")
    if record.get("calls"):
        lines.append(_compare_plugin_nodes(call, settings, record, steps, pairs, pairing_problems, results, report))
    if replaced:
        lines.append(_compare_replaced(call, settings, replaced, steps, results, feeds, report))
    lines += notes
    (call.out / "verify.json").write_text(json.dumps(report, indent=1))
    slim = {**report, "outputs": {name: {k: v for k, v in stats.items() if k not in ("histogram", "sample")}
                                  for name, stats in report["outputs"].items()}}
    return StageResult("; ".join(lines), slim, passed=report["passed"])


def left_out(settings: VerifySettings, references: list[tuple[str, str, Any]], plugin_nodes: bool) -> list[str]:
    """The captured outputs `verify.skip` leaves out, by captured or graph output name.

    Checked before anything runs: a misspelt name would otherwise compare the very output the user
    meant to leave out, and a skip of every output would leave a verify that checks nothing."""
    skip = settings.skip
    known = [name for name, _, _ in references]
    unknown = [name for name in skip if name not in known and name not in {p for _, p, _ in references}]
    if unknown:
        raise UserError(f"{', '.join(repr(n) for n in unknown)}: no such output; the outputs are {', '.join(known)}",
                        field="verify.skip")
    skipped = [name for name, produced, _ in references if name in skip or produced in skip]
    if len(skipped) == len(references) and not plugin_nodes:
        raise UserError("every output is skipped and no plugin node is compared with its call, so verify "
                        "would check nothing; skip fewer outputs", field="verify.skip")
    return skipped


def _compare_output(name: str, result: Any, reference: Any, settings: VerifySettings, report: dict[str, Any]) -> str:
    """One output against its reference, recorded in `report`; its part of the summary line."""
    atol, rtol = settings.tolerance(name)
    stats = compare(result, reference, atol, rtol, with_distribution=True)
    own = settings.per_output.get(name)
    field = f"verify.per_output.{name}.atol" if own is not None and own.atol is not None else "verify.atol"
    problems = failures(stats, list(settings.fail_on), settings.max_mismatch, settings.allow_vacuous, field)
    stats["failed"] = problems
    report["outputs"][name] = stats
    if problems:
        report["passed"] = False
        report["failed_checks"] += [f"{name}: {p}" for p in problems]
        return f"{name}: FAILED {'; '.join(problems)}"
    line = (f"{name} max|err| {number(stats['max_abs'])} <= atol {atol:g}, {relative_text(stats)}, "
            f"{stats['nan']} NaN, {'all-zero' if stats['all_zero'] else 'not all-zero'}")
    if stats["non_finite_matched"]:
        line += f", {stats['non_finite_matched']} NaN/Inf as in the reference"
    if stats["vacuous"]:
        line += f", vacuous (max|ref| {number(stats['reference_abs_max'])} within atol; allowed)"
    return line


def plugin_tolerance(settings: VerifySettings) -> tuple[float, float]:
    """atol, rtol for plugin nodes against their calls: `verify.plugin_nodes`, else the global ones.

    A single layer's output is often far smaller, or far larger, than the model's, so one tolerance
    rarely suits both."""
    own = settings.plugin_nodes
    return (settings.atol if own.atol is None else own.atol), (settings.rtol if own.rtol is None else own.rtol)


def _compare_plugin_nodes(call: StageCall, settings: VerifySettings, record: dict[str, Any],
                          steps: list[PluginNodeRun] | None, pairs: list[tuple[PluginNodeRun, dict[str, Any]]],
                          problems: list[str], results: dict[str, Any], report: dict[str, Any]) -> str:
    """Each plugin node's output against its recorded call; one summary line."""
    import numpy as np

    if steps is None:
        note = "plugin node outputs not compared: this backend returns the graph outputs only"
        report["notes"].append(note)
        return note
    for problem in problems:
        report["passed"] = False
        report["failed_checks"].append(f"plugin nodes: {problem}")
    atol, rtol = plugin_tolerance(settings)
    field = "verify.plugin_nodes.atol" if settings.plugin_nodes.atol is not None else "verify.atol"
    worst, failed, vacuous = 0.0, 0, 0
    declared = {p["op"]: p.get("catalog") for p in call.inputs["build"].manifest["parts"]["config"]["plugins"]}
    for node, entry in pairs:
        reference = np.load(call.inputs["capture"].path / entry["output"]["file"])
        result = as_call_result(results[node.outputs[0]], catalog.lookup(node.op, declared.get(node.op)))
        stats = compare(result, reference, atol, rtol)
        found = failures(stats, list(settings.fail_on), settings.max_mismatch, settings.allow_vacuous, field)
        stats.update(failed=found, op=node.op, module=entry["module"], call=entry["sequence"])
        report["plugin_nodes"][node.name or node.outputs[0]] = stats
        if found:
            failed += 1
            report["passed"] = False
            report["failed_checks"] += [f"plugin node {node.name} ({entry['module']}): {p}" for p in found]
        elif not stats.get("shape_mismatch"):
            worst = max(worst, stats["max_abs"] or 0.0)
            vacuous += stats["vacuous"]
    if problems:
        return f"plugin nodes: FAILED {problems[0]}"
    if failed:
        return f"plugin nodes: FAILED {failed} of {len(pairs)} differ from their calls"
    own = f" <= atol {atol:g}" if (atol, rtol) != (settings.atol, settings.rtol) else ""
    allowed = f", {vacuous} vacuous (allowed)" if vacuous else ""
    return f"{len(pairs)} plugin node{'s' if len(pairs) != 1 else ''} vs their calls max|err| {worst:.1e}{own}{allowed}"


def replaced_nodes(call: StageCall) -> list[dict[str, Any]]:
    """The plugin nodes replace_pattern made (surgery.json): each one's name, op, and the tensor it replaced."""
    if "surgery" not in call.inputs:
        return []
    record = json.loads((call.inputs["surgery"].path / "surgery.json").read_text())
    return [entry for edit in record["edits"] for entry in edit.get("replaced", [])]


def _compare_replaced(call: StageCall, settings: VerifySettings, replaced: list[dict[str, Any]],
                      steps: list[PluginNodeRun] | None, results: dict[str, Any], feeds: dict[str, Any],
                      report: dict[str, Any]) -> str:
    """Each plugin node replace_pattern made against the subgraph it replaced; one summary line."""
    outputs = {step.name: step.outputs[0] for step in steps or []}
    if steps is None or any(entry["node"] not in outputs for entry in replaced):
        note = "plugin nodes not compared with the subgraphs they replaced: this backend returns the graph outputs only"
        report["notes"].append(note)
        return note
    try:
        originals = patterns.original_values(call.inputs["original"].path / "model.onnx", feeds,
                                             [entry["original"] for entry in replaced])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime cannot run every exported graph (a float64 grid)
        note = (f"plugin nodes not compared with the subgraphs they replaced: ONNX Runtime cannot run the graph "
                f"before the surgery ({str(exc).strip().splitlines()[0][:200]})")
        report["notes"].append(note)
        return note
    atol, rtol = plugin_tolerance(settings)
    field = "verify.plugin_nodes.atol" if settings.plugin_nodes.atol is not None else "verify.atol"
    worst, failed = 0.0, 0
    for entry in replaced:
        result = patterns.as_replaced(results[outputs[entry["node"]]], entry.get("mapping"))
        stats = compare(result, originals[entry["original"]], atol, rtol)
        found = failures(stats, list(settings.fail_on), settings.max_mismatch, settings.allow_vacuous, field)
        stats.update(failed=found, op=entry["op"], replaced=entry["original"])
        report["plugin_nodes"][entry["node"] if entry["node"] not in report["plugin_nodes"]
                               else f"{entry['node']} vs the subgraph it replaced"] = stats
        if found:
            failed += 1
            report["passed"] = False
            report["failed_checks"] += [f"plugin node {entry['node']} vs the subgraph it replaced: {p}" for p in found]
        else:
            worst = max(worst, stats.get("max_abs") or 0.0)
    count = f"{len(replaced)} plugin node{'s' if len(replaced) != 1 else ''}"
    if failed:
        return f"plugin nodes: FAILED {failed} of {count} differ from the subgraphs they replaced"
    own = f" <= atol {atol:g}" if (atol, rtol) != (settings.atol, settings.rtol) else ""
    return f"{count} vs the subgraphs they replaced max|err| {worst:.1e}{own}"


def plan(ctx: PlanContext, variant: Variant, planned: Mapping[str, Node]) -> Planned:
    """The verify's key: its tolerances and checks, the build and the capture it compares (and, after a
    replace_pattern surgery, the graph before it and the surgery's record of what each node replaced)."""
    data = variant.data
    inputs = {"build": planned["build"], "capture": planned["capture"]}
    tools = environment.tools("numpy")
    if any("replace_pattern" in edit for edit in data.get("surgery") or []):
        inputs.update(original=planned["export"], surgery=planned["surgery"])
        tools |= environment.tools(patterns.REFERENCE_RUNTIME)
    return Planned(VerifySettings.from_keyed(data), inputs, {}, tools)


STAGE = Stage(
    "verify", version=5, plan=plan, run=run, checks=True,
    outputs=("verify.json",),
)

"""What verify holds against the reference: equal infinities and NaN in the same place match, NaN or
Inf on one side only fails at any tolerance, fail_on counts only what the reference does not have, a
reference NaN throughout fails, a check that an all-zero result would pass is vacuous; outputs can be
left out, plugin nodes have their own tolerance; the report and `show` survive all of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, stage_status
from onnx import TensorProto, helper
from test_bad_input import make_tensors
from test_export_model import whole_model
from test_plugin_graphs import (
    GRAPH_PIPELINE,
    HEADS,
    LEVELS,
    MSDA_INPUTS,
    STARTS,
    TOKENS,
    info,
    model_of,
    msda,
    query_inputs,
)

from orchestrator.reports.html import render_html
from orchestrator.stages.verify import compare, failures

ALL = ["nan", "inf", "all_zero", "constant"]
NAN_EVERYWHERE = "reference is NaN everywhere: the capture is broken"


def verdict(result: list[float], reference: list[float], fail_on: list[str] = ALL, atol: float = 1e-4,
            allow_vacuous: bool = False) -> list[str]:
    return failures(compare(np.array(result), np.array(reference), atol, 1e-3), fail_on, 0, allow_vacuous)


# ---------------------------------------------------------------------- compare and failures


def test_equal_infinities_and_nan_in_the_same_place_match() -> None:
    reference = [1.0, -np.inf, np.inf, np.nan, 2.0]
    stats = compare(np.array([1.0, -np.inf, np.inf, np.nan, 2.000001]), np.array(reference), 1e-4, 1e-3)
    assert stats["outside"] == 0 and stats["non_finite_matched"] == 3 and stats["non_finite_mismatch"] == 0
    assert stats["nan"] == 0 and stats["inf"] == 0 and stats["reference_inf"] == 2 and stats["reference_nan"] == 1
    assert 0 < stats["max_abs"] < 1e-5 and np.isfinite(stats["mean_abs"]) and np.isfinite(stats["min_atol_to_pass"])
    assert failures(stats, ALL, 0) == []


@pytest.mark.parametrize("result, reference", [
    ([1.0, 2.0], [1.0, np.nan]),  # the reference is NaN where the result is a number
    ([1.0, 2.0], [1.0, np.inf]),
    ([1.0, np.nan], [1.0, 2.0]),  # the reverse
    ([1.0, -np.inf], [1.0, 2.0]),
    ([1.0, -np.inf], [1.0, np.inf]),  # infinities of opposite sign
    ([1.0, np.nan], [1.0, np.inf]),
], ids=["ref-nan", "ref-inf", "got-nan", "got-inf", "opposite-inf", "nan-vs-inf"])
def test_nan_or_inf_on_one_side_only_fails_at_any_tolerance(result: list[float], reference: list[float]) -> None:
    stats = compare(np.array(result), np.array(reference), atol=1e6, rtol=1e6)
    assert stats["outside"] == 1 and stats["non_finite_mismatch"] == 1, stats
    found = failures(stats, [], 0, allow_vacuous=True)  # no fail_on check: the tolerance alone fails it
    assert len(found) == 1 and "1 NaN or Inf on one side only" in found[0] and "no tolerance passes" in found[0]
    assert failures(stats, [], max_mismatch=1, allow_vacuous=True) == []


def test_fail_on_counts_only_what_the_reference_does_not_have() -> None:
    assert verdict([np.nan, 1.0, 2.0], [np.nan, 1.0, 2.0]) == []
    assert verdict([np.inf, 1.0, 2.0], [np.inf, 1.0, 2.0]) == []
    assert verdict([np.nan, 1.0, 2.0], [0.5, 1.0, 2.0])[0] == "1 NaN where the reference has a number"
    assert verdict([-np.inf, 1.0, 2.0], [np.inf, 1.0, 2.0])[0].startswith("1 Inf where the reference has none")
    assert verdict([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == []  # a constant reference: the same constant passes
    assert verdict([0.5, 0.5, 0.5], [0.5, 0.50001, 0.5]) == [
        "constant output (0.5) where the reference is not that constant"]
    different = verdict([0.7, 0.7, 0.7], [0.5, 0.5, 0.5])
    assert different[0] == "constant output (0.7) where the reference is not that constant", different
    assert verdict([0.0, 0.0], [0.0, 0.0], allow_vacuous=True) == []  # all zero as the reference: no 'constant'
    assert verdict([0.0, 0.0], [1.0, 2.0])[0].startswith("all-zero output")


def test_a_reference_nan_everywhere_fails_with_one_reason() -> None:
    for result in ([0.1, 0.2, 0.3], [np.nan, np.nan, np.nan]):
        stats = compare(np.array(result), np.full(3, np.nan), 1e-4, 1e-3, with_distribution=True)
        assert stats["reference_abs_max"] is None and stats["max_rel"] is None and not stats["vacuous"]
        assert stats["sample"] == {"reference": [], "result": []}
        assert failures(stats, ALL, 0)[0].startswith(NAN_EVERYWHERE) and len(failures(stats, ALL, 0)) == 1
        assert failures(stats, [], 10, allow_vacuous=True)[0].startswith(NAN_EVERYWHERE)
    assert compare(np.array([0.1, 0.2]), np.full(2, np.nan), 1e-4, 1e-3)["max_abs"] is None  # not 'inf'


def test_a_check_an_all_zero_result_would_pass_is_vacuous() -> None:
    reference = np.random.default_rng(0).standard_normal(100) * 1e-10  # HF's init: activations near zero
    stats = compare(reference * 3, reference, atol=1e-4, rtol=1e-3)
    assert stats["vacuous"] and stats["outside"] == 0 and stats["reference_abs_max"] < 1e-9
    (reason,) = failures(stats, ALL, 0)
    assert reason.startswith("vacuous check: max |reference| ") and "an all-zero result would pass as well" in reason
    assert "lower verify.atol" in reason and "re-draw" in reason and "verify.allow_vacuous: true" in reason
    assert failures(stats, ALL, 0, allow_vacuous=True) == []
    assert not compare(reference * 3, reference, atol=1e-11, rtol=1e-3)["vacuous"]
    assert "lower verify.plugin_nodes.atol" in failures(stats, ALL, 0, atol_field="verify.plugin_nodes.atol")[0]


def test_the_report_page_is_drawn_from_nan_and_exact_outputs() -> None:
    nan_reference = compare(np.array([0.1, 0.2]), np.full(2, np.nan), 1e-4, 1e-3, with_distribution=True)
    exact = compare(np.ones(4), np.ones(4), 1e-4, 1e-3, with_distribution=True)  # nothing to draw in the bars
    assert not any(exact["histogram"]["counts"]) and exact["histogram"]["exact"] == 4
    stale = {**exact, "mean_abs": float("nan"), "max_abs": float("nan"), "max_rel": None}
    outputs = {"broken": {**nan_reference, "failed": failures(nan_reference, ALL, 0)},
               "exact": {**exact, "failed": []}, "stale": {**stale, "failed": []}}
    record = {
        "pipeline": {"name": "nan", "file": "nan.yaml", "cwd": "/"}, "generated": 0.0, "passed": False,
        "variants": [], "bench": {}, "trtexec": {}, "tools": {},
        "stages": [{"kind": "verify", "key": "0" * 64, "label": "", "variants": [""], "inputs": {},
                    "status": "failed", "passed": False, "seconds": 0.1, "ran_now": True, "summary": "",
                    "path": None}],
        "verify": {"": {"outputs": outputs, "skipped": ["left"], "passed": False,
                        "failed_checks": [f"broken: {p}" for p in outputs["broken"]["failed"]]}},
    }
    page = render_html(record)
    assert NAN_EVERYWHERE in page and "n/a" in page and "nan" in page
    assert "left" in page and "not compared (verify.skip)" in page


# ---------------------------------------------------------------------- through `orchestrate run`


def masked_graph(mask: np.ndarray) -> object:
    """The plugin's output as the captured call returned it, plus `mask` (-inf where logits are masked),
    as `output`; and twice the plugin's output as `extra`."""
    shape = [1, 3, HEADS * 4]
    nodes = [msda(MSDA_INPUTS, "attended"), helper.make_node("Reshape", ["attended", "merged"], ["flat"]),
             helper.make_node("Add", ["flat", "mask"], ["output"]),
             helper.make_node("Mul", ["flat", "two"], ["extra"])]
    return model_of(nodes, [info("value", TensorProto.FLOAT, [1, TOKENS, HEADS, 4]), *query_inputs(3)],
                    [info("output", TensorProto.FLOAT, shape), info("extra", TensorProto.FLOAT, shape)],
                    [("spatial_shapes", LEVELS), ("level_start_index", STARTS), ("merged", np.array(shape)),
                     ("mask", mask.astype(np.float32)), ("two", np.array(2.0, np.float32))],
                    [info("attended", TensorProto.FLOAT, [1, 3, HEADS, 4])])


def kernel_output(project: Project) -> np.ndarray:
    """The output of the valid capture `make_tensors` writes: what the graph's plugin computes."""
    plain = project.root / "plain"
    if not plain.exists():
        make_tensors(plain)
    output: np.ndarray = np.load(plain / "output.npy")
    return output


def masked_project(project: Project, mask: np.ndarray, reference: np.ndarray | None = None,
                   outputs: str = "[output]", verify: str = "") -> Path:
    """A capture folder whose `output` is the plugin's result plus `mask` (or `reference`), the graph
    above, and a pipeline over them."""
    import onnx

    plain = kernel_output(project)
    make_tensors(project.root / "tensors", output=plain + mask if reference is None else reference, extra=plain)
    onnx.save(masked_graph(mask), str(project.root / "graph.onnx"))
    return project.write("semantics.yaml", GRAPH_PIPELINE.format(name="semantics", outputs=outputs, verify=verify))


def the_verify(project: Project) -> dict:
    (folder,) = (project.store / "verify").iterdir()
    return json.loads((folder / "verify.json").read_text())


def test_masked_logits_pass_where_both_are_minus_infinity(project: Project) -> None:
    mask = np.zeros((1, 3, 8))
    mask[0, 1:, :4] = -np.inf
    mask[0, 0, 0] = np.nan  # a NaN the model computed, in the same place in the engine
    result = project.run("run", str(masked_project(project, mask)))
    assert result.code == 0, result.text
    assert stage_status(result.out)["verify"] == "passed"
    assert "9 NaN/Inf as in the reference" in result.out
    stats = the_verify(project)["outputs"]["output"]
    assert stats["non_finite_matched"] == 9 and stats["inf"] == 0 and stats["nan"] == 0 and stats["outside"] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_reference_nan_or_inf_where_the_result_is_a_number_fails(project: Project, bad: float) -> None:
    reference = kernel_output(project).copy()
    reference[0, 2, 5] = bad
    result = project.run("run", str(masked_project(project, np.zeros((1, 3, 8)), reference)))
    assert result.code == 1, result.text
    assert "1 of 24 elements fail: 1 NaN or Inf on one side only" in result.out


def test_a_reference_nan_everywhere_fails_and_the_report_and_show_survive(project: Project) -> None:
    pipeline = masked_project(project, np.zeros((1, 3, 8)), np.full((1, 3, 8), np.nan, np.float32))
    result = project.run("run", str(pipeline))
    assert result.code == 1, result.text
    assert "Traceback" not in result.text and f"output: FAILED {NAN_EVERYWHERE}" in result.out
    page = (project.store / "reports" / "semantics" / "report.html").read_text()
    assert NAN_EVERYWHERE in page
    record = json.loads((project.store / "reports" / "semantics" / "report.json").read_text())
    assert record["passed"] is False and record["verify"][""]["outputs"]["output"]["max_rel"] is None

    again = project.run("run", str(pipeline))
    assert again.code == 1 and stage_status(again.out)["verify"] == "failed", again.text
    shown = project.run("show", str(pipeline), env={"COLUMNS": "200"})
    assert shown.code == 0 and "Traceback" not in shown.text, shown.text
    assert NAN_EVERYWHERE in shown.out and "n/a" in shown.out


def test_skip_leaves_an_output_out_and_an_unknown_name_is_refused(project: Project) -> None:
    both = masked_project(project, np.zeros((1, 3, 8)), outputs="[output, extra]")
    failed = project.run("run", str(both))  # extra is twice what was captured
    assert failed.code == 1 and "extra: FAILED" in failed.out, failed.text

    skip = project.write("skip.yaml", both.read_text().replace("atol: 1.0e-5", "atol: 1.0e-5\n  skip: [extra]"))
    passed = project.run("run", str(skip))
    assert passed.code == 0, passed.text
    assert "not compared (verify.skip): extra" in passed.out and "extra max|err|" not in passed.out
    record = next(json.loads((f / "verify.json").read_text()) for f in (project.store / "verify").iterdir()
                  if json.loads((f / "verify.json").read_text())["passed"])
    assert record["skipped"] == ["extra"] and list(record["outputs"]) == ["output"]
    shown = project.run("show", str(skip), "--stage", "verify", env={"COLUMNS": "200"})
    assert shown.code == 0 and "skipped" in shown.out, shown.text

    typo = project.write("typo.yaml", both.read_text().replace("atol: 1.0e-5", "atol: 1.0e-5\n  skip: [extras]"))
    line = typo.read_text().splitlines().index("  skip: [extras]") + 1
    refused = project.run("run", str(typo))
    assert refused.code == 2 and "Traceback" not in refused.text, refused.text
    assert f"error: {typo}:{line}: verify.skip: 'extras': no such output; the outputs are output, extra" \
        in refused.err

    everything = project.write("all.yaml", both.read_text().replace("atol: 1.0e-5",
                                                                    "atol: 1.0e-5\n  skip: [output, extra]"))
    nothing = project.run("run", str(everything))
    assert nothing.code == 2 and "verify would check nothing" in nothing.err, nothing.text


def test_plugin_nodes_have_their_own_tolerance_and_vacuous_checks_fail(project: Project) -> None:
    pipeline = whole_model(project, layers=2, **{"bench:": "verify:\n  plugin_nodes: {atol: 1.0e-12, rtol: 0.0}\n"
                                                           "bench:"})
    result = project.run("run", str(pipeline))
    assert result.code == 1, result.text
    assert "output max|err|" in result.out and "plugin nodes: FAILED 2 of 2 differ from their calls" in result.out
    report = the_verify(project)
    assert report["outputs"]["output"]["atol"] == 1e-4 and not report["outputs"]["output"]["failed"]
    assert all(s["atol"] == 1e-12 and s["rtol"] == 0.0 and "outside atol 1e-12" in s["failed"][0]
               for s in report["plugin_nodes"].values())

    loose = pipeline.read_text().replace("plugin_nodes: {atol: 1.0e-12, rtol: 0.0}", "plugin_nodes: {atol: 1.0}")
    result = project.run("run", str(project.write("whole.yaml", loose)))  # every |call result| is below 1
    assert result.code == 1 and "plugin nodes: FAILED 2 of 2" in result.out, result.text
    assert "output max|err|" in result.out  # the output keeps the global atol, and passes
    shown = project.run("show", str(pipeline), "--stage", "verify", env={"COLUMNS": "250"})
    assert "vacuous check: max |reference|" in shown.out and "lower verify.plugin_nodes.atol" in shown.out

    allowed = loose.replace("plugin_nodes: {atol: 1.0}", "plugin_nodes: {atol: 1.0}\n  allow_vacuous: true")
    result = project.run("run", str(project.write("whole.yaml", allowed)))
    assert result.code == 0, result.text
    assert "2 plugin nodes vs their calls" in result.out and "<= atol 1, 2 vacuous (allowed)" in result.out


def test_a_vacuous_output_fails_unless_allowed(project: Project) -> None:
    loose = project.small("loose.yaml", **{"atol: 1.0e-4": "atol: 10.0"})  # above every |reference|
    result = project.run("run", str(loose))
    assert result.code == 1, result.text
    assert "output: FAILED vacuous check: max |reference|" in result.out and "verify.allow_vacuous" in result.out
    allowed = project.small("allowed.yaml", **{"atol: 1.0e-4": "atol: 10.0\n  allow_vacuous: true"})
    result = project.run("run", str(allowed))
    assert result.code == 0, result.text
    assert "vacuous (max|ref|" in result.out and "within atol; allowed)" in result.out

"""`version: auto`: the newest plugin version the build's TensorRT registers, resolved at planning.

MultiscaleDeformableAttnPlugin_TRT v1 (IPluginV2DynamicExt) is deprecated since TensorRT 10.11, which
added v2 (IPluginV3, same I/O). The choice is a plain function of the catalog entry's versions, the
versions the installed TensorRT registers (where its Python API can be asked) and its release; the
resolved version is what the keys hold and what the export writes into the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, Project

from orchestrator import imports
from orchestrator import plugins as catalog
from orchestrator.backends import get
from orchestrator.config import spec
from orchestrator.errors import UserError
from orchestrator.planning.plan import Plan, make_plan
from orchestrator.plugins.versions import PluginVersion, choose_version, deprecation
from orchestrator.store.digest import DigestCache

MSDA = "MultiscaleDeformableAttnPlugin_TRT"
LIFECYCLE = {"1": PluginVersion(deprecated="10.11"), "2": PluginVersion(added="10.11")}


def entry() -> catalog.PluginEntry:
    found = catalog.builtin(MSDA)
    assert found is not None
    return found


@pytest.mark.parametrize(("registered", "release", "version"), [
    ({"1", "2"}, "10.13.0.35", "2"),  # 10.11 and later register both: the newest
    ({"1", "2"}, "11.1.0", "2"),
    ({"1"}, "8.6.1", "1"),  # before 10.11 only v1 exists
    ({"1"}, "10.10.0", "1"),
    (None, "10.10.0", "1"),  # trtexec: only its release is known, and 10.10 has no v2
    (None, "10.11.0", "2"),
    (None, None, "2"),  # the embedded backend runs every version the entry lists
    (set(), "10.13.0", "2"),  # registers none (the build's preflight names the missing creator): by release
])
def test_auto_is_the_newest_version_the_build_can_use(registered: set[str] | None, release: str | None,
                                                      version: str) -> None:
    choice = entry().choose_version("auto", registered, release)
    assert choice.version == version and choice.reason.startswith("version auto")
    assert choice.warning is None  # auto never picks a version its release deprecates while a newer one is there


def test_a_deprecated_version_is_a_warning_only_where_the_release_deprecates_it() -> None:
    warning = choose_version(MSDA, ("1", "2"), LIFECYCLE, "1", {"1", "2"}, "10.13.0").warning
    assert warning == (f"{MSDA} version 1 is deprecated since TensorRT 10.11 (the build's is 10.13.0); "
                       "use version 2 (or version: auto)")
    assert deprecation(MSDA, "1", LIFECYCLE, "10.10.1") is None
    assert deprecation(MSDA, "1", LIFECYCLE, None) is None  # no TensorRT: nothing deprecates it
    assert deprecation(MSDA, "2", LIFECYCLE, "11.1.0") is None
    only_v1 = choose_version(MSDA, ("1",), {"1": PluginVersion(deprecated="10.11")}, "auto", {"1"}, "10.13")
    assert only_v1.version == "1" and only_v1.warning is not None and "use version" not in only_v1.warning


def test_the_catalog_entry_says_which_versions_are_deprecated() -> None:
    assert entry().lifecycle["1"].deprecated == "10.11" and entry().lifecycle["2"].added == "10.11"
    assert entry().choose_version("2").version == "2"


def test_backends_without_a_registry_to_ask() -> None:
    embedded = get("onnxruntime").plugin_versions(MSDA, ("1", "2"), "", [])
    assert embedded.versions is None and embedded.release is None
    trtexec = get("trtexec").plugin_versions(MSDA, ("1", "2"), "", [])
    assert trtexec.versions is None  # trtexec cannot be asked: it goes by the release it reports
    if get("tensorrt").unavailable() is not None:  # no TensorRT here: nothing to ask, as on the embedded backend
        assert get("tensorrt").plugin_versions(MSDA, ("1", "2"), "", []).release is None


# ------------------------------------------------------------------------------------------- planning

def planned(path: Path) -> Plan:
    with imports.search_path([ROOT]):
        return make_plan(spec.load(path), DigestCache(None))


def with_version(project: Project, name: str, version: str) -> Path:
    """The small pipeline with export.plugins[0].version set, built on the embedded backend."""
    return project.small(name, **{"domain: trt.plugins": f"domain: trt.plugins\n      version: {version}",
                                  "verify:": "build:\n  backend: onnxruntime\nverify:"})


def test_auto_resolves_at_planning_and_the_keys_hold_the_resolved_version(project: Project) -> None:
    auto = planned(with_version(project, "auto.yaml", "auto"))
    two = planned(with_version(project, "two.yaml", "'2'"))
    export = auto.node(auto.spec.variants[0].name, "export")
    assert export is not None
    keyed = json.dumps(export.parts["config"])
    assert '"version": "2"' in keyed and "auto" not in keyed and "version_note" not in keyed
    assert export.unkeyed["plugin_notes"] == [f"{MSDA} v2 (version auto: the newest the catalog entry lists (the "
                                              "build runs every version))"]
    assert {n.kind: n.key for n in auto.order()} == {n.kind: n.key for n in two.order()}


def test_the_default_version_stays_1_with_its_key(project: Project) -> None:
    default = planned(project.small("default.yaml"))
    one = planned(project.small("one.yaml", **{"domain: trt.plugins": "domain: trt.plugins\n      version: '1'"}))
    assert {n.kind: n.key for n in default.order()} == {n.kind: n.key for n in one.order()}
    export = default.node(default.spec.variants[0].name, "export")
    assert export is not None and "plugin_notes" not in export.unkeyed.values


def test_an_unknown_version_names_auto(project: Project) -> None:
    path = project.small("three.yaml", **{"domain: trt.plugins": "domain: trt.plugins\n      version: '3'"})
    with pytest.raises(UserError, match="has versions 1, 2 \\(or auto"):
        planned(path)


def test_the_export_writes_the_resolved_version_and_says_why(project: Project) -> None:
    path = with_version(project, "auto.yaml", "auto")
    result = project.run("run", str(path))
    assert result.code == 0, result.text
    export_line = next(line for line in result.out.splitlines() if line.startswith("export"))
    assert f"{MSDA} v2 (version auto" in export_line
    [graph] = project.store.glob("export/*/export.json")
    [node] = json.loads(graph.read_text())["plugin_nodes"]
    assert node["attributes"]["plugin_version"] == "2"

"""Pipeline validation: defaults, and errors that name file, line and field."""

from __future__ import annotations

import pytest
from conftest import ROOT, Project

from orchestrator.config import spec
from orchestrator.errors import UserError

PLUGIN = "  plugins: [{op: MultiscaleDeformableAttnPlugin_TRT}]\n"


def load_text(project: Project, text: str, name: str = "p.yaml") -> spec.Spec:
    return spec.load(project.write(name, text))


def error_of(project: Project, text: str) -> UserError:
    with pytest.raises(UserError) as caught:
        load_text(project, text)
    return caught.value


def test_the_example_pipeline_is_valid_and_defaults_are_filled() -> None:
    loaded = spec.load(ROOT / "pipelines" / "msda_layer07.yaml")
    assert loaded.name == "msda_layer07"
    assert loaded.data["capture"]["occurrence"] == 0
    assert loaded.data["build"]["threads"] == 0
    assert loaded.data["verify"]["max_mismatch"] == 0
    assert loaded.data["export"]["plugins"][0]["attributes"] == {}
    assert [v.name for v in loaded.variants] == [""]


def test_unknown_key_names_line_and_suggests(project: Project) -> None:
    err = error_of(project, "version: 1\nexport:\n  opsett: 11\n" + PLUGIN)
    assert err.line == 3
    assert err.field == "export.opsett"
    assert "unknown key 'opsett'" in err.message and "did you mean 'opset'" in str(err)


def test_wrong_type(project: Project) -> None:
    err = error_of(project, "version: 1\nexport:\n  opset: eleven\n" + PLUGIN)
    assert (err.line, err.field) == (3, "export.opset")
    assert "expected an integer" in err.message


def test_yaml_syntax_error_line(project: Project) -> None:
    err = error_of(project, "version: 1\nexport:\n  opset: [11\n  plugins: x\n")
    assert err.line is not None and "YAML syntax error" in err.message


def test_missing_required_section(project: Project) -> None:
    err = error_of(project, "version: 1\n")
    assert "missing required key 'export'" in err.message


def test_plugin_dtype_contract_is_checked(project: Project) -> None:
    err = error_of(project, "version: 1\ncapture: {from_dir: .}\nexport:\n  plugins:\n"
                            "    - op: MultiscaleDeformableAttnPlugin_TRT\n      dtypes: {spatial_shapes: int64}\n")
    assert err.field == "export.plugins[0].dtypes.spatial_shapes"
    assert "takes int32, not int64" in err.message
    assert err.line == 6


def test_unknown_plugin_is_named(project: Project) -> None:
    err = error_of(project, "version: 1\ncapture: {from_dir: .}\nexport:\n"
                            "  plugins: [{op: MultiscaleDeformableAttnPlugin}]\n")
    assert "no catalog entry" in err.message and "MultiscaleDeformableAttnPlugin_TRT" in str(err)


def test_error_text_has_file_and_line(project: Project) -> None:
    err = error_of(project, "version: 2\nexport: {plugins: [{op: MultiscaleDeformableAttnPlugin_TRT}]}\n")
    assert str(err).startswith(str(project.root / "p.yaml") + ":1: version:")


def test_matrix_expands_into_named_variants(project: Project) -> None:
    loaded = load_text(project, "version: 1\ncapture: {from_dir: .}\nexport:\n" + PLUGIN +
                                "matrix:\n  build.precision: [fp32, fp16]\n  verify.atol: [0.001, 0.01]\n")
    assert [v.name for v in loaded.variants] == ["precision=fp32,atol=0.001", "precision=fp32,atol=0.01",
                                                  "precision=fp16,atol=0.001", "precision=fp16,atol=0.01"]
    assert loaded.variants[3].data["build"]["precision"] == "fp16"

"""trtexec: flags per generation (8.6, 10.x, 11.x), its file formats and its logs.

Sample logs and JSON below follow the formats trtexec writes (samples/common/sampleReporting.cpp:
the performance summary, exportJSONTrace, exportJSONOutput; onnx-tensorrt's ModelImporter and the
plugin registry for failures). trtexec itself is not installed here; the command is run for real
only by the `tensorrt`-marked test in test_tensorrt_backend.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Project
from onnx import TensorProto, helper
from test_catalog import TOY_PIPELINE, write_toy_capture
from test_extension import run_in_process
from test_preflight import handmade_model

from orchestrator import backends
from orchestrator.backends import onnxruntime
from orchestrator.backends.base import BuildRequest, Trusted
from orchestrator.backends.tensorrt import ShapeRange, TensorSpec, trtexec
from orchestrator.errors import UserError
from orchestrator.stages import StageCall
from orchestrator.stages.base import Unkeyed
from orchestrator.stages.build import BuildSettings, build_request, preflight
from orchestrator.store.store import Store

BUILD = {"workspace": "4GiB", "precision": "fp32"}
MSDA = "MultiscaleDeformableAttnPlugin_TRT"
MSDA_PRECISIONS = {MSDA: ("fp32", "fp16")}


# ------------------------------------------------------------------------------------------- versions

@pytest.mark.parametrize(("text", "version"), [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec --help", "8.6.1"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help", "10.3.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v101300] # trtexec --help", "10.13.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v110100] # trtexec --help", "11.1.0"),
    ("[11/02/2025-10:01:02] [I] TensorRT version: 8.6.1", "8.6.1"),
    ("usage: something else", None),
])
def test_version_from_the_banner(text: str, version: str | None) -> None:
    assert trtexec.version_from_output(text) == version


def test_version_helpers() -> None:
    assert trtexec.version_tuple("10.13.0.35") == (10, 13, 0)
    assert trtexec.version_tuple(None) == (10, 0, 0)
    assert trtexec.major_of("8.6.1") == 8 and trtexec.major_of(None) == 10
    assert trtexec.short_version("10.13.0.35") == "10.13.0"
    assert trtexec.parse_size("4GiB") == 4 << 30 and trtexec.parse_size("512MiB") == 512 << 20
    with pytest.raises(ValueError, match="not a size"):
        trtexec.parse_size("4 parsecs")


# ------------------------------------------------------------------------------------------- command lines

def plan(precision: str, version: str, plugins: dict[str, tuple[str, ...]] | None = None,
         quantized: bool = False) -> trtexec.PrecisionPlan:
    return trtexec.precision_for(precision, version, MSDA_PRECISIONS if plugins is None else plugins, quantized)


@pytest.mark.parametrize(("version", "precision", "expected"), [
    ("8.6.1", "fp32", ["--explicitBatch", "--memPoolSize=workspace:4096", "--noTF32"]),
    ("8.6.1", "fp16", ["--explicitBatch", "--memPoolSize=workspace:4096", "--fp16"]),
    ("8.6.1", "tf32", ["--explicitBatch", "--memPoolSize=workspace:4096"]),
    ("8.6.1", "best", ["--explicitBatch", "--memPoolSize=workspace:4096", "--fp16"]),
    ("10.13.0", "fp32", ["--memPoolSize=workspace:4096M", "--noTF32"]),
    ("10.13.0", "fp16", ["--memPoolSize=workspace:4096M", "--fp16"]),
    ("10.13.0", "best", ["--memPoolSize=workspace:4096M", "--fp16", "--bf16"]),
    ("11.1.0", "fp32", ["--memPoolSize=workspace:4096M", "--noTF32"]),
    ("11.1.0", "fp16", ["--memPoolSize=workspace:4096M"]),  # strongly typed: the fp16 graph carries it
    ("11.1.0", "best", ["--memPoolSize=workspace:4096M"]),
])
def test_flags_per_generation(version: str, precision: str, expected: list[str]) -> None:
    command = trtexec.command_line("model.onnx", {**BUILD, "precision": precision}, [], version,
                                   plan=plan(precision, version), engine=None)
    assert command == ["trtexec", "--onnx=model.onnx", *expected]
    if trtexec.major_of(version) >= 10:
        assert "--explicitBatch" not in command and not any(c.startswith("--workspace=") for c in command)
    if trtexec.major_of(version) >= 11:
        assert not {"--fp16", "--bf16", "--best"} & set(command)


def test_strongly_typed_fp16_casts_the_graph_instead() -> None:
    assert plan("fp16", "11.1.0").cast_graph == "float16"
    assert plan("fp16", "10.13.0").cast_graph is None


def test_old_releases_use_workspace_and_plugins() -> None:
    command = trtexec.command_line("m.onnx", BUILD, ["/opt/libmine.so"], "8.2.5", engine=None)
    assert "--workspace=4096" in command and "--plugins=/opt/libmine.so" in command
    assert "--staticPlugins=/opt/libmine.so" in trtexec.command_line("m.onnx", BUILD, ["/opt/libmine.so"], "8.6.1")


@pytest.mark.parametrize(("version", "precision", "words"), [
    ("8.6.1", "bf16", "TensorRT 8.6.1 has no BF16 builder flag"),
    ("11.1.0", "bf16", "TensorRT 11.1.0 is strongly typed"),
    ("10.13.0", "int8", "quantized graph"),
])
def test_precisions_a_trtexec_cannot_build(version: str, precision: str, words: str) -> None:
    with pytest.raises(UserError) as caught:
        plan(precision, version, plugins={})
    assert caught.value.field == "build.precision" and words in caught.value.message


def test_the_plugin_limits_precision_and_both_are_named() -> None:
    with pytest.raises(UserError) as caught:
        plan("bf16", "10.13.0")
    assert "TensorRT 10.13.0 supports it" in caught.value.message
    assert f"{MSDA} runs only fp32, fp16" in caught.value.message


def test_complete_command_with_shapes_cache_plugins_and_engine() -> None:
    profile = {"value": ShapeRange((1, 106, 2, 16), (2, 106, 2, 16), (4, 106, 2, 16)),
               "input:0": ShapeRange((3, 2), (3, 2), (3, 2))}
    command = trtexec.command_line("model.onnx", {**BUILD, "precision": "fp16"}, ["/p/libmine.so"], "10.13.0",
                                   profiles=[profile], timing_cache="/store/shared/t/timing.cache",
                                   engine="engine.plan", skip_inference=True)
    assert command == [
        "trtexec", "--onnx=model.onnx", "--memPoolSize=workspace:4096M", "--fp16", "--staticPlugins=/p/libmine.so",
        "--minShapes=value:1x106x2x16,'input:0':3x2", "--optShapes=value:2x106x2x16,'input:0':3x2",
        "--maxShapes=value:4x106x2x16,'input:0':3x2", "--timingCacheFile=/store/shared/t/timing.cache",
        "--saveEngine=engine.plan", "--skipInference"]


def dynamic_graph() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def stage_call(tmp_path: Path, build: dict[str, object]) -> BuildRequest:
    settings = {"backend": "onnxruntime", "precision": "fp32", "workspace": "1GiB", "timing_cache": True,
                "profiles": [], **build}
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    typed = BuildSettings.from_keyed({"build": settings, "plugins": []})
    return build_request(StageCall("build", typed, Unkeyed(), {}, out, shared_dir=tmp_path / "shared"),
                         out / "model.onnx", None, [])


def test_the_equivalent_command_carries_the_yaml_profiles(tmp_path: Path) -> None:
    call = stage_call(tmp_path, {"profiles": [{"x": {"min": [1, 8], "opt": [4, 8], "max": [16, 8]}}]})
    command = trtexec.equivalent_command(call, dynamic_graph())
    assert "--minShapes=x:1x8" in command and "--optShapes=x:4x8" in command and "--maxShapes=x:16x8" in command
    assert command[1] == "--onnx=model.onnx" and command[-1] == "--saveEngine=engine.plan"
    # without profiles a dynamic graph still gets its command, with no invented shapes
    plain = trtexec.equivalent_command(stage_call(tmp_path, {}), dynamic_graph())
    assert not any(part.startswith("--minShapes") for part in plain)


def static_graph() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_static_model_gets_no_explicit_shapes(tmp_path: Path) -> None:
    # trtexec: "Static model does not take explicit shapes"; a profile may only repeat the graph's dims
    call = stage_call(tmp_path, {"profiles": [{"x": {"min": [2, 8], "opt": [2, 8], "max": [2, 8]}}]})
    command = trtexec.equivalent_command(call, static_graph())
    assert not any(part.startswith(("--minShapes", "--optShapes", "--maxShapes", "--shapes")) for part in command)
    profile = {"x": ShapeRange((2, 8), (2, 8), (2, 8))}
    assert trtexec.explicit_profiles([profile], {"x": (2, 8)}) is None
    assert trtexec.explicit_profiles([profile], {"x": (None, 8)}) == [profile]
    assert trtexec.explicit_profiles([], {"x": (None, 8)}) is None


def msda_model(namespace: str = "", rename: dict[str, str] | None = None) -> onnx.ModelProto:
    """The preflight's hand-made plugin graph, with its inputs renamed as given."""
    model = handmade_model(index_type=TensorProto.INT32, namespace=namespace)
    for old, new in (rename or {}).items():
        next(i for i in model.graph.input if i.name == old).name = new
        node = model.graph.node[0]
        node.input[list(node.input).index(old)] = new
    return model


def declared(namespace: str = "") -> list[dict[str, str]]:
    return [{"op": MSDA, "version": "1", "namespace": namespace}]


def test_a_plugin_namespace_is_refused_for_trtexec_unless_a_library_can_register_it() -> None:
    with pytest.raises(UserError) as caught:
        preflight(msda_model("mine"), declared("mine"), "fp32", "trtexec")
    assert caught.value.field == "export.plugins"
    assert "namespace 'mine'" in caught.value.message and "only in namespace \"\"" in caught.value.message
    assert "backend: tensorrt" in (caught.value.hint or "")
    assert preflight(msda_model("mine"), declared("mine"), "fp32", "trtexec", ["/opt/libmine.so"])
    assert preflight(msda_model(), declared(), "fp32", "trtexec")
    assert preflight(msda_model("mine"), declared("mine"), "fp32", "onnxruntime")


def test_tensor_names_with_a_comma_are_refused_for_trtexec() -> None:
    model = msda_model(rename={"value": "value,0"})
    with pytest.raises(UserError) as caught:
        preflight(model, declared(), "fp32", "trtexec")
    assert "input 'value,0'" in caught.value.message and "splits" in caught.value.message
    assert preflight(model, declared(), "fp32", "onnxruntime")
    assert preflight(msda_model(rename={"value": "value:0"}), declared(), "fp32", "trtexec")  # quotes carry ':'
    with pytest.raises(UserError, match="input 'a,b'"):
        trtexec.load_inputs_option({"a,b": "/in.bin"})


# ------------------------------------------------------------------------------------------- files

def test_inputs_are_raw_files_in_the_engine_dtype(tmp_path: Path) -> None:
    specs = [TensorSpec("value", "float32", [1, 4]), TensorSpec("spatial_shapes", "int32", [2, 2])]
    feeds = {"value": np.arange(4, dtype=np.float64).reshape(1, 4), "spatial_shapes": np.array([[8, 10], [4, 5]])}
    files = trtexec.write_inputs(tmp_path, feeds, specs)
    assert np.array_equal(np.fromfile(files["spatial_shapes"], dtype="<i4").reshape(2, 2), feeds["spatial_shapes"])
    assert files["value"].stat().st_size == 16
    assert trtexec.load_inputs_option(files) == \
        f"--loadInputs=value:{files['value']},spatial_shapes:{files['spatial_shapes']}"
    assert trtexec.load_inputs_option({"in:0": "/a.bin"}) == "--loadInputs='in:0':/a.bin"
    with pytest.raises(UserError, match="outside int32's range"):
        trtexec.write_inputs(tmp_path, {**feeds, "spatial_shapes": np.array([[2**33, 1], [1, 1]])}, specs)


EXPORTED = """[
  { "name" : "output"
  , "dimensions" : "1x2x3"
  , "values" : [ 0.5, -1.25, 3e-05, nan, -nan, inf ]
  }
, { "name" : "count"
  , "dimensions" : "2"
  , "values" : [ 7, -inf ]
  }
]
"""


def test_exported_outputs_parse_with_non_finite_values() -> None:
    parsed = trtexec.parse_exported_outputs(EXPORTED)
    assert parsed["output"][0] == (1, 2, 3) and parsed["count"][0] == (2,)
    arrays = trtexec.outputs_as_arrays(parsed, [TensorSpec("output", "float32", [1, 2, 3])])
    values = arrays["output"].ravel()
    assert arrays["output"].dtype == np.float32 and values[0] == 0.5 and values[2] == np.float32(3e-05)
    assert np.isnan(values[3]) and np.isnan(values[4]) and values[5] == np.inf
    assert parsed["count"][1][1] == -np.inf
    with pytest.raises(RuntimeError, match="exported no output 'missing'"):
        trtexec.outputs_as_arrays(parsed, [TensorSpec("missing", "float32", [1])])
    with pytest.raises(RuntimeError, match="2 values for 'count' of shape"):
        trtexec.outputs_as_arrays({"count": ((3,), [1.0, 2.0])}, [TensorSpec("count", "int32", [3])])


# An output whose shape depends on the data: trtexec writes a line of text where its values go.
EXPORTED_DATA_DEPENDENT = """[
  { "name" : "boxes"
  , "dimensions" : "3x4"
  , "values" : [ the values of a data-dependent output are not dumped here ]
  }
]
"""


def test_the_exported_json_limits_are_said_or_refused() -> None:
    specs = [TensorSpec("logits", "float32", [1, 3]), TensorSpec("mask", "float16", [1, 3]),
             TensorSpec("count", "int32", [1])]
    note = trtexec.printed_digits_note(specs)
    assert note == ("trtexec printed logits with 6 significant digits (--exportOutput): differences below ~1e-5 "
                    "relative are not meaningful")
    assert trtexec.printed_digits_note(specs[1:]) is None  # float16 survives 6 digits; integers are exact
    assert trtexec.unreadable_outputs(specs) is None
    problem = trtexec.unreadable_outputs([*specs, TensorSpec("labels", "uint8", [1, 3])])
    assert problem is not None and "output 'labels' is uint8" in problem.message and "characters" in problem.message
    with pytest.raises(UserError) as caught:
        trtexec.parse_exported_outputs(EXPORTED_DATA_DEPENDENT, [TensorSpec("boxes", "float32", [None, 4])])
    assert "cannot be read" in caught.value.message and "'boxes'" in caught.value.message
    assert "tensorrt" in (caught.value.hint or "")


# ------------------------------------------------------------------------------------------- raw outputs
# --dumpRawBindingsToFile: trtexec writes each binding's host buffer (numpy's tofile writes the same bytes) into
# its working directory as <name>.<input|output>.<dims joined by '.'>.<dtype>.raw, the name made file-safe
# (every byte but ASCII letters, digits and '._-,' becomes '_'; 10.x cuts it to 150 characters around '...'), and
# logs one line per binding (samples/common/sampleInference.cpp, dumpRawBindingToFiles, through gLogInfo).

LONG_NAME = "encoder/" + "layers.0/self_attn/" * 10 + "output:0"  # 206 characters
LONG_FILE = (LONG_NAME[:73] + "..." + (LONG_NAME + ".output.2.fp32.raw")[-73:]).replace("/", "_").replace(":", "_")
FLOAT32_BITS = np.array([1 / 3, 1 + 2**-23, -0.0, 1e-45, 3.4028235e38, 0.1], dtype=np.float32)


def write_dump(folder: Path) -> str:
    """Raw files of five outputs and an input, written as trtexec writes them; its log lines."""
    files = {
        "decoder/boxes:0": ("decoder_boxes_0.output.1.2.3.fp32.raw", "fp32", "1.2.3", FLOAT32_BITS.reshape(1, 2, 3)),
        "labels": ("labels.output.1.4.uint8.raw", "uint8", "1.4", np.array([[0, 10, 44, 255]], dtype=np.uint8)),
        "scores": ("scores.output.3.fp16.raw", "fp16", "3", np.array([0.1, -65504, 2**-24], dtype=np.float16)),
        "count": ("count.output..int32.raw", "int32", "", np.array(7, dtype=np.int32)),
        LONG_NAME: (LONG_FILE, "fp32", "2", np.array([1.5, -2.5], dtype=np.float32)),
        "images": ("images.input.1.3.fp32.raw", "fp32", "1.3", np.zeros((1, 3), dtype=np.float32)),
    }
    lines = ["[11/03/2025-09:12:45] [I] Dumping I/O Bindings to RAW Files:"]
    for name, (file, dtype, dims, array) in files.items():
        array.tofile(folder / file)
        kind = "input" if file.endswith(".input.1.3.fp32.raw") else "output"
        lines.append(f"[11/03/2025-09:12:45] [I] Writing file for {kind} binding {name} (with datatype {dtype} and "
                     f"dimensions {dims}) to {file}")
    return "\n".join([*lines, "&&&& PASSED TensorRT.trtexec [TensorRT v101300] # trtexec --loadEngine=engine.plan"])


RAW_SPECS = [TensorSpec("decoder/boxes:0", "float32", [1, 2, 3]), TensorSpec("labels", "uint8", [1, 4]),
             TensorSpec("scores", "float16", [None]), TensorSpec("count", "int32", []),
             TensorSpec(LONG_NAME, "float32", [2])]


def check_raw_outputs(arrays: dict[str, np.ndarray]) -> None:
    boxes = arrays["decoder/boxes:0"]
    assert boxes.dtype == np.float32 and boxes.shape == (1, 2, 3)
    assert np.array_equal(boxes.ravel().view(np.uint32), FLOAT32_BITS.view(np.uint32))  # every bit, -0.0 too
    assert arrays["labels"].dtype == np.uint8 and arrays["labels"].tolist() == [[0, 10, 44, 255]]
    assert arrays["scores"].dtype == np.float16 and arrays["scores"].tolist() == [np.float16(0.1), -65504, 2**-24]
    assert arrays["count"].shape == () and arrays["count"].dtype == np.int32 and int(arrays["count"]) == 7
    assert arrays[LONG_NAME].tolist() == [1.5, -2.5]
    assert set(arrays) == {spec.name for spec in RAW_SPECS}  # the input's file is not an output


def test_raw_outputs_are_read_back_exactly_by_the_log_lines(tmp_path: Path) -> None:
    log = write_dump(tmp_path)
    logged = trtexec.logged_raw_outputs(log, tmp_path)
    assert set(logged) == {spec.name for spec in RAW_SPECS}
    assert logged["count"] == trtexec.RawOutput("int32", (), tmp_path / "count.output..int32.raw")
    assert logged[LONG_NAME].path.name == LONG_FILE
    (tmp_path / "labels.output.1.4.uint8.raw").rename(tmp_path / "labels.raw")  # a name only the log gives
    log = log.replace("to labels.output.1.4.uint8.raw", "to labels.raw")
    check_raw_outputs(trtexec.raw_outputs(log, tmp_path, RAW_SPECS) or {})
    # what --exportOutput would have printed of 1/3 (6 significant digits) is another float32
    assert np.float32(json.loads("[0.333333]")[0]) != FLOAT32_BITS[0]


def test_raw_outputs_are_found_by_their_file_names_without_the_log(tmp_path: Path) -> None:
    write_dump(tmp_path)
    check_raw_outputs(trtexec.raw_outputs("", tmp_path, RAW_SPECS) or {})


def test_raw_file_names_follow_trtexecs_safe_names() -> None:
    assert trtexec.filename_safe("a/b:c d,e-f_g.h") == "a_b_c_d,e-f_g.h"
    assert trtexec.filename_safe("é") == "__"  # a byte at a time, as C's isalnum sees UTF-8
    assert trtexec.filename_safe("x" * 150, 150) == "x" * 150
    assert trtexec.filename_safe("a" * 100 + "b" * 100, 150) == "a" * 73 + "..." + "b" * 73
    assert trtexec.raw_file_names("out:0", "", "bool") == {"out_0.output..bool.raw"}
    assert LONG_FILE in trtexec.raw_file_names(LONG_NAME, "2", "fp32")
    assert "encoder_layers.0" in LONG_FILE and len(LONG_FILE) == 149


def test_a_raw_file_of_the_wrong_size_or_missing_is_refused(tmp_path: Path) -> None:
    log = write_dump(tmp_path)
    np.zeros(2, dtype=np.float32).tofile(tmp_path / "scores.output.3.fp16.raw")  # 8 bytes where 6 belong
    with pytest.raises(RuntimeError, match=r"scores\.output\.3\.fp16\.raw of output 'scores' holds 8 bytes; fp16 of "
                                           r"shape \[3\] is 6 bytes"):
        trtexec.raw_outputs(log, tmp_path, RAW_SPECS)
    (tmp_path / "scores.output.3.fp16.raw").unlink()
    with pytest.raises(RuntimeError, match=r"logged output 'scores' as written to scores\.output\.3\.fp16\.raw, "
                                           r"which is not there"):
        trtexec.raw_outputs(log, tmp_path, RAW_SPECS)
    with pytest.raises(RuntimeError, match="no raw file for output 'scores'"):
        trtexec.raw_outputs("", tmp_path, RAW_SPECS)
    np.zeros(2, dtype=np.uint8).tofile(tmp_path / "packed.output.4.int4.raw")
    with pytest.raises(UserError, match="int4, two values a byte"):
        trtexec.raw_outputs("", tmp_path, [TensorSpec("packed", "int4", [4])])


def test_without_raw_files_the_json_is_read_and_its_digits_noted(tmp_path: Path) -> None:
    assert trtexec.raw_outputs("[I] no dump here", tmp_path, RAW_SPECS) is None  # -> run with --exportOutput
    assert trtexec.raw_dump_option("8.6.1") == trtexec.raw_dump_option("11.1.0") == ["--dumpRawBindingsToFile"]
    assert trtexec.raw_dump_option("8.5.3") == []
    exported = tmp_path / "outputs.json"
    exported.write_text(EXPORTED)
    specs = [TensorSpec("output", "float32", [1, 2, 3])]
    assert trtexec.exported_outputs(exported, specs)["output"].shape == (1, 2, 3)
    assert trtexec.read_notes("--exportOutput", specs) == [trtexec.printed_digits_note(specs)]
    assert trtexec.read_notes("--dumpRawBindingsToFile", specs) == [] and trtexec.read_notes(None, specs) == []
    with pytest.raises(UserError, match="'labels' is uint8: this trtexec wrote no raw output files"):
        trtexec.exported_outputs(exported, [*specs, TensorSpec("labels", "uint8", [1, 3])])


class NotedRunner(onnxruntime.Runner):
    """The onnxruntime runner, saying what limits its outputs as the trtexec runner does."""

    def result_notes(self) -> list[str]:
        return ["the outputs were printed with 6 significant digits"]


class NotedBackend(onnxruntime.OnnxRuntimeBackend):
    """The onnxruntime backend, opening its builds with NotedRunner."""

    def open(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None) -> NotedRunner:
        return NotedRunner(artifact, threads, trusted)


BACKEND = NotedBackend()


def test_a_runner_note_reaches_the_verify_summary(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.REGISTRY, "onnxruntime",
                        backends.REGISTRY["onnxruntime"]._replace(module=__name__))
    monkeypatch.chdir(project.root)
    write_toy_capture(project.root / "tensors")
    pipeline = project.write("toy.yaml", TOY_PIPELINE)
    assert run_in_process(pipeline, Store(project.store))["verify"] == "passed"
    verified = next((project.store / "verify").iterdir())
    assert json.loads((verified / "verify.json").read_text())["notes"] == [
        "the outputs were printed with 6 significant digits"]
    summary = json.loads((verified / "manifest.json").read_text())["summary"]
    assert summary.endswith("; the outputs were printed with 6 significant digits")


LOG_10 = """\
[11/03/2025-09:12:44] [I] === Performance summary ===
[11/03/2025-09:12:44] [I] Throughput: 1520.37 qps
[11/03/2025-09:12:44] [I] Latency: min = 0.71875 ms, max = 1.02344 ms, mean = 0.742281 ms, median = 0.737305 ms, \
percentile(90%) = 0.75 ms, percentile(95%) = 0.757812 ms, percentile(99%) = 0.841797 ms
[11/03/2025-09:12:44] [I] Enqueue Time: min = 0.0183105 ms, max = 0.0810547 ms, mean = 0.0233929 ms, \
median = 0.0222168 ms, percentile(90%) = 0.0263672 ms, percentile(95%) = 0.0288086 ms, percentile(99%) = 0.0410156 ms
[11/03/2025-09:12:44] [I] H2D Latency: min = 0.0634766 ms, max = 0.0922852 ms, mean = 0.0670513 ms, \
median = 0.0664062 ms, percentile(90%) = 0.0688477 ms, percentile(95%) = 0.0703125 ms, percentile(99%) = 0.0771484 ms
[11/03/2025-09:12:44] [I] GPU Compute Time: min = 0.621582 ms, max = 0.92041 ms, mean = 0.640879 ms, \
median = 0.635986 ms, percentile(90%) = 0.648193 ms, percentile(95%) = 0.654297 ms, percentile(99%) = 0.738281 ms
[11/03/2025-09:12:44] [I] D2H Latency: min = 0.0307617 ms, max = 0.0415039 ms, mean = 0.0343511 ms, \
median = 0.0341797 ms, percentile(90%) = 0.0358887 ms, percentile(95%) = 0.0366211 ms, percentile(99%) = 0.0385742 ms
[11/03/2025-09:12:44] [I] Total Host Walltime: 3.00124 s
[11/03/2025-09:12:44] [I] Total GPU Compute Time: 2.92433 s
"""
LOG_86_LINE = ("[06/14/2023-17:40:03] [I] GPU Compute Time: min = 1.5e+01 ms, max = 17.25 ms, mean = 15.9 ms, "
               "median = 15.8 ms, percentile(99%) = 17.1 ms")


def test_performance_summary_of_10_and_8_6() -> None:
    summary = trtexec.parse_performance_summary(LOG_10)
    assert summary["throughput_qps"] == 1520.37
    gpu = summary["GPU Compute Time"]
    assert gpu["median"] == 0.635986 and gpu["min"] == 0.621582
    assert gpu["percentiles"] == {"90": 0.648193, "95": 0.654297, "99": 0.738281}
    assert set(summary) == {"throughput_qps", "Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time",
                            "D2H Latency"}
    old = trtexec.parse_performance_summary(LOG_86_LINE)["GPU Compute Time"]
    assert old["min"] == 15.0 and old["percentiles"] == {"99": 17.1}


TIMES = """[
  { "startEnqMs" : 0.0, "endEnqMs" : 0.03, "startH2dMs" : 0.01, "endH2dMs" : 0.08, "startComputeMs" : 0.08, \
"endComputeMs" : 0.72, "startD2hMs" : 0.72, "endD2hMs" : 0.75, "h2dMs" : 0.07, "computeMs" : 0.64, "d2hMs" : 0.03, \
"latencyMs" : 0.74 }
, { "startEnqMs" : 1.0, "endEnqMs" : 1.02, "startH2dMs" : 1.0, "endH2dMs" : 1.07, "startComputeMs" : 1.07, \
"endComputeMs" : 1.7, "startD2hMs" : 1.7, "endD2hMs" : 1.73, "h2dMs" : 0.07, "computeMs" : 0.63, "d2hMs" : 0.03, \
"latencyMs" : 0.73 }
, { "startEnqMs" : 2.0, "endEnqMs" : 2.02, "startH2dMs" : 2.0, "endH2dMs" : 2.07, "startComputeMs" : 2.07, \
"endComputeMs" : 2.69, "startD2hMs" : 2.69, "endD2hMs" : 2.72, "h2dMs" : 0.07, "computeMs" : 0.62, "d2hMs" : 0.03, \
"latencyMs" : 0.72 }
]
"""


def test_exported_times_give_per_iteration_seconds() -> None:
    records = trtexec.parse_exported_times(TIMES)
    assert len(records) == 3 and records[0]["computeMs"] == 0.64
    assert trtexec.bench_timings(records, warmup=1, iterations=5, max_seconds=10) == [0.63e-3, 0.62e-3]
    assert trtexec.bench_timings(records, warmup=0, iterations=2, max_seconds=10) == [0.64e-3, 0.63e-3]
    assert trtexec.bench_timings(records, warmup=0, iterations=5, max_seconds=0.001) == [0.64e-3, 0.63e-3]
    assert trtexec.bench_timings(records, warmup=0, iterations=5, max_seconds=0.0001) == [0.64e-3]  # at least one
    assert trtexec.bench_timings(records, warmup=5, iterations=5, max_seconds=10) == [0.62e-3]


LOG_86_PLUGIN = """\
[06/14/2023-17:39:58] [I] [TRT] No importer registered for op: MultiscaleDeformableAttnPlugin_TRT. \
Attempting to import as plugin.
[06/14/2023-17:39:58] [I] [TRT] Searching for plugin: MultiscaleDeformableAttnPlugin_TRT, plugin_version: 2, \
plugin_namespace:
[06/14/2023-17:39:58] [E] [TRT] 3: getPluginCreator could not find plugin: MultiscaleDeformableAttnPlugin_TRT \
version: 2
[06/14/2023-17:39:58] [E] [TRT] ModelImporter.cpp:771: While parsing node number 0 \
[MultiscaleDeformableAttnPlugin_TRT -> "output"]:
[06/14/2023-17:39:58] [E] [TRT] ModelImporter.cpp:775: ERROR: builtin_op_importers.cpp:5404 In function \
importFallbackPluginImporter:
[8] Assertion failed: creator && "Plugin not found, are the plugin name, version, and namespace correct?"
[06/14/2023-17:39:58] [E] Failed to parse onnx file
&&&& FAILED TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=model.onnx
"""
LOG_10_PLUGIN = """\
[11/03/2025-09:10:01] [E] [TRT] ModelImporter.cpp:959: While parsing node number 1 \
[MultiscaleDeformableAttnPlugin_TRT -> "/attn/plugin_output_0"]:
[11/03/2025-09:10:01] [E] [TRT] ModelImporter.cpp:962: ERROR: onnxOpImporters.cpp:6567 In function \
importFallbackPluginImporter:
[8] Assertion failed: creator && "Plugin not found, are the plugin name, version, and namespace correct?"
&&&& FAILED TensorRT.trtexec [TensorRT v101300] # trtexec --onnx=model.onnx
"""
LOG_11_FLAG = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v110100] # trtexec --onnx=model.onnx --fp16
[11/03/2025-09:10:01] [E] Unknown option: --fp16
&&&& FAILED TensorRT.trtexec [TensorRT v110100] # trtexec --onnx=model.onnx --fp16
"""
LOG_CRASH = """\
[11/03/2025-09:10:01] [E] Error[1]: [defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime (out of memory)
[11/03/2025-09:10:01] [E] Engine could not be created from network
"""


def test_failures_are_diagnosed_from_the_log() -> None:
    old = trtexec.diagnose_failure(LOG_86_PLUGIN)
    assert old is not None and old.user_error
    assert f"no plugin creator {MSDA} version 2 is registered" in old.message
    assert f"the ONNX parser failed at node 0 ({MSDA}, output 'output')" in old.message
    new = trtexec.diagnose_failure(LOG_10_PLUGIN)
    assert new is not None and new.user_error
    assert "no plugin creator with the node's name, version and namespace" in new.message
    assert "node 1" in new.message and "/attn/plugin_output_0" in new.message
    flag = trtexec.diagnose_failure(LOG_11_FLAG)
    assert flag is not None and flag.user_error and "rejects --fp16" in flag.message
    crash = trtexec.diagnose_failure(LOG_CRASH)
    assert crash is not None and not crash.user_error and "out of memory" in crash.message
    assert trtexec.diagnose_failure("[I] all good\n") is None


# The ONNX parser's plugin fallback at INFO, as it prints it for every plugin node of a build that then
# parses (onnx-tensorrt ModelImporter.cpp / FallbackPluginImporter; NVIDIA/TensorRT#2039): not an error.
PARSED_PLUGIN = (
    "[11/03/2025-09:10:01] [I] [TRT] No importer registered for op: MultiscaleDeformableAttnPlugin_TRT. "
    "Attempting to import as plugin.\n"
    "[11/03/2025-09:10:01] [I] [TRT] Searching for plugin: MultiscaleDeformableAttnPlugin_TRT, plugin_version: 1, "
    "plugin_namespace: \n"
    "[11/03/2025-09:10:01] [I] [TRT] Successfully created plugin: MultiscaleDeformableAttnPlugin_TRT\n")
PARSE_HEADER = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v101300] # trtexec --onnx=model.onnx --memPoolSize=workspace:4096M --fp16 \
--saveEngine=engine.plan --skipInference
[11/03/2025-09:10:01] [I] [TRT] ----------------------------------------------------------------
[11/03/2025-09:10:01] [I] [TRT] Input filename:   model.onnx
[11/03/2025-09:10:01] [I] [TRT] ONNX IR version:  0.0.8
[11/03/2025-09:10:01] [I] [TRT] Opset version:    17
[11/03/2025-09:10:01] [I] [TRT] Producer name:    pytorch
[11/03/2025-09:10:01] [I] [TRT] ----------------------------------------------------------------
"""
PARSED = "[11/03/2025-09:10:01] [I] Finished parsing network model. Parse time: 0.0213\n"
LOG_OUT_OF_MEMORY = PARSE_HEADER + PARSED_PLUGIN + PARSED + """\
[11/03/2025-09:10:09] [E] Error[1]: [defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime (out of memory)
[11/03/2025-09:10:09] [W] [TRT] Requested amount of GPU memory (34359738368 bytes) could not be allocated. There may \
not be enough free memory for allocation to succeed.
[11/03/2025-09:10:09] [E] Error[2]: [builder.cpp::buildSerializedNetwork::1058] Error Code 2: Internal Error \
(Assertion engine != nullptr failed. )
[11/03/2025-09:10:09] [E] Engine could not be created from network
[11/03/2025-09:10:09] [E] Building engine failed
[11/03/2025-09:10:09] [E] Failed to create engine from model or file.
[11/03/2025-09:10:09] [E] Engine set up failed
&&&& FAILED TensorRT.trtexec [TensorRT v101300] # trtexec --onnx=model.onnx
"""
LOG_NO_TACTIC = PARSE_HEADER + PARSED_PLUGIN + PARSED + """\
[11/03/2025-09:10:12] [E] Error[10]: IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (Could not find \
any implementation for node {ForeignNode[/backbone/Conv_3.../attn/MatMul_1]}.)
[11/03/2025-09:10:12] [E] Engine could not be created from network
[11/03/2025-09:10:12] [E] Building engine failed
&&&& FAILED TensorRT.trtexec [TensorRT v101300] # trtexec --onnx=model.onnx
"""
LOG_FORMAT = PARSE_HEADER.replace("v101300", "v8601") + PARSED_PLUGIN + PARSED + """\
[06/14/2023-17:40:01] [E] Error[9]: [pluginV2Builder.cpp::reportPluginError::24] Error Code 9: Internal Error \
(/attn/MultiscaleDeformableAttnPlugin_TRT: could not find any supported formats consistent with input/output data types)
[06/14/2023-17:40:01] [E] Error[2]: [builder.cpp::buildSerializedNetwork::751] Error Code 2: Internal Error \
(Assertion engine != nullptr failed. )
[06/14/2023-17:40:01] [E] Engine could not be created from network
&&&& FAILED TensorRT.trtexec [TensorRT v8601] # trtexec --onnx=model.onnx
"""
# A creator the registry lacks (10.x: no getPluginCreator line; here in a namespace nothing registers).
LOG_10_NAMESPACE = PARSE_HEADER + PARSED_PLUGIN + """\
[11/03/2025-09:10:01] [I] [TRT] No importer registered for op: MultiscaleDeformableAttnPlugin_TRT. Attempting to \
import as plugin.
[11/03/2025-09:10:01] [I] [TRT] Searching for plugin: MultiscaleDeformableAttnPlugin_TRT, plugin_version: 1, \
plugin_namespace: mine
[11/03/2025-09:10:01] [E] [TRT] ModelImporter.cpp:959: While parsing node number 3 \
[MultiscaleDeformableAttnPlugin_TRT -> "/dec/attn_out"]:
[11/03/2025-09:10:01] [E] [TRT] ModelImporter.cpp:962: ERROR: onnxOpImporters.cpp:6567 In function \
importFallbackPluginImporter:
[8] Assertion failed: creator && "Plugin not found, are the plugin name, version, and namespace correct?"
[11/03/2025-09:10:01] [E] Failed to parse onnx file
[11/03/2025-09:10:01] [E] Parsing model failed
[11/03/2025-09:10:01] [E] Failed to create engine from model or file.
[11/03/2025-09:10:01] [E] Engine set up failed
&&&& FAILED TensorRT.trtexec [TensorRT v101300] # trtexec --onnx=model.onnx
"""


@pytest.mark.parametrize(("log", "cause"), [
    (LOG_OUT_OF_MEMORY, "Error Code 1: Cuda Runtime (out of memory)"),
    (LOG_NO_TACTIC, "Could not find any implementation for node {ForeignNode[/backbone/Conv_3.../attn/MatMul_1]}"),
    (LOG_FORMAT, "could not find any supported formats consistent with input/output data types"),
])
def test_a_plugin_that_parsed_is_not_the_diagnosis_the_error_lines_are(log: str, cause: str) -> None:
    failure = trtexec.diagnose_failure(log)
    assert failure is not None and not failure.user_error
    assert "importer" not in failure.message and "Attempting" not in failure.message
    assert "[E] Error[" in failure.message and cause in failure.message
    assert cause in failure.errors[0] and "Engine could not be created from network" in failure.errors


def test_a_plugin_that_failed_is_named_with_the_error_lines() -> None:
    failure = trtexec.diagnose_failure(LOG_10_NAMESPACE)
    assert failure is not None and failure.user_error
    assert f"no plugin creator with the node's name, version and namespace ({MSDA} version 1, namespace 'mine')" \
        in failure.message
    assert "node 3" in failure.message and "/dec/attn_out" in failure.message
    assert "[E] Failed to parse onnx file" in failure.message
    # the assertion text on its own line belongs to the [E] line before it
    assert any(line.endswith('"Plugin not found, are the plugin name, version, and namespace correct?"')
               for line in failure.errors)
    old = trtexec.diagnose_failure(LOG_86_PLUGIN)
    assert old is not None and "[E] 3: getPluginCreator could not find plugin" in old.message
    assert len(trtexec.error_lines(LOG_10_NAMESPACE)) == trtexec.MAX_ERROR_LINES
    many = "".join(f"[E] step {i} failed\n" for i in range(9))
    assert trtexec.error_lines(many) == ["step 0 failed", "step 1 failed", "step 2 failed", "step 3 failed",
                                         "... 4 more", "step 8 failed"]


def test_engine_io_follows_the_graph_and_8_x_narrows_int64() -> None:
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "g", [x], [y])
    model = helper.make_model(graph)
    assert trtexec.engine_io_for(model, "8.6.1")["inputs"] == [{"name": "ids", "dtype": "int32", "shape": [2, 3]}]
    assert trtexec.engine_io_for(model, "10.13.0")["inputs"][0]["dtype"] == "int64"


# ------------------------------------------------------------------------------------------- running

def test_output_is_streamed_to_the_log(tmp_path: Path) -> None:
    script = ("import sys\nfor i in range(3): print(f'[I] step {i}', flush=True)\n"
              "print('[E] broke', file=sys.stderr)\nsys.exit(3)")
    seen: list[str] = []
    code, tail = trtexec.run_streaming([sys.executable, "-c", script], tmp_path / "run.log", seen.append)
    assert code == 3
    assert (tmp_path / "run.log").read_text() == tail
    assert "[I] step 2" in tail and "[E] broke" in tail and seen == ["step 0", "step 1", "step 2"]


def test_the_timing_cache_copy_is_published_only_if_nobody_changed_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "timing.cache"
    with trtexec.borrowed_timing_cache(shared) as local:
        assert local is not None and not local.exists()
        local.write_bytes(b"first build")
    assert shared.read_bytes() == b"first build"
    with trtexec.borrowed_timing_cache(shared) as local:
        assert local is not None and local.read_bytes() == b"first build"
        local.write_bytes(b"first build + second")
        shared.write_bytes(b"another build, meanwhile")
    assert shared.read_bytes() == b"another build, meanwhile"
    with trtexec.borrowed_timing_cache(None) as nothing:
        assert nothing is None


def test_without_trtexec_the_backend_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as caught:
        trtexec.require_trtexec()
    assert caught.value.field == "build.backend" and "not on PATH" in caught.value.message
    with pytest.raises(UserError):
        trtexec.Runner(tmp_path)


@pytest.mark.skipif(trtexec.shutil.which("trtexec") is not None, reason="trtexec is on PATH here")
def test_pipeline_with_trtexec_backend_exits_2_without_it(project: Project) -> None:
    pipeline = project.small(**{"verify:\n  atol: 1.0e-4": "build:\n  backend: trtexec\nverify:\n  atol: 1.0e-4"})
    done = project.run("run", str(pipeline), env={"PATH": os.environ.get("PATH", "")})
    assert done.code == 2, done.text
    assert "trtexec" in done.err and "not on PATH" in done.err and "Traceback" not in done.text
    assert not (project.store / "build").exists() or not any((project.store / "build").iterdir())


def softmax_graph(name: str = "attn/softmax") -> onnx.ModelProto:
    """x -> MatMul (unnamed) -> Softmax (named) -> y: a kept-by-default node beside one TensorRT may halve."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], name=name)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_kept_nodes_are_held_to_fp32_by_layer_precisions_where_flags_pick_half() -> None:
    model = softmax_graph()
    options = trtexec.layer_precision_options(plan("fp16", "10.13.0", plugins={}), model, [])
    assert options == ["--precisionConstraints=obey", "--layerPrecisions=attn/softmax:fp32"]
    command = trtexec.command_line("model.onnx", {"workspace": "1GiB", "precision": "fp16"}, [], "10.13.0",
                                   plan=plan("fp16", "10.13.0", plugins={}), layers=options)
    assert "--fp16" in command and command.index("--precisionConstraints=obey") > command.index("--fp16")
    assert trtexec.layer_precision_options(plan("fp32", "10.13.0", plugins={}), model, []) == []


def test_strongly_typed_releases_get_no_layer_precisions() -> None:
    assert trtexec.layer_precision_options(plan("fp16", "11.0.0", plugins={}), softmax_graph(), []) == []


def test_a_kept_node_whose_name_trtexec_cannot_write_is_refused() -> None:
    with pytest.raises(UserError, match="splits on ',' and ':'"):
        trtexec.layer_precision_options(plan("fp16", "10.13.0", plugins={}), softmax_graph("attn:softmax"), [])


def test_a_plugin_kept_in_fp32_does_not_refuse_a_half_trtexec_build() -> None:
    only_fp32 = {"MultiscaleDeformableAttnPlugin_TRT": ("fp32",)}
    with pytest.raises(UserError, match="precision fp16"):
        trtexec.precision_for("fp16", "10.13.0", only_fp32)
    kept = trtexec.precision_for("fp16", "10.13.0", only_fp32, keep_fp32=["MultiscaleDeformableAttnPlugin_TRT"])
    assert "FP16" in kept.set_flags

"""The trtexec backend, and the equivalent trtexec command line that every build writes (trtexec.txt).

Flags follow the detected trtexec generation: `--memPoolSize` where it exists (8.4 and later;
`--workspace` was deprecated in 8.x and removed in 10.0), `--explicitBatch` only before 10.0,
precision flags only where the release still parses them (11.x has no --fp16/--bf16/--best: an fp16
build there is an fp16 graph), `--staticPlugins` from 8.6 (`--plugins` before), shapes, the shared
timing cache and the engine file.

The backend builds engine.plan with trtexec, streaming its log into trtexec.log. Its `Runner`
writes the inputs as raw files for `--loadInputs`, runs `trtexec --loadEngine`, reads the outputs
back from the raw files `--dumpRawBindingsToFile` writes (the engine's bytes, every dtype exact) and
per-iteration timings from `--exportTimes` (the printed performance summary is parsed too, for the
record). Only where no raw file appears does it read the `--exportOutput` JSON, which holds 6
significant digits, as verify's summary then says (`Runner.result_notes`), and uint8 values as
characters, refused.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import environment
from orchestrator.backends.base import (
    BuildRequest,
    Built,
    DeclaredPlugin,
    RegisteredVersions,
    RunnerBase,
    TensorSpec,
    Timings,
    Trusted,
)
from orchestrator.backends.tensorrt.api import ApiFeatures, installed_version, short_version, version_tuple
from orchestrator.backends.tensorrt.backend import TensorRTBackend
from orchestrator.backends.tensorrt.buffers import host_comparable, numpy_dtype
from orchestrator.backends.tensorrt.cache import timing_cache_file, write_atomically
from orchestrator.backends.tensorrt.engine import profiles_json
from orchestrator.backends.tensorrt.graph import fp32_nodes, graph_to_build, is_quantized, plugin_outputs
from orchestrator.backends.tensorrt.precision import PrecisionPlan, plugin_precisions, precision_plan
from orchestrator.backends.tensorrt.runner import cast_for_engine
from orchestrator.backends.tensorrt.settings import (
    ShapeRange,
    graph_input_dims,
    parse_size,
    resolve_profiles,
)
from orchestrator.errors import UserError

if TYPE_CHECKING:
    import numpy as np


# ---------------------------------------------------------------------------------------------------------------
# Which trtexec


def decode_version_number(number: int) -> str:
    """NV_TENSORRT_VERSION as trtexec prints it: major*1000+minor*100+patch before 10, major*10000+... after."""
    if number >= 100000:
        major, minor, patch = number // 10000, number // 100 % 100, number % 100
    else:
        major, minor, patch = number // 1000, number // 100 % 10, number % 100
    return f"{major}.{minor}.{patch}"


def version_from_output(text: str) -> str | None:
    """The TensorRT version in trtexec's banner ('[TensorRT v100300]') or its 'TensorRT version: 8.6.1' line."""
    banner = re.search(r"TensorRT\.trtexec \[TensorRT v(\d+)\]", text)
    if banner:
        return decode_version_number(int(banner.group(1)))
    line = re.search(r"TensorRT version:\s*v?(\d+)\.(\d+)\.(\d+)", text)
    if line:
        return ".".join(line.groups())
    return None


@functools.cache
def detected_version() -> str | None:
    """The version trtexec reports ('10.13.0'), or None when it is not on PATH."""
    binary = shutil.which("trtexec")
    if binary is None:
        return None
    try:
        done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return version_from_output(done.stdout + done.stderr)


def major_of(version: str | None) -> int:
    """The TensorRT generation to write flags for (10 when unknown)."""
    return version_tuple(version)[0]


def builder_flags_for(version: str | None) -> frozenset[str]:
    """The BuilderFlag names (precision-related) of a TensorRT generation, for trtexec, which has no API."""
    major, minor, _ = version_tuple(version)
    flags = {"FP16", "INT8", "TF32"}
    if (major, minor) >= (8, 6):
        flags.add("FP8")
    if major >= 9:
        flags.add("BF16")
    if major >= 11:  # strongly typed: the graph's types are the precision
        flags -= {"FP16", "BF16", "INT8", "FP8"}
    return frozenset(flags)


def features_for(version: str | None) -> ApiFeatures:
    return ApiFeatures.from_names(version or "(version unknown)", {"BuilderFlag": sorted(builder_flags_for(version))})


def precision_for(precision: str, version: str | None, plugin_precisions: Mapping[str, Sequence[str]],
                  quantized: bool = False, keep_fp32: Sequence[str] = ()) -> PrecisionPlan:
    """The precision plan trtexec of `version` can carry out (a UserError when it cannot); a plugin kept
    in float32 (build.keep_fp32) does not refuse a half precision."""
    return precision_plan(precision, features_for(version), plugin_precisions, quantized, keep_fp32)


FLAG_OPTIONS = {"FP16": "--fp16", "BF16": "--bf16", "INT8": "--int8", "FP8": "--fp8"}


def precision_options(plan: PrecisionPlan) -> list[str]:
    options = [FLAG_OPTIONS[f] for f in plan.set_flags if f in FLAG_OPTIONS]
    if "TF32" in plan.clear_flags:
        options.append("--noTF32")
    return options


def layer_precision_options(plan: PrecisionPlan, model: Any, keep_fp32: Sequence[str]) -> list[str]:
    """--precisionConstraints=obey with --layerPrecisions holding the layers of the nodes kept in float32
    (graph.fp32_nodes: normalisations, softmax, build.keep_fp32) to fp32, where builder flags pick half
    precision; the Python backend does the same with layer constraints. Strongly typed releases keep those
    nodes in the graph's types instead, so they get no option.

    trtexec's layers carry the names the ONNX parser gives them, its nodes' names: an unnamed node cannot
    be named here (TensorRT chooses its precision), and a name holding ',' or ':' cannot be written in the
    spec, which trtexec splits on both."""
    if not plan.constrains_layers:
        return []
    named = {str(node.name) for node in model.graph.node if node.name}
    names = [name for name in fp32_nodes(model, keep_fp32) if name in named]
    unwritable = [name for name in names if "," in name or ":" in name]
    if unwritable:
        raise UserError(f"node {', '.join(repr(n) for n in unwritable)}: trtexec's --layerPrecisions splits on ',' "
                        "and ':', so it cannot hold this node's layer to fp32", field="build.keep_fp32",
                        hint="rename the node in the export, or use backend: tensorrt (layer constraints by API)")
    if not names:
        return []
    return ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in names)]


# ---------------------------------------------------------------------------------------------------------------
# Command lines


def _spec_name(name: str) -> str:
    """A tensor name inside a trtexec spec: quoted when it holds ':' or ','.

    Quotes carry a ':', not a ',': trtexec splits the list on ',' before it reads quotes, so the
    trtexec backend refuses such names (`comma_problem`); the equivalent command of another backend
    can only show them quoted."""
    return f"'{name}'" if (":" in name or "," in name) else name


def comma_problem(names: Sequence[str]) -> UserError | None:
    """The error for tensor names trtexec's --shapes, --*Shapes and --loadInputs cannot carry (a ','), if any."""
    bad = [name for name in names if "," in name]
    if not bad:
        return None
    return UserError(f"input {', '.join(repr(n) for n in bad)}: trtexec splits --loadInputs and --shapes lists on "
                     "',' before it reads quotes, so it cannot name a tensor whose name holds a ','",
                     field="build.backend",
                     hint="rename the input in the export (no ',' in input names), or use backend: tensorrt")


def explicit_profiles(profiles: Sequence[Mapping[str, ShapeRange]],
                      inputs: Mapping[str, Sequence[int | None]]) -> Sequence[Mapping[str, ShapeRange]] | None:
    """The profiles trtexec gets as --minShapes/--optShapes/--maxShapes: only where an input is dynamic.

    trtexec refuses explicit shapes for a static model ("Static model does not take explicit shapes"),
    and a profile of a static model can only repeat the graph's dims (resolve_profiles checks that)."""
    return profiles if profiles and any(None in dims for dims in inputs.values()) else None


def dims_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def shapes_options(profile: Mapping[str, ShapeRange]) -> list[str]:
    """--minShapes/--optShapes/--maxShapes for one optimization profile."""
    options = []
    for flag, pick in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
        spec = ",".join(f"{_spec_name(name)}:{dims_text(getattr(r, pick))}" for name, r in profile.items())
        options.append(f"{flag}={spec}")
    return options


def plugin_options(libraries: Sequence[str], version: str | None) -> list[str]:
    major, minor, _ = version_tuple(version)
    flag = "--staticPlugins" if (major, minor) >= (8, 6) else "--plugins"
    return [f"{flag}={library}" for library in libraries]


def command_line(onnx_path: Path | str, build: Mapping[str, Any], libraries: Sequence[str], version: str | None, *,
                 profiles: Sequence[Mapping[str, ShapeRange]] | None = None, timing_cache: Path | str | None = None,
                 engine: Path | str | None = "engine.plan", plan: PrecisionPlan | None = None,
                 skip_inference: bool = False, layers: Sequence[str] = ()) -> list[str]:
    """The trtexec invocation that builds what a build with these settings builds, for TensorRT `version`."""
    major, minor, _ = version_tuple(version)
    workspace_mib = max(1, parse_size(build["workspace"]) >> 20)
    command = ["trtexec", f"--onnx={onnx_path}"]
    if major < 10:
        command.append("--explicitBatch")
    if (major, minor) >= (10, 0):
        command.append(f"--memPoolSize=workspace:{workspace_mib}M")
    elif (major, minor) >= (8, 4):
        command.append(f"--memPoolSize=workspace:{workspace_mib}")  # no suffix: MiB
    else:
        command.append(f"--workspace={workspace_mib}")
    if plan is None:
        try:
            plan = precision_for(build["precision"], version, {})
        except UserError:
            plan = None
    if plan is not None:
        command += precision_options(plan)
    command += layers
    command += plugin_options(libraries, version)
    if profiles:
        command += shapes_options(profiles[0])
    if timing_cache:
        command.append(f"--timingCacheFile={timing_cache}")
    if engine:
        command.append(f"--saveEngine={engine}")
    if skip_inference:
        command.append("--skipInference")
    return command


def equivalent_command(request: BuildRequest, model: Any) -> list[str]:
    """The command line written to trtexec.txt by every build, on any backend, with paths relative to it."""
    version = (detected_version() if request.backend == "trtexec" else None) or \
        installed_version() or detected_version()
    try:
        plan: PrecisionPlan | None = precision_for(request.precision, version, plugin_precisions(request.plugins),
                                                   is_quantized(model), request.keep_fp32)
    except UserError:
        plan = None
    inputs = graph_input_dims(model)
    try:
        profiles = resolve_profiles(request.profiles, inputs)
    except UserError:
        profiles = []
    shown_profiles = explicit_profiles(profiles, inputs)
    cache = None
    if request.timing_cache and request.shared_dir is not None and version:
        cache = timing_cache_file(request.shared_dir, short_version(version), environment.build_gpu())
    graph = "model.fp16.onnx" if plan is not None and plan.cast_graph else "model.onnx"
    try:
        layers = layer_precision_options(plan, model, request.keep_fp32) if plan is not None else []
    except UserError:
        layers = []
    return command_line(graph, settings_of(request), request.plugin_libraries, version, profiles=shown_profiles,
                        timing_cache=cache, plan=plan, layers=layers)


def settings_of(request: BuildRequest) -> dict[str, Any]:
    """The build settings a command line reads (its workspace and precision)."""
    return {"workspace": request.workspace, "precision": request.precision}


# ---------------------------------------------------------------------------------------------------------------
# Inputs and outputs in trtexec's formats


def load_inputs_option(files: Mapping[str, Path | str]) -> str:
    """--loadInputs=name:file,... (names quoted when they hold ':'; a ',' cannot be carried)."""
    problem = comma_problem(list(files))
    if problem is not None:
        raise problem
    return "--loadInputs=" + ",".join(f"{_spec_name(name)}:{path}" for name, path in files.items())


def write_inputs(folder: Path, feeds: Mapping[str, Any], specs: Sequence[TensorSpec]) -> dict[str, Path]:
    """Each input as a raw little-endian file in the engine's dtype, the layout --loadInputs reads."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, spec in enumerate(specs):
        if spec.name not in feeds:
            raise UserError(f"the engine takes an input '{spec.name}' that was not given", field="capture")
        array = cast_for_engine(spec.name, feeds[spec.name], spec.dtype)
        path = folder / f"input_{index:02d}.bin"
        array.astype(array.dtype.newbyteorder("<"), copy=False).tofile(path)
        files[spec.name] = path
    return files


_NON_FINITE = re.compile(r"(?<=[\[\s,])(-?)(nan|inf)(?=[\s,\]])", re.IGNORECASE)


Exported = dict[str, tuple[tuple[int, ...], list[float]]]  # name -> (shape, values)


def parse_exported_outputs(text: str, specs: Sequence[TensorSpec] = ()) -> Exported:
    """The --exportOutput JSON: [{"name", "dimensions": "1x2x3", "values": [...]}] -> {name: (shape, values)}.

    trtexec prints non-finite values as C++ streams do (nan, -nan, inf), which JSON does not allow.
    A file that is not JSON even so is a UserError naming the outputs (of `specs`) that can cause it.
    """
    def replace(match: re.Match[str]) -> str:
        sign, word = match.group(1), match.group(2).lower()
        return "NaN" if word == "nan" else f"{sign}Infinity"

    try:
        records = json.loads(_NON_FINITE.sub(replace, text))
    except json.JSONDecodeError as exc:
        dynamic = [spec.name for spec in specs if None in spec.shape]
        suspects = (f"; trtexec prints a line of text among the values of an output whose shape depends on the "
                    f"data, which {', '.join(repr(n) for n in dynamic)} may be" if dynamic else "")
        raise UserError(f"trtexec's --exportOutput file cannot be read: {exc.msg} at line {exc.lineno}{suspects}",
                        field="build.backend", hint="verify this model with backend: tensorrt") from None
    found = {}
    for record in records:
        dims = str(record.get("dimensions", "")).strip()
        shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        found[str(record["name"])] = (shape, [float(v) for v in record.get("values", [])])
    return found


# --exportOutput prints uint8 values with operator<<, as characters: they cannot be read back.
UNREADABLE_DTYPES = ("uint8",)
PRINTED_DIGITS = 6  # --exportOutput prints with the stream's default precision


def unreadable_outputs(specs: Sequence[TensorSpec]) -> UserError | None:
    """The error for outputs whose values --exportOutput does not print as numbers, if any (read only when
    trtexec wrote no raw files)."""
    bad = [spec for spec in specs if spec.dtype in UNREADABLE_DTYPES]
    if not bad:
        return None
    return UserError(f"output {', '.join(repr(s.name) for s in bad)} is {bad[0].dtype}: this trtexec wrote no "
                     "raw output files (--dumpRawBindingsToFile), and its --exportOutput prints the values as raw "
                     "characters, which cannot be read back", field="build.backend",
                     hint="cast the output to int32 in the graph, or verify with backend: tensorrt")


def printed_digits_note(specs: Sequence[TensorSpec]) -> str | None:
    """What the printed digits leave of float32 outputs (float16 values survive 6 digits exactly)."""
    floats = [spec.name for spec in specs if spec.dtype == "float32"]
    if not floats:
        return None
    return (f"trtexec printed {', '.join(floats)} with {PRINTED_DIGITS} significant digits (--exportOutput): "
            "differences below ~1e-5 relative are not meaningful")


def read_notes(read_from: str | None, specs: Sequence[TensorSpec]) -> list[str]:
    """What limits outputs read by the option `read_from`: raw files nothing; --exportOutput its digits."""
    note = printed_digits_note(specs) if read_from == "--exportOutput" else None
    return [note] if note else []


def outputs_as_arrays(parsed: Exported, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    import numpy as np

    arrays = {}
    for spec in specs:
        if spec.name not in parsed:
            raise RuntimeError(f"trtexec exported no output '{spec.name}' (it exported {', '.join(parsed)})")
        shape, values = parsed[spec.name]
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(values) != size:
            raise RuntimeError(f"trtexec exported {len(values)} values for '{spec.name}' of shape {list(shape)}")
        dtype = "float32" if spec.dtype == "bfloat16" else spec.dtype
        arrays[spec.name] = np.asarray(values, dtype=np.float64).astype(dtype).reshape(shape)
    return arrays


def exported_outputs(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The outputs from the --exportOutput file at `path` (a uint8 output refused: it holds characters)."""
    problem = unreadable_outputs(specs)
    if problem is not None:
        raise problem
    return outputs_as_arrays(parse_exported_outputs(path.read_text(), specs), specs)


# --dumpRawBindingsToFile (a flag; 8.6, 10.x and 11.x) writes every I/O tensor's host buffer after the run,
# C-contiguous in the engine's dtype, into trtexec's working directory as
# <name>.<input|output>.<runtime dims joined by '.'>.<dtype>.raw, and logs where each went.
RAW_DUMP_SINCE = (8, 6)
RAW_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8": "float8_e4m3fn", "int8": "int8",
              "uint8": "uint8", "int32": "int32", "int64": "int64", "bool": "bool"}  # trtexec's DataType words
PACKED_DTYPES = ("int4", "fp4")  # two values a byte
MAX_FILE_NAME = 150  # genFilenameSafeString in 10.x and later: a longer name keeps both ends around '...'
_FILE_NAME_SAFE = frozenset(b"._-,")
_WRITING = re.compile(r"Writing file for output binding (.*) \(with datatype (\w+) and dimensions ([0-9.]*)\) "
                      r"to (\S+)\s*$")
_RAW_SUFFIX = re.compile(r"\.output\.([0-9]+(?:\.[0-9]+)*|)\.([a-z0-9]+)\.raw$")


@dataclass(frozen=True)
class RawOutput:
    """One output file --dumpRawBindingsToFile wrote: its dtype as trtexec names it, its runtime shape."""

    dtype: str
    shape: tuple[int, ...]
    path: Path


def raw_dump_option(version: str | None) -> list[str]:
    """--dumpRawBindingsToFile where the release parses it."""
    return ["--dumpRawBindingsToFile"] if version_tuple(version)[:2] >= RAW_DUMP_SINCE else []


def _safe_bytes(data: bytes) -> str:
    return "".join(chr(b) if (b < 128 and chr(b).isalnum()) or b in _FILE_NAME_SAFE else "_" for b in data)


def filename_safe(text: str, limit: int | None = None) -> str:
    """trtexec's genFilenameSafeString: every byte but an ASCII letter, digit or one of '._-,' becomes '_'; with
    `limit`, a longer text keeps its first and last (limit - 3) // 2 bytes around '...'."""
    data = text.encode("utf-8")
    if limit is not None and len(data) > limit:
        half = (limit - 3) // 2
        return _safe_bytes(data[:half]) + "..." + _safe_bytes(data[-half:])
    return _safe_bytes(data)


def raw_file_names(name: str, dims: str, dtype: str) -> set[str]:
    """The names trtexec gives output `name`'s raw file: the whole name made safe (8.6), also cut to
    MAX_FILE_NAME (10.x, 11.x), or the tensor's name alone made safe and cut (the safety runtime's dump)."""
    suffix = f".output.{dims}.{dtype}.raw"
    whole = name + suffix
    return {filename_safe(whole), filename_safe(whole, MAX_FILE_NAME), filename_safe(name, MAX_FILE_NAME) + suffix}


def _shape(dims: str) -> tuple[int, ...]:
    return tuple(int(d) for d in dims.split(".")) if dims else ()


def logged_raw_outputs(log: str, folder: Path) -> dict[str, RawOutput]:
    """Output name -> its raw file in `folder`, from the 'Writing file for output binding' lines of the log."""
    found = {}
    for line in log.splitlines():
        match = _WRITING.search(line)
        if match:
            name, dtype, dims, file = match.groups()
            found[name] = RawOutput(dtype, _shape(dims), folder / file)
    return found


def raw_outputs_in(folder: Path, names: Sequence[str]) -> dict[str, RawOutput]:
    """Output name -> its raw file in `folder`, by the file names trtexec gives (for a log that lacks the lines)."""
    found: dict[str, RawOutput] = {}
    for path in sorted(folder.glob("*.raw")):
        suffix = _RAW_SUFFIX.search(path.name)
        if suffix is None:
            continue
        dims, dtype = suffix.groups()
        for name in names:
            if name not in found and path.name in raw_file_names(name, dims, dtype):
                found[name] = RawOutput(dtype, _shape(dims), path)
    return found


def read_raw_output(name: str, raw: RawOutput) -> np.ndarray:
    """One raw file's values in its shape, refused unless its size is what its dtype and shape make; bfloat16
    and float8 as float32 (the same values), as the TensorRT runner returns them."""
    import numpy as np

    if raw.dtype in PACKED_DTYPES:
        raise UserError(f"output '{name}' is {raw.dtype}, two values a byte in trtexec's raw file, which this "
                        "runner does not unpack", field="build.backend", hint="verify with backend: tensorrt")
    if raw.dtype not in RAW_DTYPES:
        raise RuntimeError(f"trtexec wrote output '{name}' as datatype '{raw.dtype}', which has no NumPy dtype here")
    dtype = numpy_dtype(RAW_DTYPES[raw.dtype])
    if not raw.path.is_file():
        raise RuntimeError(f"trtexec logged output '{name}' as written to {raw.path.name}, which is not there")
    expected, size = math.prod(raw.shape) * dtype.itemsize, raw.path.stat().st_size
    if size != expected:
        raise RuntimeError(f"trtexec's raw file {raw.path.name} of output '{name}' holds {size} bytes; "
                           f"{raw.dtype} of shape {list(raw.shape)} is {expected} bytes")
    return host_comparable(np.fromfile(raw.path, dtype=dtype).reshape(raw.shape))


def raw_outputs(log: str, folder: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray] | None:
    """The outputs --dumpRawBindingsToFile wrote into `folder` (found by the log's lines, else by their file
    names), exactly as the engine computed them; None when trtexec wrote none: read --exportOutput then."""
    names = [spec.name for spec in specs]
    files = {**raw_outputs_in(folder, names), **logged_raw_outputs(log, folder)}
    if not files:
        return None
    missing = [name for name in names if name not in files]
    if missing:
        raise RuntimeError(f"trtexec wrote no raw file for output {', '.join(repr(n) for n in missing)} "
                           f"(it wrote {', '.join(repr(n) for n in files) or 'none'})")
    return {name: read_raw_output(name, files[name]) for name in names}


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_SUMMARY = re.compile(r"(Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency): "
                      rf"min = {_NUMBER} ms, max = {_NUMBER} ms, mean = {_NUMBER} ms, median = {_NUMBER} ms(.*)$")
_PERCENTILE = re.compile(rf"percentile\(({_NUMBER[1:-1]})%\) = {_NUMBER} ms")


def parse_performance_summary(log: str) -> dict[str, Any]:
    """trtexec's '=== Performance summary ===': each metric's min/max/mean/median/percentiles (ms), throughput."""
    summary: dict[str, Any] = {}
    for line in log.splitlines():
        throughput = re.search(rf"\bThroughput: {_NUMBER} qps", line)
        if throughput:
            summary["throughput_qps"] = float(throughput.group(1))
            continue
        match = _SUMMARY.search(line)
        if not match:
            continue
        metric, low, high, mean, median, rest = match.groups()
        summary[metric] = {"min": float(low), "max": float(high), "mean": float(mean), "median": float(median),
                           "percentiles": {p: float(v) for p, v in _PERCENTILE.findall(rest)}}
    return summary


def parse_exported_times(text: str) -> list[dict[str, float]]:
    """The --exportTimes JSON: one record per timed iteration (startEnqMs ... computeMs, latencyMs)."""
    records = json.loads(text)
    return [{str(k): float(v) for k, v in record.items()} for record in records]


def bench_timings(records: Sequence[Mapping[str, float]], warmup: int, iterations: int,
                  max_seconds: float) -> list[float]:
    """Seconds of GPU compute per timed iteration: skip `warmup` runs, stop at `iterations` or the time budget."""
    timed = list(records[warmup:]) or list(records[-1:])
    timings: list[float] = []
    spent = 0.0
    for record in timed[:iterations]:
        if timings and spent >= max_seconds:
            break
        seconds = record["computeMs"] / 1e3
        timings.append(seconds)
        spent += record.get("latencyMs", record["computeMs"]) / 1e3
    return timings


@dataclass(frozen=True)
class Failure:
    message: str
    user_error: bool  # True: the user can fix it (missing plugin, unparsable node, a flag this trtexec refuses)
    errors: tuple[str, ...] = ()  # the log's [E] lines, as the message quotes them


_STAMP = re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] ")
_ERROR_LINE = re.compile(r"\[E\][ \t]*(?:\[TRT\][ \t]*)?(.*)$")
_SEARCH = re.compile(r"Searching for plugin: ([^,\s]+), plugin_version: ([^,\s]*), plugin_namespace:[ \t]*(\S*)")
_CREATED = re.compile(r"Successfully created plugin: (\S+)")
MAX_ERROR_LINES = 6


def error_lines(log: str) -> list[str]:
    """The messages of the log's [E] lines in order, each once, with their continuation lines joined (the
    parser's assertion text follows its [E] line on a line of its own); at most MAX_ERROR_LINES, the first
    ones (the cause) and the last one (what gave up)."""
    found: list[str] = []
    current: str | None = None
    for line in log.splitlines():
        match = _ERROR_LINE.search(line)
        if match or current is None or not line.strip() or _STAMP.match(line) or line.startswith("&&&&"):
            if current is not None:
                found.append(current)
            current = match.group(1).strip() if match else None
        else:
            current += " " + line.strip()
    if current is not None:
        found.append(current)
    found = list(dict.fromkeys(found))
    if len(found) > MAX_ERROR_LINES:
        found = [*found[:MAX_ERROR_LINES - 2], f"... {len(found) - MAX_ERROR_LINES + 1} more", found[-1]]
    return found


def _unimported_plugin(log: str) -> tuple[str, str, str] | None:
    """The plugin (name, version, namespace) the parser searched for last and never created, if any.

    The parser prints 'No importer registered for op: X. Attempting to import as plugin' and the
    search at INFO for every plugin node, also when the build then succeeds: only a search with no
    'Successfully created plugin' after it is a plugin that failed."""
    pending: tuple[str, str, str] | None = None
    for line in log.splitlines():
        search = _SEARCH.search(line)
        if search:
            pending = (search.group(1), search.group(2), search.group(3))
        elif pending is not None and (created := _CREATED.search(line)) and created.group(1) == pending[0]:
            pending = None
    return pending


def _parser_findings(log: str) -> list[str]:
    """What the log says the user can fix: a flag this trtexec refuses, a plugin creator it lacks, a node."""
    found: list[str] = []
    unknown = [m.group(1) for m in re.finditer(r"Unknown option: (\S+)", log)]
    if unknown:
        found.append(f"this trtexec rejects {', '.join(dict.fromkeys(unknown))}")
    creators = re.findall(r"getPluginCreator could not find plugin:? (\S+) version:? (\S+)", log)
    for name, version in dict.fromkeys(creators):
        found.append(f"no plugin creator {name} version {version} is registered")
    failed = _unimported_plugin(log)
    if "Plugin not found, are the plugin name, version, and namespace correct?" in log and not creators:
        sought = f" ({failed[0]} version {failed[1]}, namespace '{failed[2]}')" if failed else ""
        found.append(f"the parser found no plugin creator with the node's name, version and namespace{sought}")
    elif failed is not None and not creators and "importFallbackPluginImporter" in log:
        found.append(f"the parser could not create plugin {failed[0]} version {failed[1]} (namespace '{failed[2]}')")
    for match in re.finditer(r"While parsing node number (\d+) \[(\S+) -> \"([^\"]*)\"\]", log):
        found.append(f"the ONNX parser failed at node {match.group(1)} ({match.group(2)}, output '{match.group(3)}')")
    return found


def diagnose_failure(log: str) -> Failure | None:
    """Why a trtexec run failed, from its log: what the user can fix (a flag, a plugin creator, a node),
    then the [E] lines themselves; None when the log names no error."""
    found = list(dict.fromkeys(_parser_findings(log)))
    errors = error_lines(log)
    if not errors:
        errors = list(dict.fromkeys(line.strip() for line in log.splitlines() if "ERROR" in line))[-3:]
    if not found and not errors:
        return None
    quoted = "; ".join(f"[E] {line}" for line in errors)
    message = "; ".join(found) + (f" (trtexec: {quoted})" if found and quoted else "") if found else quoted
    return Failure(message, bool(found), tuple(errors))


# ---------------------------------------------------------------------------------------------------------------
# Running trtexec


def require_trtexec() -> str:
    binary = shutil.which("trtexec")
    if binary is None:
        raise UserError("backend 'trtexec' needs the trtexec tool, which is not on PATH", field="build.backend",
                        hint="add TensorRT's bin folder to PATH, or use backend: tensorrt or onnxruntime")
    return binary


def run_streaming(command: Sequence[str], log_path: Path | None, progress: Callable[[str], None] | None = None,
                  keep_lines: int = 4000, cwd: Path | None = None) -> tuple[int, str]:
    """Run trtexec (in `cwd`), copying its output line by line into `log_path`; (exit code, the last lines)."""
    tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("w")) if log_path is not None else None
        process = stack.enter_context(subprocess.Popen(list(command), stdout=subprocess.PIPE, cwd=cwd,
                                                       stderr=subprocess.STDOUT, text=True, bufsize=1))
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line)
            if log is not None:
                log.write(line)
            if progress is not None and "[I]" in line:
                progress(line.split("]")[-1].strip()[:80])
        code = process.wait()
    return code, "".join(tail)


@contextlib.contextmanager
def borrowed_timing_cache(shared: Path | None) -> Iterator[Path | None]:
    """A private copy of the shared timing cache for one trtexec run, published back if nobody changed it.

    trtexec reads and rewrites its --timingCacheFile; two builds writing the shared file at once could
    lose entries or tear it, so each works on a copy, and the copy replaces the shared file (under a
    file lock, atomically) only when the shared file is still what was copied. Merging two caches
    needs the Python API, which a trtexec-only machine may lack.
    """
    from filelock import FileLock

    if shared is None:
        yield None
        return
    shared.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(shared) + ".lock")
    with tempfile.TemporaryDirectory(prefix="orchestrate-timing-") as folder:
        local = Path(folder) / "timing.cache"
        with lock:
            seen = shared.read_bytes() if shared.exists() else None
        if seen is not None:
            local.write_bytes(seen)
        yield local
        if local.exists() and local.stat().st_size:
            with lock:
                current = shared.read_bytes() if shared.exists() else None
                if current == seen:
                    write_atomically(shared, local.read_bytes())


def engine_io_for(model: Any, version: str | None) -> dict[str, list[dict[str, Any]]]:
    """The engine's inputs and outputs as the ONNX graph declares them (8.x parsers turn int64 I/O into int32)."""
    import onnx

    narrow = major_of(version) < 10

    def meta(value: Any) -> dict[str, Any]:
        kind = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
        if narrow and dtype == "int64":
            dtype = "int32"
        return {"name": value.name, "dtype": dtype,
                "shape": [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in kind.shape.dim]}

    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": [meta(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [meta(v) for v in model.graph.output]}


def build(request: BuildRequest) -> Built:
    """Build engine.plan with trtexec (log in trtexec.log); write engine.json for the Runner."""
    binary = require_trtexec()
    version = detected_version()
    plan = precision_for(request.precision, version, plugin_precisions(request.plugins), is_quantized(request.model),
                         request.keep_fp32)
    inputs = graph_input_dims(request.model)
    profiles = resolve_profiles(request.profiles, inputs)
    if len(profiles) > 1:
        raise UserError(f"the trtexec backend builds one optimization profile; {len(profiles)} are given",
                        field="build.profiles", hint="use backend: tensorrt for several profiles")
    graph_file, graph_model = graph_to_build(request.model, request.graph, request.out, plan.cast_graph,
                                             request.keep_fp32, {node.op for node in request.plugin_nodes})
    layers = layer_precision_options(plan, request.model, request.keep_fp32)
    shared = None
    if request.timing_cache and request.shared_dir is not None:
        shared = timing_cache_file(request.shared_dir, short_version(version or "unknown"), environment.build_gpu())
    engine = request.out / "engine.plan"
    with borrowed_timing_cache(shared) as cache:
        command = command_line(graph_file, settings_of(request), request.plugin_libraries, version,
                               profiles=explicit_profiles(profiles, inputs),
                               timing_cache=cache, engine=engine, plan=plan, skip_inference=True, layers=layers)
        command[0] = binary
        request.progress("trtexec building")
        code, log = run_streaming(command, request.out / "trtexec.log", request.progress)
    if code != 0 or not engine.exists():
        failure = diagnose_failure(log)
        if failure is not None and failure.user_error:
            raise UserError(f"trtexec {version or ''} failed: {failure.message}", field="build",
                            hint="run the command in trtexec.txt with --verbose for the full story")
        raise RuntimeError(f"trtexec exited with code {code}: {failure.message if failure else log[-2000:]}")
    ops = {node.op for node in request.plugin_nodes}
    description = {
        "backend": "trtexec", "tensorrt": version, "precision": plan.describe(),
        "graph": graph_file.name if graph_file != request.graph else "model.onnx",
        **engine_io_for(graph_model, version),
        "plugin_outputs": plugin_outputs(graph_model, ops), "libraries": list(request.plugin_libraries),
        "profiles": profiles_json(profiles),
    }
    (request.out / "engine.json").write_text(json.dumps(description, indent=1))
    size = engine.stat().st_size
    count = len(request.plugin_nodes)
    summary = (f"trtexec {version or '(version unknown)'} engine, {plan.describe()}, {count} plugin node"
               f"{'s' if count != 1 else ''} {', '.join(sorted(ops))}, {size / 1e6:.1f} MB")
    return Built(summary, {"summary": summary, "backend": "trtexec", "tensorrt": version,
                           "precision_plan": plan.describe(), "engine_bytes": size,
                           "timing_cache": "on" if shared else "off"})


class Runner(RunnerBase):
    """Runs engine.plan through `trtexec --loadEngine`: inputs from raw files, outputs from the raw files of
    --dumpRawBindingsToFile (from --exportOutput where none appear)."""

    timer = "cuda events"

    def __init__(self, artifact_dir: Path, threads: int = 0, trusted: Trusted | None = None) -> None:
        self.binary = require_trtexec()
        self.artifact = artifact_dir
        self.description = json.loads((artifact_dir / "engine.json").read_text())
        self.version: str | None = self.description.get("tensorrt")
        # engine.json is data: trtexec loads a library it names only if its bytes are one the pipeline declares.
        self.libraries = [(trusted or Trusted()).library(str(p)) for p in self.description.get("libraries", [])]
        self.last_summary: dict[str, Any] = {}
        self.outputs_read_from: str | None = None  # the option the last run's outputs came from

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(m["name"], m["dtype"], [d if d >= 0 else None for d in m["shape"]])
                for m in self.description["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        producers = self.description.get("plugin_outputs", {})
        return [TensorSpec(m["name"], m["dtype"], [d if d >= 0 else None for d in m["shape"]], producers.get(m["name"]))
                for m in self.description["outputs"]]

    def _command(self, folder: Path, feeds: Mapping[str, Any], extra: Sequence[str]) -> list[str]:
        # absolute paths: the run's working directory is where trtexec writes its raw files
        files = write_inputs(folder.resolve() / "inputs", feeds, self.inputs)
        engine = (self.artifact / "engine.plan").resolve()
        command = [self.binary, f"--loadEngine={engine}", load_inputs_option(files)]
        command += plugin_options([str(Path(library).resolve()) for library in self.libraries], self.version)
        dynamic = [s for s in self.inputs if None in s.shape]
        if dynamic:
            shapes = ",".join(f"{_spec_name(s.name)}:{dims_text(feeds[s.name].shape)}" for s in self.inputs)
            command.append(f"--shapes={shapes}")
        return command + list(extra)

    def _run(self, command: Sequence[str], folder: Path, cwd: Path | None = None) -> str:
        code, log = run_streaming(command, folder / "trtexec.log", cwd=cwd)
        if code != 0:
            failure = diagnose_failure(log)
            raise RuntimeError(f"trtexec exited with code {code}: {failure.message if failure else log[-2000:]}")
        self.last_summary = parse_performance_summary(log)
        return log

    def run(self, feeds: Mapping[str, Any], keep: Sequence[str] = ()) -> dict[str, Any]:
        """The graph outputs (trtexec exports no intermediate tensor, so `keep` is never given): from the raw
        files trtexec writes in a working directory of their own; a release that writes none runs again
        with --exportOutput."""
        outputs, once = self.outputs, ["--iterations=1", "--warmUp=0", "--duration=0"]
        with tempfile.TemporaryDirectory(prefix="orchestrate-trtexec-") as name:
            folder = Path(name).resolve()
            dumped = folder / "raw"
            dumped.mkdir()
            raw_option = raw_dump_option(self.version)
            if raw_option:
                log = self._run(self._command(folder, feeds, [*once, *raw_option]), folder, cwd=dumped)
                arrays = raw_outputs(log, dumped, outputs)
                if arrays is not None:
                    self.outputs_read_from = raw_option[0]
                    return arrays
            exported = folder / "outputs.json"
            self._run(self._command(folder, feeds, [*once, f"--exportOutput={exported}"]), folder)
            self.outputs_read_from = "--exportOutput"
            return exported_outputs(exported, outputs)

    def result_notes(self) -> list[str]:
        """The digits float32 outputs had, when the last run read them from --exportOutput."""
        return read_notes(self.outputs_read_from, self.outputs)

    def bench(self, feeds: Mapping[str, Any], warmup: int, iterations: int, max_seconds: float,
              progress: Callable[[str], None] | None = None) -> Timings:
        """GPU compute seconds per iteration as trtexec measured them (CUDA events), from --exportTimes; then
        one run for the outputs."""
        with tempfile.TemporaryDirectory(prefix="orchestrate-trtexec-") as name:
            folder = Path(name)
            times = folder / "times.json"
            self._run(self._command(folder, feeds, [f"--iterations={warmup + iterations}", "--warmUp=0",
                                                    "--duration=0", f"--exportTimes={times}"]), folder)
            timings = bench_timings(parse_exported_times(times.read_text()), warmup, iterations, max_seconds)
        return Timings(timings, self.run(feeds), self.timer)


class TrtexecBackend(TensorRTBackend):
    """Engines built and run by the trtexec program; the key names its version too."""

    name = "trtexec"
    title = "trtexec"

    def unavailable(self) -> str | None:
        return None if shutil.which("trtexec") else "unavailable: trtexec not on PATH"

    def planning_problem(self) -> tuple[str, str] | None:
        return None  # its absence is the build's error: a key names it as 'absent'

    def key_tools(self, gpu_type: str | None) -> dict[str, str]:
        return {**super().key_tools(gpu_type), "trtexec": detected_version() or "absent"}

    def tool_identity(self, tool: str) -> str | None:
        return (detected_version() or "absent") if tool == "trtexec" else None

    def check_plugin(self, plugin: DeclaredPlugin, libraries: Sequence[str]) -> None:
        """trtexec registers NVIDIA's plugins in namespace "" only: a creator in another namespace can come
        only from a plugin library of the build's own."""
        if plugin.namespace and not libraries:
            raise UserError(f"plugin {plugin.op}: namespace '{plugin.namespace}' has no creator under trtexec, "
                            "which registers NVIDIA's plugins only in namespace \"\"", field="export.plugins",
                            hint="declare namespace '' (export.plugins[].namespace), give build.plugin_libraries "
                                 "a library that registers its creators in that namespace, or use backend: "
                                 "tensorrt (it registers NVIDIA's plugins in every namespace the graph uses)")

    def check_graph(self, model: Any) -> None:
        problem = comma_problem(list(graph_input_dims(model)))
        if problem is not None:
            raise problem

    def plugin_versions(self, op: str, versions: Sequence[str], namespace: str, libraries: Sequence[str],
                        ask_registry: bool = True) -> RegisteredVersions:
        """trtexec cannot be asked what it registers: `version: auto` goes by the release it reports."""
        return RegisteredVersions(None, detected_version())

    def build(self, request: BuildRequest) -> Built:
        return build(request)

    def open(self, artifact: Path, threads: int = 0, trusted: Trusted | None = None) -> Runner:
        return Runner(artifact, threads, trusted)

    def doctor(self) -> list[str]:
        found = shutil.which("trtexec")
        return [f"  {self.name:<24} " + (f"{found} (TensorRT {detected_version() or '?'})" if found else
                                          "unavailable: trtexec not on PATH")]


BACKEND = TrtexecBackend()

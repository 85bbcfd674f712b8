"""trtexec: command lines for the installed TensorRT generation, and (later) running it."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

UNITS = {"B": 1, "K": 1 << 10, "KB": 1000, "KIB": 1 << 10, "M": 1 << 20, "MB": 10**6, "MIB": 1 << 20,
         "G": 1 << 30, "GB": 10**9, "GIB": 1 << 30}


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a size such as '4GiB', '512MiB', '1.5G'."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*", value)
    if not match or match.group(2).upper() not in UNITS:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


@functools.cache
def detected_version() -> str | None:
    """The version trtexec reports ('10.13.0'), or None when it is not on PATH."""
    binary = shutil.which("trtexec")
    if binary is None:
        return None
    try:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"TensorRT\.trtexec \[TensorRT v(\d+)(\d\d)(\d\d)\]", text) or re.search(
        r"TensorRT v?(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return f"{major}.{minor}.{patch}"


def major_of(version: str | None) -> int:
    """The TensorRT generation to write flags for (10 when unknown: today's default)."""
    if not version:
        return 10
    return int(version.split(".")[0])


def command_line(onnx_path: Path, build: dict[str, Any], libraries: list[str], version: str | None) -> list[str]:
    """The trtexec invocation equivalent to a build with these settings, for TensorRT `version`."""
    major = major_of(version)
    workspace_mib = max(1, parse_size(build["workspace"]) >> 20)
    command = ["trtexec", f"--onnx={onnx_path}"]
    if major < 10:
        command += ["--explicitBatch", f"--workspace={workspace_mib}"]
    else:
        command += [f"--memPoolSize=workspace:{workspace_mib}M"]
    precision = build["precision"]
    if major < 11 and precision in ("fp16", "bf16", "int8", "best"):
        command.append(f"--{precision}")
    if precision == "tf32" and major < 11:
        pass  # TF32 is on by default; --noTF32 turns it off
    for library in libraries:
        command.append(f"--staticPlugins={library}" if major >= 10 else f"--plugins={library}")
    return command

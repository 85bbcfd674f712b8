"""mypy checks the backends, the TensorRT ones against tensorrt-stubs 10.13 (installed into .stubs).

The published stubs are generated from the bindings and do not parse as they are: parameters named
`in` (a keyword), a parameter without a default after defaulted ones, and `bool` in annotations
meaning the builtin while the module itself defines `bool` as a DataType. The check therefore runs
on a copy with exactly those three things repaired; everything else is used as published. A
second check plants API misuse and expects mypy to report it, so a check that silently ignores
the stubs cannot pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / ".stubs"

pytestmark = pytest.mark.skipif(
    not (STUBS / "tensorrt" / "__init__.pyi").exists(),
    reason="TensorRT type stubs not installed: pip install -q --no-deps --target .stubs tensorrt-stubs==10.13.0.35.1")


def repair_stubs(source: Path, target: Path) -> dict[str, int]:
    """Copy the stubs to `target`, repairing what keeps them from parsing or shadows `bool`; count each repair."""
    shutil.copytree(source, target)
    module = target / "tensorrt_bindings" / "tensorrt.pyi"
    text = module.read_text()
    text, keyword = re.subn(r"(?<=[(,] )in(?=: )", "in_", text)
    text, order = re.subn(r"(def add_scale_nd\(.*?)channel_axis: int\)", r"\1channel_axis: int = ...)", text)
    text, shadowed = re.subn(r"(?m)(?<![.\w])(?<!^)bool\b", "builtins.bool", text)
    if shadowed:
        text = "import builtins\n" + text
    module.write_text(text)
    return {"keyword parameter": keyword, "parameter order": order, "bool annotations": shadowed}


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("types")
    repairs = repair_stubs(STUBS, folder / "stubs")
    assert all(count >= 0 for count in repairs.values())
    return {**os.environ, "MYPYPATH": str(folder / "stubs"), "MYPY_CACHE_DIR": str(folder / "cache")}


def mypy(env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *files],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_tensorrt_backends_type_check(mypy_env: dict[str, str]) -> None:
    done = mypy(mypy_env, "orchestrator/backends")
    assert done.returncode == 0, done.stdout + done.stderr
    checked = len(list((ROOT / "orchestrator" / "backends").rglob("*.py")))
    assert f"no issues found in {checked} source files" in done.stdout


PROBE = '''\
import tensorrt as trt


def misuse(logger: trt.ILogger) -> None:
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.max_workspace_size = 1 << 30
    builder.build_engine(network, config)
    ok: int = builder.build_serialized_network(network, config)
'''


def test_the_stubs_are_really_used(mypy_env: dict[str, str], tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = mypy(mypy_env, str(probe))
    assert done.returncode == 1, done.stdout + done.stderr
    assert '"IBuilderConfig" has no attribute "max_workspace_size"' in done.stdout  # removed in 10.0
    assert '"Builder" has no attribute "build_engine"' in done.stdout  # removed in 10.0
    assert 'expression has type "IHostMemory", variable has type "int"' in done.stdout

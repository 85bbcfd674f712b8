"""Shared fixtures: small pipelines written into a temporary project, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALL_MODEL = """\
model:
  factory: examples.maskdino_encoder:build_encoder
  kwargs: {num_layers: 2, d_model: 32, heads: 2, levels: 3, points: 2, ffn_dim: 64, seed: 0}
  inputs: examples.maskdino_encoder:example_inputs
  inputs_kwargs: {shapes: [[8, 10], [4, 5], [2, 3]], d_model: 32}
"""

SMALL_CALL = """\
capture:
  module: encoder.layers.1.self_attn
  call: examples.ops.msda:ms_deform_attn
export:
  plugins:
    - replace: examples.ops.msda:ms_deform_attn
      op: MultiscaleDeformableAttnPlugin_TRT
"""

SMALL_PIPELINE = """\
version: 1
name: small
{model}
capture:
  module: encoder.layers.1.self_attn
  call: examples.ops.msda:ms_deform_attn
export:
  opset: 11
  plugins:
    - replace: examples.ops.msda:ms_deform_attn
      op: MultiscaleDeformableAttnPlugin_TRT
      domain: trt.plugins
      dtypes: {{spatial_shapes: int32, level_start_index: int32}}
verify:
  atol: 1.0e-4
  rtol: 1.0e-3
bench:
  warmup: 1
  iterations: 3
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Project:
    """A scratch directory with pipelines in it and its own artifact store."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "artifacts"

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def small(self, name: str = "small.yaml", **replace: str) -> Path:
        text = SMALL_PIPELINE.format(model=SMALL_MODEL)
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        return self.write(name, text)

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
        """`orchestrate ARGS` in a subprocess, from the repository root (where `examples` imports)."""
        environment = {**os.environ, "ORCHESTRATE_STORE": str(self.store), "NO_COLOR": "1", **(env or {})}
        done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def artifact_digests(store: Path) -> dict[str, dict[str, str]]:
    """{stage/key: {file: digest}} for every artifact in a store, from the manifests."""
    import json

    found = {}
    for manifest in store.glob("*/*/manifest.json"):
        data = json.loads(manifest.read_text())
        found[f"{data['stage']}/{data['key']}"] = {k: v["digest"] for k, v in data["files"].items()}
    return found


def stage_status(output: str) -> dict[str, str]:
    """{stage: status} from the one-line-per-stage output."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("capture", "export", "surgery", "build", "verify", "bench"):
            found[parts[0]] = parts[2]
    return found

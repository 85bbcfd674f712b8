"""Backends: one module each (onnxruntime, tensorrt, trtexec), none aware of caching.

A backend module offers `build(...)` (writes its artifact files) and a `Runner(artifact_dir,
threads)` with `inputs`, `outputs` (TensorSpec lists) and `run(feeds) -> outputs`, which verify
and bench use without knowing which backend built the artifact.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

BACKENDS = ("onnxruntime", "tensorrt", "trtexec")


def module(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name}")
    return importlib.import_module(f"orchestrator.backends.{name}")


def open_runner(artifact_dir: Path, backend: str, threads: int = 0) -> Any:
    return module(backend).Runner(artifact_dir, threads)

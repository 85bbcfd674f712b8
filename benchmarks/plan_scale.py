"""Planning cost against the number of pipelines and variants: it should grow linearly.

Plans, in one process (as `orchestrate run` and `gc` do), first 1, 10, 100 and 1000 separate
pipeline files, then one pipeline whose matrix has 1, 10, 100 and 1000 variants, and prints the
time per planned stage. Each pipeline has five stages (capture from a folder of small tensors,
export, build, verify, bench) and its own verify tolerance, so every variant adds distinct
verify and bench nodes while capture, export and build are shared. Reading, validating and
defaulting the YAML is included; file digests are computed once and then come from the stat cache,
as in a real run.

    python benchmarks/plan_scale.py [--sizes 1 10 100 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PIPELINE = """\
version: 1
name: scale_{index}
capture: {{from_dir: tensors}}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {{spatial_shapes: int32, level_start_index: int32}}
verify: {{atol: {atol}}}
bench: {{warmup: 1, iterations: 3}}
"""


def tolerance(index: int) -> float:
    return round(1e-4 * (1 + index), 10)


def write_tensors(folder: Path) -> None:
    """A small MSDA capture (values do not matter: nothing runs, only the plan is made)."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, array in {"value": rng.random((1, 8, 2, 4), np.float32),
                        "spatial_shapes": np.array([[2, 3], [1, 2]]), "level_start_index": np.array([0, 6]),
                        "sampling_locations": rng.random((1, 3, 2, 2, 2, 2), np.float32),
                        "attention_weights": rng.random((1, 3, 2, 2, 2), np.float32),
                        "output": rng.random((1, 3, 8), np.float32)}.items():
        np.save(folder / f"{name}.npy", array)


def plan_files(folder: Path, count: int) -> tuple[float, int]:
    from orchestrator.config import spec
    from orchestrator.planning.plan import make_plan
    from orchestrator.store.digest import DigestCache

    paths = []
    for index in range(count):
        path = folder / f"scale_{index}.yaml"
        path.write_text(PIPELINE.format(index=index, atol=tolerance(index)))
        paths.append(path)
    digests = DigestCache(None)
    started = time.perf_counter()
    stages = 0
    for path in paths:
        stages += len(make_plan(spec.load(path), digests).nodes)
    return time.perf_counter() - started, stages


def plan_matrix(folder: Path, count: int) -> tuple[float, int]:
    from orchestrator.config import spec
    from orchestrator.planning.plan import make_plan
    from orchestrator.store.digest import DigestCache

    path = folder / f"matrix_{count}.yaml"
    values = ", ".join(str(tolerance(index)) for index in range(count))
    path.write_text(PIPELINE.format(index="matrix", atol=tolerance(0)) + f"matrix:\n  verify.atol: [{values}]\n")
    digests = DigestCache(None)
    started = time.perf_counter()
    planned = make_plan(spec.load(path), digests)
    return time.perf_counter() - started, sum(len(keys) for keys in planned.by_variant.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as scratch:
        folder = Path(scratch)
        write_tensors(folder / "tensors")
        plan_files(folder, 1)  # imports and the first digests are not what scales
        for label, planner, unit in (("pipeline files", plan_files, "pipelines"),
                                     ("matrix variants", plan_matrix, "variants")):
            print(f"\n{label}:")
            print(f"  {unit:>9}  {'stages':>7}  {'seconds':>8}  {'ms/stage':>8}")
            per_stage = []
            for count in args.sizes:
                seconds, stages = planner(folder, count)
                per_stage.append(seconds / stages * 1e3)
                print(f"  {count:9d}  {stages:7d}  {seconds:8.3f}  {per_stage[-1]:8.3f}")
            base = min(1, len(per_stage) - 1)
            print(f"  per-stage cost at {args.sizes[-1]} / at {args.sizes[base]}: "
                  f"{per_stage[-1] / per_stage[base]:.2f} (1.00 = linear)")


if __name__ == "__main__":
    main()

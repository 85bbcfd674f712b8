"""The report of a 500-variant run: its time, peak memory and size, which should follow what a person reads.

Runs, once, a cheap pipeline whose matrix has 500 variants: 25 capture folders (MSDA tensors at the
small encoder's shapes, outputs [1, 106, 32], so every verify.json carries a full error histogram and
a 2000-element sample) × 20 verify tolerances, capture from a folder, bench disabled. One tolerance in
20 is tighter than the references' noise, so 25 variants fail, as in a real sweep. Then it writes that
run's report again in fresh processes, timed: with the default figure budget, and with figures for
every variant (ORCHESTRATE_REPORT_FIGURES=all, the report as it was before the budget). Prints, for
each: seconds to collect and render, the peak resident memory of that process, and the sizes of
report.html and report.json.

    python benchmarks/report_scale.py [--folders 25] [--tolerances 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [[8, 10], [4, 5], [2, 3]]  # the small encoder's levels: S = 106 tokens

PIPELINE = """\
version: 1
name: sweep
capture: {{from_dir: t00}}
export:
  plugins:
    - op: MultiscaleDeformableAttnPlugin_TRT
      dtypes: {{spatial_shapes: int32, level_start_index: int32}}
verify: {{rtol: 1.0e-6}}
bench: {{enabled: false}}
matrix:
  capture.from_dir: [{folders}]
  verify.atol: [{tolerances}]
"""

WRITE = """\
import json, resource, sys, time
from orchestrator.reports import html as report
from orchestrator.config import spec
from orchestrator.planning.plan import make_plan
from orchestrator.store.store import Store
store = Store(sys.argv[2])
plan = make_plan(spec.load(sys.argv[1]), store.digests)
started = time.perf_counter()
folder = report.write(plan, store)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "html_mb": (folder / "report.html").stat().st_size / 1e6,
                  "json_mb": (folder / "report.json").stat().st_size / 1e6}))
"""


def write_capture(folder: Path, seed: int) -> None:
    """An MSDA capture whose output is the reference kernel's plus noise of 1e-5 (a real reference's own error)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from orchestrator import plugins

    rng = np.random.default_rng(seed)
    tokens, queries, heads, dim, levels, points = 106, 106, 2, 16, 3, 2
    weights = rng.random((1, queries, heads, levels, points)).astype(np.float32)
    spatial = np.array(SHAPES, dtype=np.int64)
    tensors = {
        "value": rng.standard_normal((1, tokens, heads, dim)).astype(np.float32),
        "spatial_shapes": spatial,
        "level_start_index": np.concatenate([[0], np.cumsum(spatial.prod(1))[:-1]]).astype(np.int64),
        "sampling_locations": rng.random((1, queries, heads, levels, points, 2)).astype(np.float32),
        "attention_weights": weights / weights.sum((-1, -2), keepdims=True),
    }
    entry = plugins.builtin("MultiscaleDeformableAttnPlugin_TRT")
    assert entry is not None
    arrays = [tensors[c.name].astype(np.int32) if tensors[c.name].dtype == np.int64 else tensors[c.name]
              for c in entry.inputs]
    output = entry.load_kernel()(arrays, {})[0].reshape(1, queries, heads * dim)
    tensors["output"] = output + rng.normal(0, 1e-5, output.shape).astype(np.float32)
    folder.mkdir(parents=True)
    for name, array in tensors.items():
        np.save(folder / f"{name}.npy", array)


def write_report(pipeline: Path, store: Path, figures: str | None) -> dict[str, float]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("ORCHESTRATE_REPORT_FIGURES", None)
    if figures is not None:
        environment["ORCHESTRATE_REPORT_FIGURES"] = figures
    done = subprocess.run([sys.executable, "-c", WRITE, str(pipeline), str(store)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", type=int, default=25)
    parser.add_argument("--tolerances", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    options = parser.parse_args()
    work = options.keep or Path(tempfile.mkdtemp(prefix="report-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    folders = [f"t{index:02d}" for index in range(options.folders)]
    for index, name in enumerate(folders):
        if not (work / name).exists():
            write_capture(work / name, index)
    tolerances = ["1.0e-7"] + [f"{1e-4 * (1 + index):.1e}" for index in range(options.tolerances - 1)]
    pipeline = work / "sweep.yaml"
    pipeline.write_text(PIPELINE.format(folders=", ".join(folders), tolerances=", ".join(tolerances)))
    store = work / "store"
    environment = {**os.environ, "ORCHESTRATE_STORE": str(store), "NO_COLOR": "1"}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(pipeline), "-j", "2"], cwd=ROOT,
                         env=environment, capture_output=True, text=True)
    if run.returncode not in (0, 1):  # 1: the tight tolerance fails, as intended
        sys.exit(run.stdout[-2000:] + run.stderr[-2000:])
    variants = options.folders * options.tolerances
    print(f"{variants} variants ({options.folders} captures x {options.tolerances} tolerances, "
          f"{options.folders} failing): run {time.perf_counter() - started:.1f} s; report written again:")
    for label, figures in (("default figure budget", None), ("figures for every variant", "all")):
        figure = write_report(pipeline, store, figures)
        print(f"  {label:27s} {figure['seconds']:6.1f} s  peak {figure['peak_mb']:6.0f} MB  "
              f"report.html {figure['html_mb']:6.1f} MB  report.json {figure['json_mb']:5.1f} MB")
    print(f"store: {store}" if options.keep else "")


if __name__ == "__main__":
    main()

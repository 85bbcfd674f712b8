"""What each command does, as functions that return results: the CLI prints them and makes exit codes.

`run`, `plan`, `validate`, `show`, `push`, `pull`, `gc`, `fsck`, `doctor` and `init` take plain values (paths,
flags) and return dataclasses. What a command reports while it works (one line per stage or artifact)
goes to the `echo` it is given, as it happens; what it found at the end is in the result. Nothing heavy
(torch, onnx, numpy) is imported here: stages import theirs when they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.config.spec import Spec
    from orchestrator.planning.plan import Plan
    from orchestrator.run.executor import Executor, Outcome, RunReport
    from orchestrator.store.remote import Remote
    from orchestrator.store.store import Store

Echo = Callable[[str], None]
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
FAILED_KEPT_FOR = 7 * 86400.0  # seconds a failed stage's folder is kept when gc is given no age


def open_store(path: str | None) -> Store:
    """The artifact store at `path`, else ORCHESTRATE_STORE, else ./artifacts."""
    from orchestrator.store.store import Store

    return Store(path or os.environ.get("ORCHESTRATE_STORE", "artifacts"))


def load(path: str) -> Spec:
    from orchestrator.config import spec as spec_module

    return spec_module.load(path)


def remote_for(spec: Spec, override: str | None) -> Remote | None:
    """The remote cache for this pipeline (--remote / ORCHESTRATE_REMOTE, else cache.remote), or None."""
    from orchestrator.store import remote

    try:
        return remote.configured(spec.data.get("cache") or {}, spec.base_dir, override)
    except UserError as exc:
        if exc.field:
            raise exc.located(str(spec.path), spec.line_of(exc.field)) from None
        raise


def parse_only(values: tuple[str, ...]) -> dict[str, list[str]] | None:
    """--only FIELD=VALUE[,VALUE] items as {field: [values]}; None when there are none."""
    if not values:
        return None
    selected: dict[str, list[str]] = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--only takes FIELD=VALUE (e.g. precision=fp16), got '{item}'")
        key, value = item.split("=", 1)
        selected.setdefault(key.strip(), []).extend(v.strip() for v in value.split(","))
    return selected


def _planned(file: str, store: str | None, only: tuple[str, ...]) -> tuple[Spec, Store, Plan]:
    from orchestrator.planning.plan import make_plan

    spec = load(file)
    artifacts = open_store(store)
    return spec, artifacts, make_plan(spec, artifacts.digests, parse_only(only))


# ------------------------------------------------------------------------------------------ run

@dataclass
class RunResult:
    """What `run` did: every stage's outcome, the checks that failed, and where the report is."""

    outcomes: list[Outcome]
    failed_checks: list[str]
    executed: int  # stages that ran in this process
    pulled: int  # artifacts fetched from the remote cache
    remote_url: str | None
    seconds: float
    report_page: Path | None  # written when anything ran or was pulled
    exit_code: int


def run(file: str, store: str | None, force: tuple[str, ...] = (), only: tuple[str, ...] = (), jobs: int = 1,
        executor: str = "local", address: str | None = None, remote: str | None = None) -> RunResult:
    """Run every stage of FILE whose inputs changed (the executor prints a line per stage as it ends).

    A run with no --only and no --force remembers its answer for the no-op fast path.
    """
    from orchestrator import fastpath

    started = time.perf_counter()
    before = fastpath.snapshot()  # before anything is read, so that edits made during the run are seen
    if executor == "ray":
        from orchestrator.run.ray import require_ray

        require_ray()
    spec = load(file)
    artifacts = open_store(store)
    cache = remote_for(spec, remote)
    from orchestrator.planning.plan import make_plan

    plan = make_plan(spec, artifacts.digests, parse_only(only))
    report = _executor(plan, artifacts, set(force), jobs, executor, address, cache).run()
    pulled = [o for o in report.outcomes if o.status == "pulled"]
    seconds = time.perf_counter() - started
    page = None
    if report.executed or pulled:
        from orchestrator.reports import html

        page = html.write(plan, artifacts, report.outcomes) / "report.html"
    if not only and not force:
        _remember(artifacts, spec, plan, before, report)
    return RunResult(report.outcomes, report.failed_checks, len(report.executed), len(pulled),
                     cache.url if cache else None, seconds, page, report.exit_code)


def _executor(plan: Plan, store: Store, force: set[str], jobs: int, name: str, address: str | None,
              remote: Remote | None) -> Executor:
    if name == "ray":
        from orchestrator.run.ray import RayExecutor

        return RayExecutor(plan, store, force, jobs=jobs, address=address, remote=remote)
    from orchestrator.run.executor import Executor

    return Executor(plan, store, force, jobs=jobs, remote=remote)


def _remember(store: Store, spec: Spec, plan: Plan, before: dict[str, Any], report: RunReport) -> None:
    """Write the fast-path record: the lines a no-op rerun prints, and what they depend on."""
    from orchestrator import fastpath
    from orchestrator.run.executor import variant_label

    lines = [{"kind": o.node.kind, "short": o.node.short, "label": variant_label(o.node, plan),
              "status": "failed" if not o.artifact.manifest.get("passed", True) else "cached",
              "summary": o.summary} for o in report.outcomes]
    fastpath.remember(store, spec, plan, before, [o.artifact for o in report.outcomes], lines, report.exit_code)


# ------------------------------------------------------------------------------------------ plan, validate, show

@dataclass(frozen=True)
class PlanRow:
    """One stage of `plan`: cached, failed (its check) or run, with why or its input keys."""

    kind: str
    short: str
    state: str
    detail: str
    label: str


@dataclass
class PlanResult:
    plan: Plan
    rows: list[PlanRow]
    stale: int  # stages that would run


def plan(file: str, store: str | None, only: tuple[str, ...] = (), why: bool = False) -> PlanResult:
    """What `run` would do: each stage's state, and (why) the first difference from the last run."""
    from orchestrator.planning import discovered
    from orchestrator.planning import why as reasons
    from orchestrator.run.executor import variant_label

    _, artifacts, planned = _planned(file, store, only)
    explainer = reasons.Explainer(artifacts.run_record(planned.spec.name))
    reviewed = discovered.review(planned, artifacts)  # intact, and its discovered inputs as recorded
    rows = []
    for node in planned.order():
        artifact, damage = reviewed[node.key]
        if artifact is not None:
            state = "failed" if not artifact.manifest.get("passed", True) else "cached"
            detail = ""
        else:
            state = "run"
            detail = explainer.why(node, discovered.describe(damage, "artifact "))
        if not why:
            detail = " ".join(f"{role}={key[:8]}" for role, key in node.inputs.items())
        rows.append(PlanRow(node.kind, node.short, state, detail, variant_label(node, planned)))
    artifacts.save()
    return PlanResult(planned, rows, sum(row.state == "run" for row in rows))


@dataclass(frozen=True)
class ValidateResult:
    file: str
    variants: int
    stages: int


def validate(file: str) -> ValidateResult:
    """Everything `run` would refuse before its first stage, found without running one or writing anything."""
    from orchestrator.planning.plan import make_plan
    from orchestrator.store.digest import DigestCache

    spec = load(file)
    planned = make_plan(spec, DigestCache(None))  # resolves imports and files; writes nothing
    return ValidateResult(file, len(spec.variants), len(planned.nodes))


@dataclass
class ShowResult:
    """The plan and store `show` reads its tables from, or (show --path) the one folder to print."""

    plan: Plan
    store: Store
    stage: str | None
    folder: str | None = None


def show(file: str, store: str | None, only: tuple[str, ...] = (), stage: str | None = None,
         path_of: str | None = None) -> ShowResult:
    if path_of and stage:
        raise UserError("--path and --stage do not combine: --path prints one folder only")
    _, artifacts, planned = _planned(file, store, only)
    folder = artifact_folder(planned, artifacts, path_of) if path_of else None
    return ShowResult(planned, artifacts, stage, folder)


def artifact_folder(plan: Plan, store: Store, stage: str) -> str:
    """The one artifact folder of `stage` (for `show --path`), or a UserError saying which choice is missing."""
    from orchestrator.run.executor import variant_label
    from orchestrator.ui import shown_path

    nodes = [node for node in plan.order() if node.kind == stage]
    file = str(plan.spec.path)
    if not nodes:
        raise UserError(f"the pipeline has no {stage} stage", file=file)
    if len(nodes) > 1:
        choices = [f"  {'  '.join(f'--only {part}' for part in variant_label(node, plan).split(','))}"
                   f"   ({node.short})" for node in nodes]
        raise UserError(f"the variants have {len(nodes)} different {stage} artifacts; pick one with --only:\n"
                        + "\n".join(choices), file=file)
    artifact, damage = store.check(stage, nodes[0].key)
    if artifact is None:
        state = "not built yet" if damage == "missing" else damage
        raise UserError(f"{stage} {nodes[0].short} is {state}: run `orchestrate run {file}` first", file=file)
    return shown_path(artifact.path)


# ------------------------------------------------------------------------------------------ push, pull

@dataclass(frozen=True)
class PushResult:
    missing: int  # artifacts of the plan not built here
    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class PullResult:
    rejected: int  # remote copies whose files did not match their digests

    @property
    def exit_code(self) -> int:
        return EXIT_CHECK_FAILED if self.rejected else EXIT_OK


def _remote_plan(file: str, store: str | None, only: tuple[str, ...],
                 remote: str | None) -> tuple[Plan, Store, Remote]:
    spec = load(file)
    artifacts = open_store(store)
    cache = remote_for(spec, remote)
    if cache is None:
        raise UserError("no remote cache: set cache.remote in the pipeline, --remote or ORCHESTRATE_REMOTE",
                        file=file, hint="e.g. cache: {remote: s3://bucket/orchestrate}")
    from orchestrator.planning.plan import make_plan

    return make_plan(spec, artifacts.digests, parse_only(only)), artifacts, cache


def push(file: str, store: str | None, only: tuple[str, ...], remote: str | None, replace: bool,
         echo: Echo) -> PushResult:
    """Upload the artifacts of FILE the local store holds (replace: even those the remote has)."""
    from orchestrator.store.remote import push_pipeline

    planned, artifacts, cache = _remote_plan(file, store, only, remote)
    missing = push_pipeline(artifacts, cache, planned.order(), replace, echo)
    artifacts.save()
    return PushResult(missing)


def pull(file: str, store: str | None, only: tuple[str, ...], remote: str | None, echo: Echo) -> PullResult:
    """Download the artifacts of FILE the local store lacks, each checked against its digests."""
    from orchestrator.store.remote import pull_pipeline

    planned, artifacts, cache = _remote_plan(file, store, only, remote)
    artifacts.ensure()
    rejected = pull_pipeline(artifacts, cache, planned.order(), echo)
    artifacts.save()
    return PullResult(rejected)


# ------------------------------------------------------------------------------------------ fsck, gc

@dataclass(frozen=True)
class FsckResult:
    root: Path
    exists: bool
    checked: int = 0
    damaged: int = 0
    repaired: bool = False
    leftovers: int = 0  # unfinished staging directories
    forgotten: int = 0  # fast-path records dropped

    @property
    def exit_code(self) -> int:
        return EXIT_CHECK_FAILED if self.damaged and not self.repaired else EXIT_OK


def fsck(store: str | None, repair: bool, echo: Echo) -> FsckResult:
    """Re-hash every artifact; report (and with repair, remove) the damaged ones.

    Whatever it finds, the digest cache learns the true digests and the fast-path records that vouch
    for a damaged artifact are dropped, so the next run rebuilds a damaged artifact instead of using it.
    """
    artifacts = open_store(store)
    if not artifacts.root.is_dir():
        return FsckResult(artifacts.root, exists=False)
    checked = damaged = 0
    broken: list[str] = []
    for kind, key, path in artifacts.artifacts():
        checked += 1
        artifact, problem = artifacts.check(kind, key, rehash=True)
        if artifact is None:
            damaged += 1
            broken.append(os.path.realpath(path))
            echo(f"{'removed' if repair else 'damaged'}: {kind}/{key[:12]}: {problem}")
            if repair:
                with artifacts.lock(key):
                    artifacts.discard(kind, key)
    forgotten = _forget_fast_records(artifacts, broken)
    artifacts.save()
    leftovers = artifacts.stale_staging(min_age=0 if repair else 3600)
    if repair:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    return FsckResult(artifacts.root, True, checked, damaged, repair, len(leftovers), forgotten)


def _forget_fast_records(store: Store, broken: list[str]) -> int:
    """Remove the fast-path records that list a file of these (damaged or removed) artifacts."""
    if not broken:
        return 0
    folder = store.state / "fast"
    removed = 0
    for record in folder.glob("*.json") if folder.is_dir() else []:
        try:
            text = record.read_text()
        except OSError:
            continue
        if any(json.dumps(path + os.sep)[1:-1] in text for path in broken):
            with contextlib.suppress(OSError):
                record.unlink()
                removed += 1
    return removed


def parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise UserError(f"--older-than takes a number and a unit (s, m, h, d, w), e.g. 7d; got '{text}'")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]


@dataclass
class GcResult:
    root: Path
    exists: bool
    dry_run: bool
    removed: int = 0
    freed: int = 0  # bytes
    kept_busy: int = 0  # in use by running processes
    failures: int = 0  # failed stage folders kept for inspection, removed (or that would be)
    gone: list[str] = field(default_factory=list)  # real paths of the removed artifacts


def gc(files: tuple[str, ...], store: str | None, older_than: str | None, dry_run: bool, echo: Echo) -> GcResult:
    """Remove artifacts no given pipeline reaches (and, with an age, only older ones).

    Never one a running process uses: runs register their keys under the store's registry lock,
    and the sweep holds that lock from reading the registrations to its last removal.
    """
    from orchestrator.planning.plan import make_plan

    artifacts = open_store(store)
    specs = [load(file) for file in files]
    if not specs and older_than is None:
        raise UserError("name the pipelines whose artifacts to keep, or give --older-than")
    max_age = parse_age(older_than) if older_than else None
    keep: set[str] = set()
    for spec in specs:
        keep.update(make_plan(spec, artifacts.digests).nodes)
    if not artifacts.root.is_dir():
        return GcResult(artifacts.root, exists=False, dry_run=dry_run)
    result = GcResult(artifacts.root, True, dry_run)
    with artifacts.registry():
        _sweep(artifacts, keep, max_age, result, echo)
    if not dry_run:
        for path in artifacts.stale_staging():
            shutil.rmtree(path, ignore_errors=True)
        _forget_fast_records(artifacts, result.gone)  # they could only decline now; do not keep them
    result.failures = _old_failures(artifacts, max_age, dry_run)
    return result


def _sweep(store: Store, keep: set[str], max_age: float | None, result: GcResult, echo: Echo) -> None:
    """Remove (or list) every artifact not in `keep` and old enough; the caller holds the registry lock."""
    from orchestrator.store.store import MANIFEST

    in_use = store.keys_in_use()
    now = time.time()
    for kind, key, path in list(store.artifacts()):
        if key in keep:
            continue
        if max_age is not None:
            try:
                age = now - (path / MANIFEST).stat().st_mtime
            except OSError:
                age = float("inf")
            if age < max_age:
                continue
        if key in in_use:
            result.kept_busy += 1
            continue
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if result.dry_run:
            echo(f"would remove {kind}/{key[:12]} ({size / 1e6:.1f} MB)")
        elif store.remove_unless_busy(kind, key):
            echo(f"removed {kind}/{key[:12]} ({size / 1e6:.1f} MB)")
            result.gone.append(os.path.realpath(path))
        else:
            result.kept_busy += 1
            continue
        result.removed += 1
        result.freed += size


def _old_failures(store: Store, max_age: float | None, dry_run: bool) -> int:
    """Remove (or count) the .state/failed folders older than `max_age` (default a week): each holds what
    one failed run withdrew, for the user to look at, and nothing reads them again."""
    old = store.old_failures(FAILED_KEPT_FOR if max_age is None else max_age)
    if not dry_run:
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
    return len(old)


# ------------------------------------------------------------------------------------------ doctor

DOCTOR_TOOLS = ("torch", "onnx", "onnx-graphsurgeon", "onnxscript", "numpy", "numba")  # and the backends' own


@dataclass
class DoctorResult:
    """What is installed, which backends work, which plugins are known, which GPUs are visible."""

    tools: list[tuple[str, str | None]]  # name, version (None: not installed)
    backends: list[str]  # one line each, as the backends describe themselves
    plugins: list[str]  # one line per catalog entry
    gpus: list[tuple[str, str]]  # name, compute capability


def doctor() -> DoctorResult:
    from orchestrator import backends, environment

    tools = [(name, environment.tool_version(name)) for name in (*DOCTOR_TOOLS, *backends.distributions(uses=True))]
    return DoctorResult(tools, backends.doctor(), _plugin_lines(), list(environment.gpus()))


def _plugin_lines() -> list[str]:
    from orchestrator import plugins as catalog

    return [f"  {line}" for op in catalog.BUILTIN for line in catalog.lookup(op).summary_lines()]


# ------------------------------------------------------------------------------------------ init

@dataclass
class InitResult:
    """What `init` found (report lines), the pipeline it wrote (None when no call maps), the exit code."""

    lines: list[str]
    written: str | None
    exit_code: int


def parse_kwargs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    """--kwargs values: a JSON object, or key=value (the value read as JSON where it is JSON, else text)."""
    kwargs: dict[str, Any] = {}
    for text in values:
        if text.lstrip().startswith("{"):
            try:
                given = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{option}: '{text}' is not a JSON object: {exc}") from None
            if not isinstance(given, dict):
                raise UserError(f"{option}: '{text}' is not a JSON object")
            kwargs.update(given)
            continue
        key, equals, raw = text.partition("=")
        if not equals or not key.isidentifier():
            raise UserError(f"{option}: expected key=value or a JSON object, got '{text}'")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return kwargs


def init(factory: str, inputs: str | None, kwargs: dict[str, Any], inputs_kwargs: dict[str, Any],
         output: str | None, device: str, force: bool, echo: Echo) -> InitResult:
    """Build the model, watch one forward for calls a catalog entry recognises, and write a pipeline for the
    first usable one (orchestrator.init); `echo` gets progress lines."""
    from orchestrator import discover
    from orchestrator import init as initialiser
    from orchestrator.torch_model import ModelSettings

    inputs = inputs or initialiser.default_inputs(factory)
    path = Path(output or f"{initialiser.family(factory)}.yaml")
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to replace it, or -o another file")
    settings = ModelSettings(factory, inputs, kwargs, inputs_kwargs, device)
    found = discover.discover(settings, [], progress=echo)
    lines = initialiser.report(found)
    usable = found.usable()
    if not usable:
        return InitResult(lines, None, EXIT_CHECK_FAILED)
    command = " ".join(["orchestrate init --model", factory, "--inputs", inputs,
                        *(["--kwargs", f"'{json.dumps(kwargs)}'"] if kwargs else []),
                        *(["--inputs-kwargs", f"'{json.dumps(inputs_kwargs)}'"] if inputs_kwargs else []),
                        *(["--device", device] if device != "cpu" else []), "-o", str(path)])
    text = initialiser.pipeline(found, usable[0], initialiser.Written(settings, path, command))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    first = usable[0].calls[0].module or "the model"
    lines += [f"wrote {path}: scope call at {first}; the whole model is commented at its end",
              f"next: orchestrate run {path}"]
    return InitResult(lines, str(path), EXIT_OK)

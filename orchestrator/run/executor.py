"""Runs a plan against the store: reuse what exists, run the rest once, print one line per stage.

Each stage runs under a per-key file lock, so concurrent `orchestrate run`s of the same pipeline
produce every artifact once and the others wait and reuse it. A stage's `UserError` stops the run
(exit 2), and what the run had published is withdrawn, so bad input leaves no artifact behind (what
was withdrawn and what the failing stage wrote are kept under .state/failed/ for inspection, never
reused); a failed check (verify) is published and makes the exit code 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from orchestrator import stages, ui
from orchestrator.errors import UserError
from orchestrator.planning import discovered, why
from orchestrator.planning.plan import Node, Plan
from orchestrator.store.digest import digest_json
from orchestrator.store.remote import Remote
from orchestrator.store.store import Artifact, Store

EXCLUSIVE = frozenset(stage.name for stage in stages.STAGES if stage.exclusive)  # run with nothing beside them


@dataclass
class Outcome:
    node: Node
    status: str  # ran | cached | waited | failed | rebuilt
    seconds: float | None
    summary: str
    artifact: Artifact
    reason: str = ""
    notes: list[str] = field(default_factory=list)  # warnings to print under the stage line (remote cache)


@dataclass
class RunReport:
    outcomes: list[Outcome] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_checks else 0

    @property
    def executed(self) -> list[Outcome]:
        """The stages that ran in this process (reused ones have no time)."""
        return [o for o in self.outcomes if o.seconds is not None]


def variant_label(node: Node, plan: Plan) -> str:
    """The matrix choices all of a node's variants share, e.g. 'module=encoder.layers.3.self_attn'."""
    variants = [v for v in plan.spec.variants if v.name in node.variants]
    if not variants or not variants[0].name:
        return ""
    common = []
    for key in variants[0].choices:
        values = {repr(v.choices[key]) for v in variants}
        if len(values) == 1:
            common.append(variants[0].name.split(",")[list(variants[0].choices).index(key)])
    return ",".join(common) if common else "all variants"


class Executor:
    def __init__(self, plan: Plan, store: Store, force: set[str] | None = None,
                 echo: Callable[[str], None] | None = None, progress: bool | None = None, jobs: int = 1,
                 remote: Remote | None = None):
        self.plan = plan
        self.jobs = jobs
        self.remote = remote
        self.store = store
        self.force = force or set()
        self.echo = echo or (lambda text: print(text, flush=True))
        self.colour = ui.colour_enabled()
        self.show_progress = sys.stderr.isatty() if progress is None else progress
        self.record = store.run_record(plan.spec.name)
        self.explainer = why.Explainer(self.record)
        self.forced_by = forced_stages(plan, self.force)

    def why(self, node: Node) -> str:
        return self.explainer.why(node, self._forced_reason(node))

    def _forced_reason(self, node: Node) -> str | None:
        """Why a forced node runs: named itself by --force, or made from the output of a stage that was."""
        origin = self.forced_by.get(node.key)
        if origin is None:
            return None
        if origin == node.kind or "all" in self.force:
            return f"forced (--force {'all' if 'all' in self.force else origin})"
        return f"forced: upstream {origin} re-ran (--force {origin})"

    def run(self) -> RunReport:
        report = RunReport()
        artifacts: dict[str, Artifact] = {}
        self.store.ensure()
        started = time.time()
        try:
            with self.store.in_use(list(self.plan.nodes)):
                self._schedule(report, artifacts)
        except UserError as exc:
            self._withdraw(exc, started)
            raise
        finally:
            self.store.save()
        self.write_record(artifacts)
        return report

    def _withdraw(self, error: UserError, started: float) -> None:
        """A stage found bad input: take back what this run published, so that a later run uses none of it
        (artifacts another running process has registered are kept).

        What was taken back, and what the failing stage had written, go to .state/failed/ rather than
        away: the user can open the graph the stage refused. The error names that folder.
        """
        order = self.plan.order()
        folder = self.store.failure({node.key for node in order}, started, error.message) or \
            self.store.failed / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.store.withdraw([(node.kind, node.key) for node in order], since=started, keep_in=folder)
        if self.store.settle_failure(folder, error.message):
            error.message += f"\n  kept for inspection: {ui.shown_path(folder)}{os.sep}"

    def _schedule(self, report: RunReport, artifacts: dict[str, Artifact]) -> None:
        """Run every node of the plan; other executors (Ray) replace this."""
        if self.jobs > 1:
            self._run_parallel(report, artifacts)
        else:
            for node in self.plan.order():
                self._finished(self.run_node(node, artifacts), report, artifacts)

    def _finished(self, outcome: Outcome, report: RunReport, artifacts: dict[str, Artifact]) -> None:
        node = outcome.node
        artifacts[node.key] = outcome.artifact
        report.outcomes.append(outcome)
        if not outcome.artifact.manifest.get("passed", True):
            report.failed_checks.append(f"{node.kind}{self._label(node)}: {outcome.summary}")
        self.echo(ui.stage_line(node.kind, node.short, outcome.status, outcome.seconds, outcome.summary,
                                variant_label(node, self.plan), self.colour))
        if outcome.reason and outcome.reason != why.NEVER_RUN:
            self.echo(" " * 9 + ui.paint(f"why: {outcome.reason}", "2", self.colour))
        for note in outcome.notes:
            self.echo(" " * 9 + ui.paint(f"warning: {note}", "33", self.colour))

    def _run_parallel(self, report: RunReport, artifacts: dict[str, Artifact]) -> None:
        """Run each node as soon as its inputs exist, up to `jobs` at a time in worker processes."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        pending = list(self.plan.order())
        reasons = {node.key: self.why(node) for node in pending}
        running: dict[Future[Outcome], Node] = {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=context, initializer=_quiet_worker) as pool:
            try:
                while pending or running:
                    ready = [n for n in pending if all(k in artifacts for k in n.inputs.values())]
                    for node in ready[: self.jobs - len(running)]:
                        # A benchmark runs alone, so that other stages do not distort its timings.
                        if any(n.kind in EXCLUSIVE for n in running.values()):
                            break
                        if node.kind in EXCLUSIVE:
                            if running:
                                continue
                            pending.remove(node)  # in this process: worker thread pools may still spin
                            self._finished(self.run_node(node, artifacts), report, artifacts)
                            break
                        pending.remove(node)
                        inputs = {role: artifacts[key] for role, key in node.inputs.items()}
                        running[pool.submit(produce, str(self.store.root), node, inputs, reasons[node.key],
                                            self._forced(node), self.plan.spec.name, False, self.remote,
                                            stage_timeout(node, self.plan))] = node
                    if not running:
                        if pending and not any(all(k in artifacts for k in n.inputs.values()) for n in pending):
                            raise RuntimeError("no stage can run: the plan has a cycle")
                        continue
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        self._finished(self._located(future.result), report, artifacts)
            except BaseException:
                for future in running:
                    future.cancel()
                raise

    def _located(self, get: Callable[[], Outcome]) -> Outcome:
        try:
            return get()
        except UserError as exc:
            raise exc.located(str(self.plan.spec.path),
                              self.plan.spec.line_of(exc.field) if exc.field else None) from None

    def _label(self, node: Node) -> str:
        label = variant_label(node, self.plan)
        return f" [{label}]" if label else ""

    def _forced(self, node: Node) -> bool:
        return node.key in self.forced_by

    def run_node(self, node: Node, artifacts: dict[str, Artifact]) -> Outcome:
        inputs = {role: artifacts[key] for role, key in node.inputs.items()}
        return self._located(lambda: produce(self.store, node, inputs, lambda: self.why(node), self._forced(node),
                                             self.plan.spec.name, self.show_progress, self.remote,
                                             stage_timeout(node, self.plan)))

    def write_record(self, artifacts: dict[str, Artifact]) -> None:
        stages_record = dict(self.record.get("stages", {}))
        for variant, keys in self.plan.by_variant.items():
            for key in keys:
                node = self.plan.nodes[key]
                if key in artifacts:
                    stages_record[f"{variant}/{node.kind}"] = {"key": key, "parts": node.parts}
        self.store.write_run_record(self.plan.spec.name, {"stages": stages_record, "updated": time.time()})


def stage_timeout(node: Node, plan: Plan) -> float | None:
    """The time limit of a node's stage, `resources.<stage>.timeout` in seconds (none by default: an engine
    build may rightly take hours). Like the rest of `resources` it is in no key: it changes no output."""
    for variant in plan.spec.variants:
        if variant.name in node.variants:
            limit = ((variant.data.get("resources") or {}).get(node.kind) or {}).get("timeout")
            return float(limit) if limit is not None else None
    return None


def forced_stages(plan: Plan, force: set[str]) -> dict[str, str]:
    """Every node that must re-run for `--force`, by key, with the forced stage it re-runs for.

    A forced stage's output may differ from the cached one (a TensorRT engine is not built
    byte-for-byte the same twice), so whatever was made from it is made again too.
    """
    origins: dict[str, str] = {}
    for node in plan.order():  # upstream nodes come first
        if node.kind in force or "all" in force:
            origins[node.key] = node.kind
            continue
        upstream = [origins[key] for key in node.inputs.values() if key in origins]
        if upstream:
            origins[node.key] = upstream[0]
    return origins


def _quiet_worker() -> None:
    """Idle OpenMP threads in workers must sleep, not spin: spinning steals the cores a benchmark times."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def produce(store: Store | str, node: Node, inputs: dict[str, Artifact], reason: str | Callable[[], str],
            forced: bool, pipeline: str, progress: bool, remote: Remote | None = None,
            timeout: float | None = None) -> Outcome:
    """Reuse the node's artifact or make it, once across processes (per-key lock, then re-check).

    With a remote cache, a key missing locally is first pulled from it, and what ran is pushed to it.
    A stage that runs longer than `timeout` seconds is a crash (see _TimeLimit).
    """
    if isinstance(store, str):  # in a worker process
        store = Store(store)
        try:
            return produce(store, node, inputs, reason, forced, pipeline, progress, remote, timeout)
        finally:
            store.save()
    if not forced:
        existing, damage = discovered.current(store, node, inputs)
        if existing is not None:
            return _reused(node, existing, "cached")
    else:
        damage = "forced"
    notes: list[str] = []
    remote_damaged = False
    with store.lock(node.key):
        if not forced:
            existing, damage = discovered.current(store, node, inputs)
            if existing is not None:
                return _reused(node, existing, "waited")
            if damage and damage != "missing":
                store.discard(node.kind, node.key)
            if remote is not None:
                pulled, problem = _pull(store, node, inputs, remote)
                if pulled is not None:
                    return _reused(node, pulled, "pulled")
                if problem != "missing":
                    notes.append(f"remote copy in {remote.url} ignored, running here: {problem}")
                    remote_damaged = not problem.startswith(("cannot read", discovered.STALE))
        stated = discovered.describe(damage, "rebuilt: artifact ") if damage != "forced" else None
        why = stated or (reason() if callable(reason) else reason)
        content = content_key(node, inputs)
        with store.lock(f"content-{content}"):  # a twin with the same inputs waits, then reuses this one's
            outcome = None if forced else _cutoff(store, node, content, why, pipeline)
            if outcome is None:
                outcome = _execute(store, node, inputs, why, forced, pipeline, progress, timeout, content)
                store.remember_inputs(content, node.kind, node.key)
        if remote is not None:
            failure = remote.try_push(outcome.artifact, replace=forced or remote_damaged)
            notes += [failure] if failure else []
    outcome.notes = notes
    return outcome


def content_key(node: Node, inputs: dict[str, Artifact]) -> str:
    """The node's key parts with each input's key replaced by that input's content: its files' digests,
    its result, and how it was made except from which artifacts (its parts without their input keys).
    Two nodes with equal content keys make the same artifact (early cutoff, as in Bazel and Nix): the
    one-call ONNX of two layers with the same shapes is the same file made the same way, so their engines
    are too, though the exports' keys differ by the captures they came from.

    The way an input was made counts, not its bytes alone: verify runs a build with the build's runtime
    (the runtime's version, the reference kernel's source in its key), which no file of it holds."""
    readable = {role: {"files": {name: meta["digest"] for name, meta in artifact.manifest["files"].items()},
                       "result": artifact.manifest.get("result"),
                       "made": {k: v for k, v in (artifact.manifest.get("parts") or {}).items() if k != "inputs"}}
                for role, artifact in sorted(inputs.items())}
    return digest_json({**node.parts, "inputs": readable})


def _cutoff(store: Store, node: Node, content: str, reason: str, pipeline: str) -> Outcome | None:
    """The artifact of another key made from inputs identical in content, published under this key
    (its files hard-linked), so the stage does not run again; None when there is none."""
    source = store.same_inputs(node.kind, content)
    if source is None or source.key == node.key or discovered.stale(node, source, {}, store.digests):
        return None  # a source whose imported modules or libraries changed since made other content
    clock = time.perf_counter()
    made = {name: value for name, value in source.manifest.items()
            if name not in ("format", "key", "stage", "files", "created", "writer")}
    artifact = store.adopt(source, node.kind, node.key, {  # what the run recorded, as made from these inputs
        **made, "parts": node.parts, "started": time.time(), "reason": reason, "pipeline": pipeline,
        "variants": node.variants, "paths": node.unkeyed.as_json(), "inputs_content": content,
        "cutoff": {"key": source.key, "seconds": made.get("seconds")}, "seconds": time.perf_counter() - clock,
    })
    outcome = _reused(node, artifact, "cached")
    outcome.reason = f"same inputs as {node.kind} {source.key[:8]} (early cutoff)"
    return outcome


def _pull(store: Store, node: Node, inputs: dict[str, Artifact], remote: Remote) -> tuple[Artifact | None, str]:
    """The remote copy of the node's artifact where it is current here too: one made from other discovered
    inputs (another helper module, another library version) is taken out again and the stage runs here."""
    pulled, problem = remote.pull(store, node.kind, node.key)
    if pulled is None:
        return None, problem
    reason = discovered.stale(node, pulled, inputs, store.digests)
    if reason is None:
        return pulled, ""
    store.discard(node.kind, node.key)
    return None, reason


def _reused(node: Node, artifact: Artifact, status: str) -> Outcome:
    manifest = artifact.manifest
    shown = "failed" if not manifest.get("passed", True) else status
    return Outcome(node, shown, None, manifest.get("summary", ""), artifact)


def _execute(store: Store, node: Node, inputs: dict[str, Artifact], reason: str, forced: bool, pipeline: str,
             progress: bool, timeout: float | None = None, content: str | None = None) -> Outcome:
    runner = stages.get(node.kind).run
    loaded = set(sys.modules)  # what the stage finds loaded (discovered.observe)
    started = time.time()
    clock = time.perf_counter()
    spinner = _Progress(node, progress)
    with store.writer(node.kind, node.key) as staging:
        call = stages.StageCall(node.kind, node.settings, node.unkeyed, inputs, staging, spinner.update,
                                shared_dir=store.root / "shared")
        watch = _InterruptWatch()
        limit = _TimeLimit(timeout, node.kind)
        try:
            with spinner, watch:
                with limit:
                    result = runner(call)
                limit.check()  # the stage's code caught the limit's exception and went on: still too late
        except UserError as exc:  # kept outside the store, for the user to look at (see Executor._withdraw)
            store.keep_failed(staging, node.kind, node.key, exc.message,
                              {role: artifact.path for role, artifact in inputs.items()})
            raise
        except BaseException as exc:  # a bug, a tool failure, user code exiting: keep the traceback, say where
            if watch.arrived:
                raise KeyboardInterrupt from None  # the user pressed Ctrl-C: the run ends as interrupted
            raise _crashed(store, node, StageTimeout(limit.message) if limit.expired else exc) from exc
        elapsed = time.perf_counter() - clock
        found = discovered.observe(node, inputs, store.digests, loaded)  # what it imported, was made from
        if forced and store.get(node.kind, node.key) is not None:
            store.discard(node.kind, node.key)
        artifact = store.publish(staging, node.kind, node.key, {
            "parts": node.parts, "summary": result.summary, "result": result.result, "passed": result.passed,
            "seconds": elapsed, "started": started, "reason": reason, "pipeline": pipeline,
            "variants": node.variants, "paths": node.unkeyed.as_json(), **found, "inputs_content": content,
        })
    status = "ran" if result.passed else "failed"
    if stages.get(node.kind).checks and result.passed:
        status = "passed"
    return Outcome(node, status, elapsed, result.summary, artifact, reason)


def _crashed(store: Store, node: Node, error: BaseException) -> StageCrashed:
    """The crash of `node`, its traceback saved in the store's error log (called while handling `error`)."""
    log = store.root / ".state" / "errors" / f"{node.kind}-{node.short}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(traceback.format_exc())
    text = None
    if isinstance(error, StageTimeout):
        text = str(error)
    elif isinstance(error, SystemExit):
        text = (f"SystemExit({error.code!r}) raised by the code it runs (sys.exit, or argparse reading "
                "orchestrate's command line); a stage cannot end the run")
    elif isinstance(error, KeyboardInterrupt):
        text = "KeyboardInterrupt raised by the code it runs (no Ctrl-C arrived)"
    return StageCrashed(node.kind, node.short, text or error, log)


class StageTimeout(BaseException):
    """Raised inside a stage past its time limit. Not an Exception, so that `except Exception` in the
    model's code does not swallow it."""


class _TimeLimit:
    """Ends a stage that runs past `seconds` by raising StageTimeout inside it.

    In the main thread (the serial executor, and each -j worker process) SIGALRM does it, which also
    wakes a sleep or a blocked system call, and again every second should the stage's code catch it.
    Elsewhere (a stage run in a thread) a timer thread raises it asynchronously in the stage's thread.
    Code inside one long C call (a TensorRT build) sees it once that call returns to Python.
    """

    def __init__(self, seconds: float | None, kind: str):
        self.seconds, self.kind = seconds, kind
        self.expired = False
        self.previous: Any = None
        self.armed = False
        self.stop = threading.Event()

    @property
    def message(self) -> str:
        return f"ran past its time limit of {self.seconds:g} s (resources.{self.kind}.timeout)"

    def __enter__(self) -> _TimeLimit:
        if self.seconds is None:
            return self
        if threading.current_thread() is threading.main_thread():
            self.previous, self.armed = signal.getsignal(signal.SIGALRM), True
            signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds, 1.0)
        else:
            target = threading.get_ident()
            threading.Thread(target=self._raise_in, args=(target,), daemon=True).start()
        return self

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        self.expired = True
        raise StageTimeout(self.message)

    def _raise_in(self, thread: int) -> None:
        import ctypes

        wait = self.seconds
        while not self.stop.wait(wait):
            self.expired, wait = True, 1.0
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(StageTimeout))

    def check(self) -> None:
        if self.expired:
            raise StageTimeout(self.message)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous if self.previous is not None else signal.SIG_DFL)
            self.armed = False


class _InterruptWatch:
    """Tells a Ctrl-C of the user from a KeyboardInterrupt (or SystemExit) that a stage's own code raises.

    Around a stage, SIGINT's handler first notes that the signal arrived, then does what the handler
    before it did (Python's raises KeyboardInterrupt). Only the main thread receives signals, so
    elsewhere nothing is installed and nothing can arrive; a SIGINT that is ignored stays ignored.
    """

    def __init__(self) -> None:
        self.arrived = False
        self.previous: Callable[[int, FrameType | None], Any] | None = None

    def __enter__(self) -> _InterruptWatch:
        previous = signal.getsignal(signal.SIGINT)
        if callable(previous) and threading.current_thread() is threading.main_thread():
            self.previous = previous
            signal.signal(signal.SIGINT, self._arrived)
        return self

    def _arrived(self, signum: int, frame: FrameType | None) -> None:
        self.arrived = True
        if self.previous is not None:
            self.previous(signum, frame)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class StageCrashed(Exception):
    """A stage raised something that is not a user error: a bug, or a tool that broke."""

    def __init__(self, kind: str, short: str, error: BaseException | str, log: Any):
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"{kind} {short} crashed: {text}")
        self.kind, self.short, self.text, self.log = kind, short, text, log

    def __reduce__(self) -> tuple[object, ...]:
        return (StageCrashed, (self.kind, self.short, self.text, self.log))


class _Progress:
    """A live 'running' line on a terminal (rich), silent otherwise."""

    def __init__(self, node: Node, enabled: bool):
        self.node = node
        self.enabled = enabled
        self.status: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status(f"{self.node.kind} {self.node.short} running")
            self.status.__enter__()
        return self

    def update(self, message: str) -> None:
        if self.status is not None:
            self.status.update(f"{self.node.kind} {self.node.short} running: {message}")

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)

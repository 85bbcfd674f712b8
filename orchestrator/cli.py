"""The `orchestrate` command line.

`main` first tries the no-op fast path (plain Python, no click/rich/yaml/jsonschema/torch), then
falls back to the click application. Exit codes: 0 success, 1 a check failed (verify), 2 bad
input (pipeline file, paths, tensors), 3 a stage crashed (traceback saved in the store), 130
interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_CRASH = 3


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    from orchestrator import fastpath

    answered = fastpath.replay(arguments)
    if answered is not None:
        return answered
    return _click_main(arguments)


def _click_main(arguments: list[str]) -> int:
    import click

    from orchestrator.errors import UserError
    from orchestrator.run.executor import StageCrashed

    try:
        _make_app().main(args=arguments, prog_name="orchestrate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USER_ERROR
    except click.exceptions.Abort:  # click's form of a KeyboardInterrupt (Ctrl-C)
        _error("interrupted; nothing half-written was kept")
        return 130
    except UserError as exc:
        _error(str(exc))
        return EXIT_USER_ERROR
    except StageCrashed as exc:
        _error(f"{exc}\n  full traceback: {exc.log}")
        return EXIT_CRASH
    except KeyboardInterrupt:
        _error("interrupted; nothing half-written was kept")
        return 130
    return _RESULT.get("code", 0)


def _error(text: str) -> None:
    from orchestrator import ui

    print(ui.paint("error:", "31;1", ui.colour_enabled(sys.stderr)) + " " + text, file=sys.stderr)


_RESULT: dict[str, int] = {}


def _load(path: str) -> Any:
    from orchestrator.config import spec as spec_module

    return spec_module.load(path)


def _store(ctx_store: str | None) -> Any:
    from orchestrator.store.store import Store

    return Store(ctx_store or os.environ.get("ORCHESTRATE_STORE", "artifacts"))


def _remote(spec: Any, override: str | None) -> Any:
    """The remote cache for this pipeline (--remote / ORCHESTRATE_REMOTE, else cache.remote), or None."""
    from orchestrator.errors import UserError
    from orchestrator.store import remote

    try:
        return remote.configured(spec.data.get("cache") or {}, spec.base_dir, override)
    except UserError as exc:
        if exc.field:
            raise exc.located(str(spec.path), spec.line_of(exc.field)) from None
        raise


def _only(values: tuple[str, ...]) -> dict[str, list[str]] | None:
    from orchestrator.errors import UserError

    if not values:
        return None
    selected: dict[str, list[str]] = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--only takes FIELD=VALUE (e.g. precision=fp16), got '{item}'")
        key, value = item.split("=", 1)
        selected.setdefault(key.strip(), []).extend(v.strip() for v in value.split(","))
    return selected


def _make_app() -> Any:
    import click

    store_option = click.option("--store", envvar="ORCHESTRATE_STORE", default="artifacts", show_default=True,
                                help="Artifact store directory (env ORCHESTRATE_STORE).")
    only_option = click.option("--only", multiple=True, metavar="FIELD=VALUE",
                               help="Select variants of a matrix, e.g. --only precision=fp16 (repeatable).")
    remote_option = click.option("--remote", envvar="ORCHESTRATE_REMOTE", metavar="URL",
                                 help="Remote cache URL (s3://bucket/prefix, a shared path), overriding cache.remote; "
                                      "'off' for none (env ORCHESTRATE_REMOTE).")

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(package_name="orchestrate", prog_name="orchestrate")
    def cli() -> None:
        """Take a PyTorch model to a verified TensorRT engine, with plugins, from one YAML file.

        A pipeline file declares where tensors are captured, how the plugin graph is exported,
        optional graph surgery, the build and the verification tolerances. Every stage is cached
        under a content key: a rerun reuses what did not change and says why anything re-ran.

        \b
        Typical use:
          orchestrate validate pipelines/msda_layer07.yaml   check the file, no work done
          orchestrate plan pipelines/msda_layer07.yaml --why  what would run, and why
          orchestrate run pipelines/msda_layer07.yaml         capture -> export -> build -> verify -> bench
          orchestrate show pipelines/msda_layer07.yaml        the last results as a table
          orchestrate doctor                                  which backends and tools are here

        Exit codes: 0 ok, 1 a check failed (verify), 2 bad input, 3 a stage crashed.
        """

    @cli.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @store_option
    @click.option("--force", multiple=True, metavar="STAGE",
                  type=click.Choice(["capture", "export", "surgery", "build", "verify", "bench", "all"]),
                  help="Re-run this stage even if cached (repeatable; 'all' for every stage).")
    @only_option
    @click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
                  help="Run independent stages in this many worker processes (ray: CPUs of the local instance).")
    @click.option("--executor", "executor_name", type=click.Choice(["local", "ray"]), default="local",
                  show_default=True, help="Where stages run: worker processes here, or tasks on a Ray cluster.")
    @click.option("--address", envvar="RAY_ADDRESS", metavar="ADDR",
                  help="Ray cluster to join (env RAY_ADDRESS); without it a local Ray instance is started.")
    @remote_option
    def run(file: str, store: str, force: tuple[str, ...], only: tuple[str, ...], jobs: int, executor_name: str,
            address: str | None, remote: str | None) -> None:
        """Run the pipeline FILE: every stage whose inputs changed, reusing the rest.

        Prints one line per stage: name, short key, ran/cached/pulled/passed/failed, time, summary.
        """
        from orchestrator import fastpath
        from orchestrator.errors import UserError
        from orchestrator.planning.plan import make_plan
        from orchestrator.run.executor import Executor, variant_label

        started = time.perf_counter()
        before = fastpath.snapshot()  # before anything is read, so that edits made during the run are seen
        if executor_name == "ray":
            from orchestrator.run.ray import require_ray

            require_ray()
        elif click.get_current_context().get_parameter_source("address") == click.core.ParameterSource.COMMANDLINE:
            raise UserError("--address applies to --executor ray")
        spec = _load(file)
        artifacts = _store(store)
        cache = _remote(spec, remote)
        plan = make_plan(spec, artifacts.digests, _only(only))
        if executor_name == "ray":
            from orchestrator.run.ray import RayExecutor

            executor: Executor = RayExecutor(plan, artifacts, set(force), jobs=jobs, address=address, remote=cache)
        else:
            executor = Executor(plan, artifacts, set(force), jobs=jobs, remote=cache)
        report = executor.run()
        executed = report.executed
        pulled = [o for o in report.outcomes if o.status == "pulled"]
        elapsed = time.perf_counter() - started
        pulled_text = f"{len(pulled)} pulled from {cache.url}" if pulled else ""
        if not executed:
            click.echo(f"nothing ran: {pulled_text}, the rest cached" if pulled
                       else f"nothing to do: all {len(report.outcomes)} stages cached")
        else:
            click.echo(f"{len(executed)} of {len(report.outcomes)} stages ran in {elapsed:.1f} s"
                       + (f", {pulled_text}" if pulled else ""))
        for failure in report.failed_checks:
            click.echo(f"FAILED {failure}", err=True)
        if executed or pulled:
            from orchestrator.reports import html as reports

            folder = reports.write(plan, artifacts, report.outcomes)
            click.echo(f"report: {folder / 'report.html'}")
        if not only and not force:
            lines = [{"kind": o.node.kind, "short": o.node.short, "label": variant_label(o.node, plan),
                      "status": "failed" if not o.artifact.manifest.get("passed", True) else "cached",
                      "summary": o.summary} for o in report.outcomes]
            fastpath.remember(artifacts, spec, plan, before, [o.artifact for o in report.outcomes], lines,
                              report.exit_code)
        _RESULT["code"] = report.exit_code

    @cli.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @store_option
    @only_option
    @click.option("--why", is_flag=True, help="For each stage that would run, the first difference from the last run.")
    def plan(file: str, store: str, only: tuple[str, ...], why: bool) -> None:
        """Show the stages of FILE, their keys, and whether each is cached or would run."""
        from orchestrator.reports import terminal as reporting

        spec = _load(file)
        artifacts = _store(store)
        from orchestrator.planning.plan import make_plan

        planned = make_plan(spec, artifacts.digests, _only(only))
        reporting.print_plan(planned, artifacts, why)
        artifacts.save()

    @cli.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    def validate(file: str) -> None:
        """Check FILE: the schema, the plugin catalog, import paths, files and folders; run no stage.

        Everything `run` would refuse before its first stage is found here, with file, line and field.
        """
        from orchestrator.planning.plan import make_plan
        from orchestrator.store.digest import DigestCache

        spec = _load(file)
        planned = make_plan(spec, DigestCache(None))  # resolves imports and files; writes nothing
        count = len(spec.variants)
        click.echo(f"{file}: valid ({count} variant{'s' if count != 1 else ''}, {len(planned.nodes)} stages)")

    @cli.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @store_option
    @only_option
    @click.option("--stage", type=click.Choice(["capture", "export", "surgery", "build", "verify", "bench"]),
                  help="Details of one stage.")
    @click.option("--path", "path_of", metavar="STAGE",
                  type=click.Choice(["capture", "export", "surgery", "build", "verify", "bench"]),
                  help="Print only the artifact folder of STAGE, e.g. "
                       "netron \"$(orchestrate show FILE --path export)/model.onnx\".")
    def show(file: str, store: str, only: tuple[str, ...], stage: str | None, path_of: str | None) -> None:
        """Summarise the results of FILE's last run (verify statistics, bench figures, artifact folders).

        With --path STAGE, print that stage's artifact folder and nothing else (exit 2 when the stage is
        not built yet, or when the variants of a matrix have different ones: choose with --only).
        """
        from orchestrator.errors import UserError
        from orchestrator.planning.plan import make_plan
        from orchestrator.reports import terminal as reporting

        if path_of and stage:
            raise UserError("--path and --stage do not combine: --path prints one folder only")
        spec = _load(file)
        artifacts = _store(store)
        planned = make_plan(spec, artifacts.digests, _only(only))
        if path_of:
            click.echo(reporting.artifact_folder(planned, artifacts, path_of))
            return
        reporting.print_show(planned, artifacts, stage)

    def _remote_plan(file: str, store: str, only: tuple[str, ...], remote: str | None) -> tuple[Any, Any, Any]:
        from orchestrator.errors import UserError
        from orchestrator.planning.plan import make_plan

        spec = _load(file)
        artifacts = _store(store)
        cache = _remote(spec, remote)
        if cache is None:
            raise UserError("no remote cache: set cache.remote in the pipeline, --remote or ORCHESTRATE_REMOTE",
                            file=file, hint="e.g. cache: {remote: s3://bucket/orchestrate}")
        return make_plan(spec, artifacts.digests, _only(only)), artifacts, cache

    @cli.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @store_option
    @only_option
    @remote_option
    @click.option("--force", "replace", is_flag=True,
                  help="Upload every file and manifest again, even where the remote has them (repairs it).")
    def push(file: str, store: str, only: tuple[str, ...], remote: str | None, replace: bool) -> None:
        """Upload the artifacts of FILE that are in the local store to the remote cache."""
        from orchestrator.store.remote import push_pipeline

        planned, artifacts, cache = _remote_plan(file, store, only, remote)
        push_pipeline(artifacts, cache, planned.order(), replace, click.echo)
        artifacts.save()

    @cli.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @store_option
    @only_option
    @remote_option
    def pull(file: str, store: str, only: tuple[str, ...], remote: str | None) -> None:
        """Download the artifacts of FILE that the local store lacks from the remote cache, verified.

        A remote copy whose files do not match their digests is ignored and reported (exit 1).
        """
        from orchestrator.store.remote import pull_pipeline

        planned, artifacts, cache = _remote_plan(file, store, only, remote)
        artifacts.ensure()
        rejected = pull_pipeline(artifacts, cache, planned.order(), click.echo)
        artifacts.save()
        _RESULT["code"] = EXIT_CHECK_FAILED if rejected else 0

    @cli.command()
    @store_option
    @click.option("--repair", is_flag=True, help="Remove every artifact whose files do not match its manifest.")
    def fsck(store: str, repair: bool) -> None:
        """Re-hash every artifact in the store and report those whose files do not match."""
        from orchestrator import maintenance

        _RESULT["code"] = maintenance.fsck(_store(store), repair, click.echo)

    @cli.command()
    @click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
    @store_option
    @click.option("--older-than", metavar="AGE", help="Only remove artifacts older than AGE (e.g. 7d, 12h, 30m).")
    @click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
    def gc(files: tuple[str, ...], store: str, older_than: str | None, dry_run: bool) -> None:
        """Remove artifacts not reachable from the pipeline FILES (never ones in use by a running process)."""
        from orchestrator import maintenance

        maintenance.gc(_store(store), [_load(f) for f in files], older_than, dry_run, click.echo)

    @cli.command()
    def doctor() -> None:
        """List the backends, plugins, GPUs and tool versions available here, and why others are not."""
        from orchestrator import maintenance

        maintenance.doctor(click.echo)

    return cli


if __name__ == "__main__":
    sys.exit(main())

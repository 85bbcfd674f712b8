"""The `orchestrate` command line: thin commands over `api`, which do the work and return results.

`main` first tries the no-op fast path (plain Python, no click/rich/yaml/jsonschema/torch), then
falls back to the click application. Exit codes: 0 success, 1 a check failed (verify), 2 bad
input (pipeline file, paths, tensors), 3 a stage crashed (traceback saved in the store), 130
interrupted. A command returns its exit code; click hands it back from `main`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator import api

EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_CRASH = 3
EXIT_INTERRUPTED = 130


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
        code = _make_app().main(args=arguments, prog_name="orchestrate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USER_ERROR
    except click.exceptions.Abort:  # click's form of a KeyboardInterrupt (Ctrl-C)
        _error("interrupted; nothing half-written was kept")
        return EXIT_INTERRUPTED
    except UserError as exc:
        _error(str(exc))
        return EXIT_USER_ERROR
    except StageCrashed as exc:
        _error(f"{exc}\n  full traceback: {exc.log}")
        return EXIT_CRASH
    except KeyboardInterrupt:
        _error("interrupted; nothing half-written was kept")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


def _error(text: str) -> None:
    from orchestrator import ui

    print(ui.paint("error:", "31;1", ui.colour_enabled(sys.stderr)) + " " + text, file=sys.stderr)


def _echo(text: str) -> None:
    import click

    click.echo(text)


# ------------------------------------------------------------------------------------------ commands

def _orchestrate() -> None:
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
      orchestrate init --model pkg.mod:build -o p.yaml    find the plugin calls, write a pipeline

    Exit codes: 0 ok, 1 a check failed (verify), 2 bad input, 3 a stage crashed.
    """


def _run(file: str, store: str, force: tuple[str, ...], only: tuple[str, ...], jobs: int, executor_name: str,
         address: str | None, remote: str | None) -> int:
    """Run the pipeline FILE: every stage whose inputs changed, reusing the rest.

    Prints one line per stage: name, short key, ran/cached/pulled/passed/failed, time, summary.
    """
    import click

    from orchestrator import api
    from orchestrator.errors import UserError

    given = click.get_current_context().get_parameter_source("address")
    if executor_name != "ray" and given == click.core.ParameterSource.COMMANDLINE:
        raise UserError("--address applies to --executor ray")
    result = api.run(file, store, force, only, jobs, executor_name, address, remote)
    click.echo(_run_summary(result))
    for failure in result.failed_checks:
        click.echo(f"FAILED {failure}", err=True)
    if result.report_page is not None:
        click.echo(f"report: {result.report_page}")
    return result.exit_code


def _run_summary(result: api.RunResult) -> str:
    pulled_text = f"{result.pulled} pulled from {result.remote_url}" if result.pulled else ""
    if not result.executed:
        return (f"nothing ran: {pulled_text}, the rest cached" if result.pulled
                else f"nothing to do: all {len(result.outcomes)} stages cached")
    return (f"{result.executed} of {len(result.outcomes)} stages ran in {result.seconds:.1f} s"
            + (f", {pulled_text}" if result.pulled else ""))


def _plan(file: str, store: str, only: tuple[str, ...], why: bool) -> int:
    """Show the stages of FILE, their keys, and whether each is cached or would run."""
    from orchestrator import api
    from orchestrator.reports import terminal

    terminal.print_plan(api.plan(file, store, only, why))
    return 0


def _validate(file: str) -> int:
    """Check FILE: the schema, the plugin catalog, import paths, files and folders; run no stage.

    Everything `run` would refuse before its first stage is found here, with file, line and field.
    """
    from orchestrator import api

    result = api.validate(file)
    plural = "s" if result.variants != 1 else ""
    _echo(f"{result.file}: valid ({result.variants} variant{plural}, {result.stages} stages)")
    return 0


def _show(file: str, store: str, only: tuple[str, ...], stage: str | None, path_of: str | None) -> int:
    """Summarise the results of FILE's last run (verify statistics, bench figures, artifact folders).

    With --path STAGE, print that stage's artifact folder and nothing else (exit 2 when the stage is
    not built yet, or when the variants of a matrix have different ones: choose with --only).
    """
    from orchestrator import api

    result = api.show(file, store, only, stage, path_of)
    if result.folder is not None:
        _echo(result.folder)
        return 0
    from orchestrator.reports import terminal

    terminal.print_show(result.plan, result.store, result.stage)
    return 0


def _push(file: str, store: str, only: tuple[str, ...], remote: str | None, replace: bool) -> int:
    """Upload the artifacts of FILE that are in the local store to the remote cache."""
    from orchestrator import api

    return api.push(file, store, only, remote, replace, _echo).exit_code


def _pull(file: str, store: str, only: tuple[str, ...], remote: str | None) -> int:
    """Download the artifacts of FILE that the local store lacks from the remote cache, verified.

    A remote copy whose files do not match their digests is ignored and reported (exit 1).
    """
    from orchestrator import api

    return api.pull(file, store, only, remote, _echo).exit_code


def _fsck(store: str, repair: bool) -> int:
    """Re-hash every artifact in the store and report those whose files do not match."""
    from orchestrator import api

    result = api.fsck(store, repair, _echo)
    if not result.exists:
        _echo(f"checked 0 artifacts: {result.root} does not exist")
        return result.exit_code
    left = "removed" if result.repaired else "left over"
    _echo(f"checked {result.checked} artifacts: {result.damaged} damaged"
          + (", removed" if result.repaired and result.damaged else "")
          + (f"; {result.leftovers} unfinished staging directories {left}" if result.leftovers else "")
          + (f"; {result.forgotten} remembered no-op answers dropped" if result.forgotten else ""))
    return result.exit_code


def _gc(files: tuple[str, ...], store: str, older_than: str | None, dry_run: bool) -> int:
    """Remove artifacts not reachable from the pipeline FILES (never ones in use by a running process)."""
    from orchestrator import api

    result = api.gc(files, store, older_than, dry_run, _echo)
    if not result.exists:
        _echo(f"nothing to remove: {result.root} does not exist")
        return 0
    verb = "would remove" if dry_run else "removed"
    plural = "s" if result.failures != 1 else ""
    _echo(f"{verb} {result.removed} artifacts ({result.freed / 1e6:.1f} MB)"
          + (f"; kept {result.kept_busy} in use by running processes" if result.kept_busy else "")
          + (f"; {verb} {result.failures} failed stage folder{plural} kept for inspection" if result.failures else ""))
    return 0


def _doctor() -> int:
    """List the backends, plugins, GPUs and tool versions available here, and why others are not."""
    from orchestrator import api

    result = api.doctor()
    _echo("tools:")
    for name, version in result.tools:
        _echo(f"  {name:24} {version or 'not installed'}")
    _echo("backends:")
    for line in result.backends:
        _echo(line)
    _echo("plugins (catalog):")
    for line in result.plugins:
        _echo(line)
    _echo("gpus:")
    for name, capability in result.gpus:
        _echo(f"  {name} (compute capability {capability})")
    if not result.gpus:
        _echo("  none visible (nvidia-smi not found or no device)")
    return 0


def _init(model: str, inputs: str | None, kwargs: tuple[str, ...], inputs_kwargs: tuple[str, ...], output: str | None,
          device: str, force: bool) -> int:
    """Find the calls of a model that a plugin can stand for, and write a pipeline for them.

    Builds the model (--model PKG:FACTORY, its forward arguments from --inputs PKG:FN), runs one forward
    while watching every Python call, and prints each call a catalog entry recognises: module path,
    callable, calls per forward, argument shapes, how each plugin input is fed. Writes a commented
    pipeline for the first one (scope call; the whole model beside it) that `orchestrate run` takes as
    it is. Exit 1 when no call maps onto a plugin, saying what was looked for and why calls did not map.
    """
    from orchestrator import api

    result = api.init(model, inputs, api.parse_kwargs(kwargs, "--kwargs"),
                      api.parse_kwargs(inputs_kwargs, "--inputs-kwargs"), output, device, force, _echo)
    for line in result.lines:
        _echo(line)
    return result.exit_code


# ------------------------------------------------------------------------------------------ the click application

def _make_app() -> Any:
    """The click group: built on demand, so that the fast path never imports click."""
    import click

    group = click.group("orchestrate", context_settings={"help_option_names": ["-h", "--help"],
                                                         "max_content_width": 100})(
        click.version_option(package_name="orchestrate", prog_name="orchestrate")(_orchestrate))
    options = _Options(click)
    for command in (_run_command(click, options), _plan_command(click, options), _validate_command(click),
                    _show_command(click, options), _push_command(click, options), _pull_command(click, options),
                    _fsck_command(click, options), _gc_command(click, options), _doctor_command(click),
                    _init_command(click)):
        group.add_command(command)
    return group


Decorator = Callable[[Any], Any]


def _command(function: Callable[..., int], *decorators: Decorator) -> Any:
    """`function` with `decorators` applied as if stacked above it (the first one outermost)."""
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


class _Options:
    """The arguments and options several commands share."""

    def __init__(self, click: Any):
        self.file = click.argument("file", type=click.Path(dir_okay=False))
        self.store = click.option("--store", envvar="ORCHESTRATE_STORE", default="artifacts", show_default=True,
                                  help="Artifact store directory (env ORCHESTRATE_STORE).")
        self.only = click.option("--only", multiple=True, metavar="FIELD=VALUE",
                                 help="Select variants of a matrix, e.g. --only precision=fp16 (repeatable).")
        self.remote = click.option("--remote", envvar="ORCHESTRATE_REMOTE", metavar="URL",
                                   help="Remote cache URL (s3://bucket/prefix, a shared path), overriding "
                                        "cache.remote; 'off' for none (env ORCHESTRATE_REMOTE).")


def _stage_names() -> list[str]:
    from orchestrator.stages import names

    return list(names())


def _run_command(click: Any, o: _Options) -> Any:
    return _command(
        _run, click.command("run"), o.file, o.store,
        click.option("--force", multiple=True, metavar="STAGE", type=click.Choice([*_stage_names(), "all"]),
                     help="Re-run this stage even if cached (repeatable; 'all' for every stage)."),
        o.only,
        click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
                     help="Run independent stages in this many worker processes (ray: CPUs of the local instance)."),
        click.option("--executor", "executor_name", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True, help="Where stages run: worker processes here, or tasks on a Ray cluster."),
        click.option("--address", envvar="RAY_ADDRESS", metavar="ADDR",
                     help="Ray cluster to join (env RAY_ADDRESS); without it a local Ray instance is started."),
        o.remote)


def _plan_command(click: Any, o: _Options) -> Any:
    return _command(_plan, click.command("plan"), o.file, o.store, o.only,
                    click.option("--why", is_flag=True,
                                 help="For each stage that would run, the first difference from the last run."))


def _validate_command(click: Any) -> Any:
    return _command(_validate, click.command("validate"), click.argument("file", type=click.Path(dir_okay=False)))


def _show_command(click: Any, o: _Options) -> Any:
    return _command(
        _show, click.command("show"), o.file, o.store, o.only,
        click.option("--stage", type=click.Choice(_stage_names()), help="Details of one stage."),
        click.option("--path", "path_of", metavar="STAGE", type=click.Choice(_stage_names()),
                     help="Print only the artifact folder of STAGE, e.g. "
                          "netron \"$(orchestrate show FILE --path export)/model.onnx\"."))


def _push_command(click: Any, o: _Options) -> Any:
    return _command(_push, click.command("push"), o.file, o.store, o.only, o.remote,
                    click.option("--force", "replace", is_flag=True,
                                 help="Upload every file and manifest again, even where the remote has them "
                                      "(repairs it)."))


def _pull_command(click: Any, o: _Options) -> Any:
    return _command(_pull, click.command("pull"), o.file, o.store, o.only, o.remote)


def _fsck_command(click: Any, o: _Options) -> Any:
    return _command(_fsck, click.command("fsck"), o.store,
                    click.option("--repair", is_flag=True,
                                 help="Remove every artifact whose files do not match its manifest."))


def _gc_command(click: Any, o: _Options) -> Any:
    return _command(
        _gc, click.command("gc"), click.argument("files", nargs=-1, type=click.Path(dir_okay=False)), o.store,
        click.option("--older-than", metavar="AGE", help="Only remove artifacts older than AGE (e.g. 7d, 12h, 30m)."),
        click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing."))


def _doctor_command(click: Any) -> Any:
    return _command(_doctor, click.command("doctor"))


def _init_command(click: Any) -> Any:
    kwargs_help = "as a JSON object or key=value (repeatable; values read as JSON where they are)"
    return _command(
        _init, click.command("init"),
        click.option("--model", required=True, metavar="PKG:FACTORY", help="The callable that builds the model."),
        click.option("--inputs", metavar="PKG:FN",
                     help="The callable returning the forward arguments (default: <name>_inputs or example_inputs "
                          "beside the factory)."),
        click.option("--kwargs", multiple=True, metavar="ARGS", help=f"Factory keyword arguments, {kwargs_help}."),
        click.option("--inputs-kwargs", multiple=True, metavar="ARGS",
                     help=f"Keyword arguments of the inputs callable, {kwargs_help}."),
        click.option("-o", "--output", metavar="FILE", help="The pipeline to write (default: <name>.yaml)."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where the model runs."),
        click.option("--force", is_flag=True, help="Replace FILE if it exists."))


if __name__ == "__main__":
    sys.exit(main())

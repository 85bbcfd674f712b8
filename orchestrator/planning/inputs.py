"""The planner's reads: content digests of the files a key covers, the folders whose listing matters,
and where each keyed file came from. Every file a key is made of is read here, once per run, and its
stat signature is remembered for the no-op fast path. Stages' `plan` functions ask through this
(`PlanContext`); a file that cannot be read is an error located at the field that names it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator import imports
from orchestrator.config.spec import Spec
from orchestrator.errors import UserError
from orchestrator.planning import sources
from orchestrator.store.digest import DigestCache, digest_bytes, vouching_signature


class Inputs:
    """The `PlanContext` stages plan with: digests of what they read, remembered for `plan --why` and the fast path."""

    def __init__(self, spec: Spec, digests: DigestCache):
        self.spec = spec
        self.digests = digests
        self.watched: dict[str, list[int] | None] = {}
        self.origins: dict[str, str] = {}  # file label -> path, for `plan --why`

    def error(self, message: str, at: str, hint: str | None = None) -> UserError:
        return self.spec.error(message, at, hint=hint)

    # ------------------------------------------------------------------ file digests
    def file_digest(self, path: Path, field: str) -> str:
        try:
            value = self.digests.file(path)
        except OSError as exc:
            raise self.spec.error(f"cannot read '{path}': {exc.strerror}", field) from None
        real = os.path.realpath(path)
        self.watched[real] = self.digests.vouched.get(real)
        return value

    def watch_folder(self, path: Path) -> None:
        """A folder whose entries matter: adding, removing or renaming a file in it changes its signature."""
        real = os.path.realpath(path)
        if real not in self.watched:
            try:
                self.watched[real] = vouching_signature(real)
            except OSError:
                self.watched[real] = None

    def source_digest(self, import_path: str, field: str) -> tuple[str, str]:
        """Digest of the source file of the module an import path ('pkg.mod:attr') points into.

        Also checks, without running the module, that it defines the attribute, so a misspelt
        callable is reported before any stage runs.
        """
        module, attrs = imports.split(import_path)
        label, digest = self.module_digest(module, field)
        if attrs and sources.defines(Path(self.origins[label]), attrs[0]) is False:
            raise self.spec.error(f"module '{module}' ({self.origins[label]}) defines no '{attrs[0]}'", field)
        return label, digest

    def model_sources(self, model: Mapping[str, Any]) -> dict[str, str]:
        """The source digests of the factory and the inputs callable, once their kwargs fit their signatures.

        Checked here, from the source, so that a misspelt keyword is a located error before any stage
        runs (and in `validate`), not a TypeError from inside the capture.
        """
        files = {}
        for callable_field, kwargs_field in (("factory", "kwargs"), ("inputs", "inputs_kwargs")):
            path = model[callable_field]
            label, digest = self.source_digest(path, f"model.{callable_field}")
            files[label] = digest
            accepts = sources.accepts(Path(self.origins[label]), imports.split(path)[1])
            problem = accepts.problem(model.get(kwargs_field) or {}, path, f"model.{kwargs_field}") if accepts else None
            if problem is not None:
                raise self.spec.error(problem.message, problem.field or f"model.{kwargs_field}", problem.hint)
        return files

    def module_digest(self, module: str, field: str) -> tuple[str, str]:
        try:
            with imports.search_path(self.python_path):
                source = imports.module_file(module)
        except UserError as exc:
            raise self.spec.error(exc.message, field, hint=exc.hint) from None
        label = f"module:{module}"
        self.origins[label] = str(source)
        # Where the import system found it: a new module or package in one of these folders would
        # shadow it. (sys.path's own folders are watched by the fast path.)
        depth = module.count(".") + 1 + (source.name == "__init__.py")
        for folder in [*source.parents[:depth], *self.python_path, Path.cwd()]:
            self.watch_folder(folder)
        return label, self.file_digest(source, field)

    def paths_digests(self, entries: list[str], field: str) -> dict[str, str]:
        found = {}
        for index, entry in enumerate(entries):
            target = self.spec.resolve_path(entry)
            where = f"{field}[{index}]"
            if target.is_dir():
                self.watch_folder(target)
                for folder in target.rglob("*"):
                    if folder.is_dir() and "__pycache__" not in folder.parts:
                        self.watch_folder(folder)
                for relative, digest in self.digests.tree(target).items():
                    if "__pycache__" not in relative and not relative.endswith(".pyc"):
                        found[f"source:{entry}/{relative}"] = digest
                        self.origins[f"source:{entry}/{relative}"] = str(target / relative)
                        real = os.path.realpath(target / relative)
                        self.watched[real] = self.digests.vouched.get(real)
            elif target.is_file():
                found[f"source:{entry}"] = self.file_digest(target, where)
                self.origins[f"source:{entry}"] = str(target)
            else:
                raise self.spec.error(f"'{entry}' does not exist (looked in {target})", where)
        return found

    @property
    def python_path(self) -> list[Path]:
        return [self.spec.resolve_path(p) for p in self.spec.data.get("python_path", [])]

    def env_digests(self, model: Mapping[str, Any] | None) -> dict[str, str | None]:
        """The digest of each environment variable the pipeline declares in model.env (None: unset).

        Values are hashed, so that the run record and `plan --why` name the variable and never show its
        value. A variable not declared is in no key, whatever the model's code reads.
        """
        found: dict[str, str | None] = {}
        for name in (model or {}).get("env") or []:
            value = os.environ.get(name)
            found[name] = None if value is None else digest_bytes(value.encode("utf-8", "surrogateescape"))
        return found

    def keyed_python_path(self) -> tuple[str, ...]:
        """python_path as written (normalised) goes into the keys of the stages that import user code: which
        folders come first decides which helper module an import finds. Their content is checked through
        the stage's discovered inputs."""
        return tuple(os.path.normpath(entry) for entry in self.spec.data.get("python_path") or [])


"""Bad input, the error a user can fix (exit 2).

`UserError`'s message names the file, line and field where one exists, and the CLI prints it without
a traceback. A check that ran and did not pass is no error: its stage's result says so (exit 1).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix: a pipeline field, a file, an import path, a tensor."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None,
                 line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file
        self.line = line
        self.hint = hint

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields survive the trip from a worker process.
        return (_rebuild, (type(self), self.message, self.field, self.file, self.line, self.hint))

    def located(self, file: str | None, line: int | None) -> UserError:
        """Fill in the place in the pipeline file, unless the error already names one."""
        if self.file is None:
            self.file = file
        if self.line is None:
            self.line = line
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        text = where + (f"{self.field}: " if self.field else "") + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def _rebuild(cls: type[UserError], message: str, field: str | None, file: str | None, line: int | None,
             hint: str | None) -> UserError:
    return cls(message, field=field, file=file, line=line, hint=hint)

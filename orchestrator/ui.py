"""What the terminal shows, the same on the fast path and the full path (so nothing heavy is imported):
one line per stage, its colours, and paths as a shell in the working directory takes them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

STATUS_COLOURS = {"run": "33", "ran": "32", "cached": "2", "passed": "32", "failed": "31;1", "error": "31;1",
                  "running": "33", "waited": "2", "rebuilt": "33", "pulled": "36", "pushed": "36", "present": "2",
                  "absent": "2", "rejected": "31;1", "missing": "33"}


def colour_enabled(stream: object = None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def paint(text: str, code: str | None, enabled: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if enabled and code else text


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f} s"
    if value < 600:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def stage_line(kind: str, short_key: str, status: str, elapsed: float | None, summary: str, label: str = "",
               colour: bool = False) -> str:
    shown_status = paint(f"{status:<7}", STATUS_COLOURS.get(status), colour)
    time_text = seconds(elapsed) if status not in ("cached",) else ""
    prefix = f"[{label}] " if label else ""
    return f"{kind:<8} {short_key}  {shown_status} {time_text:>8}  {prefix}{summary}".rstrip()


def shown_path(path: Path, cwd: str | os.PathLike[str] | None = None) -> str:
    """`path` relative to the working directory when it lies inside it (short, and what a shell there
    takes), absolute otherwise: a path that climbs out through ../.. is harder to read than the full one."""
    base = Path(cwd if cwd is not None else os.getcwd()).absolute()
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(base))
    except ValueError:
        return str(absolute)

"""Which version of a plugin a pipeline gets: `version: auto` resolved, and deprecated versions named.

A catalog entry lists its versions and, per version, the TensorRT release that added it and the one
that deprecated it (`PluginVersion`). `choose_version` is a plain function of that, of the versions
the build's TensorRT registers (when its Python API can be asked) and of that release's version:

* registered versions known: the newest of the entry's versions that TensorRT registers;
* only the release known (a command-line build tool, which cannot be asked): the newest version that
  release has, by the entry's `added`;
* neither (the embedded backend, which runs every version of the entry with the reference kernel):
  the newest version the entry lists.

A version the release deprecates is a warning, chosen by `auto` or written in the pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class PluginVersion:
    """One version of a plugin across TensorRT releases ('10.11': the release; None: since always / never)."""

    added: str | None = None
    deprecated: str | None = None
    interface: str = ""  # the plugin interface it implements, for messages ("IPluginV3")


@dataclass(frozen=True)
class VersionChoice:
    """The version a plugin node gets, why (for the export's summary), and a deprecation warning if any."""

    version: str
    reason: str
    warning: str | None = None


def release_tuple(release: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35): releases and plugin versions compare by their numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", release))


def newest(versions: Collection[str]) -> str:
    return max(versions, key=lambda v: (release_tuple(v), v))


def deprecation(op: str, version: str, lifecycle: Mapping[str, PluginVersion], release: str | None) -> str | None:
    """The warning for `version` of `op` where the release deprecates it (None: not, or the release is unknown)."""
    since = lifecycle.get(version, PluginVersion()).deprecated
    if since is None or release is None or release_tuple(release)[:2] < release_tuple(since)[:2]:
        return None
    replacements = [v for v in lifecycle if release_tuple(v) > release_tuple(version)
                    and lifecycle[v].deprecated is None]
    instead = f"; use version {newest(replacements)} (or version: auto)" if replacements else ""
    return f"{op} version {version} is deprecated since TensorRT {since} (the build's is {release}){instead}"


def choose_version(op: str, versions: Sequence[str], lifecycle: Mapping[str, PluginVersion], requested: str,
                   registered: Collection[str] | None = None, release: str | None = None) -> VersionChoice:
    """The version of `op` a pipeline asking for `requested` gets (see the module's docstring)."""
    if requested != AUTO:
        return VersionChoice(requested, "as configured", deprecation(op, requested, lifecycle, release))
    if registered is not None and set(versions) & set(registered):
        chosen = newest(set(versions) & set(registered))
        reason = f"version auto: the newest TensorRT {release} registers"
    elif release is not None:
        present = [v for v in versions if lifecycle.get(v, PluginVersion()).added is None
                   or release_tuple(release)[:2] >= release_tuple(lifecycle[v].added or "")[:2]]
        chosen = newest(present or versions)
        reason = f"version auto: the newest TensorRT {release} has"
        if registered is not None:
            reason += f" (it registers none of versions {', '.join(versions)})"
    else:
        chosen = newest(versions)
        reason = "version auto: the newest the catalog entry lists (the build runs every version)"
    return VersionChoice(chosen, reason, deprecation(op, chosen, lifecycle, release))

"""Recognising a plugin's computation among the calls a live model makes (what `orchestrate init` asks).

Models call their attention (or other) functions with their own parameter names and layouts. A catalog
entry's `recogniser` says which signatures it knows, parameter names and tensor ranks, and how such a
call's arguments map onto the plugin's inputs: passed as they are, or computed by the entry's own
derivations (orchestrator.plugins.derive). The watcher asks it about every Python function the forward
calls; it then checks each proposed mapping on the real arguments and result, by running the
derivations and the entry's contract, so what the recogniser proposes is only a proposal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Derived:
    """A plugin input the call does not pass, computed by the entry's rule `rule` from `sources` (the call's
    parameters, or other derived inputs), as export.plugins[].derive writes it."""

    rule: str
    sources: tuple[str, ...]

    def written(self) -> dict[str, Any]:
        """As the pipeline writes it: {rule: …, from: one name or a list}."""
        return {"rule": self.rule, "from": self.sources[0] if len(self.sources) == 1 else list(self.sources)}


@dataclass(frozen=True)
class CallMapping:
    """How one call feeds the plugin: its inputs in the plugin's order, named by the call's parameters or
    by derived inputs; the derived ones' rules; argument values the plugin's computation assumes."""

    inputs: tuple[str, ...]
    derive: Mapping[str, Derived] = field(default_factory=dict)
    require: Mapping[str, Any] = field(default_factory=dict)


class Recogniser(Protocol):
    """The signatures of calls a plugin can stand for (a catalog entry's `recogniser`)."""

    @property
    def looks_for(self) -> str:
        """What a call must take, in words (said when a forward makes no such call)."""
        ...

    def missing(self, parameters: Sequence[str]) -> list[str]:
        """What a function with these parameter names lacks, in words; empty when it may be such a call."""
        ...

    def map_call(self, arguments: Mapping[str, Any]) -> CallMapping:
        """The mapping of one call (its arguments by parameter name) onto the plugin's inputs; raises
        plugins.derive.Inexpressible with the reason when the call cannot be mapped."""
        ...

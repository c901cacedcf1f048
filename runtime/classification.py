"""Data classification levels: their order, a request's level at the edge, and the rule that a
level only rises as data flows on.

The levels are the ordered names of the manifest's ``[ai] levels`` (default public < internal <
confidential < restricted). A request's level is the highest of:

- its route's ``classification``;
- the ``classification`` of every risk rule that matches it (``[[risk]] classification``);
- the level of every entry of its route's ``field_levels`` whose dotted path (digits index
  lists, as in risk rules) holds a non-empty value in the JSON body. A body that is not JSON gets
  every field level (fail closed, as risk rules do: the fields cannot be shown to be absent).

The front computes it (`runtime.front.contract`) and sends it with the request; the isolate sets
``current().level`` from it, and everything the request's code calls carries it on: durable
object calls, workflow params and steps, tool calls, AI calls, outbound fetch, audit entries and
log lines. Inside a workflow a step may raise the instance's level; only an explicit, audited
``step.declassify`` lowers it. A boundary that declares a ``max_level`` (an AI provider, a tool,
an egress rule) refuses data above it, on the record with the level, the boundary's max level,
the principal and the request id: a policy violation is audited as ``<area>.policy_violation``
(``ai.policy_violation``, ``tool.policy_violation``); egress records every refused hop as
``egress.denied``, here with reason ``level``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.ai.config import DEFAULT_LEVELS
from runtime.names import LEVEL_NAME as _LEVEL_NAME
from runtime.risk import MISSING, UNREADABLE_BODY, lookup_field

__all__ = [
    "FIELD_PATH",
    "LEVEL_NAME",
    "REFUSED",
    "Levels",
    "field_path_problem",
    "request_level",
]

LEVEL_NAME = re.compile(_LEVEL_NAME)
# A dotted path into a JSON body: non-empty segments without whitespace ("card.number", "items.0.sku").
FIELD_PATH = re.compile(r"^[^.\s]+(?:\.[^.\s]+)*\Z")
REFUSED = "classification_refused"  # the error code of a tool's refusal


@dataclass(frozen=True, slots=True)
class Levels:
    """The ordered level names (lowest first)."""

    names: tuple[str, ...] = tuple(DEFAULT_LEVELS)

    @classmethod
    def of(cls, names: Iterable[str] | None) -> Levels:
        return cls(tuple(names)) if names else cls()

    def rank(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown classification level {name!r} (levels: {', '.join(self.names)})") from None

    def highest(self, first: str, *others: str | None) -> str:
        """The highest of the levels given (None entries are skipped)."""
        best, rank = first, self.rank(first)
        for name in others:
            if name is not None and (r := self.rank(name)) > rank:
                best, rank = name, r
        return best

    def above(self, level: str, max_level: str) -> bool:
        """Whether data of `level` may not go where at most `max_level` may."""
        return self.rank(level) > self.rank(max_level)


def field_path_problem(path: Any) -> str | None:
    """Why `path` is not a dotted body path, or None."""
    if not isinstance(path, str) or not FIELD_PATH.match(path):
        return f"{path!r} is not a dotted field path (e.g. 'email' or 'card.number')"
    return None


def _non_empty(value: Any) -> bool:
    return value is not MISSING and value is not None and value != "" and value != [] and value != {}


def request_level(levels: Levels, route_level: str, rule_levels: Sequence[str],
                  field_levels: Mapping[str, str], body: Any) -> str:
    """The level of a request (see the module docstring); `body` is the parsed JSON body, None
    when there is none, or `UNREADABLE_BODY`."""
    level = levels.highest(route_level, *rule_levels)
    for path, field_level in field_levels.items():
        if body is UNREADABLE_BODY or (body is not None and _non_empty(lookup_field(body, path))):
            level = levels.highest(level, field_level)
    return level

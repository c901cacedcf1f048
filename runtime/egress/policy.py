"""`EgressPolicy`: may a principal reach scheme://host:port with data of a given level, and may a
connection for that request go to a given address.

Modes: *open* (``dev`` with no ``[egress]`` section) allows everything, loopback included;
otherwise a request is allowed only when an ``[[egress.rules]]`` entry matches its principal,
scheme, host, port and level (``max_level``), and each address its host resolves to is either
public or named by a matching rule (an IP literal or a CIDR range in its ``hosts``), see
`runtime.egress.hosts`. `decide` is cached per (principal, scheme, host, port, level); the
address check (`address_problem`) is cheap and runs for every connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime.egress.config import EgressConfig, EgressRule
from runtime.egress.hosts import (
    HostPattern,
    IPAddress,
    address_class,
    normalize_host,
    parse_address,
    parse_host_pattern,
)

__all__ = ["DEFAULT_LEVELS", "Decision", "EgressPolicy"]

DEFAULT_LEVELS = ("public", "internal", "confidential", "restricted")
_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one (principal, scheme, host, port, level)."""

    allowed: bool
    reason: str | None = None  # when refused: scheme, host, port or level
    message: str = ""
    named: tuple[HostPattern, ...] = ()  # the matching rules' IP and CIDR entries
    assert_identity: bool = False
    open: bool = False  # no rules apply: every address is allowed


@dataclass(frozen=True, slots=True)
class _Rule:
    principals: frozenset[str]
    schemes: frozenset[str]
    hosts: tuple[HostPattern, ...]
    ports: frozenset[int] | None
    max_level: int | None
    assert_identity: bool


class EgressPolicy:
    """Rules for outbound calls; see the module docstring. Immutable once built."""

    def __init__(self, rules: Sequence[EgressRule], *, open: bool, levels: Sequence[str] = DEFAULT_LEVELS,
                 configured: bool | None = None) -> None:
        self.open = open
        self.levels = list(levels)
        self.configured = bool(rules) if configured is None else configured
        self._source = list(rules)
        self._rank = {name: i for i, name in enumerate(self.levels)}
        self._rules = [_Rule(frozenset(r.principals), frozenset(r.schemes),
                             tuple(parse_host_pattern(h) for h in r.hosts),
                             frozenset(r.ports) if r.ports is not None else None,
                             self._rank.get(r.max_level) if r.max_level is not None else None,
                             r.assert_identity) for r in rules]
        self._cache: dict[tuple[str, str, str, int, str], Decision] = {}

    @classmethod
    def build(cls, config: EgressConfig | None, *, dev: bool, levels: Sequence[str] = DEFAULT_LEVELS) -> EgressPolicy:
        """The policy of a manifest's ``[egress]`` section (None: absent) in `dev` or `serve`."""
        rules = config.rules if config is not None else []
        return cls(rules, open=dev and config is None, levels=levels, configured=config is not None)

    @classmethod
    def from_app(cls, app: Any, *, dev: bool) -> EgressPolicy:
        """The policy of a loaded `AppConfig`."""
        levels = app.ai.levels if app.ai is not None else DEFAULT_LEVELS
        return cls.build(app.egress, dev=dev, levels=levels)

    def to_wire(self) -> dict[str, Any]:
        """Plain data for another process (see `from_wire`)."""
        return {"open": self.open, "levels": self.levels, "configured": self.configured,
                "rules": [r.model_dump(mode="json") for r in self._source]}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EgressPolicy:
        return cls([EgressRule.model_validate(r) for r in data["rules"]], open=bool(data["open"]),
                   levels=data["levels"], configured=bool(data.get("configured")))

    # -- deciding ----------------------------------------------------------------------------
    def decide(self, principal: str, scheme: str, host: str, port: int, level: str) -> Decision:
        key = (principal, scheme, host, port, level)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(principal, scheme, normalize_host(host), port, level)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def _decide(self, principal: str, scheme: str, host: str, port: int, level: str) -> Decision:
        if self.open:
            return Decision(True, open=True)
        where = f"{scheme}://{_hostport(host, port)}"
        rules = [r for r in self._rules if "*" in r.principals or principal in r.principals]
        if not rules:
            return self._refuse("host", f"no [egress] rule lets {principal} make outbound calls (to {where})")
        if not (rules := [r for r in rules if scheme in r.schemes]):
            return self._refuse("scheme", f"no [egress] rule lets {principal} use {scheme} (to {where})")
        addr = parse_address(host)
        if not (rules := [r for r in rules if any(p.matches(host, addr) for p in r.hosts)]):
            return self._refuse("host", f"no [egress] rule lets {principal} reach host {host!r} ({where})")
        if not (rules := [r for r in rules if r.ports is None or port in r.ports]):
            return self._refuse("port", f"no [egress] rule lets {principal} reach {host!r} on port {port} ({where})")
        rank = self._rank.get(level, len(self.levels))
        if not (rules := [r for r in rules if r.max_level is None or rank <= r.max_level]):
            highest = max(self.levels[r.max_level] for r in self._matching(principal, scheme, host, addr, port)
                          if r.max_level is not None)
            return self._refuse("level", f"{principal} may not send {level!r} data to {where}: the [egress] rules "
                                         f"for it allow at most {highest!r}")
        named = tuple(p for r in rules for p in r.hosts if p.network is not None)
        return Decision(True, named=named, assert_identity=any(r.assert_identity for r in rules))

    def _matching(self, principal: str, scheme: str, host: str, addr: IPAddress | None, port: int) -> list[_Rule]:
        return [r for r in self._rules if ("*" in r.principals or principal in r.principals) and scheme in r.schemes
                and any(p.matches(host, addr) for p in r.hosts) and (r.ports is None or port in r.ports)]

    @staticmethod
    def _refuse(reason: str, message: str) -> Decision:
        return Decision(False, reason=reason, message=message)

    @staticmethod
    def address_problem(decision: Decision, host: str, addr: IPAddress) -> str | None:
        """Why a connection allowed by `decision` may not go to `addr`, or None."""
        if decision.open:
            return None
        kind = address_class(addr)
        if kind is None or any(p.names_address(addr) for p in decision.named):
            return None
        shown = f"{host!r} resolves to {addr}, a" if parse_address(host) is None else f"{addr} is a"
        return f"{shown} {kind} address that no matching [egress] rule names (name the address or its range)"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

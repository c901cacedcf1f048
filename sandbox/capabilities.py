"""Capability strings and how they match.

A capability token carries a list of capability strings. The grammar:

- `log`, `clock`, `random`: the host functions of that name (no argument).
- `kv.read:<prefix>` / `kv.write:<prefix>`: read (get, list) or write (put, delete) keys that
  start with `<prefix>`; `kv.read:notes/` grants `notes/a` and `notes/x/y`, not `note` or
  `other/`. The prefix `*` grants every key. Keys are additionally scoped by tenant and script
  in storage, so a prefix never reaches another tenant's data. Write does not imply read.
- `http.fetch:<host pattern>`: outbound HTTP(S) to matching hosts. A pattern is
  `host[:port]`; `host` is an exact name or IP (`api.example.com`, `127.0.0.1`) or
  `*.<domain>`, which matches any subdomain at any depth but not `<domain>` itself. With no port
  the pattern matches only the scheme's default port (80 for http, 443 for https); `:<n>`
  matches port n; `:*` any port. Names compare case-insensitively. IPv6 literals are not
  expressible, so fetches to them are always denied. The pattern constrains the URL's host
  name, not the address it resolves to.

- `fs.read:<guest path>` / `fs.write:<guest path>`: mount a directory the tool declares as a
  preopen at that guest path (or below it): read-only with `fs.read`, writable with `fs.write`
  when the tool also declares the preopen writable. `/data` covers `/data` and `/data/x`,
  not `/database`. Without either, a declared preopen is not mounted for the call.

A capability A is *covered* by B when everything A grants, B grants too; attenuation is only
allowed to produce capabilities each covered by some capability of the original token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Capability", "CapabilitySet", "CapabilityError", "SIMPLE_CAPABILITIES"]

SIMPLE_CAPABILITIES = frozenset({"log", "clock", "random"})
_SCOPED = frozenset({"kv.read", "kv.write", "http.fetch", "fs.read", "fs.write"})


class CapabilityError(ValueError):
    """A capability string does not follow the grammar."""


@dataclass(frozen=True)
class Capability:
    kind: str  # "log" | "clock" | "random" | "kv.read" | "kv.write" | "http.fetch"
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind

    @classmethod
    def parse(cls, text: str) -> Capability:
        if not isinstance(text, str) or not text or text != text.strip():
            raise CapabilityError(f"malformed capability {text!r}")
        if text in SIMPLE_CAPABILITIES:
            return cls(text)
        kind, sep, arg = text.partition(":")
        if kind not in _SCOPED or not sep or not arg:
            raise CapabilityError(f"unknown or malformed capability {text!r}")
        if kind == "http.fetch":
            _parse_host_pattern(arg)
        if kind in ("fs.read", "fs.write") and (not arg.startswith("/") or "\0" in arg):
            raise CapabilityError(f"fs capability needs an absolute guest path: {text!r}")
        return cls(kind, arg)

    def covers(self, other: Capability) -> bool:
        if self.kind != other.kind:
            return False
        if self.kind in SIMPLE_CAPABILITIES:
            return True
        if self.kind in ("kv.read", "kv.write"):
            if self.arg == "*":
                return True
            return other.arg != "*" and other.arg.startswith(self.arg)
        if self.kind in ("fs.read", "fs.write"):
            return self.allows_path(other.arg)
        mine_host, mine_port = _parse_host_pattern(self.arg)
        their_host, their_port = _parse_host_pattern(other.arg)
        if mine_port != "*" and mine_port != their_port:
            return False
        if mine_host.startswith("*."):
            suffix = mine_host[1:]
            return their_host.endswith(suffix) and their_host != suffix[1:]
        return mine_host == their_host

    def allows_key(self, key: str) -> bool:
        return self.arg == "*" or key.startswith(self.arg)

    def allows_path(self, path: str) -> bool:
        base = self.arg.rstrip("/") or "/"
        return path == base or path.startswith(base if base == "/" else base + "/")

    def allows_host(self, host: str, port: int, scheme: str) -> bool:
        pattern_host, pattern_port = _parse_host_pattern(self.arg)
        host = host.lower().rstrip(".")
        if pattern_port == "":
            if port != {"http": 80, "https": 443}.get(scheme):
                return False
        elif pattern_port != "*" and int(pattern_port) != port:
            return False
        if pattern_host.startswith("*."):
            suffix = pattern_host[1:]
            return host.endswith(suffix) and len(host) > len(suffix)
        return host == pattern_host


def _parse_host_pattern(pattern: str) -> tuple[str, str]:
    host, port = pattern, ""
    if pattern.count(":") == 1:
        host, port = pattern.split(":")
        if port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
            raise CapabilityError(f"bad port in host pattern {pattern!r}")
    elif ":" in pattern:
        raise CapabilityError(f"malformed host pattern {pattern!r}")
    host = host.lower()
    body = host[2:] if host.startswith("*.") else host
    if not body or "*" in body or "/" in body or any(not p for p in body.split(".")):
        raise CapabilityError(f"malformed host pattern {pattern!r}")
    return host, port


class CapabilitySet:
    """A parsed, immutable list of capabilities with the queries host functions need."""

    __slots__ = ("caps", "_by_kind")

    def __init__(self, caps: Iterable[str | Capability]):
        parsed = [c if isinstance(c, Capability) else Capability.parse(c) for c in caps]
        self.caps: tuple[Capability, ...] = tuple(dict.fromkeys(parsed))
        self._by_kind: dict[str, list[Capability]] = {}
        for c in self.caps:
            self._by_kind.setdefault(c.kind, []).append(c)

    def strings(self) -> list[str]:
        return [str(c) for c in self.caps]

    def has_kind(self, kind: str) -> bool:
        return kind in self._by_kind

    def allows_key(self, kind: str, key: str) -> bool:
        return any(c.allows_key(key) for c in self._by_kind.get(kind, ()))

    def allows_host(self, host: str, port: int, scheme: str) -> bool:
        return any(c.allows_host(host, port, scheme) for c in self._by_kind.get("http.fetch", ()))

    def allows_path(self, kind: str, path: str) -> bool:
        return any(c.allows_path(path) for c in self._by_kind.get(kind, ()))

    def covers(self, cap: Capability) -> bool:
        return any(mine.covers(cap) for mine in self._by_kind.get(cap.kind, ()))

    def uncovered(self, other: CapabilitySet) -> list[str]:
        """Capabilities of `other` that this set does not cover (empty: `other` is a subset)."""
        return [str(c) for c in other.caps if not self.covers(c)]

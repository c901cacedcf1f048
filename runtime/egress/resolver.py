"""Name resolution for outbound calls: the addresses the policy checks are the ones connected to.

`SystemResolver` consults a hosts file first, then the system resolver (getaddrinfo). The hosts
file is for tests and local overrides, like /etc/hosts: ``EDGEWORKS_EGRESS_HOSTS`` names a JSON
file mapping host names to lists of addresses (``{"api.test": ["127.0.0.1"]}``); being an
environment variable, it reaches every process the runtime starts. It is read when its
modification time changes. An IP literal resolves to itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from runtime.egress.hosts import normalize_host, parse_address

__all__ = ["HOSTS_ENV", "Resolver", "ResolveError", "StaticResolver", "SystemResolver"]

HOSTS_ENV = "EDGEWORKS_EGRESS_HOSTS"


class ResolveError(Exception):
    """A host name has no address (or the hosts file is unusable)."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]: ...

    def resolve_sync(self, host: str, port: int) -> list[str]: ...


class StaticResolver:
    """Fixed answers (tests): a name not in `table` has no address."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = {normalize_host(k): list(v) for k, v in table.items()}

    async def resolve(self, host: str, port: int) -> list[str]:
        return self.resolve_sync(host, port)

    def resolve_sync(self, host: str, port: int) -> list[str]:
        if parse_address(host) is not None:
            return [normalize_host(host)]
        try:
            return list(self.table[normalize_host(host)])
        except KeyError:
            raise ResolveError(f"no address for {host!r}") from None


class SystemResolver:
    """The hosts file named by ``EDGEWORKS_EGRESS_HOSTS`` (when set), then getaddrinfo."""

    def __init__(self, hosts_file: str | None = None) -> None:
        self.hosts_file = hosts_file if hosts_file is not None else os.environ.get(HOSTS_ENV) or None
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._table: dict[str, list[str]] = {}

    def _override(self, host: str) -> list[str] | None:
        if self.hosts_file is None:
            return None
        with self._lock:
            try:
                mtime = os.stat(self.hosts_file).st_mtime
                if mtime != self._mtime:
                    with open(self.hosts_file, encoding="utf-8") as f:
                        data = json.load(f)
                    if not isinstance(data, dict) or not all(
                            isinstance(v, list) and all(isinstance(a, str) and parse_address(a) for a in v)
                            for v in data.values()):
                        raise ValueError("expected an object mapping names to lists of IP addresses")
                    self._table = {normalize_host(k): v for k, v in data.items()}
                    self._mtime = mtime
            except (OSError, ValueError) as e:
                raise ResolveError(f"{HOSTS_ENV}={self.hosts_file}: {e}") from None
            return self._table.get(normalize_host(host))

    async def resolve(self, host: str, port: int) -> list[str]:
        if parse_address(host) is not None:
            return [normalize_host(host)]
        found = self._override(host)
        if found is not None:
            return list(found)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ResolveError(f"cannot resolve {host!r}: {e}") from None
        return _addresses(infos)

    def resolve_sync(self, host: str, port: int) -> list[str]:
        if parse_address(host) is not None:
            return [normalize_host(host)]
        found = self._override(host)
        if found is not None:
            return list(found)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ResolveError(f"cannot resolve {host!r}: {e}") from None
        return _addresses(infos)


def _addresses(infos: Sequence[tuple[Any, ...]]) -> list[str]:
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    if not out:
        raise ResolveError("no address")
    return out

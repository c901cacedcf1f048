"""httpx transports whose connections go only to addresses the policy allowed.

httpcore opens each connection through a network backend's ``connect_tcp(host, port)``. Ours
resolves `host` with the policy's resolver, checks *every* address it resolves to against the
decision of the request being sent (`CURRENT`, set by the egress client around each send),
refuses the whole connection if one is not allowed (a name that resolves to a public and a
metadata address is refused, not tried in order), then connects to the checked addresses
themselves, in order, never to the name: there is no second resolution between the check and
the connection (DNS rebinding). TLS still verifies the certificate against the URL's host name,
which httpcore passes to ``start_tls`` as the server name.

httpx takes no network backend parameter, so each transport replaces the connection pool it
builds with one that uses ours (same TLS context and limits).
"""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from runtime.egress.errors import EgressDenied
from runtime.egress.hosts import parse_address
from runtime.egress.policy import Decision, EgressPolicy
from runtime.egress.resolver import ResolveError, Resolver

__all__ = ["CURRENT", "Hop", "PinnedAsyncTransport", "PinnedSyncTransport"]


@dataclass(slots=True)
class Hop:
    """One request being sent: the decision its connection is checked against, and the address
    the backend connected to (None when a pooled connection was reused)."""

    decision: Decision
    address: str | None = None


CURRENT: contextvars.ContextVar[Hop | None] = contextvars.ContextVar("edgeworks_egress_hop", default=None)


def _checked(host: str, addresses: list[str]) -> list[str]:
    hop = CURRENT.get()
    if hop is None:  # a connection outside EgressClient.send: nothing allowed it
        raise EgressDenied("address", f"no egress decision for a connection to {host!r}")
    for text in addresses:
        addr = parse_address(text)
        if addr is None:
            raise EgressDenied("address", f"{host!r} resolved to {text!r}, which is not an IP address")
        problem = EgressPolicy.address_problem(hop.decision, host, addr)
        if problem is not None:
            raise EgressDenied("address", problem, address=str(addr))
    return addresses


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._resolver.resolve(host, port)
        except ResolveError as e:
            raise httpcore.ConnectError(str(e)) from None
        last: Exception | None = None
        for address in _checked(host, addresses):
            try:
                stream = await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                       socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
                continue
            hop = CURRENT.get()
            if hop is not None:
                hop.address = address
            return stream
        raise last or httpcore.ConnectError(f"no address for {host!r}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise EgressDenied("address", "outbound calls go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _SyncBackend(httpcore.NetworkBackend):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            addresses = self._resolver.resolve_sync(host, port)
        except ResolveError as e:
            raise httpcore.ConnectError(str(e)) from None
        last: Exception | None = None
        for address in _checked(host, addresses):
            try:
                stream = self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                 socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
                continue
            hop = CURRENT.get()
            if hop is not None:
                hop.address = address
            return stream
        raise last or httpcore.ConnectError(f"no address for {host!r}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise EgressDenied("address", "outbound calls go over TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=False)


class PinnedAsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, resolver: Resolver) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(), max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections, keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=_AsyncBackend(resolver))


class PinnedSyncTransport(httpx.HTTPTransport):
    def __init__(self, resolver: Resolver) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(), max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections, keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=_SyncBackend(resolver))

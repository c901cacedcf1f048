"""`EgressClient`: the one path every outbound HTTP call of the runtime takes.

A call names its principal (who makes it), the classification level of the data it carries and
its request id. For each hop (the first request, then each redirect when `follow_redirects`):

1. the URL must be ``http`` or ``https`` (reason ``scheme``);
2. the kill switch: a kill of kind ``egress`` whose host pattern matches the host refuses it
   (reason ``killed``; a kill is seen within a second, see `runtime.killswitch`);
3. the policy's decision for (principal, scheme, host, port, level) (reasons ``scheme``,
   ``host``, ``port``, ``level``);
4. the connection: every address the host resolves to is checked, and the connection goes to a
   checked address (reason ``address``; see `runtime.egress.transport`).

A refused redirect hop raises reason ``redirect`` naming the hop's own problem. Each hop is
audited: ``egress.request`` (principal, method, scheme, host, port, address connected to,
status, bytes in and out, duration, request id, level, hop) or ``egress.denied`` (the same and
``reason``). When a matching rule says ``assert_identity``, the hop carries
``Edgeworks-Principal-Assertion``: what the `identity` callable returns for (principal, target
origin). One httpx client per (principal, level), so a pooled connection is only ever reused
under the decision that opened it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode

from runtime import tracing
from runtime.egress.errors import EgressDenied, EgressError, EgressTimeout, ResponseTooLarge
from runtime.egress.hosts import HostPattern, normalize_host, parse_address, parse_host_pattern
from runtime.egress.policy import Decision, EgressPolicy
from runtime.egress.resolver import Resolver, SystemResolver
from runtime.egress.transport import CURRENT, Hop, PinnedAsyncTransport, PinnedSyncTransport

__all__ = ["ASSERTION_HEADER", "EgressClient", "Identity"]

ASSERTION_HEADER = "Edgeworks-Principal-Assertion"
MAX_REDIRECTS = 20
# the body arrives decoded and whole: these describe the wire, not what the caller gets
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})

Identity = Callable[[str, str], "str | None"]
AuditHook = Callable[[str, dict[str, Any]], None]


class Kills(Protocol):
    def names(self, kind: str) -> Mapping[str, str]: ...


class _Target:
    __slots__ = ("host", "origin", "port", "scheme")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.host = normalize_host(parts.hostname or "")
        try:
            self.port = parts.port or (443 if self.scheme == "https" else 80)
        except ValueError:
            raise EgressDenied("port", f"bad port in {url!r}") from None
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = (self.scheme == "https" and self.port == 443) or (self.scheme == "http" and self.port == 80)
        self.origin = f"{self.scheme}://{shown}" + ("" if default else f":{self.port}")


class EgressClient:
    """See the module docstring. `audit(kind, fields)` records each hop; `kills` answers
    ``names("egress")`` (host pattern -> reason); `identity(principal, origin)` signs assertions."""

    def __init__(self, policy: EgressPolicy, *, audit: AuditHook | None, kills: Kills | None,
                 resolver: Resolver | None = None, identity: Identity | None = None) -> None:
        self.policy = policy
        self._audit = audit
        self._kills = kills
        self.resolver: Resolver = resolver or SystemResolver()
        self.identity = identity
        self._async: dict[tuple[str, str], httpx.AsyncClient] = {}
        self._sync: dict[tuple[str, str], httpx.Client] = {}
        self._sync_lock = threading.Lock()
        self._kill_patterns: dict[str, HostPattern | None] = {}

    # -- checks ------------------------------------------------------------------------------
    def check(self, principal: str, level: str, url: str) -> Decision:
        """The decision for one hop; raises EgressDenied (scheme, killed, host, port, level)."""
        target = _Target(url)
        if target.scheme not in ("http", "https") or not target.host:
            raise EgressDenied("scheme", f"outbound calls need an http or https URL with a host, got {url!r}")
        killed = self._killed(target.host)
        if killed is not None:
            raise EgressDenied("killed", f"outbound calls to {target.host!r} are stopped by the kill switch "
                                         f"({killed[0]!r}): {killed[1]}")
        decision = self.policy.decide(principal, target.scheme, target.host, target.port, level)
        if not decision.allowed:
            raise EgressDenied(decision.reason or "host", decision.message)
        return decision

    def _killed(self, host: str) -> tuple[str, str] | None:
        if self._kills is None:
            return None
        kills = self._kills.names("egress")
        if not kills:
            return None
        addr = parse_address(host)
        for name, reason in kills.items():
            if name not in self._kill_patterns:
                try:
                    self._kill_patterns[name] = parse_host_pattern(name)
                except ValueError:
                    self._kill_patterns[name] = None
            pattern = self._kill_patterns[name]
            if pattern is not None and pattern.matches(host, addr):
                return name, reason
        return None

    # -- calls -------------------------------------------------------------------------------
    async def request(self, method: str, url: str, *, principal: str, level: str, request_id: str | None = None,
                      headers: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
                      content: bytes | None = None, follow_redirects: bool = False, timeout: float = 30.0,
                      max_bytes: int | None = None) -> httpx.Response:
        """Send one call (and its redirects); EgressDenied when refused, EgressError when the
        transport fails or the answer exceeds `max_bytes`. Made by traced work, the call has a
        CLIENT span (HTTP client conventions) and carries its `traceparent`."""
        if tracing.TRACER is None:
            return await self._request(method, url, principal, level, request_id, headers, content,
                                       follow_redirects, timeout, max_bytes)
        with tracing.span(method.upper(), _http_attributes(method, url), SpanKind.CLIENT, child_only=True) as span:
            response = await self._request(method, url, principal, level, request_id, headers, content,
                                           follow_redirects, timeout, max_bytes)
            if span is not None:
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 400:
                    span.set_attribute("error.type", str(response.status_code))
                    span.set_status(Status(StatusCode.ERROR))
            return response

    async def _request(self, method: str, url: str, principal: str, level: str, request_id: str | None,
                       headers: Sequence[tuple[str, str]] | Mapping[str, str] | None, content: bytes | None,
                       follow_redirects: bool, timeout: float, max_bytes: int | None) -> httpx.Response:
        call = _Call(self, method, url, principal, level, request_id, headers, content)
        client = self._async_client(principal, level)
        request = client.build_request(call.method, url, headers=call.headers, content=content, timeout=timeout)
        while True:
            hop = call.start(request)
            token = CURRENT.set(hop)
            try:
                response = await client.send(request, stream=True)
                try:
                    body = await _read_async(response, max_bytes)
                finally:
                    await response.aclose()
            except EgressDenied as e:
                raise call.denied(e, hop) from None
            except httpx.HTTPError as e:
                raise call.failed(e, hop) from None
            finally:
                CURRENT.reset(token)
            following = call.done(response, body, hop, follow_redirects)
            if following is None:
                return call.result(response, body)
            request = following

    def request_sync(self, method: str, url: str, *, principal: str, level: str, request_id: str | None = None,
                     headers: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
                     content: bytes | None = None, follow_redirects: bool = False, timeout: float = 30.0,
                     max_bytes: int | None = None) -> httpx.Response:
        """`request` for synchronous callers (the sandbox's host functions, the audit writer)."""
        call = _Call(self, method, url, principal, level, request_id, headers, content)
        client = self._sync_client(principal, level)
        request = client.build_request(call.method, url, headers=call.headers, content=content, timeout=timeout)
        while True:
            hop = call.start(request)
            token = CURRENT.set(hop)
            try:
                response = client.send(request, stream=True)
                try:
                    body = _read_sync(response, max_bytes)
                finally:
                    response.close()
            except EgressDenied as e:
                raise call.denied(e, hop) from None
            except httpx.HTTPError as e:
                raise call.failed(e, hop) from None
            finally:
                CURRENT.reset(token)
            following = call.done(response, body, hop, follow_redirects)
            if following is None:
                return call.result(response, body)
            request = following

    def _async_client(self, principal: str, level: str) -> httpx.AsyncClient:
        key = (principal, level)
        client = self._async.get(key)
        if client is None:
            client = httpx.AsyncClient(transport=PinnedAsyncTransport(self.resolver), trust_env=False,
                                       follow_redirects=False)
            self._async[key] = client
        return client

    def _sync_client(self, principal: str, level: str) -> httpx.Client:
        key = (principal, level)
        with self._sync_lock:
            client = self._sync.get(key)
            if client is None:
                client = httpx.Client(transport=PinnedSyncTransport(self.resolver), trust_env=False,
                                      follow_redirects=False)
                self._sync[key] = client
        return client

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit(kind, fields)

    async def aclose(self) -> None:
        clients, self._async = list(self._async.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
        self.close()

    def close(self) -> None:
        with self._sync_lock:
            clients, self._sync = list(self._sync.values()), {}
        for c in clients:
            c.close()


class _Call:
    """The state of one call across its hops: checks, audit entries, the result."""

    def __init__(self, client: EgressClient, method: str, url: str, principal: str, level: str,
                 request_id: str | None, headers: Sequence[tuple[str, str]] | Mapping[str, str] | None,
                 content: bytes | None) -> None:
        self.client = client
        self.method = method.upper()
        self.principal, self.level, self.request_id = principal, level, request_id or None
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        self.headers = [(k, v) for k, v in items if k.lower() != ASSERTION_HEADER.lower()]
        self.bytes_out = len(content or b"")
        self.hops = 0
        self.started = time.perf_counter()
        self.url = url
        self.trace = tracing.carrier()  # the caller's span: every hop carries it as traceparent
        self._first_check(url)

    def _first_check(self, url: str) -> None:
        try:
            self.decision = self.client.check(self.principal, self.level, url)
        except EgressDenied as e:
            raise self._refused(e, _describe(url), None) from None

    def start(self, request: httpx.Request) -> Hop:
        """Check a hop (the first was checked at construction) and set its assertion header."""
        url = str(request.url)
        if self.hops:
            try:
                self.decision = self.client.check(self.principal, self.level, url)
            except EgressDenied as e:
                raise self._refused(e, _describe(url), None) from None
        request.headers.pop(ASSERTION_HEADER, None)
        if self.trace is not None:
            request.headers.update(self.trace)
        identity = self.client.identity
        if self.decision.assert_identity and identity is not None:
            assertion = identity(self.principal, _Target(url).origin)
            if assertion:
                request.headers[ASSERTION_HEADER] = assertion
        self.target = _describe(url)
        self.hop_started = time.perf_counter()
        return Hop(self.decision)

    def _fields(self, target: dict[str, Any], address: str | None) -> dict[str, Any]:
        return {"principal": self.principal, "method": self.method, **target, "address": address,
                "request_id": self.request_id, "level": self.level, "classification": self.level, "hop": self.hops}

    def _refused(self, e: EgressDenied, target: dict[str, Any], address: str | None) -> EgressDenied:
        fields = self._fields(target, address or e.address)
        if self.hops:
            fields.update(reason="redirect", hop_reason=e.reason)
            e = EgressDenied("redirect", f"redirect to {self.url_of(target)} refused: {e.message}", address=e.address)
        else:
            fields["reason"] = e.reason
        fields.update(message=e.message, duration_ms=_ms(self.started))
        self.client.audit("egress.denied", fields)
        return e

    @staticmethod
    def url_of(target: dict[str, Any]) -> str:
        return f"{target['scheme']}://{target['host']}:{target['port']}"

    def denied(self, e: EgressDenied, hop: Hop) -> EgressDenied:
        return self._refused(e, self.target, hop.address)

    def failed(self, e: httpx.HTTPError, hop: Hop) -> EgressError:
        fields = self._fields(self.target, hop.address)
        message = f"{self.method} {self.url_of(self.target)}: {type(e).__name__}: {e}"
        fields.update(status=None, bytes_out=self.bytes_out, bytes_in=0, duration_ms=_ms(self.hop_started),
                      error=message)
        self.client.audit("egress.request", fields)
        return EgressTimeout(message) if isinstance(e, httpx.TimeoutException) else EgressError(message)

    def done(self, response: httpx.Response, body: bytes | None, hop: Hop,
             follow: bool) -> httpx.Request | None:
        """Audit the hop; the next request when it is a redirect to follow, else None."""
        if body is None:
            raise self.failed_size(response, hop)
        fields = self._fields(self.target, hop.address or _peer(response))
        fields.update(status=response.status_code, bytes_out=self.bytes_out, bytes_in=response.num_bytes_downloaded,
                      duration_ms=_ms(self.hop_started))
        self.client.audit("egress.request", fields)
        following = response.next_request if follow else None
        if following is None:
            return None
        self.hops += 1
        if self.hops > MAX_REDIRECTS:
            raise EgressError(f"{self.method} {self.url}: more than {MAX_REDIRECTS} redirects")
        self.bytes_out = int(following.headers.get("content-length") or 0)
        self.method = following.method
        return following

    def failed_size(self, response: httpx.Response, hop: Hop) -> ResponseTooLarge:
        fields = self._fields(self.target, hop.address or _peer(response))
        message = f"{self.method} {self.url_of(self.target)}: the answer exceeds the size limit"
        fields.update(status=response.status_code, bytes_out=self.bytes_out,
                      bytes_in=response.num_bytes_downloaded, duration_ms=_ms(self.hop_started), error=message)
        self.client.audit("egress.request", fields)
        return ResponseTooLarge(message)

    @staticmethod
    def result(response: httpx.Response, body: bytes | None) -> httpx.Response:
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
        return httpx.Response(response.status_code, headers=headers, content=body or b"", request=response.request,
                              extensions={"http_version": response.extensions.get("http_version", b"HTTP/1.1")})


def _http_attributes(method: str, url: str) -> dict[str, Any]:
    """An outbound call's span attributes; the URL without its credentials and query."""
    parts = urlsplit(url)
    out: dict[str, Any] = {"http.request.method": method.upper(),
                           "url.full": f"{parts.scheme}://{parts.hostname or ''}"
                                       f"{f':{parts.port}' if parts.port else ''}{parts.path}"}
    if parts.hostname:
        out["server.address"] = parts.hostname
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    if port:
        out["server.port"] = port
    return out


def _describe(url: str) -> dict[str, Any]:
    try:
        target = _Target(url)
        return {"scheme": target.scheme, "host": target.host, "port": target.port}
    except EgressDenied:
        parts = urlsplit(url)
        return {"scheme": parts.scheme.lower(), "host": normalize_host(parts.hostname or ""), "port": None}


def _peer(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    try:
        peer = stream.get_extra_info("server_addr") if stream is not None else None
    except Exception:  # a stream that cannot say: the address stays unknown
        return None
    return str(peer[0]) if peer else None


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


async def _read_async(response: httpx.Response, max_bytes: int | None) -> bytes | None:
    """The decoded body, or None past `max_bytes`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _read_sync(response: httpx.Response, max_bytes: int | None) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)

"""`fetch(url_or_request, ...)`: outbound HTTP from handlers, as in Workers (`from workers import
fetch`).

Each call is a subrequest of the current request (counted against `limits.subrequests`). Only
`http` and `https` URLs; redirects are followed unless `redirect="manual"`. The answer is a
`Response` whose body is read whole (`status`, `ok`, `headers`, `await .text()`, `.json()`,
`.bytes()`); it may be returned from the handler as is: the body arrives decoded, so
`content-encoding` and the framing headers are dropped. A forwarded `Request` keeps its method,
headers and body; `host` and framing headers come from the new URL and body. A failure to connect raises
`FetchError` naming the URL.

Every call goes through the isolate's egress client (`runtime.egress`) under the principal of the
running code (`runtime.principals.current_principal`: the workflow class whose step runs, else
the script) and the level of the data the request handles: the ``[egress]`` rules, the kill
switch kind ``egress``, the address check, redirects re-checked hop by hop, one audit entry per
hop. A refused call raises `FetchDenied` (a `FetchError`) naming the principal, the host and
the rule problem.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from runtime.egress import EgressClient, EgressDenied, EgressError, EgressPolicy
from runtime.isolate.context import current
from runtime.isolate.http import HeaderInput, Headers, Request, Response
from runtime.principals import current_principal

__all__ = ["FetchDenied", "FetchError", "fetch", "use_egress"]

# set by the HTTP client for the outgoing request, and by the server for our answer
_NOT_SENT = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_DROPPED = frozenset({"content-encoding", "content-length", "transfer-encoding", "connection"})
_TIMEOUT_S = 30.0
_egress: EgressClient | None = None
_script = ""


class FetchError(Exception):
    """The request could not be made or answered (DNS, connection, timeout, bad URL)."""


class FetchDenied(FetchError):
    """The egress policy refused the request; `reason` is scheme, host, port, address, level,
    killed or redirect."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def use_egress(client: EgressClient, script: str) -> None:
    """Route this isolate's fetches through `client` (called once, when the script loads)."""
    global _egress, _script
    _egress, _script = client, script


def _client() -> EgressClient:
    global _egress
    if _egress is None:  # outside an isolate (a unit test calling a handler): dev's open policy
        _egress = EgressClient(EgressPolicy.build(None, dev=True), audit=None, kills=None)
    return _egress


async def fetch(
    resource: str | Request,
    *,
    method: str | None = None,
    headers: HeaderInput | Headers = None,
    body: bytes | str | None = None,
    redirect: str = "follow",
) -> Response:
    if isinstance(resource, Request):
        url = resource.url
        method = method or resource.method
        headers = headers if headers is not None else resource.headers
        body = body if body is not None else resource.body_bytes()
    elif isinstance(resource, str):
        url = resource
    else:
        raise TypeError(f"fetch() takes a URL or a Request, got {type(resource).__name__}")
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"fetch() needs an http or https URL, got {url!r}")
    if redirect not in ("follow", "manual"):
        raise ValueError(f"redirect must be 'follow' or 'manual', got {redirect!r}")
    scope = current()
    scope.count_subrequest()
    items = [(k, v) for k, v in Headers(headers).items() if k not in _NOT_SENT]
    try:
        answer = await _client().request(
            (method or "GET").upper(), url, principal=current_principal(scope.script or _script), level=scope.level,
            request_id=scope.request_id or None, headers=items,
            content=body.encode() if isinstance(body, str) else body,
            follow_redirects=redirect == "follow", timeout=_TIMEOUT_S,
        )
    except EgressDenied as exc:
        raise FetchDenied(exc.reason, f"fetch {url}: refused by the egress policy: {exc.message}") from None
    except EgressError as exc:
        raise FetchError(f"fetch {url}: {exc}") from None
    kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _DROPPED]
    return Response(answer.content, answer.status_code, kept)

"""`fetch(url_or_request, ...)`: outbound HTTP from handlers, as in Workers (`from workers import
fetch`).

Each call is a subrequest of the current request (counted against `limits.subrequests`). Only
`http` and `https` URLs; redirects are followed unless `redirect="manual"`. The answer is a
`Response` whose body is read whole (`status`, `ok`, `headers`, `await .text()`, `.json()`,
`.bytes()`); it may be returned from the handler as is: the body arrives decoded, so
`content-encoding` and the framing headers are dropped. A forwarded `Request` keeps its method,
headers and body; `host` and framing headers come from the new URL and body. A failure to connect raises
`FetchError` naming the URL. httpx (already a dependency) does the HTTP; one client per isolate
process, imported on first use.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runtime.isolate.context import current
from runtime.isolate.http import HeaderInput, Headers, Request, Response

__all__ = ["FetchError", "fetch"]

# set by the HTTP client for the outgoing request, and by the server for our answer
_NOT_SENT = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_DROPPED = frozenset({"content-encoding", "content-length", "transfer-encoding", "connection"})
_client: Any = None


class FetchError(Exception):
    """The request could not be made or answered (DNS, connection, timeout, bad URL)."""


def _http_client() -> Any:
    global _client
    if _client is None:
        import httpx

        _client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(30.0, connect=10.0))
    return _client


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
    current().count_subrequest()
    import httpx

    items = [(k, v) for k, v in Headers(headers).items() if k not in _NOT_SENT]
    try:
        answer = await _http_client().request(
            (method or "GET").upper(), url, headers=items,
            content=body.encode() if isinstance(body, str) else body,
            follow_redirects=redirect == "follow",
        )
    except httpx.HTTPError as exc:
        raise FetchError(f"fetch {url}: {type(exc).__name__}: {exc}") from None
    kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _DROPPED]
    return Response(answer.content, answer.status_code, kept)

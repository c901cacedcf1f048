"""`Request` and `Response` as handler code sees them (the shape of Workers' Python API).

Both travel between processes as plain msgpack maps (`to_wire` / `from_wire`); bodies stay bytes.
"""

from __future__ import annotations

import builtins
import json as _json
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from runtime.safejson import JSONTooDeep, RequestJSONTooDeep, parse_json

__all__ = ["Headers", "Request", "Response"]

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | None


class Headers:
    """Case-insensitive, multi-valued headers. `get` joins repeated values with ', '."""

    __slots__ = ("_items",)

    def __init__(self, init: HeaderInput | Headers = None):
        if init is None:
            self._items: list[tuple[str, str]] = []
        elif isinstance(init, Headers):
            self._items = list(init._items)
        elif isinstance(init, Mapping):
            self._items = [(str(k).lower(), str(v)) for k, v in init.items()]
        else:
            self._items = [(str(k).lower(), str(v)) for k, v in init]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        values = [v for k, v in self._items if k == name]
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def set(self, name: str, value: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k != name]
        self._items.append((name, str(value)))

    def append(self, name: str, value: str) -> None:
        self._items.append((name.lower(), str(value)))

    def delete(self, name: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k != name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k == name.lower() for k, _ in self._items)

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self._items))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise TypeError(f"body must be str, bytes or an async iterable of them, not {type(body).__name__}")


class Request:
    """An incoming (or outgoing, for service bindings) HTTP request."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: HeaderInput | Headers = None,
        body: bytes | str | None = None,
        params: dict[str, str] | None = None,
    ):
        self.url = url
        self.method = method.upper()
        self.headers = Headers(headers)
        self._body = _body_bytes(body)
        self.params = params or {}  # path parameters captured by the route
        self.validated: Any = None  # the route's body model instance, when declared
        self.validated_query: Any = None
        parts = urlsplit(url)
        self.path = parts.path or "/"
        self.query_string = parts.query
        self.host = parts.netloc

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    async def bytes(self) -> bytes:
        return self._body

    async def text(self) -> str:
        return self._body.decode()

    async def json(self) -> Any:
        # The same parse the front's risk rules use.
        try:
            return parse_json(self._body)
        except JSONTooDeep as e:
            raise RequestJSONTooDeep(e.limit) from None

    def body_bytes(self) -> builtins.bytes:
        return self._body

    def to_wire(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "method": self.method,
            "headers": self.headers.items(),
            "body": self._body,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> Request:
        r = cls(m["url"], method=m["method"], headers=m["headers"], body=m["body"])
        r.params = m.get("params") or {}
        return r

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class _ClassOrInstance:
    """A name that is a constructor on the class and a reader on instances."""

    def __init__(self, on_class: str, on_instance: str):
        self.on_class, self.on_instance = on_class, on_instance

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return getattr(owner, self.on_class)
        return getattr(obj, self.on_instance)


class Response:
    """A response: str/bytes bodies, `Response.json`, redirects, or a streamed async iterable."""

    def __init__(
        self,
        body: str | bytes | AsyncIterable[bytes | str] | None = None,
        status: int = 200,
        headers: HeaderInput | Headers = None,
        *,
        content_type: str | None = None,
    ):
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an int in 100..599, got {status!r}")
        self.status = status
        self.headers = Headers(headers)
        self.stream: AsyncIterable[bytes | str] | None = None
        if body is not None and hasattr(body, "__aiter__"):
            self.stream = body
            self._body = b""
        else:
            self._body = _body_bytes(body)
        if "content-type" not in self.headers:
            if content_type is None and isinstance(body, str):
                content_type = "text/plain; charset=utf-8"
            if content_type:
                self.headers.set("content-type", content_type)

    @classmethod
    def _make_json(cls, data: Any, status: int = 200, headers: HeaderInput = None) -> Response:
        body = _json.dumps(data, separators=(",", ":"), default=_json_default)
        return cls(body, status, headers, content_type="application/json")

    @classmethod
    def redirect(cls, url: str, status: int = 302) -> Response:
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirect status must be 301, 302, 303, 307 or 308, got {status}")
        return cls(None, status, {"location": url})

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    async def bytes(self) -> bytes:
        return self._body

    async def text(self) -> str:
        return self._body.decode()

    async def _read_json(self) -> Any:
        return parse_json(self._body)

    # `Response.json(data)` builds a JSON response; `await response.json()` parses one.
    json = _ClassOrInstance("_make_json", "_read_json")

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

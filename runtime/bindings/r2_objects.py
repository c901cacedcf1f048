"""The shapes an R2 bucket answers with (`R2Object`, `R2ObjectBody`, `R2Objects`,
`R2UploadedPart`) and its error, apart from the calls that make them (`runtime/bindings/r2.py`).

Every shape also answers to Cloudflare's camelCase names (`httpMetadata`, `arrayBuffer`,
`delimitedPrefixes`...), so code written against the JavaScript shape runs unchanged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, BinaryIO, TypeVar, cast

from objects import CodedError
from runtime.bindings.r2_store import Row

__all__ = ["CamelNames", "R2Error", "R2Object", "R2ObjectBody", "R2Objects", "R2UploadedPart", "camel_options",
           "r2_error"]

READ_CHUNK = 1 << 16  # bytes per chunk a body streams in
_CAMEL = re.compile(r"[A-Z]")
F = TypeVar("F", bound=Callable[..., Any])


class R2Error(CodedError):
    """A call R2 refuses (bad key, limit, unknown upload...); `code` and `status` say which."""


def r2_error(message: str, code: str = "r2_invalid_argument", status: int = 400) -> R2Error:
    return R2Error("R2Error", message, code, status)


class CamelNames:
    """Cloudflare's camelCase names (`httpMetadata`, `arrayBuffer`, `uploadPart`...) as aliases of
    the Python ones, so code written against the JavaScript shape runs unchanged."""

    def __getattr__(self, name: str) -> Any:
        snake = _CAMEL.sub(lambda m: "_" + m.group(0).lower(), name)
        if snake == name or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self, snake)


def camel_options(method: F) -> F:
    """`method` also accepts its options under Cloudflare's names (`onlyIf=`, `httpMetadata=`)."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **{_CAMEL.sub(lambda m: "_" + m.group(0).lower(), k): v for k, v in kwargs.items()})

    return cast(F, call)


class R2Object(CamelNames):
    """An object's metadata (`head`, `put`, `list`, a `get` whose condition failed)."""

    def __init__(self, row: Row, range_: dict[str, int] | None = None, *, include: Iterable[str] | None = None):
        self.key = row.key
        self.version = row.version
        self.size = row.size
        self.etag = row.etag
        self.http_etag = f'"{row.etag}"'
        self.uploaded = dt.datetime.fromtimestamp(row.uploaded, dt.UTC)
        wanted = {"httpMetadata", "customMetadata"} if include is None else set(include)
        self.http_metadata: dict[str, Any] = dict(row.http_metadata) if "httpMetadata" in wanted else {}
        if "cacheExpiry" in self.http_metadata:
            self.http_metadata["cacheExpiry"] = dt.datetime.fromtimestamp(self.http_metadata["cacheExpiry"], dt.UTC)
        self.custom_metadata: dict[str, str] = dict(row.custom_metadata) if "customMetadata" in wanted else {}
        self.range = range_
        self.storage_class = "Standard"
        self.checksums = {"md5": row.etag} if "-" not in row.etag else {}

    def write_http_metadata(self, headers: Any) -> None:
        """Set the object's HTTP metadata as response headers (`headers[name] = value`)."""
        names = {"contentType": "content-type", "contentLanguage": "content-language",
                 "contentDisposition": "content-disposition", "contentEncoding": "content-encoding",
                 "cacheControl": "cache-control", "cacheExpiry": "expires"}
        for field, header in names.items():
            value = self.http_metadata.get(field)
            if isinstance(value, dt.datetime):
                headers[header] = email.utils.format_datetime(value, usegmt=True)
            elif value is not None:
                headers[header] = str(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, size={self.size}, etag={self.etag!r})"


class R2ObjectBody(R2Object):
    """An object with its body: `body` streams the chunks once; `bytes`/`array_buffer`, `text`,
    `json` read it whole (the caller chose to hold it)."""

    def __init__(self, row: Row, file: BinaryIO, offset: int, length: int, range_: dict[str, int] | None):
        super().__init__(row, range_)
        self._file, self._offset, self._length = file, offset, length
        self.body_used = False

    @property
    def body(self) -> AsyncIterator[bytes]:
        if self.body_used:
            raise r2_error("the body of this object was already read", "r2_body_used")
        self.body_used = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            self._file.seek(self._offset)
            left = self._length
            while left > 0:
                chunk = await asyncio.to_thread(self._file.read, min(READ_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            self._file.close()

    async def bytes(self) -> bytes:
        return b"".join([chunk async for chunk in self.body])

    array_buffer = bytes

    async def text(self) -> str:
        return (await self.bytes()).decode()

    async def json(self) -> Any:
        return json.loads(await self.bytes())

    def __del__(self) -> None:
        self._file.close()


class R2Objects(CamelNames):
    """A `list` page."""

    def __init__(self, objects: list[R2Object], truncated: bool, cursor: str | None, delimited_prefixes: list[str]):
        self.objects, self.truncated, self.cursor, self.delimited_prefixes = objects, truncated, cursor, delimited_prefixes


class R2UploadedPart(CamelNames):
    def __init__(self, part_number: int, etag: str):
        self.part_number, self.etag = part_number, etag

    def __repr__(self) -> str:
        return f"R2UploadedPart(part_number={self.part_number}, etag={self.etag!r})"

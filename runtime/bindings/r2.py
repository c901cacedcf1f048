"""R2 buckets (`env.BUCKET`): Cloudflare's R2 Workers API, with Python names.

    obj = await env.BUCKET.put("a.txt", body, http_metadata={"contentType": "text/plain"},
                               custom_metadata={"owner": "me"}, only_if={"etagDoesNotMatch": "*"})
    got = await env.BUCKET.get("a.txt", range={"offset": 2, "length": 3})
    async for chunk in got.body: ...          # or await got.text() / .json() / .bytes()
    await env.BUCKET.head("a.txt"); await env.BUCKET.delete(["a.txt", "b.txt"])
    page = await env.BUCKET.list(prefix="logs/", delimiter="/", limit=100, include=["customMetadata"])
    up = await env.BUCKET.create_multipart_upload("big.bin")
    part = await up.upload_part(1, chunks); obj = await up.complete([part])

Semantics kept from Cloudflare: `get`/`head` of a missing key give None; a failed `only_if` on
`get` gives the object without a body (an `R2Object`), on `put` gives None; etags are the md5 hex
of the content, or ``<md5 of the parts' md5s>-<parts>`` for a multipart object; `list` pages by
`cursor` with `truncated`, groups keys under `delimiter` into `delimited_prefixes`, and returns
metadata only for what `include` names. Limits: keys up to 1,024 bytes, metadata (HTTP and custom)
up to 8,192 bytes, `list` limit 1..1,000, `delete` up to 1,000 keys, one put or part up to 5 GiB - 5 MiB,
multipart parts of at least 5 MiB (except the last) and at most 10,000 of them.

Bodies stream through this process's state dir (`runtime/bindings/r2_store.py`): no body is
ever held whole in memory, and a write is atomic. Every call counts as one binding operation
of the request; puts and deletes are audited (`r2.put`, `r2.delete`) with the request id.
With ``tenant_scoped = true`` each tenant sees only its own keys.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.bindings import AuditHook, BindingHost, BindingKind
from runtime.bindings.r2_objects import (
    READ_CHUNK,
    CamelNames,
    R2Error,
    R2Object,
    R2ObjectBody,
    R2Objects,
    R2UploadedPart,
    camel_options,
    r2_error,
)
from runtime.bindings.r2_store import BlobWriter, Part, Row, Store
from runtime.isolate.context import current
from runtime.names import BINDING_NAME

if TYPE_CHECKING:
    from runtime.config import ScriptConfig

__all__ = ["KIND", "R2Bucket", "R2BucketBinding", "R2Error", "R2MultipartUpload", "R2Object", "R2ObjectBody",
           "R2Objects", "R2UploadedPart"]

MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 8192
MAX_LIST_LIMIT = 1000
MAX_DELETE_KEYS = 1000
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000
MAX_UPLOAD_BYTES = 5 * 1024**3 - 5 * 1024**2  # one put or one part
_HTTP_FIELDS = ("contentType", "contentLanguage", "contentDisposition", "contentEncoding", "cacheControl",
                "cacheExpiry")


class R2BucketBinding(BaseModel):
    """`[[scripts.r2_buckets]]`: wrangler's keys (`binding`, `bucket_name`; `preview_bucket_name` and
    `jurisdiction` are accepted and change nothing locally: data lives under `bucket_name`), plus
    `tenant_scoped`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=BINDING_NAME)]
    bucket_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")]  # R2's bucket-name rule
    preview_bucket_name: Annotated[str | None, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")] = None
    jurisdiction: str | None = None
    tenant_scoped: bool = False


# -- argument checks ---------------------------------------------------------------------------


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"r2: a key is a str, not {type(key).__name__}")
    if not key:
        raise r2_error("r2: the key is empty", "r2_invalid_key")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise r2_error(f"r2: key is {len(key.encode())} bytes, the limit is {MAX_KEY_BYTES}", "r2_key_too_long")
    return key


def _http_metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError("r2: http_metadata is a dict (contentType, contentLanguage, ...)")
    snake = {"content_type": "contentType", "content_language": "contentLanguage",
             "content_disposition": "contentDisposition", "content_encoding": "contentEncoding",
             "cache_control": "cacheControl", "cache_expiry": "cacheExpiry"}
    out: dict[str, Any] = {}
    for name, v in value.items():
        field = snake.get(name, name)
        if field not in _HTTP_FIELDS:
            raise r2_error(f"r2: unknown http_metadata field {name!r} (known: {', '.join(_HTTP_FIELDS)})")
        out[field] = v.timestamp() if isinstance(v, dt.datetime) else v
    return out


def _metadata(http_metadata: Any, custom_metadata: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Both metadata maps, checked, within R2's object metadata size (names and values, in bytes)."""
    http = _http_metadata(http_metadata)
    custom = custom_metadata or {}
    if not isinstance(custom, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in custom.items()):
        raise TypeError("r2: custom_metadata is a dict of str to str")
    size = sum(len(k.encode()) + len(str(v).encode()) for k, v in (*http.items(), *custom.items()))
    if size > MAX_METADATA_BYTES:
        raise r2_error(f"r2: the object's metadata is {size} bytes, the limit is {MAX_METADATA_BYTES}",
                       "r2_metadata_too_large")
    return http, dict(custom)


def _condition(only_if: Any) -> dict[str, Any]:
    if only_if is None:
        return {}
    if not isinstance(only_if, dict):
        raise TypeError("r2: only_if is a dict (etagMatches, etagDoesNotMatch, uploadedBefore, uploadedAfter)")
    names = {"etag_matches": "etagMatches", "etag_does_not_match": "etagDoesNotMatch",
             "uploaded_before": "uploadedBefore", "uploaded_after": "uploadedAfter"}
    out: dict[str, Any] = {}
    for name, value in only_if.items():
        field = names.get(str(name), str(name))
        if field not in names.values():
            raise r2_error(f"r2: unknown only_if condition {name!r}")
        out[field] = value
    return out


def _etag_in(etag: str, wanted: Any) -> bool:
    tags = [wanted] if isinstance(wanted, str) else list(wanted)
    return any(t == "*" or t.strip('"') == etag for t in tags)


def _holds(cond: dict[str, Any], row: Row | None) -> bool:
    """Whether `row` (None: no object) meets the condition, with HTTP's precedence (RFC 9110
    13.2.2: an etag condition present makes its date counterpart ignored)."""
    if not cond:
        return True
    if row is None:
        return "etagMatches" not in cond and "uploadedAfter" not in cond
    uploaded = dt.datetime.fromtimestamp(row.uploaded, dt.UTC)
    if "etagMatches" in cond:
        if not _etag_in(row.etag, cond["etagMatches"]):
            return False
    elif "uploadedBefore" in cond and not uploaded < _aware(cond["uploadedBefore"]):
        return False
    if "etagDoesNotMatch" in cond:
        if _etag_in(row.etag, cond["etagDoesNotMatch"]):
            return False
    elif "uploadedAfter" in cond and not uploaded > _aware(cond["uploadedAfter"]):
        return False
    return True


def _aware(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError("r2: uploadedBefore/uploadedAfter are datetimes")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _span(range_: Any, size: int) -> tuple[int, int]:
    """(offset, length) of `range` ({offset, length} or {suffix}) within an object of `size`."""
    if not isinstance(range_, dict) or not set(range_) <= {"offset", "length", "suffix"}:
        raise r2_error("r2: range is {offset, length} or {suffix}", "r2_invalid_range")
    if "suffix" in range_:
        if set(range_) != {"suffix"} or range_["suffix"] < 0:
            raise r2_error("r2: a suffix range has only a non-negative suffix", "r2_invalid_range")
        length = min(int(range_["suffix"]), size)
        return size - length, length
    offset = int(range_.get("offset", 0))
    length = int(range_["length"]) if "length" in range_ else size - offset
    if offset < 0 or length < 0 or offset > size:
        raise r2_error(f"r2: range {range_} is outside an object of {size} bytes", "r2_invalid_range", 416)
    return offset, min(length, size - offset)


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    """A put's value as chunks: bytes-like, str, None, an (async) iterable of chunks, or anything
    with such a `body` (an `R2ObjectBody`, a request)."""
    if body is None:
        return
    if isinstance(body, str):
        yield body.encode()
    elif isinstance(body, bytes | bytearray | memoryview):
        yield bytes(body)
    elif isinstance(body, AsyncIterable):
        async for chunk in body:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    elif isinstance(body, Iterable):
        for chunk in body:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    else:
        inner = getattr(body, "body", None)  # read once: an R2ObjectBody's body streams only once
        if inner is None:
            raise TypeError(f"r2: cannot store a {type(body).__name__} (bytes, str, None or chunks)")
        async for chunk in _chunks(inner):
            yield chunk


async def _write(store: Store, body: Any, limit: int | None) -> BlobWriter:
    """The body written to a published blob (the caller commits or discards it); refused once it
    passes `limit` bytes (None: assembled from parts already checked)."""
    writer = await asyncio.to_thread(store.writer)
    try:
        async for chunk in _chunks(body):
            if limit is not None and writer.size + len(chunk) > limit:
                raise r2_error(f"r2: the body is over {limit} bytes, R2's limit for one upload (larger objects: "
                               "multipart upload)", "r2_entity_too_large", 413)
            await asyncio.to_thread(writer.write, chunk)
        await asyncio.to_thread(writer.publish)
    except BaseException:
        writer.discard()
        raise
    return writer


def _md5_given(md5: Any) -> str:
    if isinstance(md5, bytes | bytearray):
        return bytes(md5).hex()
    if isinstance(md5, str):
        if len(md5) == 32:
            return md5.lower()
        return base64.b64decode(md5).hex()
    raise TypeError("r2: md5 is the digest as bytes, hex or base64")


# -- the binding -------------------------------------------------------------------------------


class R2Bucket(CamelNames):
    """`env.BUCKET`."""

    def __init__(self, store: Store, bucket: str, *, tenant_scoped: bool = False, audit: AuditHook | None = None):
        self._store, self._bucket, self._tenant_scoped, self._audit = store, bucket, tenant_scoped, audit

    def _begin(self) -> str:
        """Count the operation against the request's limit; the tenant whose keys it sees."""
        scope = current()
        scope.count_binding_op()
        if not self._tenant_scoped:
            return ""
        if scope.tenant is None:
            raise r2_error(f"r2: bucket {self._bucket!r} is tenant-scoped and this request has no tenant",
                           "r2_no_tenant", 403)
        return scope.tenant

    def _audited(self, kind: str, key: str, size: int, etag: str, tenant: str) -> None:
        if self._audit is not None:
            self._audit(kind, {"request_id": current().request_id, "bucket": self._bucket, "key": key,
                               "size": size, "etag": etag, "tenant": tenant or None})

    async def head(self, key: str) -> R2Object | None:
        tenant = self._begin()
        row = await asyncio.to_thread(self._store.head, tenant, _check_key(key))
        return R2Object(row) if row else None

    @camel_options
    async def get(self, key: str, *, range: Any = None,  # noqa: A002 (Cloudflare's name)
                  only_if: Any = None) -> R2ObjectBody | R2Object | None:
        tenant = self._begin()
        cond = _condition(only_if)
        found = await asyncio.to_thread(self._store.open_current, tenant, _check_key(key))
        if found is None:
            return None
        row, file = found
        if not _holds(cond, row):
            file.close()
            return R2Object(row)
        if range is None:
            return R2ObjectBody(row, file, 0, row.size, None)
        try:
            offset, length = _span(range, row.size)
        except BaseException:
            file.close()
            raise
        return R2ObjectBody(row, file, offset, length, {"offset": offset, "length": length})

    @camel_options
    async def put(self, key: str, value: Any, *, http_metadata: Any = None, custom_metadata: Any = None,
                  only_if: Any = None, md5: Any = None) -> R2Object | None:
        tenant = self._begin()
        key, cond = _check_key(key), _condition(only_if)
        http, custom = _metadata(http_metadata, custom_metadata)
        expected = _md5_given(md5) if md5 is not None else None
        if cond and not _holds(cond, await asyncio.to_thread(self._store.head, tenant, key)):
            return None  # refused before reading the body, as R2 does
        writer = await _write(self._store, value, MAX_UPLOAD_BYTES)
        etag = writer.md5.hexdigest()
        if expected is not None and expected != etag:
            writer.discard()
            raise r2_error(f"r2: the body's md5 is {etag}, not the {expected} given", "r2_bad_digest")
        row = await asyncio.to_thread(self._store.commit_object, tenant, key, writer.name, writer.size, etag, http,
                                      custom, (lambda r: _holds(cond, r)) if cond else None)
        if row is None:
            writer.discard()
            return None
        self._audited("r2.put", key, row.size, etag, tenant)
        return R2Object(row)

    async def delete(self, keys: str | list[str]) -> None:
        tenant = self._begin()
        many = [keys] if isinstance(keys, str) else list(keys)
        if len(many) > MAX_DELETE_KEYS:
            raise r2_error(f"r2: delete takes at most {MAX_DELETE_KEYS} keys, got {len(many)}", "r2_too_many_keys")
        gone = await asyncio.to_thread(self._store.delete, tenant, [_check_key(k) for k in many])
        for row in gone:
            self._audited("r2.delete", row.key, row.size, row.etag, tenant)

    @camel_options
    async def list(self, *, prefix: str = "", delimiter: str | None = None, cursor: str | None = None,
                   limit: int = MAX_LIST_LIMIT, include: list[str] | None = None,
                   start_after: str | None = None) -> R2Objects:
        tenant = self._begin()
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise r2_error(f"r2: list limit is 1..{MAX_LIST_LIMIT}, got {limit}", "r2_invalid_limit")
        wanted = list(include or [])
        for name in wanted:
            if name not in ("httpMetadata", "customMetadata"):
                raise r2_error(f"r2: list include names httpMetadata or customMetadata, not {name!r}")
        after = _decode_cursor(cursor) if cursor else (start_after or "")
        objects: list[R2Object] = []
        prefixes: list[str] = []
        while len(objects) + len(prefixes) < limit:
            rows = await asyncio.to_thread(self._store.list, tenant, prefix, after, limit + 1)
            if not rows:
                return R2Objects(objects, False, None, prefixes)
            for row in rows:
                if len(objects) + len(prefixes) == limit:
                    return R2Objects(objects, True, _encode_cursor(after), prefixes)
                after = row.key
                cut = row.key.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    group = row.key[:cut + len(delimiter or "")]
                    prefixes.append(group)
                    after = group + "\U0010ffff"  # past every key of the group
                    break
                objects.append(R2Object(row, include=wanted))
        more = await asyncio.to_thread(self._store.list, tenant, prefix, after, 1)
        return R2Objects(objects, bool(more), _encode_cursor(after) if more else None, prefixes)

    @camel_options
    async def create_multipart_upload(self, key: str, *, http_metadata: Any = None,
                                      custom_metadata: Any = None) -> R2MultipartUpload:
        tenant = self._begin()
        key = _check_key(key)
        upload_id = await asyncio.to_thread(self._store.create_upload, tenant, key,
                                            *_metadata(http_metadata, custom_metadata))
        return R2MultipartUpload(self, tenant, key, upload_id)

    def resume_multipart_upload(self, key: str, upload_id: str) -> R2MultipartUpload:
        """No operation yet (as on Cloudflare): an unknown upload fails on its first call."""
        return R2MultipartUpload(self, None, _check_key(key), upload_id)


def _encode_cursor(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except ValueError:
        raise r2_error(f"r2: {cursor!r} is not a cursor this bucket returned", "r2_invalid_cursor") from None


class R2MultipartUpload(CamelNames):
    """An upload in progress: parts numbered 1..10,000, each stored as it arrives."""

    def __init__(self, bucket: R2Bucket, tenant: str | None, key: str, upload_id: str):
        self._bucket, self._tenant, self.key, self.upload_id = bucket, tenant, key, upload_id

    async def _metadata(self) -> tuple[str, tuple[dict[str, Any], dict[str, str]]]:
        tenant = self._bucket._begin()
        if self._tenant is not None and tenant != self._tenant:
            raise r2_error("r2: this upload belongs to another tenant", "r2_no_such_upload", 404)
        found = await asyncio.to_thread(self._bucket._store.upload, tenant, self.key, self.upload_id)
        if found is None:
            raise r2_error(f"r2: no multipart upload {self.upload_id!r} for key {self.key!r}", "r2_no_such_upload", 404)
        return tenant, found

    async def upload_part(self, part_number: int, value: Any) -> R2UploadedPart:
        await self._metadata()
        if not 1 <= part_number <= MAX_PARTS:
            raise r2_error(f"r2: part numbers are 1..{MAX_PARTS}, got {part_number}", "r2_invalid_part")
        store = self._bucket._store
        writer = await _write(store, value, MAX_UPLOAD_BYTES)
        part = Part(part_number, writer.name, writer.size, writer.md5.hexdigest())
        if not await asyncio.to_thread(store.commit_part, self.upload_id, part):
            writer.discard()
            raise r2_error(f"r2: multipart upload {self.upload_id!r} was completed or aborted", "r2_no_such_upload", 404)
        return R2UploadedPart(part_number, part.etag)

    async def abort(self) -> None:
        await self._metadata()
        await asyncio.to_thread(self._bucket._store.abort_upload, self.upload_id)

    async def complete(self, uploaded_parts: list[R2UploadedPart]) -> R2Object:
        tenant, (http, custom) = await self._metadata()
        store = self._bucket._store
        stored = await asyncio.to_thread(store.parts, self.upload_id)
        chosen = sorted(uploaded_parts, key=lambda p: p.part_number)
        if not chosen:
            raise r2_error("r2: complete needs at least one part", "r2_invalid_part")
        parts = []
        for i, given in enumerate(chosen):
            part = stored.get(given.part_number)
            if part is None or part.etag != given.etag.strip('"'):
                raise r2_error(f"r2: part {given.part_number} was not uploaded with etag {given.etag!r}",
                               "r2_invalid_part")
            if i < len(chosen) - 1 and part.size < MIN_PART_BYTES:
                raise r2_error(f"r2: part {given.part_number} is {part.size} bytes; every part but the last is at "
                               f"least {MIN_PART_BYTES}", "r2_entity_too_small")
            parts.append(part)
        writer = await _write(store, _part_chunks(store, parts), None)
        etag = f"{hashlib.md5(b''.join(bytes.fromhex(p.etag) for p in parts)).hexdigest()}-{len(parts)}"
        row = await asyncio.to_thread(store.finish_upload, tenant, self.key, self.upload_id, writer.name,
                                      writer.size, etag, http, custom)
        if row is None:
            writer.discard()
            raise r2_error(f"r2: multipart upload {self.upload_id!r} was completed or aborted", "r2_no_such_upload", 404)
        self._bucket._audited("r2.put", self.key, row.size, etag, tenant)
        return R2Object(row)


async def _part_chunks(store: Store, parts: list[Part]) -> AsyncIterator[bytes]:
    for part in parts:
        with open(store.blobs / part.blob, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                yield chunk


# -- the kind ----------------------------------------------------------------------------------


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [(f"r2_buckets[{j}]", b.binding) for j, b in enumerate(script.r2_buckets)]


def _build(host: BindingHost) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in host.script.r2_buckets:
        store = Store(host.state_dir / "r2" / b.bucket_name)
        store.sweep()
        out[b.binding] = R2Bucket(store, b.bucket_name, tenant_scoped=b.tenant_scoped, audit=host.audit)
    return out


KIND = BindingKind(
    name="r2",
    fields={"r2_buckets": (list[R2BucketBinding], [])},
    env_names=_names,
    build=_build,
)

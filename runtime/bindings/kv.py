"""The KV binding (`env.NS`): a key-value namespace in the shape of Cloudflare's Workers KV API.

    await env.NS.put("greeting", "hi", expiration_ttl=3600, metadata={"by": "me"})
    await env.NS.put("greeting", "hi", {"expirationTtl": 3600})   # KV's options dict (and expirationTtl=, cacheTtl=)
    text = await env.NS.get("greeting")                       # str, or None when absent/expired
    data = await env.NS.get("config", type="json")            # also get(key, {"type": "json"}) and get(key, "json")
    res = await env.NS.get_with_metadata("greeting")          # res["value"], res["metadata"] (also res.value)
    page = await env.NS.list(prefix="user:", limit=100, cursor=None)  # keys, list_complete, cursor
    await env.NS.delete("greeting")

Declared per script as wrangler does, ``kv_namespaces = [{ binding = "NS", id = "..." }]``
(``tenant_scoped = true``: every key lives under the calling request's tenant, and a request
without a tenant is refused). The data lives in ``<state>/kv/<id>.sqlite``, one file per
namespace, opened with `objects.sqlitefile.connect` (WAL) by every isolate of the runtime.

Consistency: stronger than Cloudflare's. Each call is one SQLite statement on the shared file,
so a write is visible to the isolate that made it and to every other isolate as soon as `put`
or `delete` returns (Cloudflare: up to 60 s or more elsewhere). ``cache_ttl`` is accepted and
checked (at least 30 s, Cloudflare's minimum) but nothing is cached, so it changes nothing.

Limits, Cloudflare's, each refused with `KVError` naming it: a key is 1..512 UTF-8 bytes and not
``.`` or ``..``; a value at most 25 MiB; metadata at most 1024 bytes serialized as JSON;
``expiration_ttl`` at least 60 s and ``expiration`` at least 60 s in the future; ``list``'s
``limit`` 1..1000 (default 1000). Expired keys are never returned by `get` or `list` and are
deleted when met. Every call counts once against the request's binding-operations limit;
`put` and `delete` are audited as ``kv.put``/``kv.delete`` (namespace, key, request id, tenant;
never the value).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from objects import sqlitefile
from runtime.bindings import AuditHook, BindingHost, BindingKind
from runtime.isolate.context import current
from runtime.names import BINDING_NAME

if TYPE_CHECKING:
    from runtime.config import ScriptConfig

__all__ = ["KIND", "KVBinding", "KVError", "KVNamespace", "KVStore", "check_key", "checked_put", "namespace_path"]

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_METADATA_BYTES = 1024
MIN_TTL_S = 60
MIN_CACHE_TTL_S = 30
MAX_LIST_LIMIT = 1000
GET_TYPES = ("text", "json", "bytes", "arrayBuffer", "stream")
_STREAM_CHUNK = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv(
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expiration INTEGER,
    metadata TEXT,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
"""


class KVBinding(BaseModel):
    """One entry of `kv_namespaces`: a namespace bound as `env.<binding>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=BINDING_NAME)]
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]
    preview_id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)] = None
    tenant_scoped: bool = False


class KVError(Exception):
    """A KV call Cloudflare would refuse (a limit, a bad argument); the message names which."""


class KVResult(dict[str, Any]):
    """A result object (``get_with_metadata``, ``list``), readable as a dict or by attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def namespace_path(state_dir: Path, namespace_id: str) -> Path:
    return state_dir / "kv" / f"{namespace_id}.sqlite"


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise KVError(f"KV key must be a string, not {type(key).__name__}")
    if key in ("", ".", ".."):
        raise KVError(f"KV key {key!r} is not allowed (empty, '.' and '..' are refused)")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise KVError(f"KV key is {len(key.encode())} bytes; the limit is {MAX_KEY_BYTES} bytes")
    return key


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise KVError(f"KV value must be str or bytes (json.dumps other values), not {type(value).__name__}")
    if len(data) > MAX_VALUE_BYTES:
        raise KVError(f"KV value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES} bytes (25 MiB)")
    return data


def _metadata_text(metadata: Any) -> str | None:
    if metadata is None:
        return None
    try:
        text = json.dumps(metadata, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise KVError(f"KV metadata must be JSON-serializable: {e}") from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise KVError(f"KV metadata is {len(text.encode())} bytes serialized; the limit is {MAX_METADATA_BYTES} bytes")
    return text


def _expiry(expiration: Any, expiration_ttl: Any, now: float) -> int | None:
    if expiration is not None and expiration_ttl is not None:
        raise KVError("give expiration or expiration_ttl, not both")
    if expiration_ttl is not None:
        if not isinstance(expiration_ttl, (int, float)) or isinstance(expiration_ttl, bool) or expiration_ttl < MIN_TTL_S:
            raise KVError(f"invalid expiration_ttl of {expiration_ttl!r}; expiration_ttl must be at least {MIN_TTL_S}")
        return int(now + expiration_ttl)
    if expiration is not None:
        if not isinstance(expiration, (int, float)) or isinstance(expiration, bool) or expiration < now + MIN_TTL_S:
            raise KVError(f"invalid expiration of {expiration!r}; expiration must be at least {MIN_TTL_S} seconds "
                          "in the future (seconds since the epoch)")
        return int(expiration)
    return None


def checked_put(key: Any, value: Any, expiration: Any, expiration_ttl: Any, metadata: Any,
                now: float) -> tuple[str, bytes, int | None, str | None]:
    """A put's (key, value bytes, expiry, metadata JSON) after Cloudflare's checks, or `KVError`."""
    return (check_key(key), _value_bytes(value), _expiry(expiration, expiration_ttl, now), _metadata_text(metadata))


def _expired(expiration: int | None, now: float) -> bool:
    return expiration is not None and expiration <= now


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_cursor(cursor: str) -> str:
    try:
        return base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise KVError(f"invalid list cursor {cursor!r}") from None


class KVStore:
    """A namespace's SQLite file; synchronous, used by the binding's thread and by the CLI."""

    def __init__(self, path: Path):
        self.conn = sqlitefile.connect(path, _SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def lookup(self, tenant: str, key: str) -> tuple[bytes, str | None, int | None] | None:
        """(value, metadata JSON, expiration) as stored, expired or not; a read, never a write."""
        row = self.conn.execute("SELECT value, metadata, expiration FROM kv WHERE tenant = ? AND key = ?",
                                (tenant, key)).fetchone()
        return None if row is None else (bytes(row[0]), row[1], row[2])

    def get(self, tenant: str, key: str, now: float) -> tuple[bytes, str | None, int | None] | None:
        """The entry of `key`, or None when it is absent or expired at `now`."""
        found = self.lookup(tenant, key)
        return None if found is None or _expired(found[2], now) else found

    def purge(self, tenant: str, key: str, now: float) -> None:
        """Delete `key` if it has expired by `now` (a write that came later is kept)."""
        self.conn.execute("DELETE FROM kv WHERE tenant = ? AND key = ? AND expiration <= ?", (tenant, key, now))

    def put(self, tenant: str, key: str, value: bytes, expiration: int | None, metadata: str | None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO kv(tenant, key, value, expiration, metadata) VALUES (?, ?, ?, ?, ?)",
                          (tenant, key, value, expiration, metadata))

    def delete(self, tenant: str, key: str) -> None:
        self.conn.execute("DELETE FROM kv WHERE tenant = ? AND key = ?", (tenant, key))

    def list(self, tenant: str, prefix: str, limit: int, after: str | None, now: float) -> KVResult:
        self.conn.execute("DELETE FROM kv WHERE tenant = ? AND expiration IS NOT NULL AND expiration <= ?", (tenant, now))
        # TEXT compares by its UTF-8 bytes here, the order Cloudflare lists keys in.
        rows = self.conn.execute(
            "SELECT key, expiration, metadata FROM kv WHERE tenant = ? AND substr(key, 1, ?) = ? AND key > ? "
            "ORDER BY key LIMIT ?",
            (tenant, len(prefix), prefix, after or "", limit + 1)).fetchall()
        keys = []
        for name, expiration, metadata in rows[:limit]:
            entry: dict[str, Any] = {"name": name}
            if expiration is not None:
                entry["expiration"] = expiration
            if metadata is not None:
                entry["metadata"] = json.loads(metadata)
            keys.append(entry)
        result = KVResult(keys=keys, list_complete=len(rows) <= limit, cacheStatus=None)
        if not result["list_complete"]:
            result["cursor"] = _encode_cursor(keys[-1]["name"])
        return result


class KVNamespace:
    """`env.NS`. Writes and `list` run on one thread per namespace per isolate, which owns the
    writing connection; a get is one indexed read on a second connection, run on the event loop:
    a WAL reader does not wait for writers, and the hop to a thread cost ten times the read."""

    def __init__(self, binding: KVBinding, state_dir: Path, audit: AuditHook | None = None):
        self._binding = binding
        self._path = namespace_path(state_dir, binding.id)
        self._audit = audit
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kv-{binding.binding}")
        self._store: KVStore | None = None
        self._reader: KVStore | None = None

    async def get(self, key: str, type: Any = "text", *, cache_ttl: int | None = None,  # noqa: A002 (KV's name)
                  cacheTtl: int | None = None) -> Any:  # noqa: N803 (the JS API's spelling)
        """The value of `key` as `type` ("text", "json", "bytes"/"arrayBuffer", "stream"), or None."""
        value_type, cache_ttl = _get_options(type, cache_ttl if cacheTtl is None else cacheTtl)
        found = await self._read(key, cache_ttl)
        return None if found is None else _typed(found[0], value_type)

    async def get_with_metadata(self, key: str, type: Any = "text", *,  # noqa: A002 (KV's name)
                                cache_ttl: int | None = None, cacheTtl: int | None = None) -> KVResult:  # noqa: N803
        value_type, cache_ttl = _get_options(type, cache_ttl if cacheTtl is None else cacheTtl)
        found = await self._read(key, cache_ttl)
        if found is None:
            return KVResult(value=None, metadata=None, cacheStatus=None)
        return KVResult(value=_typed(found[0], value_type),
                        metadata=None if found[1] is None else json.loads(found[1]), cacheStatus=None)

    async def put(self, key: str, value: Any, options: dict[str, Any] | None = None, *,
                  expiration: int | float | None = None, expiration_ttl: int | float | None = None,
                  metadata: Any = None, expirationTtl: int | float | None = None) -> None:  # noqa: N803 (JS spelling)
        """Write `key`; options as keywords or as KV's dict (``{"expirationTtl": 120, "metadata": ...}``)."""
        if options:
            unknown = set(options) - {"expiration", "expirationTtl", "expiration_ttl", "metadata"}
            if unknown:
                raise KVError(f"unknown put option(s): {', '.join(sorted(unknown))}")
            expiration = options.get("expiration", expiration)
            expiration_ttl = options.get("expirationTtl", options.get("expiration_ttl", expiration_ttl))
            metadata = options.get("metadata", metadata)
        if expirationTtl is not None:
            expiration_ttl = expirationTtl
        entry = checked_put(key, value, expiration, expiration_ttl, metadata, time.time())
        tenant = self._tenant()
        await self._run(lambda s: s.put(tenant, *entry))
        self._audited("kv.put", key, tenant)

    async def delete(self, key: str) -> None:
        check_key(key)
        tenant = self._tenant()
        await self._run(lambda s: s.delete(tenant, key))
        self._audited("kv.delete", key, tenant)

    async def list(self, options: dict[str, Any] | None = None, *, prefix: str | None = None,
                   limit: int | None = None, cursor: str | None = None) -> KVResult:
        """One page of keys in byte order: ``keys`` (name, expiration, metadata), ``list_complete``,
        and ``cursor`` for the next page when it is not complete. Accepts KV's options dict too."""
        if options:
            unknown = set(options) - {"prefix", "limit", "cursor"}
            if unknown:
                raise KVError(f"unknown list option(s): {', '.join(sorted(unknown))}")
            prefix, limit, cursor = options.get("prefix", prefix), options.get("limit", limit), options.get("cursor", cursor)
        prefix = prefix or ""
        if not isinstance(prefix, str):
            raise KVError("list prefix must be a string")
        if limit is None:
            limit = MAX_LIST_LIMIT
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise KVError(f"invalid list limit of {limit!r}; it must be between 1 and {MAX_LIST_LIMIT}")
        after = _decode_cursor(cursor) if cursor else None
        tenant = self._tenant()
        return await self._run(lambda s: s.list(tenant, prefix, limit, after, time.time()))

    def close(self) -> None:
        self._thread.submit(self._close_store)
        self._thread.shutdown(wait=True)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    async def _read(self, key: str, cache_ttl: int | None) -> tuple[bytes, str | None, int | None] | None:
        check_key(key)
        tenant = self._tenant()
        current().count_binding_op()
        if self._reader is None:  # the first open may wait on the file's first-open lock: off the loop
            reader = await asyncio.get_running_loop().run_in_executor(self._thread, KVStore, self._path)
            if self._reader is None:
                self._reader = reader
            else:  # another get opened one meanwhile
                reader.close()
        found = self._reader.lookup(tenant, key)
        if found is None:
            return None
        now = time.time()
        if _expired(found[2], now):
            self._thread.submit(lambda: self._opened().purge(tenant, key, now))
            return None
        return found

    async def _run(self, work: Any) -> Any:
        current().count_binding_op()
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: work(self._opened()))

    def _opened(self) -> KVStore:
        if self._store is None:
            self._store = KVStore(self._path)
        return self._store

    def _tenant(self) -> str:
        if not self._binding.tenant_scoped:
            return ""
        tenant = current().tenant
        if not tenant:
            raise KVError(f"KV namespace {self._binding.binding} is tenant-scoped; this request has no tenant")
        return tenant

    def _audited(self, kind: str, key: str, tenant: str) -> None:
        if self._audit is not None:
            self._audit(kind, {"request_id": current().request_id or None, "namespace": self._binding.id,
                               "binding": self._binding.binding, "key": key, "tenant": tenant or None})


def _get_options(type_: Any, cache_ttl: int | None) -> tuple[str, int | None]:
    if isinstance(type_, dict):
        unknown = set(type_) - {"type", "cacheTtl", "cache_ttl"}
        if unknown:
            raise KVError(f"unknown get option(s): {', '.join(sorted(unknown))}")
        cache_ttl = type_.get("cacheTtl", type_.get("cache_ttl", cache_ttl))
        type_ = type_.get("type", "text")
    if type_ not in GET_TYPES:
        raise KVError(f"unknown KV get type {type_!r}; use one of {', '.join(GET_TYPES)}")
    if cache_ttl is not None and (not isinstance(cache_ttl, int) or isinstance(cache_ttl, bool)
                                  or cache_ttl < MIN_CACHE_TTL_S):
        raise KVError(f"invalid cache_ttl of {cache_ttl!r}; cache_ttl must be at least {MIN_CACHE_TTL_S}")
    return type_, cache_ttl


def _typed(value: bytes, value_type: str) -> Any:
    if value_type == "text":
        return value.decode("utf-8", errors="replace")
    if value_type == "json":
        try:
            return json.loads(value)
        except ValueError as e:
            raise KVError(f"KV value is not valid JSON: {e}") from None
    if value_type == "stream":
        return _stream(value)
    return value


async def _stream(value: bytes) -> AsyncIterator[bytes]:
    """A "stream" read: the value in chunks (`async for chunk in await env.NS.get(k, type="stream")`)."""
    view = memoryview(value)
    for start in range(0, len(value), _STREAM_CHUNK):
        yield bytes(view[start:start + _STREAM_CHUNK])


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [(f"kv_namespaces[{i}].binding", b.binding) for i, b in enumerate(getattr(script, "kv_namespaces", []))]


def _build(host: BindingHost) -> dict[str, Any]:
    bindings: list[KVBinding] = getattr(host.script, "kv_namespaces", [])
    return {b.binding: KVNamespace(b, host.state_dir, host.audit) for b in bindings}


KIND = BindingKind(
    name="kv",
    fields={"kv_namespaces": (list[KVBinding], [])},
    env_names=_names,
    build=_build,
)

"""A minimal durable-object host used only while ``objects`` does not export its own.

It implements the slice of the objects API that workflows use, with the same names and
shapes: ``DurableObject`` (``self.ctx``, ``self.env``), ``ctx.storage`` (async
``get/put/delete/list/transaction/sync``, ``set_alarm/get_alarm/delete_alarm``,
``sql.exec``), ``ObjectHost(script, classes, env, state_dir, clock=...)`` with
``start/close/handle``, ``DurableObjectNamespace(...).get_by_name(name)`` stubs with RPC, and
``LocalTransport(host)``.

Semantics kept deliberately simple: one SQLite file per object (WAL, ``synchronous=FULL``),
every write committed before its ``await`` returns (so ``sync()`` is a no-op), RPC calls to one
object run one at a time, alarms persisted in the object's file and fired by a scheduler that
reads the injected clock (``now()`` in epoch ms), so a fake clock drives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

__all__ = ["DurableObject", "DurableObjectNamespace", "LocalTransport", "ObjectHost"]


class _Cursor(list):  # type: ignore[type-arg]
    def to_list(self) -> list[dict[str, Any]]:
        return list(self)

    def one(self) -> dict[str, Any]:
        if len(self) != 1:
            raise ValueError(f"expected exactly one row, got {len(self)}")
        return self[0]


class _Sql:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def exec(self, query: str, *params: Any) -> _Cursor:
        cursor = self._db.execute(query, params)
        columns = [c[0] for c in cursor.description or ()]
        return _Cursor(dict(zip(columns, row, strict=True)) for row in cursor.fetchall())


class _Storage:
    def __init__(self, path: Path, on_alarm: Callable[[int | None], None]) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS _kv (k TEXT PRIMARY KEY, v BLOB)")
        self._db.execute("CREATE TABLE IF NOT EXISTS _alarm (id INTEGER PRIMARY KEY, at REAL)")
        self._on_alarm: Callable[[int | None], None] = on_alarm
        self._in_txn = False
        self.sql = _Sql(self._db)

    async def get(self, key: str) -> Any:
        row = self._db.execute("SELECT v FROM _kv WHERE k=?", (key,)).fetchone()
        return None if row is None else msgpack.unpackb(row[0])

    async def put(self, key: str | dict[str, Any], value: Any = None) -> None:
        entries = key if isinstance(key, dict) else {key: value}
        rows = [(k, msgpack.packb(v)) for k, v in entries.items()]
        if len(rows) > 1 and not self._in_txn:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO _kv (k, v) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        else:
            self._db.executemany("INSERT OR REPLACE INTO _kv (k, v) VALUES (?, ?)", rows)

    async def delete(self, key: str) -> bool:
        return self._db.execute("DELETE FROM _kv WHERE k=?", (key,)).rowcount > 0

    async def list(self, *, prefix: str = "") -> dict[str, Any]:
        rows = self._db.execute(
            "SELECT k, v FROM _kv WHERE substr(k, 1, ?) = ? ORDER BY k", (len(prefix), prefix)
        )
        return {k: msgpack.unpackb(v) for k, v in rows}

    async def delete_all(self) -> None:
        self._db.execute("DELETE FROM _kv")

    async def transaction(self, fn: Callable[[_Storage], Awaitable[Any]]) -> Any:
        if self._in_txn:
            return await fn(self)
        self._in_txn = True
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = await fn(self)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
            return result
        finally:
            self._in_txn = False

    async def sync(self) -> None:
        return None

    async def set_alarm(self, when_ms: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO _alarm (id, at) VALUES (1, ?)", (int(when_ms),))
        self._on_alarm(int(when_ms))

    async def get_alarm(self) -> int | None:
        row = self._db.execute("SELECT at FROM _alarm WHERE id=1").fetchone()
        return None if row is None else row[0]

    async def delete_alarm(self) -> None:
        self._db.execute("DELETE FROM _alarm")
        self._on_alarm(None)

    def close(self) -> None:
        self._db.close()


class _SystemClock:
    def now(self) -> int:
        return int(time.time() * 1000)


class _Context:
    def __init__(self, storage: _Storage, name: str) -> None:
        self.storage = storage
        self.name = name


class DurableObject:
    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class _Live:
    def __init__(self, obj: Any, storage: _Storage) -> None:
        self.obj = obj
        self.storage = storage
        self.lock = asyncio.Lock()
        self.alarm_at: int | None = None


class ObjectHost:
    def __init__(
        self,
        script: str,
        classes: dict[str, type],
        env: Any,
        state_dir: str | Path,
        clock: Any = None,
    ) -> None:
        self.script = script
        self.classes = classes
        self.env = env
        self.state_dir = Path(state_dir) / "objects" / script
        self.clock = clock if clock is not None else _SystemClock()
        self._live: dict[tuple[str, str], _Live] = {}
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._closed = False

    def _path(self, class_name: str, name: str) -> Path:
        digest = hashlib.sha256(f"{class_name}\0{name}".encode()).hexdigest()[:32]
        return self.state_dir / class_name / f"{digest}.sqlite"

    def _open(self, class_name: str, name: str) -> _Live:
        key = (class_name, name)
        live = self._live.get(key)
        if live is not None:
            return live
        path = self._path(class_name, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        holder: list[_Live] = []

        def on_alarm(at: int | None) -> None:
            if holder:
                holder[0].alarm_at = at
            self._wake.set()

        storage = _Storage(path, on_alarm)
        db = storage._db
        db.execute("CREATE TABLE IF NOT EXISTS _name (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT OR REPLACE INTO _name (id, name) VALUES (1, ?)", (name,))
        obj = self.classes[class_name](_Context(storage, name), self.env)
        live = _Live(obj, storage)
        row = db.execute("SELECT at FROM _alarm WHERE id=1").fetchone()
        live.alarm_at = None if row is None else int(row[0])
        holder.append(live)
        self._live[key] = live
        return live

    async def start(self) -> None:
        for class_name in self.classes:
            folder = self.state_dir / class_name
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.sqlite")):
                db = sqlite3.connect(path)
                try:
                    alarm = db.execute("SELECT at FROM _alarm WHERE id=1").fetchone()
                    row = db.execute("SELECT name FROM _name WHERE id=1").fetchone()
                except sqlite3.OperationalError:
                    continue
                finally:
                    db.close()
                if alarm is not None and row is not None:
                    self._open(class_name, row[0])
        self._scheduler = asyncio.create_task(self._run_alarms())

    async def close(self) -> None:
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        for live in self._live.values():
            closer = getattr(live.obj, "_host_closing", None)
            if closer is not None:
                await closer()
            live.storage.close()
        self._live.clear()

    async def handle(self, address: tuple[str, str], op: tuple[str, tuple[Any, ...]]) -> Any:
        class_name, name = address
        method, args = op
        if method.startswith("_"):
            raise AttributeError(f"{method!r} is not an RPC method")
        live = self._open(class_name, name)
        args = msgpack.unpackb(msgpack.packb(list(args)))
        async with live.lock:
            result = await getattr(live.obj, method)(*args)
        return msgpack.unpackb(msgpack.packb(result))

    async def _run_alarms(self) -> None:
        while not self._closed:
            now = self.clock.now()
            for live in list(self._live.values()):
                at = live.alarm_at
                if at is not None and at <= now:
                    live.alarm_at = None
                    await live.storage.delete_alarm()
                    try:
                        async with live.lock:
                            await live.obj.alarm({"retry_count": 0})
                    except Exception:
                        await live.storage.set_alarm(self.clock.now() + 1000)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.01)


class LocalTransport:
    def __init__(self, host: ObjectHost) -> None:
        self.host = host

    async def call(self, class_name: str, name: str, method: str, args: tuple[Any, ...]) -> Any:
        return await self.host.handle((class_name, name), (method, args))


class _Stub:
    def __init__(self, transport: LocalTransport, class_name: str, name: str) -> None:
        self._transport = transport
        self._class_name = class_name
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any) -> Any:
            return await self._transport.call(self._class_name, self._name, method, args)

        return call


class DurableObjectNamespace:
    def __init__(
        self,
        script: str,
        class_name: str,
        transport: LocalTransport,
        tenant_provider: Callable[[], str | None] | None = None,
        tenant_scoped: bool = False,
    ) -> None:
        self.script = script
        self.class_name = class_name
        self.transport = transport
        self.tenant_provider = tenant_provider
        self.tenant_scoped = tenant_scoped

    def get_by_name(self, name: str) -> _Stub:
        tenant = self.tenant_provider() if self.tenant_provider is not None else None
        scoped = f"{tenant}/{name}" if self.tenant_scoped and tenant else name
        return _Stub(self.transport, self.class_name, scoped)

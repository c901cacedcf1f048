"""One object's SQLite database, driven from a dedicated I/O thread.

Layout: ``<state_dir>/objects/<script>/<class>/<id>.sqlite``, WAL journal. Internal tables:
``_ew_kv(key, value)``, ``_ew_alarm(id=0, time)``, ``_ew_idempotency(key, reply, created_ms)``,
``_ew_name(id=0, name)`` (the name the id was derived from, once a caller used it);
user SQL may not name anything starting with ``_ew_`` (see ``objects.sql``).

Durability (``synchronous``): ``"normal"`` (default) — in WAL mode a commit is not fsynced;
committed data survives a crash of the process (SIGKILL), but the last commits may be lost if
the machine loses power. ``"full"`` — every commit fsyncs the WAL; survives power loss, at the
cost of one fsync per group commit.

Every call runs on the object's I/O thread, in submission order, so a read submitted after a
commit sees it. The stdlib ``sqlite3`` module is used on that thread (rather than aiosqlite) so
that one group commit — BEGIN, the upserts, the deletes, the alarm and the idempotency records,
COMMIT — is a single hop to the thread instead of one per statement. I/O threads are a fixed set
per process (``IO_THREADS``), each serving the objects whose path hashes to it: starting a thread
per object cost more than a whole workflow step, and a thread never runs two jobs at once, so each
object's jobs still run one at a time and in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, runtime_checkable

from objects.sqlitefile import connect

__all__ = [
    "Batch", "Database", "Durability", "ObjectDatabase", "OpenState", "Rows", "SavepointAction",
    "SqlResult", "SqlValue",
]

Durability = Literal["normal", "full"]
SavepointAction = Literal["release", "rollback"]
Rows = list[tuple[str, bytes]]  # (key, value) of KV entries, in key order
SqlValue = int | float | str | bytes | None  # what SQLite hands back for a column
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS _ew_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _ew_alarm (id INTEGER PRIMARY KEY CHECK (id = 0), time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _ew_idempotency (
    key TEXT PRIMARY KEY, reply BLOB NOT NULL, created_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _ew_name (id INTEGER PRIMARY KEY CHECK (id = 0), name TEXT NOT NULL);
"""

_CHUNK = 500

IO_THREADS = 8
_io_threads: list[concurrent.futures.ThreadPoolExecutor] = []
_io_lock = threading.Lock()


def _io_thread(path: Path) -> concurrent.futures.ThreadPoolExecutor:
    with _io_lock:
        if not _io_threads:
            _io_threads.extend(
                concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgeworks-do-io-{i}")
                for i in range(IO_THREADS)
            )
    return _io_threads[hash(str(path)) % IO_THREADS]


_template: bytes | None = None
_template_lock = threading.Lock()


def _empty_database() -> bytes:
    """The bytes of an empty object database: WAL mode and the internal schema already set.

    A new object's file is written from these bytes instead of being created by SQLite: creating
    a database, switching it to WAL and creating the schema cost three synchronous writes, which
    dominated the first use of an object (a workflow instance is one)."""
    global _template
    with _template_lock:
        if _template is None:
            with tempfile.TemporaryDirectory(prefix="edgeworks-template-") as d:
                conn = sqlite3.connect(f"{d}/t.sqlite", isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
                with open(f"{d}/t.sqlite", "rb") as f:
                    _template = f.read()
        return _template


def _create_from_template(path: Path, fsync: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(_empty_database())
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)  # never a half-written database under the real name


def range_query(
    table: str, start: str | None, end: str | None, prefix: str | None, reverse: bool,
    limit: int | None, scope: tuple[str, tuple[Any, ...]] | None = None,
) -> tuple[str, list[Any]]:
    """``SELECT key, value`` of a KV ``list()``: ``start`` inclusive, ``end`` exclusive, in key
    order; ``scope`` adds a condition (the object's rows of a shared table)."""
    where, params = ([scope[0]], list(scope[1])) if scope else ([], [])
    if start is not None:
        where.append("key >= ?")
        params.append(start)
    if end is not None:
        where.append("key < ?")
        params.append(end)
    if prefix:
        where.append("key >= ? AND substr(key, 1, ?) = ?")
        params += [prefix, len(prefix), prefix]
    sql = f"SELECT key, value FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY key" + (" DESC" if reverse else "")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


@dataclass
class Batch:
    """Everything one group commit writes, in one SQLite transaction."""

    epoch: int
    writes: dict[str, bytes | None] = field(default_factory=dict)  # None = delete
    alarm_changed: bool = False
    alarm: int | None = None
    idempotency: list[tuple[str, bytes, int]] = field(default_factory=list)
    expire_before: int | None = None  # prune idempotency records created before (epoch ms)
    name: str | None = None  # record the object's name


@dataclass
class OpenState:
    alarm: int | None
    rows: Rows
    complete: bool  # rows hold the whole KV table
    name: str | None = None


class SqlResult(NamedTuple):
    """What one SQL statement gave: its column names, its rows, and how many rows it changed."""

    columns: list[str]
    rows: list[tuple[SqlValue, ...]]
    rows_written: int


@runtime_checkable
class Database(Protocol):
    """The storage of one object, as ``Storage`` and the host use it: a database of its own
    (``ObjectDatabase``) or its rows in the shared file (``objects.shared``).

    ``*_now`` methods, ``exec`` and ``open_savepoint`` block the caller until the job ran on the
    database's thread; the others are awaited. Every job runs in submission order, so a read
    sees every commit submitted before it."""

    @property
    def path(self) -> Path:
        """Where the object's own database file is (or goes, once it moves out)."""
        ...

    @property
    def file(self) -> Path:
        """The SQLite file that holds the object now (named in errors)."""
        ...

    async def open(self, preload_rows: int, preload_bytes: int) -> OpenState: ...

    async def close(self, *, discard: bool = False) -> None: ...

    async def read(self, keys: list[str]) -> dict[str, bytes]: ...

    def read_now(self, keys: list[str]) -> dict[str, bytes]: ...

    async def list(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows: ...

    def list_now(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows: ...

    async def read_idempotency(self, key: str) -> tuple[bytes, int] | None:
        """``(reply, created_ms)`` recorded for ``key``."""
        ...

    def commit_soon(self, batch: Batch) -> asyncio.Future[None]:
        """Submit a group commit now; the future resolves once it is durable (or failed)."""
        ...

    async def delete_all(self) -> None:
        """Delete every KV entry and every user table (the alarm and idempotency records stay)."""
        ...

    def exec(self, query: str, params: tuple[Any, ...]) -> SqlResult: ...

    def open_savepoint(self, name: str) -> None: ...

    async def savepoint(self, name: str, action: SavepointAction) -> None: ...


class ObjectDatabase:
    def __init__(
        self,
        path: Path,
        durability: Durability = "normal",
        *,
        alarm_hook: Callable[[int | None], None] | None = None,
    ) -> None:
        self.path = path
        self.file = path  # the SQLite file holding the object (named in errors)
        self.durability = durability
        # Called on the I/O thread inside the commit job with the alarm being committed: a
        # time before the COMMIT, None after it (see objects.alarms.AlarmIndex).
        self._alarm_hook = alarm_hook
        self._executor = _io_thread(path)
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the I/O thread, in order with the other jobs, and block until it ran
        (synchronous SQL; no I/O job ever waits for the caller, so this cannot deadlock)."""
        return self._executor.submit(fn, *args).result()

    # -- open / close --------------------------------------------------------------------------
    async def open(self, preload_rows: int, preload_bytes: int) -> OpenState:
        return await self._run(self._open, preload_rows, preload_bytes)

    def _open(self, preload_rows: int, preload_bytes: int) -> OpenState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            _create_from_template(self.path, fsync=self.durability == "full")
        # WAL and the schema are already set by the template; connect still sets them for files
        # written otherwise (older versions), safely if another process opens the file too.
        conn = connect(self.path, _SCHEMA, busy_timeout_s=5,
                       synchronous="FULL" if self.durability == "full" else "NORMAL")
        self._conn = conn
        row = conn.execute("SELECT time FROM _ew_alarm WHERE id = 0").fetchone()
        rows: Rows = []
        total = 0
        complete = True
        for key, value in conn.execute(
            "SELECT key, value FROM _ew_kv ORDER BY key LIMIT ?", (preload_rows + 1,)
        ):
            total += len(key) + len(value)
            if len(rows) >= preload_rows or total > preload_bytes:
                complete = False
                break
            rows.append((key, value))
        if not complete:
            rows = []
        named = conn.execute("SELECT name FROM _ew_name WHERE id = 0").fetchone()
        return OpenState(alarm=row[0] if row else None, rows=rows, complete=complete,
                         name=named[0] if named else None)

    async def close(self, *, discard: bool = False) -> None:
        """Close the connection; with ``discard`` roll back whatever is uncommitted first."""
        await self._run(self._close, discard)

    def _close(self, discard: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK" if discard else "COMMIT")
        finally:
            conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is closed")
        return self._conn

    def _begin(self) -> sqlite3.Connection:
        conn = self.conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        return conn

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, keys: list[str]) -> dict[str, bytes]:
        return await self._run(self._read, keys)

    def read_now(self, keys: list[str]) -> dict[str, bytes]:
        return self._call(self._read, keys)

    def _read(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for k, v in self.conn.execute(
                f"SELECT key, value FROM _ew_kv WHERE key IN ({marks})", chunk
            ):
                out[k] = v
        return out

    async def list(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows:
        return await self._run(self._list, start, end, prefix, reverse, limit)

    def list_now(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows:
        return self._call(self._list, start, end, prefix, reverse, limit)

    def _list(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows:
        return self.conn.execute(*range_query("_ew_kv", start, end, prefix, reverse, limit)).fetchall()

    async def read_idempotency(self, key: str) -> tuple[bytes, int] | None:
        """``(reply, created_ms)`` recorded for ``key``."""
        return await self._run(self._read_idempotency, key)

    def _read_idempotency(self, key: str) -> tuple[bytes, int] | None:
        return self.conn.execute(
            "SELECT reply, created_ms FROM _ew_idempotency WHERE key = ?", (key,)).fetchone()

    # -- writes --------------------------------------------------------------------------------
    def commit_soon(self, batch: Batch) -> asyncio.Future[None]:
        """Submit a group commit now; the future resolves once it is durable (or failed)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, self._commit, batch)

    def _commit(self, batch: Batch) -> None:
        if batch.alarm_changed and batch.alarm is not None and self._alarm_hook:
            self._alarm_hook(batch.alarm)  # index first: a stale index entry is harmless
        conn = self._begin()
        try:
            self._apply(conn, batch)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if batch.alarm_changed and batch.alarm is None and self._alarm_hook:
            self._alarm_hook(None)

    def _apply(self, conn: sqlite3.Connection, batch: Batch) -> None:
        puts = [(k, v) for k, v in batch.writes.items() if v is not None]
        dels = [(k,) for k, v in batch.writes.items() if v is None]
        if puts:
            conn.executemany(
                "INSERT INTO _ew_kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                puts,
            )
        if dels:
            conn.executemany("DELETE FROM _ew_kv WHERE key = ?", dels)
        if batch.alarm_changed:
            if batch.alarm is None:
                conn.execute("DELETE FROM _ew_alarm WHERE id = 0")
            else:
                conn.execute(
                    "INSERT INTO _ew_alarm (id, time) VALUES (0, ?) "
                    "ON CONFLICT(id) DO UPDATE SET time = excluded.time",
                    (batch.alarm,),
                )
        if batch.idempotency:
            conn.executemany(
                "INSERT OR REPLACE INTO _ew_idempotency (key, reply, created_ms) VALUES (?, ?, ?)",
                batch.idempotency,
            )
        if batch.expire_before is not None:
            conn.execute("DELETE FROM _ew_idempotency WHERE created_ms < ?", (batch.expire_before,))
        if batch.name is not None:
            conn.execute("INSERT OR REPLACE INTO _ew_name (id, name) VALUES (0, ?)", (batch.name,))

    async def delete_all(self) -> None:
        await self._run(self._delete_all)

    def _delete_all(self) -> None:
        conn = self._begin()
        conn.execute("DELETE FROM _ew_kv")
        objs = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE '\\_ew\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        ).fetchall()
        for kind, name in sorted(objs, key=lambda o: o[0] != "view"):
            conn.execute(f'DROP {kind.upper()} IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')

    def exec(self, query: str, params: tuple[Any, ...]) -> SqlResult:
        return self._call(self._exec, query, params)

    def _exec(self, query: str, params: tuple[Any, ...]) -> SqlResult:
        conn = self._begin()
        before = conn.total_changes
        cur = conn.execute(query, params)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall()
        return SqlResult(columns, rows, conn.total_changes - before)

    async def savepoint(self, name: str, action: SavepointAction) -> None:
        await self._run(self._savepoint, name, action)

    def open_savepoint(self, name: str) -> None:
        self._call(self._savepoint, name, "open")

    def _savepoint(self, name: str, action: SavepointAction | Literal["open"]) -> None:
        if action == "open":
            self._begin().execute(f"SAVEPOINT {name}")
        elif action == "release":
            self.conn.execute(f"RELEASE {name}")
        else:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")

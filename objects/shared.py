"""The shared database: the storage of many small objects in one SQLite file.

Objects of a class that sets ``shared_storage = True`` (workflow instances and their registry)
keep their KV entries, alarm and idempotency records in ``<state_dir>/objects/<script>/
_shared.sqlite`` instead of a database of their own: tables ``kv(class_name, id, key, value)``,
``alarms(class_name, id, time)`` (which is also the alarm index of these objects, written in the
same transaction as the state), ``idempotency(class_name, id, key, reply, created_ms)`` and
``names(class_name, id, name)``.

Why: a database per object costs a file, a connection and one commit per object, so a hundred
objects committing at once meant a hundred fsyncs. Here one thread runs every job of the file
in submission order, and consecutive commits — of any objects — share one SQLite transaction,
so one fsync (group commit across objects). Each object's batch runs in its own SAVEPOINT: a
batch that fails fails alone. A read first commits the batches submitted before it, so it sees
them. Each round of jobs wakes the event loop once.

Moving out: SQL needs a database of the object's own, so the first ``sql.exec`` of a shared
object moves it (``SharedObjectDatabase.detach``): its rows are copied into a new file written
under a temporary name and renamed into place, the alarm index entry is written, and only then
are the rows deleted here. From then on the object's own file exists and wins: the host never
opens a shared view for an object that has one (rows a crash left behind are ignored).

Several processes may open the file (an object is owned by one process at a time); SQLite's
lock serializes their transactions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from objects.database import (
    Batch,
    Durability,
    ObjectDatabase,
    OpenState,
    Rows,
    SavepointAction,
    SqlResult,
    _create_from_template,
    range_query,
)
from objects.sqlitefile import connect

__all__ = ["SharedDatabase", "SharedObjectDatabase", "scan_key"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (class_name TEXT NOT NULL, id TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (class_name, id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (class_name TEXT NOT NULL, id TEXT NOT NULL,
    time INTEGER NOT NULL, PRIMARY KEY (class_name, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (class_name TEXT NOT NULL, id TEXT NOT NULL,
    key TEXT NOT NULL, reply BLOB NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (class_name, id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names (class_name TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (class_name, id)) WITHOUT ROWID;
"""


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    commit: bool  # joins the group transaction
    loop: asyncio.AbstractEventLoop | None  # None: a caller blocked in ``call``
    fut: asyncio.Future[Any] | concurrent.futures.Future[Any]


class SharedDatabase:
    """One SQLite file and the thread that runs its jobs."""

    def __init__(self, path: Path, durability: Durability = "normal") -> None:
        self.path = path
        self.durability = durability
        self._cond = threading.Condition()
        self._jobs: list[_Job | None] = []  # None: stop
        self._thread: threading.Thread | None = None
        self.transactions = 0  # group commits made (each: one transaction, one fsync under FULL)

    # -- submission (event loop side) ----------------------------------------------------------
    def submit(self, fn: Callable[..., T], *args: Any, commit: bool = False) -> asyncio.Future[T]:
        """Run ``fn(conn, *args)`` on the thread; the future resolves with its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Job(fn, args, commit, loop, fut))
        return fut

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="edgeworks-do-shared",
                                                daemon=True)
                self._thread.start()
            self._jobs.append(job)
            self._cond.notify()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the thread, after the jobs before it, and block until it
        ran (the writer never waits for the caller, so this cannot deadlock)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue(_Job(fn, args, False, None, fut))
        return fut.result()

    async def alarms(self) -> list[tuple[str, str, int]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            return conn.execute("SELECT class_name, id, time FROM alarms").fetchall()

        return await self.submit(read)

    async def close(self) -> None:
        with self._cond:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._jobs.append(None)
            self._cond.notify()
        await asyncio.to_thread(thread.join)

    # -- the thread ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = connect(self.path, _SCHEMA, busy_timeout_s=10,
                           synchronous="FULL" if self.durability == "full" else "NORMAL")
        except sqlite3.DatabaseError as exc:
            if str(self.path) in str(exc):
                raise
            raise type(exc)(f"{exc}: {self.path}") from None  # name the file (every object in it)
        # A rewritten row leaves no old bytes in its page (a workflow record written in clear by
        # an older version, then resealed); FAST does it without extra I/O.
        conn.execute("PRAGMA secure_delete=FAST")
        return conn

    def _serve(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._fail_all(exc)
            return
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                jobs, self._jobs = self._jobs, []
            done: list[tuple[_Job, Any, BaseException | None]] = []
            group: list[_Job] = []
            stop = False
            for job in jobs:
                if job is None:
                    stop = True
                elif job.commit:
                    self._apply(conn, job, group, done)
                else:
                    self._commit(conn, group, done)
                    group = []
                    try:
                        done.append((job, job.fn(conn, *job.args), None))
                    except BaseException as exc:
                        done.append((job, None, exc))
            self._commit(conn, group, done)
            _deliver(done)
            if stop:
                conn.close()
                return

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            jobs, self._jobs = self._jobs, []
            self._thread = None
        _deliver([(job, None, exc) for job in jobs if job is not None])

    @staticmethod
    def _apply(conn: sqlite3.Connection, job: _Job, group: list[_Job],
               done: list[tuple[_Job, Any, BaseException | None]]) -> None:
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT batch")
        except BaseException as exc:
            done.append((job, None, exc))
            return
        try:
            job.fn(conn, *job.args)
            conn.execute("RELEASE batch")
        except BaseException as exc:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            done.append((job, None, exc))
            return
        group.append(job)

    def _commit(self, conn: sqlite3.Connection, group: list[_Job],
                done: list[tuple[_Job, Any, BaseException | None]]) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            done.extend((job, None, exc) for job in group)
            return
        self.transactions += 1
        done.extend((job, None, None) for job in group)


def _deliver(done: list[tuple[_Job, Any, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
    for item in done:
        if item[0].loop is None:
            _resolve([item])  # a concurrent future: set from this thread
            continue
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:
            pass  # the loop is closed: nobody waits


def _resolve(items: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, result, exc in items:
        if job.fut.done():  # cancelled
            continue
        if exc is None:
            job.fut.set_result(result)
        else:
            job.fut.set_exception(exc)


class SharedObjectDatabase:
    """One object's view of the shared database (an ``objects.database.Database``)."""

    def __init__(
        self,
        store: SharedDatabase,
        class_name: str,
        id_hex: str,
        path: Path,
        *,
        alarm_hook: Callable[[int | None], None] | None = None,
    ) -> None:
        self._store = store
        self._obj = (class_name, id_hex)
        self.path = path  # where the object's own database goes if it moves out
        self.file = store.path  # the SQLite file holding the object (named in errors)
        self.durability = store.durability
        self._alarm_hook = alarm_hook

    async def open(self, preload_rows: int, preload_bytes: int) -> OpenState:
        return await self._store.submit(self._open, preload_rows, preload_bytes)

    def _open(self, conn: sqlite3.Connection, preload_rows: int, preload_bytes: int) -> OpenState:
        row = conn.execute("SELECT time FROM alarms WHERE class_name = ? AND id = ?",
                           self._obj).fetchone()
        named = conn.execute("SELECT name FROM names WHERE class_name = ? AND id = ?",
                             self._obj).fetchone()
        name = named[0] if named else None
        rows: Rows = []
        total = 0
        for key, value in conn.execute(
            "SELECT key, value FROM kv WHERE class_name = ? AND id = ? ORDER BY key LIMIT ?",
            (*self._obj, preload_rows + 1),
        ):
            total += len(key) + len(value)
            if len(rows) >= preload_rows or total > preload_bytes:
                return OpenState(alarm=row[0] if row else None, rows=[], complete=False, name=name)
            rows.append((key, value))
        return OpenState(alarm=row[0] if row else None, rows=rows, complete=True, name=name)

    async def close(self, *, discard: bool = False) -> None:
        return None  # every batch is committed by its own job: nothing is left open

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, keys: list[str]) -> dict[str, bytes]:
        return await self._store.submit(self._read, keys)

    def read_now(self, keys: list[str]) -> dict[str, bytes]:
        return self._store.call(self._read, keys)

    def _read(self, conn: sqlite3.Connection, keys: list[str]) -> dict[str, bytes]:
        sql = "SELECT value FROM kv WHERE class_name = ? AND id = ? AND key = ?"
        out: dict[str, bytes] = {}
        for key in keys:
            row = conn.execute(sql, (*self._obj, key)).fetchone()
            if row is not None:
                out[key] = row[0]
        return out

    async def list(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows:
        return await self._store.submit(self._list, start, end, prefix, reverse, limit)

    def list_now(
        self, start: str | None, end: str | None, prefix: str | None, reverse: bool, limit: int | None
    ) -> Rows:
        return self._store.call(self._list, start, end, prefix, reverse, limit)

    def _list(self, conn: sqlite3.Connection, start: str | None, end: str | None,
              prefix: str | None, reverse: bool, limit: int | None) -> Rows:
        sql, params = range_query("kv", start, end, prefix, reverse, limit,
                                  scope=("class_name = ? AND id = ?", self._obj))
        return conn.execute(sql, params).fetchall()

    async def read_idempotency(self, key: str) -> tuple[bytes, int] | None:
        """``(reply, created_ms)`` recorded for ``key``."""
        def read(conn: sqlite3.Connection) -> tuple[bytes, int] | None:
            return conn.execute(
                "SELECT reply, created_ms FROM idempotency "
                "WHERE class_name = ? AND id = ? AND key = ?", (*self._obj, key)).fetchone()

        return await self._store.submit(read)

    # -- writes --------------------------------------------------------------------------------
    def commit_soon(self, batch: Batch) -> asyncio.Future[None]:
        return self._store.submit(self._commit, batch, commit=True)

    def _commit(self, conn: sqlite3.Connection, batch: Batch) -> None:
        obj = self._obj
        puts = [(*obj, k, v) for k, v in batch.writes.items() if v is not None]
        dels = [(*obj, k) for k, v in batch.writes.items() if v is None]
        if puts:
            conn.executemany(
                "INSERT INTO kv (class_name, id, key, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(class_name, id, key) DO UPDATE SET value = excluded.value", puts)
        if dels:
            conn.executemany("DELETE FROM kv WHERE class_name = ? AND id = ? AND key = ?", dels)
        if batch.alarm_changed:
            if batch.alarm is None:
                conn.execute("DELETE FROM alarms WHERE class_name = ? AND id = ?", obj)
            else:
                conn.execute(
                    "INSERT INTO alarms (class_name, id, time) VALUES (?, ?, ?) "
                    "ON CONFLICT(class_name, id) DO UPDATE SET time = excluded.time",
                    (*obj, batch.alarm))
        if batch.idempotency:
            conn.executemany(
                "INSERT OR REPLACE INTO idempotency (class_name, id, key, reply, created_ms) "
                "VALUES (?, ?, ?, ?, ?)", [(*obj, *rec) for rec in batch.idempotency])
        if batch.expire_before is not None:
            conn.execute("DELETE FROM idempotency WHERE class_name = ? AND id = ? AND created_ms < ?",
                         (*obj, batch.expire_before))
        if batch.name is not None:
            conn.execute("INSERT OR REPLACE INTO names (class_name, id, name) VALUES (?, ?, ?)",
                         (*obj, batch.name))

    async def delete_all(self) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM kv WHERE class_name = ? AND id = ?", self._obj)

        await self._store.submit(delete, commit=True)

    def exec(self, query: str, params: tuple[Any, ...]) -> SqlResult:
        _no_sql()

    def open_savepoint(self, name: str) -> None:
        _no_sql()

    async def savepoint(self, name: str, action: SavepointAction) -> None:
        _no_sql()

    # -- moving out ----------------------------------------------------------------------------
    def detach(self) -> ObjectDatabase:
        """Move this object's rows into a database of its own and return that database (blocks
        until done). Commits submitted before are moved too; submit nothing here meanwhile."""
        self._store.call(self._move_out)
        db = ObjectDatabase(self.path, self.durability, alarm_hook=self._alarm_hook)
        db._call(db._open, 0, 0)
        return db

    def _move_out(self, conn: sqlite3.Connection) -> None:
        obj = self._obj
        rows = list(conn.execute("SELECT key, value FROM kv WHERE class_name = ? AND id = ?", obj))
        alarm = conn.execute("SELECT time FROM alarms WHERE class_name = ? AND id = ?",
                             obj).fetchone()
        idem = list(conn.execute("SELECT key, reply, created_ms FROM idempotency "
                                 "WHERE class_name = ? AND id = ?", obj))
        name = conn.execute("SELECT name FROM names WHERE class_name = ? AND id = ?", obj).fetchone()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.moving")
        _create_from_template(tmp, fsync=self.durability == "full")
        own = sqlite3.connect(tmp, isolation_level=None)
        try:
            own.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
            own.execute("BEGIN IMMEDIATE")
            own.executemany("INSERT INTO _ew_kv (key, value) VALUES (?, ?)", rows)
            if alarm is not None:
                own.execute("INSERT INTO _ew_alarm (id, time) VALUES (0, ?)", alarm)
            own.executemany("INSERT INTO _ew_idempotency (key, reply, created_ms) VALUES (?, ?, ?)",
                            idem)
            if name is not None:
                own.execute("INSERT INTO _ew_name (id, name) VALUES (0, ?)", name)
            own.execute("COMMIT")
        finally:
            own.close()  # the last connection checkpoints the WAL into the file and removes it
        os.replace(tmp, self.path)
        if alarm is not None and self._alarm_hook is not None:
            self._alarm_hook(alarm[0])  # indexed before the shared row (the old index) goes
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("kv", "alarms", "idempotency", "names"):
                conn.execute(f"DELETE FROM {table} WHERE class_name = ? AND id = ?", obj)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _no_sql() -> NoReturn:
    """SQL runs only in a database of the object's own: ``Storage`` moves the object out
    (``SharedObjectDatabase.detach``) before its first statement."""
    raise RuntimeError("a shared-storage object must move to its own database before SQL")


def scan_key(root: Path, class_name: str, key: str) -> list[tuple[str, bytes]]:
    """``(id_hex, value)`` of the committed ``key`` of every object of ``class_name`` under the
    script directory ``root``: shared rows, then objects with a database of their own (which
    win). Blocking (run it on a thread); it reads what any process has committed."""
    found: dict[str, bytes] = {}
    shared = root / "_shared.sqlite"
    if shared.exists():
        conn = sqlite3.connect(shared, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            found.update(conn.execute(
                "SELECT id, value FROM kv WHERE class_name = ? AND key = ?", (class_name, key)))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
        finally:
            conn.close()
    folder = root / class_name
    for path in sorted(folder.glob("*.sqlite")) if folder.is_dir() else []:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            row = conn.execute("SELECT value FROM _ew_kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            continue  # not (yet) an object database
        finally:
            conn.close()
        if row is not None:
            found[path.stem] = row[0]
    return list(found.items())

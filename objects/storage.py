"""``ctx.storage``: the KV API (Cloudflare's, snake_case) over a cache and group commit.

Cache: reads are served from memory. A small database (up to ``preload_rows`` keys and
``preload_bytes``) is loaded whole when the object opens; otherwise keys are loaded on first
read (and remembered, also when absent); past ``max_cached_keys`` the oldest clean entries are
forgotten. A read that must go to SQLite holds the input gate.

Writes never suspend: they update the cache and join the *current batch*. The first write of a
batch schedules a flush with ``loop.call_soon``, so every write issued before the writer's next
real suspension (and writes of other events that run in between) land in the same batch; one
batch is one SQLite transaction (group commit). At most one commit is in flight; writes issued
meanwhile form the next batch. Responses wait for their batch on the output gate
(``objects.gates``); a failed commit breaks both gates and resets the object.

Atomic sections — ``transaction(fn)`` and idempotent ops — hold the input gate for their whole
run, buffer KV writes in an overlay (merged into the batch on success, dropped on exception or
``txn.rollback()``) and put SQL statements under a SAVEPOINT, so everything they wrote is
committed in one SQLite transaction. Batches written before the
section may still be committed while it runs, unless it has run SQL (its SAVEPOINT must not be
committed half-way).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from objects import values
from objects.database import Batch, Database, Rows
from objects.errors import DurableObjectReset
from objects.gates import InputGate, OutputGate
from objects.shared import SharedObjectDatabase
from objects.sql import PendingSql, SqlCursor, SqlStorage
from objects.transaction import MISSING, Section, Transaction

__all__ = ["Storage", "StorageLimits"]

T = TypeVar("T")
_savepoints = itertools.count()


@dataclass(frozen=True)
class StorageLimits:
    max_key_bytes: int = values.DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = values.DEFAULT_MAX_VALUE_BYTES
    preload_rows: int = 10_000
    preload_bytes: int = 8 * 1024 * 1024
    max_cached_keys: int = 100_000
    idempotency_ttl_ms: int = 86_400_000
    max_cached_replies: int = 1024


def _check_list_options(prefix: Any, start: Any, end: Any, limit: Any) -> None:
    for name, v in (("prefix", prefix), ("start", start), ("end", end)):
        if v is not None and not isinstance(v, str):
            raise TypeError(f"list({name}=...) must be a str, got {type(v).__name__}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"list(limit=...) must be a positive int, got {limit!r}")


class Storage:
    def __init__(
        self,
        db: Database,
        input_gate: InputGate,
        output_gate: OutputGate,
        *,
        limits: StorageLimits,
        now_ms: Callable[[], int],
        on_broken: Callable[[DurableObjectReset], None],
        on_alarm_committed: Callable[[int | None], None],
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._in = input_gate
        self._out = output_gate
        self._limits = limits
        self._now_ms = now_ms
        self._on_broken = on_broken
        self._on_alarm_committed = on_alarm_committed
        self._on_committed = on_committed  # each batch made durable (counted by the runtime)
        self._cache: dict[str, bytes | None] = {}
        self._complete = False
        self._alarm: int | None = None
        self.name: str | None = None  # the name the object's id was derived from, once known
        self._name_dirty = False
        self._idem: dict[str, tuple[bytes, int]] = {}  # key -> (reply, created_ms), newest last
        self._sections: list[Section] = []
        self._broken: DurableObjectReset | None = None
        # the batch being accumulated
        self._epoch = 1
        self._pending = False
        self._dirty: dict[str, bytes | None] = {}
        self._alarm_dirty = False
        self._idem_dirty: list[tuple[str, bytes, int]] = []
        self._inflight: dict[str, bytes | None] = {}
        self._flush_scheduled = False
        self._committing = False
        self._moving = False
        self.sql = SqlStorage(self)
        self.kv = SyncKv(self)

    # -- lifecycle (host side) -----------------------------------------------------------------
    async def open(self) -> None:
        state = await self._db.open(self._limits.preload_rows, self._limits.preload_bytes)
        self._alarm = state.alarm
        self.name = state.name
        if state.complete:
            self._complete = True
            self._cache = dict(state.rows)

    @property
    def idle(self) -> bool:
        return not self._pending and not self._committing and not self._sections

    @property
    def stored_alarm(self) -> int | None:
        return self._alarm

    async def flush(self) -> None:
        """Commit everything written so far (host side; raises if the object is broken)."""
        if self._pending:
            self._kick()
        await self._out.wait()

    async def close(self, *, discard: bool = False) -> None:
        if self._broken is not None:
            discard = True
        if not discard:
            try:
                await self.flush()
            except DurableObjectReset:
                discard = True
        if self._broken is None:
            self._broken = DurableObjectReset("the object was closed")
        await self._db.close(discard=discard)

    def _fail(self, message: str) -> DurableObjectReset:
        """Break the object (the first failure wins) and return what broke it."""
        if self._broken is None:
            self._broken = DurableObjectReset(message)
            self._out.break_(self._broken)
            self._in.break_(self._broken)
            self._on_broken(self._broken)
        return self._broken

    # -- gating and batching -------------------------------------------------------------------
    def _enter_now(self) -> None:
        """``_enter`` for the synchronous APIs, which cannot wait."""
        if self._broken is not None:
            raise self._broken
        if self._in.blocks_storage:
            raise RuntimeError(
                "a transaction of another event holds this object's storage: the synchronous "
                "API (ctx.storage.kv) cannot wait for it; use the async one (await ctx.storage.get)")

    async def _enter(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._in.blocks_storage:
            await self._in.wait_open()
            if self._broken is not None:
                raise self._broken

    def _note_write(self) -> None:
        self._pending = True
        self._out.note_write(self._epoch)
        if not self._flush_scheduled and not self._committing:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        """Start the next group commit unless one is in flight (a plain callback: no task)."""
        self._flush_scheduled = False
        if self._committing or self._moving or not self._pending or self._sql_section or self._broken:
            return
        batch = Batch(epoch=self._epoch, writes=self._dirty, idempotency=self._idem_dirty)
        if self._idem_dirty:  # recording replies also prunes the expired ones
            batch.expire_before = self._now_ms() - self._limits.idempotency_ttl_ms
        if self._name_dirty:
            batch.name, self._name_dirty = self.name, False
        if self._alarm_dirty:
            batch.alarm_changed, batch.alarm = True, self._alarm
        self._epoch += 1
        self._pending = False
        self._dirty, self._idem_dirty, self._alarm_dirty = {}, [], False
        self._inflight = batch.writes
        self._committing = True
        self._db.commit_soon(batch).add_done_callback(lambda fut: self._committed(batch, fut))

    def _committed(self, batch: Batch, fut: asyncio.Future[None]) -> None:
        self._committing = False
        self._inflight = {}
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._fail(f"commit failed: {type(exc).__name__}: {exc}")
            return
        self._out.mark_durable(batch.epoch)
        if self._on_committed is not None:
            self._on_committed()
        self._trim()
        if batch.alarm_changed:
            self._on_alarm_committed(batch.alarm)
        if self._pending:
            self._kick()

    @property
    def _sql_section(self) -> bool:
        # A section that ran SQL has a SAVEPOINT open in the current SQLite transaction:
        # committing now would commit part of it, so flushing waits for the section to end.
        return any(section.savepoint is not None for section in self._sections)

    def _write(self, key: str, data: bytes | None) -> None:
        if self._sections:
            self._sections[-1].writes[key] = data
            return
        self._cache[key] = data
        self._dirty[key] = data
        self._note_write()

    def _lookup(self, key: str) -> bytes | None:
        """Value visible to the caller, ``MISSING`` when it must be read from SQLite."""
        for section in reversed(self._sections):
            if key in section.writes:
                return section.writes[key]
        if key in self._cache:
            return self._cache[key]
        return None if self._complete else MISSING

    async def _load(self, keys: list[str]) -> None:
        missing = [k for k in keys if self._lookup(k) is MISSING]
        if not missing:
            return
        async with self._in.hold():
            missing = [k for k in missing if self._lookup(k) is MISSING]
            if missing:
                self._loaded(missing, await self._db.read(missing))

    def _load_now(self, keys: list[str]) -> None:
        """``_load`` for the synchronous API: a blocking read (nothing runs meanwhile)."""
        missing = [k for k in keys if self._lookup(k) is MISSING]
        if missing:
            self._loaded(missing, self._db.read_now(missing))

    def _loaded(self, missing: list[str], found: dict[str, bytes]) -> None:
        if self._broken is not None:
            raise self._broken
        self._trim()  # before inserting: the caller reads these keys next
        for k in missing:
            self._cache.setdefault(k, found.get(k))

    def _trim(self) -> None:
        """Forget the oldest clean entries once the cache holds more than ``max_cached_keys``.

        Entries with uncommitted writes stay (they are the only copy); forgetting a clean entry
        only means its next read goes to SQLite again.
        """
        limit = self._limits.max_cached_keys
        if len(self._cache) <= limit:
            return
        self._complete = False
        target = limit * 9 // 10
        excess = len(self._cache) - target
        for k in [k for k in self._cache if k not in self._dirty and k not in self._inflight][:excess]:
            if not any(k in s.writes for s in self._sections):
                del self._cache[k]

    def _key(self, key: Any) -> str:
        return values.check_key(key, self._limits.max_key_bytes)

    # -- KV API --------------------------------------------------------------------------------
    async def get(self, key: str | list[str]) -> Any:
        """``get(key)`` -> value or None; ``get([keys])`` -> dict of the keys that exist."""
        await self._enter()
        keys = self._keys(key)
        await self._load(keys)
        return self._values(key, keys)

    def _keys(self, key: str | list[str]) -> list[str]:
        return [self._key(k) for k in key] if isinstance(key, list | tuple) else [self._key(key)]

    def _values(self, key: str | list[str], keys: list[str]) -> Any:
        """What ``get`` answers, once ``keys`` are loaded."""
        if not isinstance(key, list | tuple):
            data = self._lookup(keys[0])
            return None if data is None else values.decode(data)
        out = {}
        for k in keys:
            data = self._lookup(k)
            if data is not None:
                out[k] = values.decode(data)
        return out

    async def put(self, key: str | dict[str, Any], value: Any = MISSING) -> None:
        """``put(key, value)`` or ``put({key: value, ...})`` (all-or-nothing validation)."""
        await self._enter()
        self._put(key, value)

    def _put(self, key: str | dict[str, Any], value: Any) -> None:
        if isinstance(key, dict):
            if value is not MISSING:
                raise TypeError("put(entries) takes no value argument")
            encoded = [
                (self._key(k), values.encode(k, v, self._limits.max_value_bytes))
                for k, v in key.items()
            ]
        else:
            if value is MISSING:
                raise TypeError("put(key, value) needs a value")
            k = self._key(key)
            encoded = [(k, values.encode(k, value, self._limits.max_value_bytes))]
        for k, data in encoded:
            self._write(k, data)

    async def delete(self, key: str | list[str]) -> bool | int:
        """``delete(key)`` -> whether it existed; ``delete([keys])`` -> how many existed."""
        await self._enter()
        keys = self._keys(key)
        await self._load(keys)
        return self._delete(key, keys)

    def _delete(self, key: str | list[str], keys: list[str]) -> bool | int:
        count = 0
        for k in dict.fromkeys(keys):
            if self._lookup(k) is not None:
                count += 1
            self._write(k, None)
        return count if isinstance(key, list | tuple) else bool(count)

    async def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Entries in key order (``start`` inclusive, ``end`` exclusive), as a dict."""
        await self._enter()
        _check_list_options(prefix, start, end, limit)
        rows: Rows = []
        if not self._complete:
            async with self._in.hold():
                rows = await self._db.list(start, end, prefix, reverse, self._list_limit(limit))
        return self._listed(rows, prefix, start, end, reverse, limit)

    def _list_limit(self, limit: int | None) -> int | None:
        """How many rows to read so that ``limit`` survive the keys deleted but not committed."""
        if limit is None:
            return None
        extra = len(self._dirty) + len(self._inflight) + sum(len(s.writes) for s in self._sections)
        return limit + extra

    def _listed(self, rows: Rows, prefix: str | None, start: str | None,
                end: str | None, reverse: bool, limit: int | None) -> dict[str, Any]:
        """What ``list`` answers: ``rows`` read from SQLite (none if the cache is complete)
        merged with the cache and the open sections."""
        if self._broken is not None:
            raise self._broken
        merged: dict[str, bytes | None] = dict(rows)
        # the cache holds the latest value (or None) of every key written since the object
        # opened, committed or not: it overrides what SQLite returned
        merged.update(self._cache)
        if rows:
            self._trim()
            for k, v in rows:
                self._cache.setdefault(k, v)
        for section in self._sections:
            merged.update(section.writes)

        def wanted(k: str) -> bool:
            return (
                (start is None or k >= start)
                and (end is None or k < end)
                and (not prefix or k.startswith(prefix))
            )

        present = {k: v for k, v in merged.items() if v is not None and wanted(k)}
        keys = sorted(present, reverse=reverse)
        if limit is not None:
            keys = keys[:limit]
        return {k: values.decode(present[k]) for k in keys}

    async def delete_all(self) -> None:
        """Delete every KV entry and every user SQL table (the alarm is kept)."""
        await self._enter()
        if self._sections:
            raise RuntimeError("delete_all() cannot be used inside a transaction")
        async with self._in.hold(exclusive=True):
            # Writes not yet submitted are dropped, not committed after the delete (their epoch
            # is covered by the next commit); submitted ones run before it on the I/O thread.
            self._dirty = {}
            self._note_write()
            await self._db.delete_all()
            self._cache, self._complete = {}, True

    async def sync(self) -> None:
        """Wait until every write made so far is durable.

        Inside a transaction this covers the writes made before it (its own are committed when
        it ends); after SQL inside a transaction it raises, since nothing can commit until then.
        """
        await self._enter()
        if self._sql_section:
            raise RuntimeError("sync() cannot wait inside a transaction that has run SQL")
        await self._out.wait()

    async def transaction(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run ``fn(txn)`` exclusively and atomically; an exception rolls every write back."""
        async with self.atomic() as section:
            return await fn(Transaction(self, section))

    # -- alarms --------------------------------------------------------------------------------
    async def get_alarm(self) -> int | None:
        await self._enter()
        for section in reversed(self._sections):
            if section.alarm is not MISSING:
                return section.alarm
        return self._alarm

    async def set_alarm(self, when: int | float | dt.datetime) -> None:
        """Schedule the object's single alarm at ``when`` (epoch ms, or a datetime; naive = UTC)."""
        await self._enter()
        if isinstance(when, dt.datetime):
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            ms = int(when.timestamp() * 1000)
        elif isinstance(when, int | float) and not isinstance(when, bool):
            if when != when or when in (float("inf"), float("-inf")):
                raise ValueError(f"set_alarm() time must be finite, got {when!r}")
            ms = int(when)
        else:
            raise TypeError(f"set_alarm() takes epoch milliseconds or a datetime, got {when!r}")
        if not 0 <= ms < 2**63:
            raise ValueError(f"set_alarm() time must be epoch milliseconds >= 0, got {ms}")
        self._set_alarm(ms)

    async def delete_alarm(self) -> None:
        await self._enter()
        self._set_alarm(None)

    async def clear_alarm_if(self, expected: int) -> bool:
        """Delete the alarm if it is still ``expected``; check and delete in one step."""
        await self._enter()
        if self._alarm != expected:
            return False
        self._set_alarm(None)
        return True

    # Cloudflare's (JavaScript) names, which Python Workers code calls through its JS proxies.
    deleteAll = delete_all  # noqa: N815
    getAlarm = get_alarm  # noqa: N815
    setAlarm = set_alarm  # noqa: N815
    deleteAlarm = delete_alarm  # noqa: N815

    def _set_alarm(self, ms: int | None) -> None:
        if self._sections:
            self._sections[-1].alarm = ms
            return
        self._alarm = ms
        self._alarm_dirty = True
        self._note_write()

    # -- SQL -----------------------------------------------------------------------------------
    def _exec_sql(self, query: str, params: tuple[Any, ...]) -> SqlCursor | PendingSql:
        """Run one statement now, on the object's I/O thread, blocking until it ran (Cloudflare's
        ``exec`` is synchronous). While a transaction of *another* event holds the storage the
        statement cannot run now: the caller gets a ``PendingSql`` to await instead."""
        if self._broken is not None:
            raise self._broken
        if self._in.blocks_storage:
            return PendingSql(self, query, params)
        if isinstance(self._db, SharedObjectDatabase):
            self._move_out(self._db)
        if self._sections and self._sections[-1].savepoint is None:
            name = f"ew_sp_{next(_savepoints)}"
            self._sections[-1].savepoint = name  # stops new flushes until the section ends
            self._db.open_savepoint(name)
        self._note_write()
        columns, rows, written = self._db.exec(query, params)
        return SqlCursor(columns, rows, written)

    async def _exec_sql_when_free(self, query: str, params: tuple[Any, ...]) -> SqlCursor:
        while True:
            await self._enter()  # waits for the other event's transaction
            result = self._exec_sql(query, params)
            if isinstance(result, SqlCursor):
                return result

    def _move_out(self, shared: SharedObjectDatabase) -> None:
        """Move a shared-storage object to a database of its own (``objects.shared``); blocks.

        A commit already submitted to the shared database is moved with the rest; writes not
        yet submitted are committed to the new database."""
        if self._pending:
            self._kick()
        self._moving = True
        try:
            self._db = shared.detach()
        except Exception as exc:
            raise self._fail(f"moving to its own database failed: {type(exc).__name__}: {exc}") \
                from exc
        finally:
            self._moving = False
        if self._pending:
            self._kick()

    def _database_size(self) -> int:
        try:
            return sum(
                os.path.getsize(str(self._db.path) + s)
                for s in ("", "-wal")
                if os.path.exists(str(self._db.path) + s)
            )
        except OSError:
            return 0

    # -- atomic sections and idempotency (host side) -------------------------------------------
    @asynccontextmanager
    async def atomic(self) -> Any:
        """Exclusive, all-or-nothing section (see module docstring)."""
        await self._enter()
        async with self._in.hold(exclusive=True):
            section = Section()
            self._sections.append(section)
            ok = False
            try:
                yield section
                ok = not section.rolled_back
            finally:
                try:
                    if section.savepoint is not None and self._broken is None:
                        await self._db.savepoint(section.savepoint, "release" if ok else "rollback")
                finally:
                    self._sections.pop()
                    if ok and self._broken is None:
                        self._merge(section)
                    if self._pending:
                        self._kick()

    def _merge(self, section: Section) -> None:
        if self._sections:
            parent = self._sections[-1]
            parent.writes.update(section.writes)
            if section.alarm is not MISSING:
                parent.alarm = section.alarm
            parent.idempotency += section.idempotency
            return
        for k, v in section.writes.items():
            self._cache[k] = v
            self._dirty[k] = v
        if section.alarm is not MISSING:
            self._alarm = section.alarm
            self._alarm_dirty = True
        for key, reply, created_ms in section.idempotency:
            self._remember_reply(key, reply, created_ms)
        self._idem_dirty += section.idempotency
        if section.writes or section.alarm is not MISSING or section.idempotency:
            self._note_write()

    def remember_name(self, name: str) -> None:
        """Record the (verified) name of the object's id with its next commit (host side). It
        forces no commit of its own: an object that never writes has nothing to wake it (no
        alarm) and learns its name again from the next caller that uses it."""
        if name != self.name:
            self.name = name
            self._name_dirty = True

    async def recorded_reply(self, idempotency_key: str) -> bytes | None:
        """The reply recorded for ``idempotency_key``, if an op with that key was applied within
        ``idempotency_ttl_ms``."""
        await self._enter()
        since = self._now_ms() - self._limits.idempotency_ttl_ms
        cached = self._idem.get(idempotency_key)
        if cached is None:
            async with self._in.hold():
                cached = await self._db.read_idempotency(idempotency_key)
            if cached is None:
                return None
            self._remember_reply(idempotency_key, *cached)
        reply, created_ms = cached
        return reply if created_ms >= since else None

    def _remember_reply(self, key: str, reply: bytes, created_ms: int) -> None:
        self._idem.pop(key, None)
        self._idem[key] = (reply, created_ms)
        if len(self._idem) > self._limits.max_cached_replies:
            del self._idem[next(iter(self._idem))]  # the oldest; a later lookup reads SQLite

    def record_reply(self, section: Section, idempotency_key: str, reply: bytes) -> None:
        section.idempotency.append((idempotency_key, reply, self._now_ms()))


class SyncKv:
    """``ctx.storage.kv``: Cloudflare's synchronous KV API, over the same entries, cache and
    batches as the async one. A key not in the cache is read with a blocking call on the
    object's I/O thread. ``list`` gives ``[(key, value), ...]`` in key order."""

    def __init__(self, storage: Storage) -> None:
        self._s = storage

    def get(self, key: str | list[str]) -> Any:
        s = self._s
        s._enter_now()
        keys = s._keys(key)
        s._load_now(keys)
        return s._values(key, keys)

    def put(self, key: str | dict[str, Any], value: Any = MISSING) -> None:
        self._s._enter_now()
        self._s._put(key, value)

    def delete(self, key: str | list[str]) -> bool | int:
        s = self._s
        s._enter_now()
        keys = s._keys(key)
        s._load_now(keys)
        return s._delete(key, keys)

    def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[str, Any]]:
        s = self._s
        s._enter_now()
        _check_list_options(prefix, start, end, limit)
        rows = [] if s._complete else s._db.list_now(start, end, prefix, reverse,
                                                      s._list_limit(limit))
        return list(s._listed(rows, prefix, start, end, reverse, limit).items())

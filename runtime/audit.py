"""The audit log: append-only, hash-chained, redacted before it reaches disk.

Storage: ``<state_dir>/audit.sqlite`` (WAL). Table ``entries`` holds one row per event:
``seq`` (1, 2, 3… without gaps), ``ts`` (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, the time of the
`append` call), ``kind``, ``request_id``, ``tenant``, ``subject``, ``script``, ``risk``,
``classification`` (public/internal/confidential/restricted; a default per kind), ``data``
(canonical JSON: sorted keys, no whitespace, UTF-8), ``prev_hash`` and ``hash``::

    hash = sha256(prev_hash + canonical_json(entry without "hash")).hexdigest()

where ``prev_hash`` is the previous entry's hash (64 zeros for seq 1) and the hashed entry holds
``data`` as a JSON object. Every ``checkpoint_every`` entries a row (seq, hash) goes to
``checkpoints``; the ``head`` row holds the last (seq, hash), so cutting entries off the end is
detected too. `verify` walks the chain and names the first entry that breaks it.

Redaction (`runtime.redact.Redactor`) runs inside `append`, before the entry is buffered, on
``data`` and on the string columns; nothing unredacted is ever written. The same walk makes
``data`` JSON-ready: bytes become ``{"bytes": n}`` (their content is never stored), sets
sorted lists, non-finite floats and other objects strings, lone surrogates U+FFFD.

Concurrency, exactly:

- `AuditLog.append` / `AuditLog.audit` are thread-safe and do not touch disk: they redact,
  stamp ``ts`` and put the entry in an in-memory buffer. They block only when the buffer holds
  ``max_pending`` entries (the disk cannot keep up): then they wait up to
  ``backpressure_timeout_s`` for room and raise `AuditUnavailable` after that, so callers fail
  closed instead of serving requests that leave no trace.
- A background thread writes the buffer every ``flush_interval_s`` or as soon as it holds
  ``flush_max_entries`` entries, all of it in one transaction: ``BEGIN IMMEDIATE`` (SQLite's
  write lock, which serialises every appender of the file, in any process), read the last
  (seq, hash), insert, ``COMMIT``. So every process extends the one chain, and an entry's seq is
  fixed only when it is written. Entries of one `AuditLog` keep their append order. If the
  write fails (e.g. the lock stays busy beyond ``busy_timeout_s``), the batch goes back to the
  front of the buffer and is retried on the next tick; ``write_errors`` counts failures.
- `flush` returns once every entry appended before the call is committed (or raises the write
  error). `close` flushes, stops the thread and closes the connection; it is idempotent and also
  runs at interpreter exit. Appending after `close` raises `AuditClosed`.
- An `AuditLog` belongs to the process that created it: in a forked child, `append` raises
  `AuditClosed` and `close` touches nothing (the connection and the buffer are the parent's).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring as _encode_str
from pathlib import Path
from typing import Any

from objects.sqlitefile import connect
from runtime.auditconfig import AuditOptions, Classification
from runtime.redact import Redactor

__all__ = [
    "AUDIT_FILENAME",
    "DEFAULT_CLASSIFICATIONS",
    "GENESIS_HASH",
    "AuditClosed",
    "AuditEntry",
    "AuditLog",
    "AuditOptions",
    "AuditUnavailable",
    "Classification",
    "VerifyResult",
    "canonical_json",
    "entry_hash",
    "format_ts",
    "query",
    "verify",
]

AUDIT_FILENAME = "audit.sqlite"
GENESIS_HASH = "0" * 64

# Longest dotted prefix of the kind wins ("tool.call" -> "tool"); anything else is internal.
DEFAULT_CLASSIFICATIONS: dict[str, Classification] = {
    "request": "internal",
    "response": "internal",
    "auth": "confidential",
    "tool": "confidential",
    "ai": "confidential",
    "workflow": "confidential",
    "secret": "restricted",
    "killswitch": "internal",
    "admin": "internal",
    "deploy": "internal",
    "isolate": "internal",
    "limit": "internal",
}

# Upper bound on one transaction, so other processes never wait long for the write lock.
_MAX_BATCH = 5000
_COLUMNS = ("request_id", "tenant", "subject", "script", "risk", "classification")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    tenant TEXT,
    subject TEXT,
    script TEXT,
    risk TEXT,
    classification TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_request_id ON entries (request_id);
CREATE INDEX IF NOT EXISTS entries_tenant_ts ON entries (tenant, ts);
CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
"""
_INSERT = (
    "INSERT INTO entries (seq, ts, kind, request_id, tenant, subject, script, risk,"
    " classification, data, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_SELECT = (
    "SELECT seq, ts, kind, request_id, tenant, subject, script, risk, classification, data,"
    " prev_hash, hash FROM entries"
)


class AuditClosed(RuntimeError):
    """The log was closed; nothing more can be appended."""


class AuditUnavailable(RuntimeError):
    """The buffer stayed full for `backpressure_timeout_s`: the disk is not keeping up."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: str
    kind: str
    request_id: str | None
    tenant: str | None
    subject: str | None
    script: str | None
    risk: str | None
    classification: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    first_bad_seq: int | None
    reason: str | None
    entries: int
    last_good_checkpoint: int | None = None
    last_hash: str | None = None  # of the last entry when ok: record it elsewhere to anchor


def canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(prev_hash: str, entry_without_hash: Mapping[str, Any]) -> str:
    payload = prev_hash.encode("ascii") + canonical_json(entry_without_hash).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def _to_json(value: Any) -> Any:
    """The `Redactor.redact` converter for values JSON has no form for; bytes are summarised,
    never stored."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": len(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def _utf8_value(value: Any) -> Any:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, list):
        return [_utf8_value(v) for v in value]
    return value


def _utf8_object(obj: dict[str, Any]) -> dict[str, Any]:
    return {_utf8(k): _utf8_value(v) for k, v in obj.items()}


_ts_second: tuple[int, str] = (-1, "")


def format_ts(epoch_s: float) -> str:
    global _ts_second
    second = math.floor(epoch_s)
    cached = _ts_second  # one tuple read: safe against a concurrent update
    if cached[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _ts_second = (second, text)
    micros = min(int(round((epoch_s - second) * 1_000_000)), 999_999)
    return f"{cached[1]}.{micros:06d}Z"


@dataclasses.dataclass(slots=True)
class _Pending:
    ts: str
    kind: str
    columns: tuple[str | None, ...]  # request_id, tenant, subject, script, risk
    classification: str
    data_json: str


def _q(value: str | None) -> str:
    # What json.dumps(ensure_ascii=False) writes for a str or None, without its overhead.
    return "null" if value is None else _encode_str(value)


def _hashed_json(p: _Pending, seq: int, prev_hash: str) -> str:
    # Canonical JSON built by hand (sorted keys, data already canonical) so the writer does
    # not re-serialise data under the write lock; `verify` recomputes it generically.
    request_id, tenant, subject, script, risk = p.columns
    return (
        f'{{"classification":{_q(p.classification)},"data":{p.data_json},"kind":{_q(p.kind)},'
        f'"prev_hash":{_q(prev_hash)},"request_id":{_q(request_id)},"risk":{_q(risk)},'
        f'"script":{_q(script)},"seq":{seq},"subject":{_q(subject)},"tenant":{_q(tenant)},'
        f'"ts":{_q(p.ts)}}}'
    )


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    return conn


class AuditLog:
    """Buffered appender for one state dir's audit log; see the module docstring."""

    def __init__(
        self,
        state_dir: str | Path,
        options: AuditOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
    ) -> None:
        self.options = options or AuditOptions()
        self.path = Path(state_dir) / AUDIT_FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._redactor = redactor or Redactor(self.options.redact_patterns)
        self._classes = {**DEFAULT_CLASSIFICATIONS, **self.options.classifications}
        self._buffer: deque[_Pending] = deque()
        self._writing = 0  # entries taken from the buffer by a write in progress (still pending)
        self._cond = threading.Condition()  # guards _buffer and _closed
        self._write_lock = threading.Lock()  # one writer (flusher or flush()) at a time
        self._closed = False
        self._wake = threading.Event()
        self.write_errors = 0
        self.last_error: BaseException | None = None
        self._pid = os.getpid()
        self._conn = connect(self.path, _SCHEMA, synchronous=self.options.synchronous,
                             busy_timeout_s=self.options.busy_timeout_s)
        self._thread = threading.Thread(
            target=self._run, name="edgeworks-audit-flusher", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    # -- appending -----------------------------------------------------------------------

    def append(self, kind: str, *, data: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Buffer one entry. Known fields (request_id, tenant, subject, script, risk,
        classification) become columns; any other keyword joins ``data``."""
        merged: dict[str, Any] = dict(data or {})
        for key in list(fields):
            if key not in _COLUMNS:
                merged[key] = fields.pop(key)
        self._enqueue(kind, fields, merged)

    def audit(self, kind: str, fields: Mapping[str, Any]) -> None:
        """The hook shape lower layers take: column fields are picked out, the rest is data."""
        data: dict[str, Any] = {}
        columns: dict[str, Any] = {}
        for key, value in fields.items():
            (columns if key in _COLUMNS else data)[key] = value
        if isinstance(fields.get("data"), Mapping):
            data.update(data.pop("data"))
        self._enqueue(kind, columns, data)

    def classification_for(self, kind: str) -> Classification:
        parts = kind.split(".")
        for n in range(len(parts), 0, -1):
            hit = self._classes.get(".".join(parts[:n]))
            if hit is not None:
                return hit
        return "internal"

    def _enqueue(self, kind: str, columns: Mapping[str, Any], data: dict[str, Any]) -> None:
        if os.getpid() != self._pid:  # before any lock: a forked child may inherit them held
            raise AuditClosed("this AuditLog belongs to the parent process; open one here")
        if not isinstance(kind, str) or not kind:
            raise ValueError("audit kind must be a non-empty string")
        classification = columns.get("classification") or self.classification_for(kind)
        if classification not in ("public", "internal", "confidential", "restricted"):
            raise ValueError(f"unknown data classification {classification!r}")
        redact = self._redactor.redact_text
        cols = tuple(
            None if columns.get(c) is None else _utf8(redact(str(columns[c])))
            for c in _COLUMNS[:5]
        )
        data_json = canonical_json(self._redactor.redact(data, _to_json))
        try:
            data_json.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: stored as U+FFFD, never a stuck batch
            data_json = canonical_json(json.loads(data_json, object_hook=_utf8_object))
        pending = _Pending(
            ts=format_ts(self._clock()),
            kind=_utf8(kind),
            columns=cols,
            classification=classification,
            data_json=data_json,
        )
        with self._cond:
            if self._closed:
                raise AuditClosed("audit log is closed")
            if len(self._buffer) + self._writing >= self.options.max_pending:
                self._wake.set()
                if not self._cond.wait_for(
                    lambda: self._closed
                    or len(self._buffer) + self._writing < self.options.max_pending,
                    timeout=self.options.backpressure_timeout_s,
                ):
                    raise AuditUnavailable("audit buffer full: entries are not being persisted")
                if self._closed:
                    raise AuditClosed("audit log is closed")
            self._buffer.append(pending)
            if len(self._buffer) >= self.options.flush_max_entries:
                self._wake.set()

    # -- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit every entry appended before this call; raises the write error if any."""
        with self._write_lock:
            self._write_pending(raise_errors=True)

    def close(self) -> None:
        if os.getpid() != self._pid:
            self._closed = True  # a forked child: the connection, locks and buffer are the parent's
            return
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join()
        with self._write_lock:
            try:
                self._write_pending(raise_errors=True)
            finally:
                self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Entries not yet committed (buffered, or in a write that has not finished)."""
        with self._cond:
            return len(self._buffer) + self._writing

    def _run(self) -> None:
        interval = self.options.flush_interval_s
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            with self._cond:
                closed = self._closed
            if closed:
                return  # close() writes what is left
            with self._write_lock:
                self._write_pending(raise_errors=False)

    def _write_pending(self, *, raise_errors: bool) -> None:
        # Caller holds _write_lock.
        while True:
            with self._cond:
                if not self._buffer:
                    return
                n = min(len(self._buffer), _MAX_BATCH)
                batch = [self._buffer.popleft() for _ in range(n)]
                self._writing = n  # still count against max_pending until committed
            try:
                self._write_batch(batch)
            except Exception as exc:
                with self._cond:
                    self._buffer.extendleft(reversed(batch))
                    self._writing = 0
                self.write_errors += 1
                self.last_error = exc
                if raise_errors:
                    raise
                return
            with self._cond:
                self._writing = 0
                self._cond.notify_all()

    def _write_batch(self, batch: list[_Pending]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0], row[1]) if row else (0, GENESIS_HASH)
            rows = []
            checkpoints = []
            for p in batch:
                seq += 1
                h = hashlib.sha256(
                    prev.encode("ascii") + _hashed_json(p, seq, prev).encode("utf-8")
                ).hexdigest()
                rows.append((seq, p.ts, p.kind, *p.columns, p.classification, p.data_json, prev, h))
                if seq % self.options.checkpoint_every == 0:
                    checkpoints.append((seq, h, p.ts))
                prev = h
            conn.executemany(_INSERT, rows)
            if checkpoints:
                conn.executemany(
                    "INSERT INTO checkpoints (seq, hash, ts) VALUES (?,?,?)", checkpoints
                )
            conn.execute(
                "INSERT INTO head (id, seq, hash) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (seq, prev),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


# -- reading -------------------------------------------------------------------------------


def _db_path(path: str | Path) -> Path:
    p = Path(path)
    return p / AUDIT_FILENAME if p.is_dir() else p


def _open_existing(path: str | Path) -> sqlite3.Connection:
    p = _db_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no audit log at {p}")
    return _connect(p, 30.0)


def _row_entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, ts, kind, request_id, tenant, subject, script, risk, classification, data, prev_hash, hash_ = row
    return AuditEntry(seq, ts, kind, request_id, tenant, subject, script, risk, classification,
                      json.loads(data), prev_hash, hash_)


def verify(path: str | Path) -> VerifyResult:
    """Walk the chain of the log at `path` (the file or its state dir).

    A file SQLite cannot read (a damaged page or header) is reported as broken with
    ``first_bad_seq`` None; a missing file raises FileNotFoundError."""
    conn = _open_existing(path)
    try:
        return _verify(conn)
    except sqlite3.DatabaseError as exc:
        return VerifyResult(False, None, f"the log cannot be read: {exc}", 0)
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection) -> VerifyResult:
    conn.execute("BEGIN")  # one consistent snapshot while writers go on
    checkpoints = dict(conn.execute("SELECT seq, hash FROM checkpoints").fetchall())
    head = conn.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
    total = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    expected_seq, prev, last_cp = 1, GENESIS_HASH, None

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, seq, reason, total, last_cp)

    rows: Iterator[tuple[Any, ...]] = conn.execute(_SELECT + " ORDER BY seq")
    for row in rows:
        seq, data_text, prev_hash, stored = row[0], row[9], row[10], row[11]
        if seq != expected_seq:
            return bad(expected_seq, f"entry {expected_seq} is missing (next is {seq})")
        if prev_hash != prev:
            return bad(seq, "prev_hash does not match the previous entry's hash")
        try:
            data = json.loads(data_text)
        except (TypeError, ValueError):
            return bad(seq, "data is not valid JSON")
        if not isinstance(data, dict) or canonical_json(data) != data_text:
            return bad(seq, "data is not canonical JSON")
        fields = dict(zip(("seq", "ts", "kind", *_COLUMNS), row[:9], strict=True))
        computed = entry_hash(prev, {**fields, "data": data, "prev_hash": prev_hash})
        if computed != stored:
            return bad(seq, "hash mismatch: the entry was altered")
        cp = checkpoints.pop(seq, None)
        if cp is not None:
            if cp != stored:
                return bad(seq, f"checkpoint at {seq} does not match the entry's hash")
            last_cp = seq
        prev, expected_seq = stored, expected_seq + 1
    last = expected_seq - 1
    if checkpoints:
        return bad(last + 1, f"checkpoint at {min(checkpoints)} names a missing entry")
    if head is not None and (head[0] != last or head[1] != prev):
        if head[0] > last:
            return bad(last + 1, f"log ends at {last} but its head records {head[0]}")
        if head[0] < last:
            return bad(head[0] + 1, f"entries after the recorded head ({head[0]})")
        return bad(last, "head hash does not match the last entry")
    if head is None and last > 0:
        return bad(last, "head record is missing")
    return VerifyResult(True, None, None, total, last_cp, None if last == 0 else prev)


def _since_ts(since: datetime | str | float | None) -> str | None:
    if since is None:
        return None
    if isinstance(since, int | float):
        return format_ts(float(since))
    if isinstance(since, str):
        since = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return format_ts(since.timestamp())


def query(
    path: str | Path,
    *,
    request_id: str | None = None,
    tenant: str | None = None,
    since: datetime | str | float | None = None,
    kind: str | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Entries matching every given filter, in seq order; with `limit`, the last `limit` ones.

    `since` is a datetime (naive means UTC), an ISO 8601 string or epoch seconds; `kind` ending
    in ``*`` matches by prefix ("tool.*").
    """
    where: list[str] = []
    params: list[str | int] = []
    if request_id is not None:
        where.append("request_id = ?")
        params.append(request_id)
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    ts = _since_ts(since)
    if ts is not None:
        where.append("ts >= ?")
        params.append(ts)
    if kind is not None:
        if kind.endswith("*"):
            where.append("substr(kind, 1, ?) = ?")
            params.extend([len(kind) - 1, kind[:-1]])
        else:
            where.append("kind = ?")
            params.append(kind)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
    if limit is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
        params.append(int(limit))
    else:
        sql += " ORDER BY seq"
    conn = _open_existing(path)
    try:
        return [_row_entry(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()

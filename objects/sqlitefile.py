"""Opening a SQLite file that several processes share: WAL journal, schema, first-open protocol.

Every SQLite file the runtime shares between processes (the audit log, approvals, kill
switches, the alarm index, a script's shared object file, object databases, the sandbox's KV
and revocation files) is opened with `connect`.

Why a protocol: when a connection switches a file to WAL or creates its schema, SQLite can
answer ``SQLITE_BUSY`` without calling the busy handler (waiting there could deadlock, so it
gives up at once), so a busy timeout does not make concurrent first opens safe: six processes
opening the same new file with a 30 s busy timeout failed 7–30 times in 600 opens with
``database is locked`` (at ``PRAGMA journal_mode=WAL``), and a ``serve`` with two isolates on a
fresh state dir exited at start.

The contract of `connect(path, schema)`:

- It connects with ``busy_timeout_s`` as SQLite's busy timeout and sets ``synchronous``.
- If the file is not in WAL mode yet (a new file, or one written by older code), it takes an
  exclusive ``flock`` on the sidecar file ``<path>.lock`` and, holding it, switches the file to
  WAL and creates the schema; then it releases the lock. So first opens through this module,
  in any process or thread, run one at a time. A file already in WAL mode takes no lock.
- The schema (idempotent statements: ``CREATE ... IF NOT EXISTS``) then runs on every open.
- What blocks: the calling thread, while it waits for the sidecar lock and retries every busy
  answer of the WAL switch and the schema (which also covers openers that do not use this
  module, e.g. a plain reader). No new wait starts once ``busy_timeout_s`` has passed since the
  call began; a statement already waiting in SQLite's busy handler may take up to another
  ``busy_timeout_s``. Then it raises `sqlite3.OperationalError` naming the file and the step,
  and closes the connection.
- Failure or kill -9 while holding the lock: ``flock`` locks belong to the open file, so the
  kernel releases the lock when the holder's descriptor closes, process death included; SQLite
  rolls back the interrupted switch or schema transaction on the next open. The sidecar file
  stays (empty; deleting a lock file would race with a process that just opened it).
- Threads: each call opens the sidecar itself, and ``flock`` (unlike POSIX record locks, which
  belong to the process) excludes two descriptions of one process too, so threads of one
  process are serialized like processes. The lock is released explicitly, so a child forked
  while it was held does not keep it.

Where this lives, and why: `objects/` and `sandbox/` must not import `runtime/`, and
`runtime/` imports `objects/`; so the one helper lives at the bottom of `objects/` (durable
storage on SQLite is that package's concern) and imports only the standard library. `sandbox/`
imports it from here: importing `objects` costs no more than its own modules (it never imports
`sandbox` or `runtime`, so no cycle), while the other way round would load wasmtime into every
process that uses objects.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

__all__ = ["LOCK_SUFFIX", "connect"]

LOCK_SUFFIX = ".lock"
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
T = TypeVar("T")

_RETRY_SLEEP_S = 0.005


def connect(
    path: Path | str,
    schema: str = "",
    *,
    synchronous: Synchronous = "NORMAL",
    busy_timeout_s: float = 30.0,
    check_same_thread: bool = False,
) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode with ``schema`` created; see the module
    docstring for what it waits for and when it gives up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + busy_timeout_s
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                           check_same_thread=check_same_thread)
    try:
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if _retry(path, "reading the journal mode", deadline, lambda: _journal_mode(conn)) != "wal":
            with _first_open_lock(path, deadline):
                _retry(path, "switching to WAL", deadline, lambda: _switch_to_wal(conn))
                _retry(path, "creating the schema", deadline, lambda: conn.executescript(schema))
        else:
            _retry(path, "creating the schema", deadline, lambda: conn.executescript(schema))
    except BaseException:
        conn.close()
        raise
    return conn


def _journal_mode(conn: sqlite3.Connection) -> str:
    return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    if mode != "wal":  # SQLite answers the old mode when it could not switch now
        exc = sqlite3.OperationalError(f"database is locked (journal mode stayed {mode})")
        exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise exc


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # The primary code: extended codes (SQLITE_BUSY_SNAPSHOT, SQLITE_BUSY_RECOVERY...) included.
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _retry(path: Path, step: str, deadline: float, fn: Callable[[], T]) -> T:
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(f"{exc}: {path} (while {step})") from None
        time.sleep(_RETRY_SLEEP_S)


@contextmanager
def _first_open_lock(path: Path, deadline: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``<path>.lock``, waited for until ``deadline``."""
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(
                        f"database is locked: {lock_path} is held by another opener") from None
                time.sleep(_RETRY_SLEEP_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

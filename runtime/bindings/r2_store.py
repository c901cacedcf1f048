"""One R2 bucket on disk: object bodies as files, their metadata in a SQLite index.

Layout under ``<state>/r2/<bucket>/``: ``index.sqlite`` (opened with `objects.sqlitefile.connect`,
shared by every isolate process) and ``blobs/<uuid>``, one file per stored body or uploaded part.

Atomicity, the contract every writer keeps:
- A body is written to ``blobs/.tmp-<uuid>`` in chunks (never whole in memory), fsynced, renamed to
  ``blobs/<uuid>`` and the directory fsynced; only then does one index transaction point the key at
  it. A kill -9 at any point leaves either the old row (and an orphan file, removed by `sweep`) or
  the new row with a complete file: never a torn object.
- The replaced or deleted body is unlinked after the commit. A reader that opened it first keeps
  reading it (POSIX keeps an unlinked file's data while it is open); a reader that read the row but
  lost the race to open the file retries the lookup (`open_current`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from objects.sqlitefile import connect

__all__ = ["UPLOAD_TTL_S", "BlobWriter", "Part", "Row", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    tenant TEXT NOT NULL, key TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, version TEXT NOT NULL, uploaded REAL NOT NULL,
    http_metadata TEXT NOT NULL, custom_metadata TEXT NOT NULL,
    PRIMARY KEY (tenant, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key TEXT NOT NULL, created REAL NOT NULL,
    http_metadata TEXT NOT NULL, custom_metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, PRIMARY KEY (upload_id, part_number)) WITHOUT ROWID;
"""

_COLUMNS = "key, blob, size, etag, version, uploaded, http_metadata, custom_metadata"
UPLOAD_TTL_S = 7 * 24 * 3600.0  # an unfinished multipart upload is aborted after this, as on R2


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    blob: str
    size: int
    etag: str
    version: str
    uploaded: float
    http_metadata: dict[str, Any]
    custom_metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class Part:
    part_number: int
    blob: str
    size: int
    etag: str


def _row(raw: tuple[Any, ...]) -> Row:
    return Row(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], json.loads(raw[6]), json.loads(raw[7]))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A body being written: chunks appended to a temp file while its md5 is computed; `publish`
    makes it durable under its final name. `discard` removes it (failed or refused writes)."""

    def __init__(self, blobs: Path):
        self.name = uuid.uuid4().hex
        self._final = blobs / self.name
        self._tmp = blobs / f".tmp-{self.name}"
        self._file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 (closed by publish/discard)
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    def publish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.rename(self._tmp, self._final)
        _fsync_dir(self._final.parent)

    def discard(self) -> None:
        self._file.close()
        for path in (self._tmp, self._final):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class Store:
    """The bucket's index and blobs. Methods are synchronous (the binding runs them on a worker
    thread); one lock per store keeps this process's threads off each other's transactions, and
    SQLite's own locking (WAL, busy timeout) orders the processes."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._db = connect(root / "index.sqlite", _SCHEMA, synchronous="FULL")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.blobs / name).unlink()

    def writer(self) -> BlobWriter:
        return BlobWriter(self.blobs)

    def head(self, tenant: str, key: str) -> Row | None:
        with self._lock:
            raw = self._db.execute(f"SELECT {_COLUMNS} FROM objects WHERE tenant = ? AND key = ?",
                                   (tenant, key)).fetchone()
        return _row(raw) if raw else None

    def open_current(self, tenant: str, key: str) -> tuple[Row, BinaryIO] | None:
        """The row and an open handle on its body, consistent with each other even while another
        process replaces the key."""
        for _ in range(100):
            row = self.head(tenant, key)
            if row is None:
                return None
            try:
                return row, open(self.blobs / row.blob, "rb")  # noqa: SIM115 (the caller closes it)
            except FileNotFoundError:
                continue  # replaced between the lookup and the open: look again
        raise RuntimeError(f"r2: object {key!r} kept changing while being opened")

    def commit_object(self, tenant: str, key: str, blob: str, size: int, etag: str,
                      http_metadata: dict[str, Any], custom_metadata: dict[str, str],
                      expect: Any = None) -> Row | None:
        """Point `key` at the published `blob`. `expect(row_or_none) -> bool` is checked inside the
        transaction (conditional puts); when it refuses, nothing changes and None is returned."""
        row = Row(key, blob, size, etag, uuid.uuid4().hex, time.time(), http_metadata, custom_metadata)
        with self._tx() as db:
            old = db.execute("SELECT blob FROM objects WHERE tenant = ? AND key = ?", (tenant, key)).fetchone()
            if expect is not None and not expect(self._row_in(db, tenant, key)):
                return None
            db.execute(f"INSERT OR REPLACE INTO objects (tenant, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (tenant, key, blob, size, etag, row.version, row.uploaded,
                        json.dumps(http_metadata), json.dumps(custom_metadata)))
        if old is not None:
            self._unlink([old[0]])
        return row

    @staticmethod
    def _row_in(db: sqlite3.Connection, tenant: str, key: str) -> Row | None:
        raw = db.execute(f"SELECT {_COLUMNS} FROM objects WHERE tenant = ? AND key = ?", (tenant, key)).fetchone()
        return _row(raw) if raw else None

    def delete(self, tenant: str, keys: list[str]) -> list[Row]:
        """Remove `keys`; the rows that existed."""
        with self._tx() as db:
            gone = [r for r in (self._row_in(db, tenant, k) for k in keys) if r is not None]
            db.executemany("DELETE FROM objects WHERE tenant = ? AND key = ?", [(tenant, r.key) for r in gone])
        self._unlink([r.blob for r in gone])
        return gone

    def list(self, tenant: str, prefix: str, start_after: str, limit: int) -> list[Row]:
        """Up to `limit` rows after `start_after` whose key starts with `prefix`, in key order."""
        with self._lock:
            raws = self._db.execute(
                f"SELECT {_COLUMNS} FROM objects WHERE tenant = ? AND key > ? AND substr(key, 1, ?) = ? "
                "ORDER BY key LIMIT ?", (tenant, start_after, len(prefix), prefix, limit)).fetchall()
        return [_row(r) for r in raws]

    # -- multipart --------------------------------------------------------------------------

    def create_upload(self, tenant: str, key: str, http_metadata: dict[str, Any],
                      custom_metadata: dict[str, str]) -> str:
        upload_id = uuid.uuid4().hex
        with self._tx() as db:
            db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                       (upload_id, tenant, key, time.time(), json.dumps(http_metadata), json.dumps(custom_metadata)))
        return upload_id

    def upload(self, tenant: str, key: str, upload_id: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        with self._lock:
            raw = self._db.execute("SELECT http_metadata, custom_metadata FROM uploads "
                                   "WHERE upload_id = ? AND tenant = ? AND key = ?",
                                   (upload_id, tenant, key)).fetchone()
        return (json.loads(raw[0]), json.loads(raw[1])) if raw else None

    def commit_part(self, upload_id: str, part: Part) -> bool:
        """Record an uploaded part (replacing one of the same number); False if the upload is gone."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                return False
            old = db.execute("SELECT blob FROM parts WHERE upload_id = ? AND part_number = ?",
                             (upload_id, part.part_number)).fetchone()
            db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                       (upload_id, part.part_number, part.blob, part.size, part.etag))
        if old is not None:
            self._unlink([old[0]])
        return True

    def parts(self, upload_id: str) -> dict[int, Part]:
        with self._lock:
            raws = self._db.execute("SELECT part_number, blob, size, etag FROM parts WHERE upload_id = ?",
                                    (upload_id,)).fetchall()
        return {r[0]: Part(*r) for r in raws}

    def finish_upload(self, tenant: str, key: str, upload_id: str, blob: str, size: int, etag: str,
                      http_metadata: dict[str, Any], custom_metadata: dict[str, str]) -> Row | None:
        """Point `key` at the assembled `blob` and drop the upload and its parts, in one
        transaction; None if the upload was completed or aborted meanwhile."""
        row = Row(key, blob, size, etag, uuid.uuid4().hex, time.time(), http_metadata, custom_metadata)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                return None
            old = db.execute("SELECT blob FROM objects WHERE tenant = ? AND key = ?", (tenant, key)).fetchone()
            part_blobs = [r[0] for r in db.execute("SELECT blob FROM parts WHERE upload_id = ?", (upload_id,))]
            db.execute(f"INSERT OR REPLACE INTO objects (tenant, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (tenant, key, blob, size, etag, row.version, row.uploaded,
                        json.dumps(http_metadata), json.dumps(custom_metadata)))
            db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        self._unlink(part_blobs + ([old[0]] if old is not None else []))
        return row

    def abort_upload(self, upload_id: str) -> None:
        with self._tx() as db:
            part_blobs = [r[0] for r in db.execute("SELECT blob FROM parts WHERE upload_id = ?", (upload_id,))]
            db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        self._unlink(part_blobs)

    def sweep(self, older_than_s: float = 3600.0, upload_ttl_s: float = UPLOAD_TTL_S) -> int:
        """Abort multipart uploads started more than `upload_ttl_s` ago (R2 aborts them after 7 days),
        then remove blob files no row names (left by a writer killed between publishing and
        committing) once untouched for `older_than_s`, so a write in flight is never touched.
        Returns how many files it removed."""
        with self._lock:
            stale = [r[0] for r in self._db.execute("SELECT upload_id FROM uploads WHERE created < ?",
                                                    (time.time() - upload_ttl_s,))]
        for upload_id in stale:
            self.abort_upload(upload_id)
        with self._lock:
            named = {r[0] for r in self._db.execute("SELECT blob FROM objects UNION SELECT blob FROM parts")}
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.blobs.iterdir():
            if path.name.removeprefix(".tmp-") in named:
                continue
            with contextlib.suppress(FileNotFoundError):  # another process swept it first
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

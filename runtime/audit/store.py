"""The audit log's segments and the one writer that fills them from the journal.

Layout under ``<state>/audit/``: ``journal/`` (see `journal.py`), ``segments/<n>.sqlite`` (WAL)
and ``writer.lock``. Every entry of the log is a leaf of one Merkle tree (RFC 6962, see
`runtime.audit.merkle`): entry ``seq`` is leaf ``seq - base_seq - 1`` (``base_seq`` is the
last seq of a migrated version-1 log, else 0). A segment holds a contiguous run of entries::

    entries(seq, ts, kind, request_id, tenant, record)   -- record: the exact bytes hashed
    tiles(idx, hash)          -- every complete, aligned 256-leaf subtree so far (all segments)
    state(origin, base_seq, start_frontier, frontier, created, sealed, anchored_size, exported_size)
    checkpoints(size, ts, root, signed)   -- tree heads; `signed` the signed checkpoint's JSON
    journals(name, offset)    -- how far each journal file has been consumed

``frontier`` is the tree's right edge after the segment's last entry (enough to append and to
compute the root); ``start_frontier`` the edge before its first, so a segment verifies on its
own once the segments before it are gone.

`Store.consume` is the writer's step. Under an exclusive ``flock`` on ``writer.lock`` (one
writer at a time, in any process) it reads each journal file from its committed offset, and in
one transaction inserts the entries, the tiles they complete, the new frontier and the new
offsets. An entry's seq is fixed only then. A crash at any point rolls the step back, and the
next step reads the same bytes again: no entry is lost or stored twice. A journal file whose
producer is done (its lock is free) is deleted once consumed; bytes left at its end that are not
a whole record are recorded as ``audit.journal_torn``, bytes that are not records at all as
``audit.journal_corrupt``; either way the writer goes on.

Durability: a step commits with ``synchronous=FULL``. Journal writes are not fsynced, so a power
loss loses the entries not yet consumed: those appended during the last
``flush_interval_s`` (plus any backlog the writer had). A process crash loses nothing.

Rotation: when the current segment reaches ``segment_max_bytes`` or ``segment_max_age_s``, the
writer seals it with a signed checkpoint of the head and starts the next one. Retention
(``retain_segments``) removes whole sealed segments, oldest first, only once the head that
seals them has been written to the anchor sink or exported, and records each removal as an
``audit.segment_removed`` entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from objects.sqlitefile import LOCK_SUFFIX, connect
from runtime.audit import legacy
from runtime.audit.anchor import Checkpoint, Signer
from runtime.audit.journal import journal_dir
from runtime.audit.merkle import Frontier, leaf_hash
from runtime.audit.records import CLASSIFICATION_NAME, RecordMaker
from runtime.auditconfig import AuditOptions

__all__ = ["SCHEMA", "Segment", "Step", "Store", "legacy_state", "list_segments", "segments_dir"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    tenant TEXT,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_request_id ON entries (request_id);
CREATE INDEX IF NOT EXISTS entries_tenant_ts ON entries (tenant, ts);
CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts);
CREATE TABLE IF NOT EXISTS tiles (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    base_seq INTEGER NOT NULL,
    start_frontier BLOB NOT NULL,
    frontier BLOB NOT NULL,
    created REAL NOT NULL,
    sealed INTEGER NOT NULL DEFAULT 0,
    anchored_size INTEGER NOT NULL DEFAULT 0,
    exported_size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER NOT NULL, ts REAL NOT NULL, root BLOB NOT NULL, signed TEXT);
CREATE TABLE IF NOT EXISTS journals (name TEXT PRIMARY KEY, offset INTEGER NOT NULL);
"""
SEGMENTS_DIR = Path("audit") / "segments"
_INSERT = "INSERT INTO entries (seq, ts, kind, request_id, tenant, record) VALUES (?,?,?,?,?,?)"
_MAX_BATCH = 5000  # entries per transaction, so readers and the lock are never held long
_MAX_READ = 4 << 20  # bytes read from one journal file per step
_IGNORED = -1  # the offset of a "journal" that cannot be removed (not a file): never read again


def segments_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SEGMENTS_DIR


def list_segments(state_dir: Path) -> list[Path]:
    """The segment files, oldest first."""
    d = segments_dir(state_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix == ".sqlite" and p.stem.isdigit())


@dataclass(slots=True)
class Segment:
    """A segment's state row."""

    path: Path
    origin: str
    base_seq: int
    start: Frontier
    frontier: Frontier
    created: float
    sealed: bool
    anchored_size: int
    exported_size: int

    @classmethod
    def read(cls, path: Path, conn: sqlite3.Connection) -> Segment:
        row = conn.execute("SELECT origin, base_seq, start_frontier, frontier, created, sealed, anchored_size,"
                           " exported_size FROM state WHERE id = 1").fetchone()
        if row is None:
            raise sqlite3.DatabaseError(f"{path.name}: the segment has no state row")
        origin, base, start, front, created, sealed, anchored, exported = row
        try:  # a damaged state row is a log that cannot be read, like a damaged page
            start_frontier, frontier = Frontier.from_bytes(start), Frontier.from_bytes(front)
        except (TypeError, ValueError) as exc:
            raise sqlite3.DatabaseError(f"{path.name}: the segment's state row is malformed: {exc}") from None
        return cls(path, origin, base, start_frontier, frontier, created, bool(sealed), anchored, exported)

    @property
    def first_seq(self) -> int:
        return self.base_seq + self.start.size + 1

    @property
    def last_seq(self) -> int:
        return self.base_seq + self.frontier.size


@dataclass(slots=True)
class Step:
    """What one `Store.consume` did."""

    entries: int = 0
    offsets: dict[str, int] = field(default_factory=dict)  # journal file -> committed offset
    finished: list[str] = field(default_factory=list)  # journal files consumed whole and deleted
    more: bool = False  # a limit stopped it: call again
    sealed: Checkpoint | None = None  # the signed head that sealed a segment this step

    def add(self, other: Step) -> None:
        """Fold a following step into this one."""
        self.entries += other.entries
        self.offsets.update(other.offsets)
        self.finished.extend(other.finished)
        self.more = self.more or other.more


class Store:
    """The writer's side of the log; see the module docstring. Not thread-safe: one per thread."""

    def __init__(self, state_dir: str | Path, options: AuditOptions | None = None, *,
                 signer: Signer | None = None, clock: Callable[[], float] = time.time,
                 on_event: Callable[..., None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.options = options or AuditOptions()
        self.signer = signer
        self._clock = clock
        self._on_event = on_event or (lambda event, **fields: None)
        self._maker = RecordMaker(self.options)
        self._journals = journal_dir(self.state_dir)
        self._journals.mkdir(parents=True, exist_ok=True)
        segments_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        self._lock_path = self.state_dir / "audit" / "writer.lock"
        self._conn: sqlite3.Connection | None = None
        self._path: Path | None = None
        self._pending_events: list[tuple[str, dict[str, Any]]] = []
        self._removals: list[Path] = []  # segments retention removes once their removal is recorded

    # -- the writer lock and the current segment ----------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _current(self) -> tuple[sqlite3.Connection, Segment]:
        """The newest segment, opened; the first one is created (after a version-1 log, if any),
        and a sealed newest one is followed by a new one. Caller holds the writer lock."""
        paths = list_segments(self.state_dir)
        if not paths:
            self._create_first()
            paths = list_segments(self.state_dir)
        path = paths[-1]
        if self._path != path or self._conn is None:
            self._close_conn()
            self._conn = connect(path, SCHEMA, synchronous=self.options.synchronous,
                                 busy_timeout_s=self.options.busy_timeout_s)
            self._path = path
        seg = Segment.read(path, self._conn)
        if seg.sealed:
            self._start_next(self._conn, seg)
            return self._current()
        return self._conn, seg

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._path = None, None

    def _create_first(self) -> None:
        base, migrated = 0, None
        old = self.state_dir / legacy.AUDIT_FILENAME
        if old.is_file():
            base, migrated = legacy_state(old)
        origin = f"edgeworks-audit:{uuid.uuid4()}"
        empty = Frontier().to_bytes()
        self._write_segment(1, origin, base, empty, empty, tiles=[], offsets=[], checkpoints=[])
        if migrated is not None:
            self._pending_events.append(("audit.migrated", migrated))
            self._on_event("audit_migrated", **migrated)

    def _write_segment(self, number: int, origin: str, base: int, start: bytes, frontier: bytes, *,
                       tiles: list[tuple[int, bytes]], offsets: list[tuple[str, int]],
                       checkpoints: list[tuple[int, float, bytes, str | None]]) -> Path:
        """Create segment `number` whole under a temporary name, then rename it into place, so a
        segment file is never seen half made."""
        final = segments_dir(self.state_dir) / f"{number:08d}.sqlite"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.executescript(SCHEMA)
            conn.execute("BEGIN")
            conn.execute("INSERT INTO state (id, origin, base_seq, start_frontier, frontier, created)"
                         " VALUES (1, ?, ?, ?, ?, ?)", (origin, base, start, frontier, self._clock()))
            conn.executemany("INSERT INTO tiles (idx, hash) VALUES (?, ?)", tiles)
            conn.executemany("INSERT INTO journals (name, offset) VALUES (?, ?)", offsets)
            conn.executemany("INSERT INTO checkpoints (size, ts, root, signed) VALUES (?, ?, ?, ?)", checkpoints)
            conn.execute("COMMIT")
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        return final

    def _start_next(self, conn: sqlite3.Connection, seg: Segment) -> None:
        tiles = conn.execute("SELECT idx, hash FROM tiles ORDER BY idx").fetchall()
        offsets = conn.execute("SELECT name, offset FROM journals").fetchall()
        seal = conn.execute("SELECT size, ts, root, signed FROM checkpoints ORDER BY size DESC, ts DESC LIMIT 1").fetchall()
        frontier = seg.frontier.to_bytes()
        number = int(seg.path.stem) + 1
        path = self._write_segment(number, seg.origin, seg.base_seq, frontier, frontier, tiles=tiles,
                                   offsets=offsets, checkpoints=seal)
        # the anchored and exported marks travel on: retention reads them from the newest segment
        with connect(path, SCHEMA, synchronous=self.options.synchronous) as new:
            new.execute("UPDATE state SET anchored_size = ?, exported_size = ? WHERE id = 1",
                        (seg.anchored_size, seg.exported_size))
        self._on_event("audit_segment_started", segment=path.name, first_seq=seg.last_seq + 1)

    # -- consuming ---------------------------------------------------------------------------
    def consume(self) -> Step:
        """One writer step (see the module docstring); takes the writer lock."""
        with self.locked():
            conn, seg = self._current()
            step = self._consume(conn, seg)
            if not step.more:
                step.sealed = self._maybe_rotate(conn)
                if self._pending_events:  # retention plans removals: record them, then delete
                    step.add(self._consume(*self._current()))
                    self._remove_planned()
            return step

    def _consume(self, conn: sqlite3.Connection, seg: Segment) -> Step:
        offsets = dict(conn.execute("SELECT name, offset FROM journals").fetchall())
        frontier = seg.frontier
        seq = seg.base_seq + frontier.size
        rows: list[tuple[Any, ...]] = []
        tiles: list[tuple[int, bytes]] = []
        step = Step()
        done_names: list[str] = []

        def add(raw: bytes, ts: float, kind: str, request_id: Any, tenant: Any) -> None:
            nonlocal seq
            seq += 1
            tiles.extend(frontier.append(leaf_hash(raw)))
            rows.append((seq, ts, kind, request_id, tenant, raw))

        def own(kind: str, fields: dict[str, Any]) -> None:  # an entry the writer itself records
            ts = self._clock()
            add(self._maker.make(kind, {}, fields, ts), ts, kind, None, None)

        for kind, fields in self._pending_events:
            own(kind, fields)
        events = self._pending_events
        self._pending_events = []
        listing = os.listdir(self._journals)
        names = sorted(n for n in listing if n.endswith(".log"))
        self._sweep_unborn([n for n in listing if n.startswith(".") and n.endswith(".new")])
        for name in names:
            if len(rows) >= _MAX_BATCH:
                step.more = True
                break
            start = offsets.get(name, 0)
            end, finished, problem = self._read_journal(name, start, _MAX_BATCH - len(rows), add)
            if end != start:
                step.offsets[name] = end
            if problem is not None:
                own(*problem)
                self._on_event(problem[0].replace(".", "_"), **problem[1])
            if finished:
                done_names.append(name)
            elif end - start >= _MAX_READ or len(rows) >= _MAX_BATCH:
                step.more = True
        if not rows and not step.offsets and not done_names:
            return step
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.executemany("INSERT INTO tiles (idx, hash) VALUES (?, ?)", tiles)
            conn.execute("UPDATE state SET frontier = ? WHERE id = 1", (frontier.to_bytes(),))
            conn.executemany("INSERT INTO journals (name, offset) VALUES (?, ?) ON CONFLICT (name)"
                             " DO UPDATE SET offset = excluded.offset", list(step.offsets.items()))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._pending_events = events + self._pending_events
            raise
        step.entries = len(rows)
        stuck = []
        for name in done_names:  # the file first: a stale offset row is harmless, a re-read file is not
            try:
                (self._journals / name).unlink(missing_ok=True)
            except OSError:  # e.g. a directory named like a journal: ignored from now on
                stuck.append(name)
        if done_names:
            conn.executemany("DELETE FROM journals WHERE name = ?", [(n,) for n in done_names if n not in stuck])
            conn.executemany("INSERT INTO journals (name, offset) VALUES (?, ?) ON CONFLICT (name)"
                             " DO UPDATE SET offset = excluded.offset", [(n, _IGNORED) for n in stuck])
            step.finished = [n for n in done_names if n not in stuck]
        return step

    def _sweep_unborn(self, names: list[str]) -> None:
        """Remove journal files a producer died creating (before it named them ``*.log``): empty
        or not, nothing was appended to them once `append` returned. Only unlocked ones older
        than a minute, so a producer creating one now is never disturbed."""
        for name in names:
            path = self._journals / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if time.time() - os.fstat(fd).st_mtime < 60:
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
            except OSError:
                continue
            finally:
                os.close(fd)

    def _read_journal(self, name: str, start: int, budget: int,
                      add: Callable[[bytes, float, str, Any, Any], None]) -> tuple[int, bool, tuple[str, dict[str, Any]] | None]:
        """Feed the whole records of journal `name` after `start` to `add` (at most `budget`);
        (new offset, whether the file is finished, a problem entry or None)."""
        if start == _IGNORED:
            return start, False, None
        path = self._journals / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return start, False, None
        except OSError as e:  # a symlink or a special file: not a journal any producer wrote
            return start, True, ("audit.journal_corrupt", {"journal": name, "offset": start, "skipped_bytes": 0,
                                                           "error": f"cannot be read: {e.strerror}"})
        try:
            try:  # the producer's lock is free: it is done, and what the file holds is all of it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                producer_done = True
            except BlockingIOError:
                producer_done = False
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return start, True, ("audit.journal_corrupt", {"journal": name, "offset": start, "skipped_bytes": 0,
                                                               "error": "not a regular file"})
            size = st.st_size
            data = os.pread(fd, min(size - start, _MAX_READ), start) if size > start else b""
        finally:
            os.close(fd)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        pos = 0
        taken = 0
        problem = None
        try:
            while taken < budget:
                try:
                    value = unpacker.unpack()
                except msgpack.OutOfData:
                    break
                end = unpacker.tell()
                if not _is_record(value):
                    raise ValueError("not a record")
                add(data[pos:end], float(value[0]), value[1], value[2], value[3])
                pos = end
                taken += 1
        except Exception as exc:  # bytes that are not records: skip what was read, go on
            problem = ("audit.journal_corrupt", {"journal": name, "offset": start + pos,
                                                 "skipped_bytes": len(data) - pos,
                                                 "error": f"{type(exc).__name__}: {exc}"[:200]})
            pos = len(data)
        offset = start + pos
        finished = producer_done and offset >= size and taken < budget
        if producer_done and taken < budget and problem is None and offset < size and len(data) == size - start:
            problem = ("audit.journal_torn", {"journal": name, "offset": offset, "bytes": size - offset})
            offset, finished = size, True
        return offset, finished, problem

    # -- checkpoints, anchoring, rotation, retention --------------------------------------------
    def checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Sign the current head and store it; None when nothing changed since the last one
        (unless `force`) or when there is no signing key."""
        with self.locked():
            conn, seg = self._current()
            return self._checkpoint(conn, seg, force)

    def _checkpoint(self, conn: sqlite3.Connection, seg: Segment, force: bool) -> Checkpoint | None:
        if self.signer is None:
            return None
        last = conn.execute("SELECT max(size) FROM checkpoints").fetchone()[0]
        size = seg.frontier.size
        if not force and last is not None and last == size:
            return None
        root = seg.frontier.root()
        cp = self.signer.sign_checkpoint(size, root, ts=self._clock(), origin=seg.origin)
        conn.execute("INSERT INTO checkpoints (size, ts, root, signed) VALUES (?, ?, ?, ?)",
                     (size, cp.ts, root, cp.to_json()))
        return cp

    def mark_anchored(self, size: int) -> None:
        """Checkpoint `size` reached the anchor sink."""
        with self.locked():
            conn, _ = self._current()
            conn.execute("UPDATE state SET anchored_size = max(anchored_size, ?) WHERE id = 1", (size,))

    def mark_exported(self, size: int) -> None:
        with self.locked():
            conn, _ = self._current()
            conn.execute("UPDATE state SET exported_size = max(exported_size, ?) WHERE id = 1", (size,))

    def _maybe_rotate(self, conn: sqlite3.Connection) -> Checkpoint | None:
        seg = Segment.read(self._path or Path(), conn)
        if seg.frontier.size == seg.start.size:
            return None
        too_big = self._path is not None and self._path.stat().st_size >= self.options.segment_max_bytes
        too_old = self._clock() - seg.created >= self.options.segment_max_age_s
        return self._rotate(conn, seg) if too_big or too_old else None

    def rotate(self) -> Checkpoint | None:
        """Seal the current segment now (if it holds entries) and start the next one; the signed
        head that seals it (None without a signing key)."""
        with self.locked():
            conn, seg = self._current()
            return self._rotate(conn, seg) if seg.frontier.size != seg.start.size else None

    def _rotate(self, conn: sqlite3.Connection, seg: Segment) -> Checkpoint | None:
        cp = self._checkpoint(conn, seg, force=False)
        conn.execute("UPDATE state SET sealed = 1 WHERE id = 1")
        self._on_event("audit_segment_sealed", segment=seg.path.name, last_seq=seg.last_seq)
        self._start_next(conn, seg)
        self._close_conn()
        self._retain()
        return cp

    def _retain(self) -> None:
        """Plan the removal of the oldest sealed segments beyond ``retain_segments`` whose
        sealing head was anchored or exported; `consume` records each removal as an entry,
        then deletes the files (a crash in between leaves the file, removed and recorded again
        by the next step: a removal is never unrecorded)."""
        keep = self.options.retain_segments
        if keep is None:
            return
        paths = list_segments(self.state_dir)
        sealed, newest = paths[:-1], paths[-1]
        with contextlib.closing(sqlite3.connect(newest)) as c:
            head = Segment.read(newest, c)
        for path in sealed[: max(0, len(sealed) - keep)]:
            if path in self._removals:  # planned by a step whose commit failed: still pending
                continue
            with contextlib.closing(sqlite3.connect(path)) as c:
                seg = Segment.read(path, c)
            reason = ("anchored" if seg.frontier.size <= head.anchored_size else
                      "exported" if seg.frontier.size <= head.exported_size else None)
            if reason is None:
                self._on_event("audit_retention_waiting", segment=path.name,
                               why="its sealing head is neither anchored nor exported yet")
                break  # oldest first: a later segment is never removed before an earlier one
            fields = {"segment": path.name, "first_seq": seg.first_seq, "last_seq": seg.last_seq,
                      "root": seg.frontier.root().hex(), "reason": reason}
            self._pending_events.append(("audit.segment_removed", fields))
            self._removals.append(path)

    def _remove_planned(self) -> None:
        for path in self._removals:
            for suffix in ("", "-wal", "-shm", LOCK_SUFFIX):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self._on_event("audit_segment_removed", segment=path.name)
        self._removals = []

    def close(self) -> None:
        self._close_conn()


def _is_record(value: Any) -> bool:
    """The shape `records.decode_record` checks, on the value the journal's unpacker already
    decoded (msgpack gives exact built-in types, so `type(...) is` is enough)."""
    if type(value) is not list or len(value) != 9:
        return False
    ts, kind, c1, c2, c3, c4, c5, classification, data = value
    return ((type(ts) is float or type(ts) is int) and type(kind) is str and kind != ""
            and (c1 is None or type(c1) is str) and (c2 is None or type(c2) is str)
            and (c3 is None or type(c3) is str) and (c4 is None or type(c4) is str)
            and (c5 is None or type(c5) is str) and type(classification) is str
            and CLASSIFICATION_NAME.fullmatch(classification) is not None
            and type(data) is bytes)


def legacy_state(path: Path) -> tuple[int, dict[str, Any]]:
    """(last seq, the ``audit.migrated`` fields) of a version-1 log, verified first."""
    result = legacy.verify(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            row = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError:
            row = None
    last_seq, last_hash = (row[0], row[1]) if row else (0, legacy.GENESIS_HASH)
    return last_seq, {"legacy_file": path.name, "legacy_entries": result.entries, "legacy_last_seq": last_seq,
                      "legacy_last_hash": last_hash, "legacy_ok": result.ok, "legacy_problem": result.reason}

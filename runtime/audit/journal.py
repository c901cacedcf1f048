"""The audit journal: where producers put entries, in the kernel's hands before they return.

A producer (the front, or an in-process `AuditLog`) appends each record (`records.py`) with one
``write`` to its own file ``<state>/audit/journal/<ms>-<pid>-<rand>.log``, opened ``O_APPEND``.
When `append` returns, the entry is in the page cache: it survives the producer's kill -9 and
the writer's, not a power loss (see `store.py` for that window). The front appends a request's
entry before the response's last byte leaves, so an answered request always has its entry.

Each producer holds an exclusive ``flock`` on its file while it may still append; the kernel
drops it when the producer closes the file or dies. The writer (`store.Store.consume`) reads
every journal file from the offset it committed, and deletes a file once it has consumed all of
it and its lock is free (the producer is done). A producer moves to a new file past
``journal_max_bytes`` so consumed bytes do not pile up on disk.

Nothing is buffered in memory: the journal's backlog (written, not yet consumed) is on disk,
and producers bound it (`backlog`; the front refuses new requests past
``[audit] max_backlog_bytes``, see `runtime/front/auditd.py`).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.audit.records import RecordMaker
from runtime.auditconfig import AuditOptions
from runtime.redact import Redactor

if TYPE_CHECKING:
    from runtime.redaction import RedactionPolicy

__all__ = ["JOURNAL_DIR", "Journal", "JournalClosed", "journal_dir"]

JOURNAL_DIR = Path("audit") / "journal"
_CLOSED, _BROKEN = -1, -2  # file descriptor states


class JournalClosed(RuntimeError):
    """The journal was closed (or belongs to another process); nothing more can be appended."""


def journal_dir(state_dir: Path) -> Path:
    return Path(state_dir) / JOURNAL_DIR


class Journal:
    """One producer's append-only journal files; see the module docstring."""

    def __init__(self, state_dir: str | Path, options: AuditOptions | None = None, *,
                 redactor: Redactor | None = None, clock: Callable[[], float] = time.time,
                 policy: RedactionPolicy | None = None) -> None:
        self.options = options or AuditOptions()
        self.dir = journal_dir(Path(state_dir))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.maker = RecordMaker(self.options, redactor, policy)
        self._clock = clock
        self._lock = threading.Lock()  # one write and one file switch at a time
        self._pid = os.getpid()
        self._fd = _CLOSED
        self.name = ""
        self.size = 0  # bytes written to the current file
        self._mine: set[str] = set()  # this producer's journal files a writer has not finished
        self._written = 0  # bytes written to them, all files together
        self._consumed: dict[str, int] = {}  # committed offset per file of ours
        self._consumed_total = 0  # committed bytes, all files together
        self._open_next()

    def _abandon(self) -> None:
        """After a failed write: go on in a new file, so the torn bytes end a finished one (the
        writer records them as torn) and never precede a whole record."""
        try:
            self._open_next()
        except OSError:
            os.close(self._fd)
            self._fd = _BROKEN

    def _open_next(self) -> None:
        name = f"{int(time.time() * 1000):013d}-{os.getpid()}-{secrets.token_hex(4)}.log"
        # Locked under a name the writer ignores (not *.log), then renamed: a writer that saw the
        # new file unlocked would take it for a finished, empty journal and delete it.
        tmp = self.dir / f".{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # never contended: the file is new and ours
            os.rename(tmp, self.dir / name)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        old, self._fd, self.name, self.size = self._fd, fd, name, 0
        self._mine.add(name)
        if old >= 0:
            os.close(old)  # releases its lock: the writer may finish and delete it

    # -- appending -----------------------------------------------------------------------
    def append(self, kind: str, *, data: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Journal one entry. Known fields (request_id, tenant, subject, script, risk,
        classification) become columns; any other keyword joins ``data``."""
        columns, rest = self.maker.split(fields)
        if data:
            rest.update(data)
        self.write(self.maker.make(kind, columns, rest, self._clock()))

    def audit(self, kind: str, fields: Mapping[str, Any]) -> None:
        """The hook shape lower layers take: column fields are picked out, the rest is data."""
        columns, data = self.maker.split(fields)
        self.write(self.maker.make(kind, columns, data, self._clock()))

    def write(self, record: bytes) -> None:
        """Append one record (made by `self.maker`)."""
        if os.getpid() != self._pid:
            raise JournalClosed("this journal belongs to the parent process; open one here")
        with self._lock:
            if self._fd == _CLOSED:
                raise JournalClosed("the audit journal is closed")
            if self._fd == _BROKEN:
                self._open_next()  # raises OSError while the disk still refuses
            try:
                n = os.write(self._fd, record)
            except OSError:
                self._abandon()
                raise
            self._written += n  # torn bytes too: the writer consumes them as torn
            if n != len(record):  # a regular file takes it whole unless the disk is full
                self._abandon()
                raise OSError(f"short write to the audit journal ({n} of {len(record)} bytes)")
            self.size += n
            if self.size >= self.options.journal_max_bytes:
                self._open_next()

    def consumed(self, offsets: Mapping[str, int], finished: Iterable[str]) -> None:
        """A writer's step committed `offsets` of journal files (any producer's: only ours
        count) and finished the files `finished`."""
        with self._lock:
            for name, offset in offsets.items():
                if name in self._mine:
                    self._consumed_total += offset - self._consumed.get(name, 0)
                    self._consumed[name] = offset
            for name in finished:
                self._consumed.pop(name, None)
                self._mine.discard(name)

    @property
    def backlog(self) -> int:
        """Bytes this producer journaled that no writer has committed yet."""
        return self._written - self._consumed_total

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and os.getpid() == self._pid:
                os.close(self._fd)
            self._fd = _CLOSED

    @property
    def closed(self) -> bool:
        return self._fd == _CLOSED

"""`AuditLog`: a journal and its writer in one process, for code that audits without a front
(tests, tools, the kill switch's hook).

`append`/`audit` journal the entry (see `journal.py`): thread-safe, one ``write``, no buffer. A
background thread runs the writer (`writer.Writer`) every ``flush_interval_s``; any other
process's writer may consume the entries as well (one writer at a time, under the writer lock).
When the journal's backlog reaches ``max_backlog_bytes``, `append` wakes the writer and waits up
to ``backpressure_timeout_s``, then raises `AuditUnavailable`: callers fail closed instead of
acting without a trace. `flush` returns once every entry appended before it is committed (or
raises the write error); `close` flushes, closes the journal and stops the thread; it is
idempotent and also runs at interpreter exit. In a forked child, `append` raises `AuditClosed`.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runtime.audit.anchor import AnchorSink, Signer
from runtime.audit.journal import Journal, JournalClosed
from runtime.audit.store import Store
from runtime.audit.writer import Writer
from runtime.auditconfig import AuditOptions
from runtime.redact import Redactor

__all__ = ["AuditClosed", "AuditLog", "AuditUnavailable"]

AuditClosed = JournalClosed


class AuditUnavailable(RuntimeError):
    """The journal's backlog stayed over its limit: the writer is not keeping up."""


class AuditLog:
    def __init__(self, state_dir: str | Path, options: AuditOptions | None = None, *,
                 clock: Callable[[], float] = time.time, redactor: Redactor | None = None,
                 signer: Signer | None = None, sink: AnchorSink | None = None) -> None:
        self.options = options or AuditOptions()
        self.state_dir = Path(state_dir)
        self.journal = Journal(self.state_dir, self.options, redactor=redactor, clock=clock)
        self.store = Store(self.state_dir, self.options, signer=signer, clock=clock)
        self.writer = Writer(self.store, sink, anchor_interval_s=self.options.anchor_interval_s)
        self.write_errors = 0
        self.last_error: BaseException | None = None
        self._step_lock = threading.Lock()  # one writer step at a time in this process
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="edgeworks-audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- appending -----------------------------------------------------------------------
    def append(self, kind: str, *, data: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Journal one entry. Known fields (request_id, tenant, subject, script, risk,
        classification) become columns; any other keyword joins ``data``."""
        self._admit()
        self.journal.append(kind, data=data, **fields)

    def audit(self, kind: str, fields: Mapping[str, Any]) -> None:
        """The hook shape lower layers take: column fields are picked out, the rest is data."""
        self._admit()
        self.journal.audit(kind, fields)

    def classification_for(self, kind: str) -> str:
        return self.journal.maker.classification_for(kind)

    def _admit(self) -> None:
        if os.getpid() != self._pid:
            raise AuditClosed("this AuditLog belongs to the parent process; open one here")
        if self.pending < self.options.max_backlog_bytes:
            return
        self._wake.set()
        with self._progress:
            if not self._progress.wait_for(lambda: self.pending < self.options.max_backlog_bytes or self._stopping,
                                           timeout=self.options.backpressure_timeout_s):
                raise AuditUnavailable("the audit journal's backlog is full: entries are not being persisted")

    @property
    def pending(self) -> int:
        """Journal bytes this log appended that no writer has committed yet."""
        return self.journal.backlog

    # -- writing -------------------------------------------------------------------------
    def _step(self) -> None:
        with self._step_lock:
            step = self.writer.drain()
        self.journal.consumed(step.offsets, step.finished)
        with self._progress:
            self._progress.notify_all()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.options.flush_interval_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._step()
            except Exception as exc:  # e.g. the lock stayed busy: retried on the next tick
                self.write_errors += 1
                self.last_error = exc

    def flush(self) -> None:
        """Commit every entry appended before this call; raises the write error if any."""
        try:
            self._step()
        except Exception as exc:
            self.write_errors += 1
            self.last_error = exc
            raise

    def close(self) -> None:
        if os.getpid() != self._pid:
            self.journal.close()  # a forked child: nothing here is its to flush
            return
        with self._progress:
            if self._stopping:
                return
            self._stopping = True
            self._progress.notify_all()
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join()
        self.journal.close()
        try:
            self._step()  # the journal is closed: its file is consumed whole and deleted
            self.writer.anchor()
        finally:
            self.store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

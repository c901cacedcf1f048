"""The front's audit: its journal, and the writer process that turns the journal into the log.

The front appends each entry to its journal file (`runtime.audit.journal`: redaction, a msgpack
record, one ``write``), so when `append` returns the entry is in the kernel's hands and survives
a kill -9 of the front or of the writer. A request's entry is appended before the last byte of
its response leaves (see `Front.handle_http`): a request that was answered has its entry.

Everything else happens in the writer, a child process (``python -m runtime.front.auditd``):
consuming the journal into the log's segments, hashing, signing and anchoring checkpoints,
rotation and retention (`runtime.audit.writer`). It reports each step's progress (journal file,
committed offset) on its stdout; the front reads it to know its backlog. If the writer dies the
front starts another, which resumes from the committed offsets; if the front dies the writer
sees its stdin close, drains the journal, anchors the head once more and exits.

Backpressure: the backlog (journal bytes written, not yet committed) is on disk, never in memory.
Past ``[audit] max_backlog_bytes`` the front refuses new requests with 503 ``audit_unavailable``
(`saturated`) until the writer catches up; requests already admitted are still recorded. The
refused requests are counted and recorded in one ``audit.backpressure`` entry when the backlog is
back under the limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.audit.anchor import AnchorError, AnchorSink, default_anchor_path, load_signing_key
from runtime.audit.journal import Journal
from runtime.audit.log import AuditUnavailable
from runtime.audit.store import Store
from runtime.audit.writer import Writer
from runtime.auditconfig import AuditOptions
from runtime.logs import log

if TYPE_CHECKING:
    from runtime.redaction import RedactionPolicy

__all__ = ["AuditJournal", "anchor_sink", "main"]

RESTART_DELAY_S = 0.5


def anchor_sink(state_dir: Path, options: AuditOptions) -> AnchorSink:
    """The configured anchor sink; raises AnchorError naming the problem."""
    path = Path(options.anchor_file).expanduser() if options.anchor_file else default_anchor_path(state_dir)
    return AnchorSink(path=path, url=options.anchor_url, state_dir=state_dir)


def check_anchoring(state_dir: Path, options: AuditOptions) -> None:
    """Raise AnchorError when the signing key or the anchor sink is unusable (before serving)."""
    load_signing_key(state_dir, configured=options.signing_key_file)
    anchor_sink(state_dir, options)


class AuditJournal:
    """Front side: the journal, the writer process, the backlog."""

    def __init__(self, state_dir: Path, options: AuditOptions, policy: RedactionPolicy | None = None,
                 observe: Callable[[str, dict[str, Any]], None] | None = None):
        self.state_dir = state_dir
        self.observe = observe  # sees every entry (the per-request one excepted) before it is written
        self.options = options
        self.policy = policy  # how entries are redacted, by their classification
        self.journal: Journal | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.refused = 0  # requests refused for backpressure since the last audit.backpressure entry
        self._refused_since: float | None = None

    async def start(self) -> None:
        self.journal = Journal(self.state_dir, self.options, policy=self.policy)
        await self._spawn()
        self._tasks.append(asyncio.ensure_future(self._supervise()))

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.front.auditd", str(self.state_dir), self.options.model_dump_json(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    async def _supervise(self) -> None:
        """Read the writer's progress; start another writer when it dies."""
        while not self._closing:
            proc = self.proc
            assert proc is not None and proc.stdout is not None
            while line := await proc.stdout.readline():
                self._progress(line)
            code = await proc.wait()
            if self._closing:
                return
            log("audit_writer_died", pid=proc.pid, exit_code=code)
            await asyncio.sleep(RESTART_DELAY_S)
            if not self._closing:
                await self._spawn()

    def _progress(self, line: bytes) -> None:
        try:
            step = json.loads(line)
            offsets, finished = step["offsets"], step["finished"]
        except (ValueError, KeyError, TypeError):
            return
        journal = self.journal
        if journal is None:
            return
        journal.consumed(offsets, finished)
        if self.refused and not self.saturated:
            self._note_refusals()

    # -- appending -------------------------------------------------------------------------
    def append(self, kind: str, **fields: Any) -> None:
        """Journal one entry; `AuditUnavailable` when the journal cannot be written (disk full)."""
        journal = self._started()
        if self.observe is not None:
            self.observe(kind, fields)
        columns, data = journal.maker.split(fields)
        self._write(journal, journal.maker.make(kind, columns, data, time.time()))

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        self.append(kind, **fields)

    def accepts_request_id(self, candidate: str) -> bool:
        """`RecordMaker.accepts_request_id`: may a client's request id key its entries."""
        journal = self.journal
        return journal is not None and journal.maker.accepts_request_id(candidate)

    def append_request(self, columns: dict[str, Any], data: dict[str, Any]) -> None:
        """A request's entry (the front's hot path: no field splitting)."""
        journal = self._started()
        self._write(journal, journal.maker.make("request", columns, data, time.time()))

    def _started(self) -> Journal:
        if self.journal is None:
            raise RuntimeError("the audit journal is not started")
        return self.journal

    @staticmethod
    def _write(journal: Journal, record: bytes) -> None:
        try:
            journal.write(record)
        except OSError as e:
            raise AuditUnavailable(f"the audit journal cannot be written: {e}") from None

    @property
    def backlog(self) -> int:
        """Journal bytes written and not yet committed by the writer."""
        journal = self.journal
        return 0 if journal is None else journal.backlog

    @property
    def saturated(self) -> bool:
        return self.backlog >= self.options.max_backlog_bytes

    def refuse(self) -> None:
        """Count a request refused because the backlog is full."""
        if not self.refused:
            self._refused_since = time.time()
            log("audit_backpressure", backlog_bytes=self.backlog, limit_bytes=self.options.max_backlog_bytes)
        self.refused += 1

    def _note_refusals(self) -> None:
        self.append("audit.backpressure", refused=self.refused, since=self._refused_since,
                    limit_bytes=self.options.max_backlog_bytes)
        log("audit_backpressure_over", refused=self.refused)
        self.refused, self._refused_since = 0, None

    async def close(self) -> None:
        """Close the journal and let the writer drain it, anchor and exit."""
        self._closing = True
        if self.refused:
            self._note_refusals()
        if self.journal is not None:
            self.journal.close()
        proc, self.proc = self.proc, None
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def main() -> None:
    """The writer process: drain the journal every ``flush_interval_s`` until stdin closes."""
    state_dir, options = Path(sys.argv[1]), AuditOptions.model_validate_json(sys.argv[2])

    def event(name: str, **fields: Any) -> None:
        log(name, **fields)

    try:
        signer = load_signing_key(state_dir, configured=options.signing_key_file)
        sink: AnchorSink | None = anchor_sink(state_dir, options)
    except AnchorError as e:  # checked before the front starts; an edit since is reported here
        log("audit_anchor_unavailable", error=str(e))
        signer, sink = None, None
    store = Store(state_dir, options, signer=signer, on_event=event)
    writer = Writer(store, sink, anchor_interval_s=options.anchor_interval_s, on_event=event)
    stdin = sys.stdin.fileno()
    out = sys.stdout

    def report(step: Any) -> None:
        if step.offsets or step.finished:
            out.write(json.dumps({"offsets": step.offsets, "finished": step.finished}) + "\n")
            out.flush()

    try:
        while True:
            readable, _, _ = select.select([stdin], [], [], options.flush_interval_s)
            if readable and not os.read(stdin, 4096):
                break  # the front closed the pipe or died: drain and stop
            try:
                step = writer.tick()
            except Exception as e:  # e.g. the disk is full: the journal keeps the entries, retry
                log("audit_write_failed", error=f"{type(e).__name__}: {e}")
                continue
            report(step)
        report(writer.finish())
    except BrokenPipeError:  # the front is gone (its progress no longer matters): drain and stop
        writer.finish()
    finally:
        store.close()


if __name__ == "__main__":
    main()

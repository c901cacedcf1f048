"""The front's audit writer: a child process that redacts, hash-chains and persists entries.

The front appends one `request` entry when each request ends (unless `[audit] requests = false`),
plus refusals, isolate events and the entries isolates send; redaction, canonical JSON, hashing and
the SQLite commit cost tens of microseconds per entry, which would halve the front's throughput and
contend for its GIL. So the front only packs `(kind, fields)` with msgpack and writes it to this
process's stdin (a non-blocking pipe write); the process feeds each entry to `AuditLog.audit`.

Guarantees: entries reach the log in the order the front sent them; on the front's clean stop the
pipe is closed and the writer flushes everything before it exits; if the front dies, the writer
reads EOF and flushes what it received. Entries still in the pipe buffer of a killed front are
lost with it (as are the requests they describe).
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any, cast

import msgpack

from runtime.audit import AuditLog, AuditOptions

__all__ = ["AuditPipe", "main"]


class AuditPipe:
    """Front side: start the writer, append without blocking, close to flush."""

    def __init__(self, state_dir: Path, options: AuditOptions):
        self.state_dir = state_dir
        self.options = options
        self.proc: asyncio.subprocess.Process | None = None
        self._pack = msgpack.Packer(use_bin_type=True, default=str).pack
        self.dropped = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.front.auditd", str(self.state_dir), self.options.model_dump_json(),
            stdin=asyncio.subprocess.PIPE,
        )

    def append(self, kind: str, **fields: Any) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            self.dropped += 1
            return
        proc.stdin.write(self._pack((kind, fields)))

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        self.append(kind, **fields)

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.stdin is None:
            return
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def main() -> None:
    state_dir, options = Path(sys.argv[1]), AuditOptions.model_validate_json(sys.argv[2])
    log = AuditLog(state_dir, options)
    unpacker = msgpack.Unpacker(raw=False)
    # typeshed types it BinaryIO; a process's stdin buffer is a BufferedReader, which has read1.
    stdin = cast(io.BufferedReader, sys.stdin.buffer)
    try:
        while True:
            data = stdin.read1(65536)
            if not data:
                break
            unpacker.feed(data)
            for kind, fields in unpacker:
                log.audit(kind, fields)
    finally:
        log.close()


if __name__ == "__main__":
    main()

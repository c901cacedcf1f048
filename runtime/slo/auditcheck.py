"""The runtime's own periodic audit-chain verification: every ``[observability]
audit_verify_interval_s`` the front verifies its audit log (`runtime.audit.verify`, the check
`edgeworks audit verify` runs: hash chain, Merkle tree, stored checkpoints) in a worker thread.
A break is a state-consistency defect: it is journaled as ``consistency.audit_break`` (the
first bad sequence number and the reason) and logged, once per distinct break, not again on
every run while the same break stays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.audit import has_log, verify
from runtime.background import Background
from runtime.logs import log

__all__ = ["AuditCheck"]


class AuditCheck:
    """See the module doc; `audit(kind, fields)` journals an entry. `interval_s` 0: never runs."""

    def __init__(self, state_dir: Path, *, interval_s: float, audit: Callable[[str, dict[str, Any]], None]):
        self.state_dir, self.interval_s, self.audit = Path(state_dir), interval_s, audit
        self._reported: tuple[int | None, str | None] | None = None
        self._background = Background()

    def start(self) -> None:
        if self.interval_s > 0:
            self._background.start(self._run)

    async def stop(self) -> None:
        await self._background.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception as e:  # an unreadable state dir must not end the loop
                log("audit_check_failed", error=f"{type(e).__name__}: {e}")

    async def check(self) -> bool:
        """Verify once; False (and the break reported, if new) when the chain is broken."""
        if not has_log(self.state_dir):
            return True
        result = await asyncio.to_thread(verify, self.state_dir)
        if result.ok:
            self._reported = None
            return True
        found = (result.first_bad_seq, result.reason)
        if found != self._reported:
            self._reported = found
            fields = {"first_bad_seq": result.first_bad_seq, "reason": result.reason, "entries": result.entries}
            self.audit("consistency.audit_break", fields)
            log("audit_break", **fields)
        return False

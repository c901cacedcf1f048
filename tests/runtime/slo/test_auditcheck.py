"""The front's own periodic audit-chain verification: a break is one consistency defect entry,
reported once per distinct break, and none while the chain is whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from runtime.audit import AuditLog
from runtime.audit.store import list_segments
from runtime.auditconfig import AuditOptions
from runtime.slo.auditcheck import AuditCheck


def fill(state_dir: Path, n: int) -> None:
    with AuditLog(state_dir, AuditOptions()) as log:
        for i in range(n):
            log.append("tool.call", request_id=f"req-{i}", tenant="acme")


async def test_a_broken_chain_is_reported_once_as_a_consistency_defect(tmp_path: Path) -> None:
    entries: list[tuple[str, dict[str, Any]]] = []
    check = AuditCheck(tmp_path, interval_s=300, audit=lambda kind, fields: entries.append((kind, fields)))
    assert await check.check()  # no log yet: nothing to verify
    fill(tmp_path, 10)
    assert await check.check() and entries == []
    conn = sqlite3.connect(list_segments(tmp_path)[0], isolation_level=None)
    conn.execute("DELETE FROM entries WHERE seq = 5")
    conn.close()
    assert not await check.check()
    assert not await check.check()  # the same break: not reported again
    assert [kind for kind, _ in entries] == ["consistency.audit_break"]
    assert entries[0][1]["first_bad_seq"] == 5 and "missing" in entries[0][1]["reason"]


async def test_an_interval_of_zero_never_starts_the_check(tmp_path: Path) -> None:
    check = AuditCheck(tmp_path, interval_s=0, audit=lambda kind, fields: None)
    check.start()
    assert not check._background.running
    await check.stop()

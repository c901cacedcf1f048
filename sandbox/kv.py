"""The sandbox KV store: a small synchronous SQLite file per script.

`<state_dir>/sandbox/kv/<script>.sqlite`, one row per (tenant, key). Every host call is its own
transaction (autocommit); WAL mode lets several processes read while one writes. Connections
are per thread because sqlite3 connections must not be shared across threads. Values are JSON
text. Keys are scoped by tenant here and by capability prefix in `sandbox.host`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ._sqlite import PerThreadConnection

__all__ = ["SandboxKV"]

_SCRIPT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SandboxKV:
    def __init__(self, state_dir: Path, script: str):
        if not _SCRIPT.match(script):
            raise ValueError(f"bad script name {script!r}")
        self.path = Path(state_dir) / "sandbox" / "kv" / f"{script}.sqlite"
        self._conn = PerThreadConnection(
            self.path,
            "CREATE TABLE IF NOT EXISTS kv (tenant TEXT NOT NULL, key TEXT NOT NULL,"
            " value TEXT NOT NULL, PRIMARY KEY (tenant, key)) WITHOUT ROWID",
        )

    def get(self, tenant: str, key: str) -> Any:
        row = (
            self._conn()
            .execute("SELECT value FROM kv WHERE tenant = ? AND key = ?", (tenant, key))
            .fetchone()
        )
        return None if row is None else json.loads(row[0])

    def put(self, tenant: str, key: str, value_json: str) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO kv (tenant, key, value) VALUES (?, ?, ?)",
            (tenant, key, value_json),
        )

    def delete(self, tenant: str, key: str) -> bool:
        cur = self._conn().execute("DELETE FROM kv WHERE tenant = ? AND key = ?", (tenant, key))
        return cur.rowcount > 0

    def list(self, tenant: str, prefix: str, limit: int) -> list[str]:
        # range scan on the primary key; prefix + U+10FFFF bounds every key with that prefix
        rows = (
            self._conn()
            .execute(
                "SELECT key FROM kv WHERE tenant = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?",
                (tenant, prefix, prefix + "\U0010ffff", limit),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

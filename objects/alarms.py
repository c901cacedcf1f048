"""Alarm bookkeeping shared by the objects of one script: the index, retry policy, AlarmInfo.

Each object stores its single alarm in its own database (``_ew_alarm``). The per-script index
``<state_dir>/objects/<script>/_alarms.sqlite`` (table ``alarms(class_name, id, time)``) lets a
host schedule every pending alarm at start without opening every object database.

Consistency: the index entry is written *before* the object's commit that sets an alarm and
removed *after* the commit that deletes it, so the index is always a superset of the real
alarms. A stale entry is harmless: the object checks its own stored alarm when the alarm fires.
The index has the durability of the objects it serves (``synchronous`` NORMAL or FULL): at the
default, an entry survives a crash of the process, like the object's own commit.

Retries: an alarm handler that raises is retried after ``backoff_ms * 2**(n-1)`` ms for retry
``n`` (2 s, 4 s, 8 s, ... by default), at most ``max_retries`` (6) times; then the alarm is
deleted and ``alarm_dropped`` is reported to the audit hook.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from objects.sqlitefile import connect

__all__ = ["AlarmIndex", "AlarmInfo", "retry_delay_ms"]


@dataclass(frozen=True)
class AlarmInfo:
    """Passed to ``DurableObject.alarm(info)``."""

    retry_count: int
    is_retry: bool


def retry_delay_ms(retry: int, backoff_ms: int) -> int:
    """Delay before retry number ``retry`` (1-based)."""
    return backoff_ms * 2 ** (retry - 1)


class AlarmIndex:
    """Thread-safe; ``set`` is called from object I/O threads inside their commit job."""

    def __init__(self, path: Path, durability: str = "normal") -> None:
        self.path = path
        self._synchronous: Literal["FULL", "NORMAL"] = "FULL" if durability == "full" else "NORMAL"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(
                self.path,
                "CREATE TABLE IF NOT EXISTS alarms (class_name TEXT NOT NULL, id TEXT NOT NULL, "
                "time INTEGER NOT NULL, PRIMARY KEY (class_name, id)) WITHOUT ROWID",
                synchronous=self._synchronous, busy_timeout_s=5,
            )
        return self._conn

    def set(self, class_name: str, id_hex: str, time: int | None) -> None:
        with self._lock:
            conn = self._connect()
            if time is None:
                conn.execute("DELETE FROM alarms WHERE class_name = ? AND id = ?", (class_name, id_hex))
            else:
                conn.execute(
                    "INSERT INTO alarms (class_name, id, time) VALUES (?, ?, ?) "
                    "ON CONFLICT(class_name, id) DO UPDATE SET time = excluded.time",
                    (class_name, id_hex, time),
                )

    def _all(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self._connect().execute("SELECT class_name, id, time FROM alarms"))

    async def all(self) -> list[tuple[str, str, int]]:
        return await asyncio.to_thread(self._all)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

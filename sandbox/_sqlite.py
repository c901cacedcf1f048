"""A SQLite file shared by threads: one connection per thread (sqlite3 objects are thread-bound),
WAL journal, synchronous=NORMAL (a commit survives a crash of the process)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["PerThreadConnection"]


class PerThreadConnection:
    def __init__(self, path: Path, schema: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self().execute(schema)

    def __call__(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

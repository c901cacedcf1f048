"""A SQLite file shared by threads: one connection per thread (sqlite3 objects are thread-bound),
WAL journal, synchronous=NORMAL (a commit survives a crash of the process). Each connection is
opened by `objects.sqlitefile.connect`, which makes concurrent first opens of a new file safe."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from objects.sqlitefile import connect

__all__ = ["PerThreadConnection"]


class PerThreadConnection:
    def __init__(self, path: Path, schema: str):
        self.path = path
        self._schema = schema
        self._local = threading.local()
        self()

    def __call__(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self._schema, busy_timeout_s=10, check_same_thread=True)
            self._local.conn = conn
        return conn

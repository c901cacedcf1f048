"""The kill switch: human override that stops a script, route, tenant, workflow, tool, AI model or
provider, or outbound calls to a host pattern (kind ``egress``).

State lives in ``<state_dir>/killswitch.sqlite`` (WAL), one row per killed (kind, name) with
the reason, the actor and the time; it survives restarts. Every process of the runtime (the
front, each isolate) opens its own `KillSwitch` on the same file.

Exact semantics:

- `check(kind, name)` returns the kill reason or None. It is synchronous and does no I/O
  while its cache is younger than ``refresh_s`` (by the injected clock). Once older, the next
  `check` asks SQLite for ``PRAGMA data_version`` (which changes exactly when another
  connection has committed to the file) and re-reads the table only if it changed. So a kill
  committed by any process is seen by every other process at most ``refresh_s`` after it
  commits, on that process's next `check` (the default 0.25 s keeps this well within a
  second); the process that made the change sees it immediately.
- `kill` and `revive` commit before they return, then call the audit hook
  (``killswitch.kill`` / ``killswitch.revive`` with ``target_kind``, ``target``, ``reason``,
  the actor as ``subject`` and whether the state changed). The change is in force even if the hook raises;
  the hook's exception then propagates. Killing what is already killed replaces the reason.
- All methods are thread-safe; one lock guards the connection and the cache. A forked child
  opens its own connection the first time it touches the file.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from objects.sqlitefile import connect
from runtime.killkinds import KILL_KINDS, KillKind

__all__ = ["KILLSWITCH_FILENAME", "KILL_KINDS", "Kill", "KillKind", "KillSwitch"]

KILLSWITCH_FILENAME = "killswitch.sqlite"
AuditHook = Callable[[str, Mapping[str, Any]], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kills (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (kind, name)
)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Kill:
    kind: str
    name: str
    reason: str
    actor: str | None
    ts: float


class KillSwitch:
    """Persisted kill state shared by every process on one state dir."""

    def __init__(
        self,
        state_dir: str | Path,
        clock: Callable[[], float] = time.time,
        audit: AuditHook | None = None,
        refresh_s: float = 0.25,
    ) -> None:
        if refresh_s < 0:
            raise ValueError("refresh_s must not be negative")
        self.path = Path(state_dir) / KILLSWITCH_FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._audit = audit
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._connect()
        self._cache: dict[tuple[str, str], Kill] = {}
        self._by_kind: dict[str, dict[str, str]] = {}  # kind -> name -> reason, from the same read
        self._version: int | None = None
        self._loaded_at = float("-inf")
        with self._lock:
            self._reload()

    def _connect(self) -> None:
        self._pid = os.getpid()
        self._conn = connect(self.path, _SCHEMA, synchronous="FULL", busy_timeout_s=30)

    # -- reading -------------------------------------------------------------------------

    def check(self, kind: str, name: str) -> str | None:
        """The reason `name` of `kind` is killed, or None; see the module docstring."""
        now = self._clock()
        if not (0 <= now - self._loaded_at < self._refresh_s):
            self._own_process()
            with self._lock:
                self._refresh(now)
        kill = self._cache.get((kind, name))
        return kill.reason if kill else None

    def names(self, kind: str) -> dict[str, str]:
        """Every killed name of `kind` with its reason, as fresh as `check` (for kinds whose
        names are patterns, e.g. ``egress`` host patterns)."""
        now = self._clock()
        if not (0 <= now - self._loaded_at < self._refresh_s):
            self._own_process()
            with self._lock:
                self._refresh(now)
        return self._by_kind.get(kind, {})

    def list(self) -> list[Kill]:
        """Every current kill, fresh from the file, ordered by kind and name."""
        self._own_process()
        with self._lock:
            self._reload()
            return sorted(self._cache.values(), key=lambda k: (k.kind, k.name))

    def _own_process(self) -> None:
        # A forked child must never use the parent's SQLite connection, nor its lock (which
        # another thread of the parent may have held at the fork).
        if os.getpid() != self._pid:
            self._lock = threading.Lock()
            self._connect()
            self._version = None

    def _refresh(self, now: float) -> None:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._reload()
        self._loaded_at = now

    def _reload(self) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            rows = conn.execute("SELECT kind, name, reason, actor, ts FROM kills").fetchall()
            self._version = conn.execute("PRAGMA data_version").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        self._cache = {(r[0], r[1]): Kill(*r) for r in rows}
        by_kind: dict[str, dict[str, str]] = {}
        for r in rows:
            by_kind.setdefault(r[0], {})[r[1]] = r[2]
        self._by_kind = by_kind
        self._loaded_at = self._clock()

    # -- changing ------------------------------------------------------------------------

    def kill(self, kind: KillKind, name: str, reason: str, actor: str | None = None) -> None:
        _check_target(kind, name)
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a kill needs a reason")
        self._own_process()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.execute(
                    "SELECT reason FROM kills WHERE kind = ? AND name = ?", (kind, name)
                ).fetchone()
                conn.execute(
                    "INSERT INTO kills (kind, name, reason, actor, ts) VALUES (?,?,?,?,?)"
                    " ON CONFLICT (kind, name) DO UPDATE SET reason = excluded.reason,"
                    " actor = excluded.actor, ts = excluded.ts",
                    (kind, name, reason, actor, self._clock()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            changed = before is None or before[0] != reason
            self._reload()
        self._emit("killswitch.kill", kind, name, actor, reason=reason, changed=changed)

    def revive(self, kind: KillKind, name: str, actor: str | None = None) -> bool:
        """Lift a kill; returns whether there was one."""
        _check_target(kind, name)
        self._own_process()
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM kills WHERE kind = ? AND name = ?", (kind, name)
            )
            changed = cur.rowcount > 0
            self._reload()
        self._emit("killswitch.revive", kind, name, actor, changed=changed)
        return changed

    def _emit(self, event: str, kind: str, name: str, actor: str | None, **extra: Any) -> None:
        if self._audit is not None:
            fields: dict[str, Any] = {
                "target_kind": kind,
                "target": name,
                "subject": actor,
                **extra,
            }
            if kind == "tenant":
                fields["tenant"] = name
            elif kind == "script":
                fields["script"] = name
            self._audit(event, fields)

    def close(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child that never used it: the connection is the parent's
        with self._lock:
            self._conn.close()

    def __enter__(self) -> KillSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_target(kind: str, name: str) -> None:
    if kind not in KILL_KINDS:
        raise ValueError(f"unknown kill kind {kind!r}; one of {', '.join(KILL_KINDS)}")
    if not isinstance(name, str) or not name:
        raise ValueError("a kill target needs a name")
    if kind == "egress":
        from runtime.egress.hosts import parse_host_pattern

        parse_host_pattern(name)  # ValueError naming what a host pattern is

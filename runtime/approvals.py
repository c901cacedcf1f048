"""Requests held for human approval (risk rules with ``action = "approve"``).

State lives in ``<state_dir>/approvals.sqlite`` (WAL): one row per held request with the
request message the front would have sent to the isolate (msgpack; the Authorization header is
never stored: the verified identity travels in the message), who sent it, its risk label and
the rule's reason, and its decision.

Exact semantics:

- `hold` commits a ``pending`` row before it returns its id; the front answers 202 with it.
- `decide(id, "approved" | "rejected", by, reason)` moves a ``pending`` row to the decision in
  one conditional UPDATE, so of two concurrent decisions exactly one wins; the loser (and any
  decision on a decided row) raises `AlreadyDecided`; an unknown id raises `KeyError`.
- `record_response` stores the response of an approved request once it ran; it may be called
  once per approval (a second call raises `AlreadyDecided`).
- All methods are synchronous and thread-safe (one lock around one connection); each is one
  short SQLite transaction, cheap enough for the event loop at the rate approvals happen.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgpack

from objects.sqlitefile import connect

__all__ = ["APPROVALS_FILENAME", "AlreadyDecided", "ApprovalStatus", "ApprovalStore"]

APPROVALS_FILENAME = "approvals.sqlite"
ApprovalStatus = Literal["pending", "approved", "rejected"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    script TEXT NOT NULL,
    route INTEGER,
    method TEXT,
    path TEXT,
    message BLOB NOT NULL,
    tenant TEXT,
    subject TEXT,
    risk TEXT,
    reason TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    decision_reason TEXT,
    response_status INTEGER,
    response_headers TEXT,
    response_body BLOB
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, created);
"""
_COLUMNS = ("id", "request_id", "script", "route", "method", "path", "tenant", "subject", "risk",
            "reason", "status", "created", "decided_by", "decided_at", "decision_reason",
            "response_status", "response_headers", "response_body")


class AlreadyDecided(Exception):
    """The approval is not pending (any more)."""


def _strip_credentials(msg: dict[str, Any]) -> dict[str, Any]:
    req = msg.get("req") or {}
    headers = [(k, v) for k, v in req.get("headers") or [] if k.lower() not in ("authorization", "cookie")]
    return {**msg, "req": {**req, "headers": headers}}


class ApprovalStore:
    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time):
        self.path = Path(state_dir) / APPROVALS_FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = connect(self.path, _SCHEMA, synchronous="FULL", busy_timeout_s=30)

    def hold(self, msg: dict[str, Any], *, script: str, request_id: str, tenant: str | None,
             subject: str | None, risk: str, reason: str | None, **_: Any) -> str:
        aid = uuid.uuid4().hex
        req = msg.get("req") or {}
        path = str(req.get("url", "")).split("://", 1)[-1]
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
        blob = msgpack.packb(_strip_credentials(msg), use_bin_type=True)
        with self._lock:
            self._conn.execute(
                "INSERT INTO approvals (id, request_id, script, route, method, path, message, tenant,"
                " subject, risk, reason, status, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (aid, request_id, script, msg.get("route"), req.get("method"), path.split("?", 1)[0], blob,
                 tenant, subject, risk, reason, "pending", round(self._clock(), 3)))
        return aid

    def get(self, aid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM approvals WHERE id = ?", (aid,)).fetchone()
        return _row(row) if row else None

    def message(self, aid: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT message FROM approvals WHERE id = ?", (aid,)).fetchone()
        if row is None:
            raise KeyError(aid)
        return msgpack.unpackb(row[0], raw=False)

    def list(self, status: str | None = None, limit: int = 1000, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; `status` and `tenant` (None: every tenant) filter in SQL, before `limit`."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM approvals"
        where = [(c, v) for c, v in (("status", status), ("tenant", tenant)) if v]
        args: tuple[Any, ...] = tuple(v for _, v in where)
        if where:
            sql += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
        sql += " ORDER BY created, id LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, (*args, limit)).fetchall()
        return [_row(r) for r in rows]

    def decide(self, aid: str, status: Literal["approved", "rejected"], by: str | None, reason: str | None) -> dict[str, Any]:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?"
                " WHERE id = ? AND status = 'pending'", (status, by, round(self._clock(), 3), reason, aid))
            changed = cur.rowcount
        if not changed:
            current = self.get(aid)
            if current is None:
                raise KeyError(aid)
            raise AlreadyDecided(f"approval {aid} is already {current['status']}")
        row = self.get(aid)
        assert row is not None
        return row

    def record_response(self, aid: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE approvals SET response_status = ?, response_headers = ?, response_body = ?"
                " WHERE id = ? AND status = 'approved' AND response_status IS NULL",
                (status, json.dumps(headers), body, aid))
        if not cur.rowcount:
            raise AlreadyDecided(f"approval {aid} has no pending response slot")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_COLUMNS, row, strict=True))
    status, headers, body = d.pop("response_status"), d.pop("response_headers"), d.pop("response_body")
    d["response"] = None
    if status is not None:
        resp: dict[str, Any] = {"status": status, "headers": [list(h) for h in json.loads(headers or "[]")]}
        try:
            resp["body"], resp["encoding"] = bytes(body or b"").decode(), "utf-8"
        except UnicodeDecodeError:
            resp["body"], resp["encoding"] = base64.b64encode(body).decode(), "base64"
        d["response"] = resp
    return d

"""Requests held for human approval (risk rules with ``action = "approve"``).

State lives in ``<state_dir>/approvals.sqlite`` (WAL): one row per held request with the
request message the front would have sent to the isolate (msgpack; the Authorization and Cookie
headers are never stored: the verified identity travels in the message), who sent it, its risk
label and the rule's reason, and its decision.

At rest: the message (headers, body, full URL) and the approved run's response are sealed with
the data key (`runtime.datakey`, AES-GCM, bound to the approval id and field), which lives
outside the state dir; the columns kept in clear for listing (path without query, subject,
reasons, decided_by) are redacted (`runtime.redact`). So a copy of the state dir reveals no
credential, body or personal data of a held request. Without a key (``serve`` with none
configured) `hold` raises `ApprovalsUnavailable` and nothing is stored. Rows an older version
left in clear are sealed when a store with a key opens the file; ``secure_delete`` keeps
overwritten clear text out of free pages.

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
import builtins
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgpack

from objects.sqlitefile import connect
from runtime.datakey import HOW_TO_SET, MAGIC, DataKey, DataKeyError
from runtime.redact import Redactor

__all__ = ["APPROVALS_FILENAME", "AlreadyDecided", "ApprovalStatus", "ApprovalStore",
           "ApprovalsUnavailable"]

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


class ApprovalsUnavailable(Exception):
    """No data key is configured, so no request can be held (it would be stored in clear)."""


def _strip_credentials(msg: dict[str, Any]) -> dict[str, Any]:
    req = msg.get("req") or {}
    headers = [(k, v) for k, v in req.get("headers") or [] if k.lower() not in ("authorization", "cookie")]
    return {**msg, "req": {**req, "headers": headers}}


class ApprovalStore:
    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time, *,
                 key: DataKey | None = None, redactor: Redactor | None = None):
        self.path = Path(state_dir) / APPROVALS_FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._key = key
        self._redact = (redactor or Redactor()).redact_text
        self._lock = threading.Lock()
        self._conn = connect(self.path, _SCHEMA, synchronous="FULL", busy_timeout_s=30)
        self._conn.execute("PRAGMA secure_delete=ON")
        if key is not None:
            self._seal_clear_rows()

    @property
    def can_hold(self) -> bool:
        """False without a data key: `hold` would raise `ApprovalsUnavailable`."""
        return self._key is not None

    def _seal_clear_rows(self) -> None:
        # Only rows whose message lacks the sealed prefix are read (`DataKey.is_sealed`), so a
        # start does not load every held request.
        clear = self._conn.execute(
            "SELECT id, message, response_headers, response_body FROM approvals"
            " WHERE substr(message, 1, ?) != ?", (len(MAGIC), MAGIC)).fetchall()
        if not clear:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        for aid, message, headers, body in clear:
            self._conn.execute(
                "UPDATE approvals SET message = ?, response_headers = ?, response_body = ? WHERE id = ?",
                (self._seal(message, aid, "message"),
                 None if headers is None else self._seal(str(headers).encode(), aid, "response_headers"),
                 None if body is None else self._seal(bytes(body), aid, "response_body"), aid))
        self._conn.execute("COMMIT")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the clear pages leave the WAL too

    def _seal(self, data: bytes, aid: str, field: str) -> bytes:
        if self._key is None:
            raise ApprovalsUnavailable(
                f"requests held for approval are encrypted at rest and no data key is configured: {HOW_TO_SET}")
        return self._key.seal(data, f"approval/{aid}/{field}")

    def _open(self, blob: bytes | str | None, aid: str, field: str) -> bytes | None:
        if blob is None:
            return None
        if isinstance(blob, str):  # a response an older version stored in clear
            return blob.encode()
        if not DataKey.is_sealed(blob):
            return bytes(blob)
        if self._key is None:
            raise DataKeyError(f"approval {aid} is sealed and no data key is configured: {HOW_TO_SET}")
        return self._key.open(blob, f"approval/{aid}/{field}")

    def hold(self, msg: dict[str, Any], *, script: str, request_id: str, tenant: str | None,
             subject: str | None, risk: str, reason: str | None, **_: Any) -> str:
        aid = uuid.uuid4().hex
        req = msg.get("req") or {}
        path = str(req.get("url", "")).split("://", 1)[-1]
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
        blob = self._seal(msgpack.packb(_strip_credentials(msg), use_bin_type=True), aid, "message")
        with self._lock:
            self._conn.execute(
                "INSERT INTO approvals (id, request_id, script, route, method, path, message, tenant,"
                " subject, risk, reason, status, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (aid, request_id, script, msg.get("route"), req.get("method"),
                 self._redact(path.split("?", 1)[0]), blob, tenant, self._clear(subject), risk,
                 self._clear(reason), "pending", round(self._clock(), 3)))
        return aid

    def _clear(self, text: str | None) -> str | None:
        return None if text is None else self._redact(text)

    def get(self, aid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM approvals WHERE id = ?", (aid,)).fetchone()
        return self._row(row) if row else None

    def message(self, aid: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT message FROM approvals WHERE id = ?", (aid,)).fetchone()
        if row is None:
            raise KeyError(aid)
        return msgpack.unpackb(self._open(row[0], aid, "message"), raw=False)

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
        return [self._row(r) for r in rows]

    def decide(self, aid: str, status: Literal["approved", "rejected"], by: str | None, reason: str | None) -> dict[str, Any]:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?"
                " WHERE id = ? AND status = 'pending'",
                (status, self._clear(by), round(self._clock(), 3), self._clear(reason), aid))
            changed = cur.rowcount
        if not changed:
            current = self.get(aid)
            if current is None:
                raise KeyError(aid)
            raise AlreadyDecided(f"approval {aid} is already {current['status']}")
        row = self.get(aid)
        assert row is not None
        return row

    def record_response(self, aid: str, status: int, headers: builtins.list[tuple[str, str]], body: bytes) -> None:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE approvals SET response_status = ?, response_headers = ?, response_body = ?"
                " WHERE id = ? AND status = 'approved' AND response_status IS NULL",
                (status, self._seal(json.dumps(headers).encode(), aid, "response_headers"),
                 self._seal(body, aid, "response_body"), aid))
        if not cur.rowcount:
            raise AlreadyDecided(f"approval {aid} has no pending response slot")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


    def _row(self, row: tuple[Any, ...]) -> dict[str, Any]:
        d = dict(zip(_COLUMNS, row, strict=True))
        status, headers, body = d.pop("response_status"), d.pop("response_headers"), d.pop("response_body")
        d["response"] = None
        if status is not None:
            try:
                headers = self._open(headers, d["id"], "response_headers")
                body = self._open(body, d["id"], "response_body") or b""
            except DataKeyError as exc:  # the row is still listed; only its response is unreadable
                d["response"] = {"status": status, "error": str(exc)}
                return d
            resp: dict[str, Any] = {"status": status, "headers": [list(h) for h in json.loads(headers or b"[]")]}
            try:
                resp["body"], resp["encoding"] = body.decode(), "utf-8"
            except UnicodeDecodeError:
                resp["body"], resp["encoding"] = base64.b64encode(body).decode(), "base64"
            d["response"] = resp
        return d

"""The version-1 audit log (``<state>/audit.sqlite``), read-only: a log written before the
version-2 format is verified and queried here, and the version-2 log continues its history (see
`store.py`: its first entry, ``audit.migrated``, records where this one ended).

Table ``entries`` holds one row per event: ``seq`` (1, 2, 3… without gaps), ``ts`` (UTC,
``YYYY-MM-DDTHH:MM:SS.ffffffZ``), ``kind``, ``request_id``, ``tenant``, ``subject``, ``script``,
``risk``, ``classification``, ``data`` (canonical JSON), ``prev_hash`` and ``hash``::

    hash = sha256(prev_hash + _canonical_json(entry without "hash")).hexdigest()

where ``prev_hash`` is the previous entry's hash (64 zeros for seq 1). ``checkpoints`` holds
(seq, hash) every ``checkpoint_every`` entries and ``head`` the last (seq, hash), so cutting
entries off the end is detected too. `verify` walks the chain and names the first entry that
breaks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runtime.audit.records import AuditEntry, entry_filters, format_ts

__all__ = ["AUDIT_FILENAME", "GENESIS_HASH", "VerifyResult", "entry_hash", "query", "verify"]

AUDIT_FILENAME = "audit.sqlite"
GENESIS_HASH = "0" * 64

_COLUMNS = ("request_id", "tenant", "subject", "script", "risk", "classification")
_SELECT = (
    "SELECT seq, ts, kind, request_id, tenant, subject, script, risk, classification, data,"
    " prev_hash, hash FROM entries"
)


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    first_bad_seq: int | None
    reason: str | None
    entries: int
    last_good_checkpoint: int | None = None
    last_hash: str | None = None  # of the last entry when ok: record it elsewhere to anchor


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(prev_hash: str, entry_without_hash: Mapping[str, Any]) -> str:
    payload = prev_hash.encode("ascii") + _canonical_json(entry_without_hash).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


# -- reading -------------------------------------------------------------------------------


def __canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _db_path(path: str | Path) -> Path:
    p = Path(path)
    return p / AUDIT_FILENAME if p.is_dir() else p


def _open_existing(path: str | Path) -> sqlite3.Connection:
    p = _db_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no audit log at {p}")
    conn = sqlite3.connect(f"file:{p}?mode=rw", uri=True, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _row_entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, ts, kind, request_id, tenant, subject, script, risk, classification, data, _prev, hash_ = row
    return AuditEntry(seq, ts, kind, request_id, tenant, subject, script, risk, classification,
                      json.loads(data), hash_)


def verify(path: str | Path) -> VerifyResult:
    """Walk the chain of the log at `path` (the file or its state dir).

    A file SQLite cannot read (a damaged page or header) is reported as broken with
    ``first_bad_seq`` None; a missing file raises FileNotFoundError."""
    conn = _open_existing(path)
    try:
        return _verify(conn)
    except sqlite3.DatabaseError as exc:
        return VerifyResult(False, None, f"the log cannot be read: {exc}", 0)
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection) -> VerifyResult:
    conn.execute("BEGIN")  # one consistent snapshot while writers go on
    checkpoints = dict(conn.execute("SELECT seq, hash FROM checkpoints").fetchall())
    head = conn.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
    total = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    expected_seq, prev, last_cp = 1, GENESIS_HASH, None

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, seq, reason, total, last_cp)

    rows: Iterator[tuple[Any, ...]] = conn.execute(_SELECT + " ORDER BY seq")
    for row in rows:
        seq, data_text, prev_hash, stored = row[0], row[9], row[10], row[11]
        if seq != expected_seq:
            return bad(expected_seq, f"entry {expected_seq} is missing (next is {seq})")
        if prev_hash != prev:
            return bad(seq, "prev_hash does not match the previous entry's hash")
        try:
            data = json.loads(data_text)
        except (TypeError, ValueError):
            return bad(seq, "data is not valid JSON")
        if not isinstance(data, dict) or _canonical_json(data) != data_text:
            return bad(seq, "data is not canonical JSON")
        fields = dict(zip(("seq", "ts", "kind", *_COLUMNS), row[:9], strict=True))
        computed = entry_hash(prev, {**fields, "data": data, "prev_hash": prev_hash})
        if computed != stored:
            return bad(seq, "hash mismatch: the entry was altered")
        cp = checkpoints.pop(seq, None)
        if cp is not None:
            if cp != stored:
                return bad(seq, f"checkpoint at {seq} does not match the entry's hash")
            last_cp = seq
        prev, expected_seq = stored, expected_seq + 1
    last = expected_seq - 1
    if checkpoints:
        return bad(last + 1, f"checkpoint at {min(checkpoints)} names a missing entry")
    if head is not None and (head[0] != last or head[1] != prev):
        if head[0] > last:
            return bad(last + 1, f"log ends at {last} but its head records {head[0]}")
        if head[0] < last:
            return bad(head[0] + 1, f"entries after the recorded head ({head[0]})")
        return bad(last, "head hash does not match the last entry")
    if head is None and last > 0:
        return bad(last, "head record is missing")
    return VerifyResult(True, None, None, total, last_cp, None if last == 0 else prev)


def _since_ts(since: datetime | str | float | None) -> str | None:
    if since is None:
        return None
    if isinstance(since, int | float):
        return format_ts(float(since))
    if isinstance(since, str):
        since = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return format_ts(since.timestamp())


def query(
    path: str | Path,
    *,
    request_id: str | None = None,
    tenant: str | None = None,
    since: datetime | str | float | None = None,
    kind: str | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """Entries matching every given filter, in seq order; with `limit`, the last `limit` ones.

    `since` is a datetime (naive means UTC), an ISO 8601 string or epoch seconds; `kind` ending
    in ``*`` matches by prefix ("tool.*").
    """
    where, params = entry_filters(request_id, tenant, _since_ts(since), kind)
    sql = _SELECT + where
    if limit is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
        params.append(int(limit))
    else:
        sql += " ORDER BY seq"
    conn = _open_existing(path)
    try:
        return [_row_entry(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()

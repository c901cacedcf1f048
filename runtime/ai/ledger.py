"""The AI usage ledger: one row per model call in ``<state>/ai.sqlite``, the source of budgets,
forecast vs actual and `edgeworks ai usage`.

A row holds who called (request id, tenant, script, workflow class, instance and step), what
(inference class, grade, model, provider), the tokens, the cost in USD, the latency, the cache
status and the outcome. Prompts and outputs are stored only when ``[ai.persist] prompts = true``,
redacted first (`runtime.redact`). Only the front writes it, with ``synchronous = NORMAL`` (a
commit is an append to the WAL, no fsync: a model call takes far longer than the write).
"""

from __future__ import annotations

import calendar
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from objects.sqlitefile import connect

__all__ = ["LEDGER_FILENAME", "Call", "Ledger", "period_start", "usage_report"]

LEDGER_FILENAME = "ai.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    ts REAL NOT NULL, request_id TEXT, tenant TEXT, script TEXT, inference_class TEXT, grade TEXT,
    model TEXT, provider TEXT, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL, latency_ms REAL NOT NULL, cache TEXT NOT NULL, workflow_class TEXT,
    instance TEXT, step TEXT, ok INTEGER NOT NULL, error TEXT, prompt TEXT, output TEXT
);
CREATE INDEX IF NOT EXISTS calls_tenant_ts ON calls (tenant, ts);
CREATE INDEX IF NOT EXISTS calls_workflow_ts ON calls (workflow_class, ts);
CREATE INDEX IF NOT EXISTS calls_instance ON calls (instance);
"""
_PERIOD_S = {"hour": 3600, "day": 86400}


class Call(NamedTuple):
    ts: float
    request_id: str | None
    tenant: str | None
    script: str | None
    inference_class: str | None
    grade: str | None
    model: str | None
    provider: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    cache: str
    workflow_class: str | None
    instance: str | None
    step: str | None
    ok: bool
    error: str | None
    prompt: str | None = None
    output: str | None = None


def period_start(period: str, now: float | None = None) -> float:
    """The start (epoch s, UTC) of the current hour, day or calendar month."""
    now = time.time() if now is None else now
    if period == "month":
        t = time.gmtime(now)
        return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, 0)))
    size = _PERIOD_S[period]
    return now - now % size


class Ledger:
    """Rows are written in batches: `record` buffers; the buffer is committed once it holds
    `batch` rows, at the latest `flush_s` after the first of them (see `flush_soon`), and before
    any read. A crash of the front loses at most those rows of the ledger; every call's
    ``ai.call`` audit entry is journaled before its answer leaves."""

    def __init__(self, state_dir: Path, *, batch: int = 256, flush_s: float = 0.1):
        self.path = Path(state_dir) / LEDGER_FILENAME
        self._conn = connect(self.path, _SCHEMA, synchronous="NORMAL")
        self._lock = threading.Lock()
        self._pending: list[Call] = []
        self._batch, self.flush_s = batch, flush_s

    def record(self, call: Call) -> bool:
        """Buffer one row; True when it is the first of a new batch (flush within `flush_s`)."""
        with self._lock:
            self._pending.append(call)
            if len(self._pending) >= self._batch:
                self._flush_locked()
                return False
            return len(self._pending) == 1

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            rows, self._pending = self._pending, []
            self._conn.execute("BEGIN")
            self._conn.executemany(f"INSERT INTO calls VALUES ({','.join('?' * 20)})", rows)
            self._conn.execute("COMMIT")

    def spent(self, *, since: float, tenant: str | None = None, workflow_class: str | None = None) -> float:
        column, value = ("tenant", tenant) if tenant is not None else ("workflow_class", workflow_class)
        with self._lock:
            self._flush_locked()
            row = self._conn.execute(f"SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE {column} = ? AND ts >= ?",
                                     (value, since)).fetchone()
        return float(row[0])

    def instance_cost(self, instance: str) -> float:
        with self._lock:
            self._flush_locked()
            row = self._conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE instance = ?",
                                     (instance,)).fetchone()
        return float(row[0])

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            self._conn.close()


_BY = {"tenant": "tenant", "class": "inference_class", "workflow": "workflow_class", "model": "model",
       "provider": "provider", "grade": "grade"}


def usage_report(state_dir: Path, *, since: float | None = None, by: str = "model",
                 forecast: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Calls, tokens, cost and cache hit rate grouped by `by` (tenant, class, workflow, model,
    provider, grade); grouped by workflow, also the forecast per instance and the actual mean;
    by instance, each workflow instance's actual cost against its class's forecast. A class
    without a declared forecast (``[ai.forecast]``) is forecast from history: the mean cost of
    its instances that ran before, in the ledger (``learned``)."""
    path = Path(state_dir) / LEDGER_FILENAME
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        if by == "instance":
            return _by_instance(conn, since or 0.0, forecast or {})
        column = _BY[by]
        rows = conn.execute(
            f"SELECT {column}, count(*), sum(tokens_in), sum(tokens_out), sum(cost_usd),"
            " sum(cache = 'hit'), count(DISTINCT instance), sum(ok = 0)"
            f" FROM calls WHERE ts >= ? GROUP BY {column} ORDER BY sum(cost_usd) DESC",
            (since or 0.0,)).fetchall()
    finally:
        conn.close()
    out = []
    for key, calls, tin, tout, cost, hits, instances, failed in rows:
        row: dict[str, Any] = {by: key, "calls": calls, "tokens_in": tin or 0, "tokens_out": tout or 0,
                               "cost_usd": round(cost or 0.0, 6), "cache_hit_rate": round((hits or 0) / calls, 4),
                               "failed": failed or 0}
        if by == "workflow" and key is not None:
            row["instances"] = instances
            row["actual_per_instance_usd"] = round((cost or 0.0) / instances, 6) if instances else None
            row["forecast_per_instance_usd"] = (forecast or {}).get(key)
        out.append(row)
    return out


def _by_instance(conn: Any, since: float, forecast: dict[str, float]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT workflow_class, instance, min(ts), count(*), sum(cost_usd) FROM calls"
        " WHERE instance IS NOT NULL GROUP BY workflow_class, instance ORDER BY min(ts)").fetchall()
    out: list[dict[str, Any]] = []
    history: dict[str, list[float]] = {}  # cost of each earlier instance, per class
    for cls, instance, first, calls, cost in rows:
        earlier = history.setdefault(cls, [])
        declared = forecast.get(cls)
        predicted = declared if declared is not None else (sum(earlier) / len(earlier) if earlier else None)
        if first >= since:
            out.append({"instance": instance, "workflow": cls, "calls": calls, "actual_usd": round(cost, 8),
                        "forecast_usd": None if predicted is None else round(predicted, 8),
                        "forecast_from": "declared" if declared is not None else "learned" if earlier else None,
                        "over_forecast": None if predicted is None else cost > predicted})
        earlier.append(cost)
    return out

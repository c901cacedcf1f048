"""The SLO event store: ``<state>/slo/events.sqlite``, events counted per minute and per hour.

An event is (kind, task class, workflow class, script, version) with a count and a sum (a
latency, a cost). Nothing stores single events: `add` folds a batch into one row per minute
and one row per hour of each key (the hour rows are the minutes rolled up as they are written,
so both levels agree), which bounds the disk by keys x buckets, not by traffic. Retention is
per level: minute rows are kept `minute_days`, hour rows and instance cost rows `hour_days`;
`prune` drops the rest.

`tally(kinds, start, end)` reads hour rows for the whole hours inside the window and minute
rows for its ragged ends, so a 30-day window over a million events reads some hundreds of
rows per key; an end older than the minute retention is widened to its hour.

Workflow cost is kept per instance (actual, forecast), since its family needs a distribution.

Only the front writes it, from the recorder's flush thread; readers (`edgeworks slo`, the
alert loop) open their own connection. SQLite in WAL mode with ``synchronous = NORMAL``: a
crash loses at most the last flush.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from objects.sqlitefile import connect

__all__ = ["ANY", "CostRow", "EventKey", "EventStore", "STORE_FILE"]

STORE_FILE = Path("slo") / "events.sqlite"
MINUTE, HOUR = 60, 3600
ANY = None  # a filter that matches every value
_KEY = "kind TEXT NOT NULL, task_class TEXT NOT NULL, workflow_class TEXT NOT NULL, script TEXT NOT NULL, " \
       "version TEXT NOT NULL"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS minutes (bucket INTEGER NOT NULL, {_KEY}, count REAL NOT NULL, sum REAL NOT NULL,
    PRIMARY KEY (bucket, kind, task_class, workflow_class, script, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hours (bucket INTEGER NOT NULL, {_KEY}, count REAL NOT NULL, sum REAL NOT NULL,
    PRIMARY KEY (bucket, kind, task_class, workflow_class, script, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS costs (instance TEXT PRIMARY KEY, workflow_class TEXT NOT NULL,
    task_class TEXT NOT NULL, version TEXT NOT NULL, actual REAL NOT NULL, forecast REAL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS costs_class_ts ON costs (workflow_class, ts);
"""
_UPSERT = ("INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
           "count = count + excluded.count, sum = sum + excluded.sum")


class EventKey(NamedTuple):
    """What an event is counted under; '' for a label that does not apply (no workflow class)."""

    kind: str
    task_class: str = ""
    workflow_class: str = ""
    script: str = ""
    version: str = ""


class CostRow(NamedTuple):
    instance: str
    workflow_class: str
    task_class: str
    version: str
    actual: float
    forecast: float | None
    ts: float


class EventStore:
    """See the module doc. Thread-safe: one connection behind a lock."""

    def __init__(self, state_dir: Path, *, minute_days: float = 2.0, hour_days: float = 90.0):
        self.path = Path(state_dir) / STORE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path, _SCHEMA, synchronous="NORMAL")
        self._lock = threading.Lock()
        self.minute_days, self.hour_days = minute_days, hour_days

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writing ---------------------------------------------------------------------------
    def add(self, counts: dict[tuple[int, EventKey], tuple[float, float]],
            costs: Sequence[CostRow] = ()) -> None:
        """Fold `counts` ((minute start, key) -> (count, sum)) into the minute and hour rows, and
        store `costs`, in one transaction."""
        minutes = [(bucket, *key, n, s) for (bucket, key), (n, s) in counts.items()]
        hours: dict[tuple[int, EventKey], list[float]] = {}
        for (bucket, key), (n, s) in counts.items():
            acc = hours.setdefault((bucket - bucket % HOUR, key), [0.0, 0.0])
            acc[0] += n
            acc[1] += s
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(_UPSERT.format(table="minutes"), minutes)
                self._conn.executemany(_UPSERT.format(table="hours"),
                                       [(b, *key, n, s) for (b, key), (n, s) in hours.items()])
                self._conn.executemany("INSERT OR REPLACE INTO costs VALUES (?, ?, ?, ?, ?, ?, ?)", costs)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def prune(self, now: float) -> None:
        """Drop minute rows older than `minute_days`, hour and cost rows older than `hour_days`."""
        with self._lock:
            self._conn.execute("DELETE FROM minutes WHERE bucket < ?", (int(now - self.minute_days * 86400),))
            self._conn.execute("DELETE FROM hours WHERE bucket < ?", (int(now - self.hour_days * 86400),))
            self._conn.execute("DELETE FROM costs WHERE ts < ?", (now - self.hour_days * 86400,))

    # -- reading ---------------------------------------------------------------------------
    def tally(self, kinds: str | Iterable[str], start: float, end: float, *, now: float | None = None,
              task_class: str | None = ANY, workflow_class: str | None = ANY,
              version: str | None = ANY) -> tuple[float, float]:
        """(count, sum) of events of `kinds` in [start, end), optionally of one task class,
        workflow class or version. `now` (default `end`) tells which minutes are still kept."""
        by_kind = self.by_kind(kinds, start, end, now=now, task_class=task_class, workflow_class=workflow_class,
                               version=version)
        return sum(n for n, _ in by_kind.values()), sum(s for _, s in by_kind.values())

    def by_kind(self, kinds: str | Iterable[str], start: float, end: float, *, now: float | None = None,
                task_class: str | None = ANY, workflow_class: str | None = ANY,
                version: str | None = ANY) -> dict[str, tuple[float, float]]:
        """`tally`, per kind (kinds with no event are absent)."""
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        out: dict[str, tuple[float, float]] = {}
        if not kinds or end <= start:
            return out
        for table, lo, hi in self._plan(start, end, end if now is None else now):
            where = [f"kind IN ({','.join('?' * len(kinds))})", "bucket >= ?", "bucket < ?"]
            args: list[object] = [*kinds, lo, hi]
            for column, value in (("task_class", task_class), ("workflow_class", workflow_class),
                                  ("version", version)):
                if value is not None:
                    where.append(f"{column} = ?")
                    args.append(value)
            with self._lock:
                rows = self._conn.execute(f"SELECT kind, sum(count), sum(sum) FROM {table} WHERE "
                                          f"{' AND '.join(where)} GROUP BY kind", args).fetchall()
            for kind, n, s in rows:
                n0, s0 = out.get(kind, (0.0, 0.0))
                out[kind] = (n0 + n, s0 + s)
        return out

    def _plan(self, start: float, end: float, now: float) -> list[tuple[str, int, int]]:
        """Which table covers which part of [start, end): hour rows for whole hours, minute rows
        (while kept) for the ends; an end the minute rows no longer cover widens to its hour."""
        first = int(start // MINUTE * MINUTE)
        last = int(math.ceil(end / MINUTE) * MINUTE)
        kept_from = now - self.minute_days * 86400
        h0 = int(math.ceil(first / HOUR) * HOUR)
        h1 = last // HOUR * HOUR
        if first < kept_from:
            h0 = first // HOUR * HOUR
            if h1 < kept_from:
                h1 = int(math.ceil(last / HOUR) * HOUR)
        if h0 >= h1:
            return [("minutes", first, last)]
        plan = [("hours", h0, h1)]
        if first < h0:
            plan.append(("minutes", first, h0))
        if h1 < last:
            plan.append(("minutes", h1, last))
        return plan

    def costs(self, start: float, end: float, *, workflow_class: str | None = ANY,
              version: str | None = ANY) -> list[CostRow]:
        """The cost rows of instances completed in [start, end)."""
        where: list[str] = ["ts >= ?", "ts < ?"]
        args: list[object] = [start, end]
        for column, value in (("workflow_class", workflow_class), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM costs WHERE {' AND '.join(where)}", args).fetchall()
        return [CostRow(*r) for r in rows]

    def cost_errors(self, start: float, end: float, *, workflow_class: str | None = ANY,
                    task_class: str | None = ANY, version: str | None = ANY) -> list[float]:
        """(actual - forecast) / forecast of each instance completed in [start, end) that has a
        forecast, in ascending order."""
        where: list[str] = ["ts >= ?", "ts < ?", "forecast > 0"]
        args: list[object] = [start, end]
        for column, value in (("workflow_class", workflow_class), ("task_class", task_class), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        with self._lock:
            rows = self._conn.execute(f"SELECT (actual - forecast) / forecast FROM costs WHERE {' AND '.join(where)}",
                                      args).fetchall()
        return sorted(r[0] for r in rows)

    def cost_history(self, workflow_class: str, before: float) -> tuple[float, int]:
        """(sum, count) of the actual costs of the class's instances completed before `before`:
        their mean is a learned forecast, as `edgeworks ai usage` makes one for a class without
        a declared forecast."""
        with self._lock:
            row = self._conn.execute("SELECT coalesce(sum(actual), 0), count(*) FROM costs WHERE workflow_class = ? "
                                     "AND ts < ?", (workflow_class, before)).fetchone()
        return float(row[0]), int(row[1])


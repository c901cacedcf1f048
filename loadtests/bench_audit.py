"""Audit log micro-benchmark: CPU µs per entry to append, to write, and to verify.

Each stage runs on the same N request-shaped entries, in this process, measured with
`time.process_time` (CPU, not wall time), several rounds; prints medians:

- append: what the front pays per entry (`Journal` record: redaction, msgpack, one ``write``),
  against the baseline of a bare ``os.write`` of the same bytes;
- write: what the audit writer pays per entry (`Store.consume`: read the journal, Merkle leaf
  and tree, one SQLite transaction per batch with the indexes), against the baseline of raw
  sqlite3 inserting the same rows into the same schema in the same batches;
- verify: `runtime.audit.verify` (recompute every leaf, the tree and every stored head);
- total = append + write, the CPU the log costs per entry across both processes.

    .venv/bin/python loadtests/bench_audit.py [--entries 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.audit import verify  # noqa: E402
from runtime.audit.journal import Journal  # noqa: E402
from runtime.audit.store import SCHEMA, Store  # noqa: E402
from runtime.auditconfig import AuditOptions  # noqa: E402


def entry(i: int) -> tuple[dict[str, object], dict[str, object]]:
    columns = {"request_id": uuid.uuid4().hex, "script": "app", "tenant": None, "risk": "low", "subject": None}
    data = {"method": "GET", "path": "/hello", "status": 200, "started": round(time.time(), 3),
            "cpu_ms": 0.061, "wall_ms": 1.2 + i % 7 / 10, "error": None}
    return columns, data


def cpu_us(fn: object, n: int) -> float:
    t = time.process_time()
    fn()  # type: ignore[operator]
    return (time.process_time() - t) / n * 1e6


def one_round(n: int) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        options = AuditOptions(journal_max_bytes=1 << 30)
        journal = Journal(state, options)
        entries = [entry(i) for i in range(n)]

        def append() -> None:
            make, write, now = journal.maker.make, journal.write, time.time
            for columns, data in entries:
                write(make("request", columns, data, now()))

        out: dict[str, float] = {"append": cpu_us(append, n)}
        journal.close()
        records = (state / "audit" / "journal" / journal.name).read_bytes()
        raw_fd = os.open(state / "raw-journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = len(records) // n

        def raw_write() -> None:
            for i in range(n):
                os.write(raw_fd, records[i * chunk:(i + 1) * chunk])

        out["append_raw"] = cpu_us(raw_write, n)
        os.close(raw_fd)
        store = Store(state, options)

        def consume() -> None:
            while store.consume().more:
                pass

        out["write"] = cpu_us(consume, n)
        store.close()
        conn = sqlite3.connect(state / "raw.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        rows = [(i + 1, time.time(), "request", c["request_id"], None, records[i * chunk:(i + 1) * chunk])
                for i, (c, _) in enumerate(entries)]

        def raw_insert() -> None:
            for start in range(0, n, 5000):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?)", rows[start:start + 5000])
                conn.execute("COMMIT")

        out["write_raw"] = cpu_us(raw_insert, n)
        conn.close()
        result = verify(state)
        assert result.ok and result.entries == n, result
        out["verify"] = cpu_us(lambda: verify(state), n)
        return out
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rounds = [one_round(args.entries) for _ in range(args.rounds)]
    m = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"CPU µs per entry, medians of {args.rounds} rounds of {args.entries:,} entries:")
    print(f"  append (front)   {m['append']:6.2f}   raw os.write of the same bytes {m['append_raw']:5.2f}"
          f"   = {m['append'] / m['append_raw']:.1f}x")
    print(f"  write (writer)   {m['write']:6.2f}   raw sqlite3 insert of the same rows {m['write_raw']:5.2f}"
          f"   = {m['write'] / m['write_raw']:.1f}x")
    print(f"  total            {m['append'] + m['write']:6.2f}")
    print(f"  verify           {m['verify']:6.2f}")


if __name__ == "__main__":
    main()

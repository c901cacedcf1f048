"""Durable-object counter over HTTP vs raw SQLite doing the same transactions, in one run.

Each HTTP request is POST /counter/{name} on the example app: the object does `get` + `put` and
the response is released only after the write is committed (output gate). The baseline is one
Python process with stdlib sqlite3 at the same durability (WAL, synchronous=NORMAL) doing
BEGIN; SELECT; UPSERT; COMMIT per increment. Also: the same load spread over 100 objects.

    .venv/bin/python loadtests/bench_objects.py [--rounds 3] [--seconds 5] [--connections 50]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from loadtests.bench_front import start_edgeworks, wait_ready, wrk  # noqa: E402
from tests.support import free_port  # noqa: E402

ONE = 'wrk.method = "POST"\n'
HUNDRED = 'request = function() return wrk.format("POST", "/counter/o" .. math.random(100)) end\n'


def raw_sqlite(seconds: float) -> float:
    d = tempfile.mkdtemp(prefix="bench-sqlite-")
    db = sqlite3.connect(f"{d}/c.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)")
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT v FROM kv WHERE k = 'value'").fetchone()
        v = (int(row[0]) if row else 0) + 1
        db.execute("INSERT INTO kv VALUES ('value', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (v,))
        db.execute("COMMIT")
        n += 1
    db.close()
    shutil.rmtree(d, ignore_errors=True)
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="bench-objects-")
    scripts = Path(state) / "scripts"
    scripts.mkdir()
    (scripts / "one.lua").write_text(ONE)
    (scripts / "hundred.lua").write_text(HUNDRED)
    port = free_port()
    proc = start_edgeworks(port, state)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/hello", proc)
        wrk(f"{base}/counter/hot", 1, args.connections, str(scripts / "one.lua"))
        hot, spread, raw = [], [], []
        for i in range(args.rounds):
            hot.append(wrk(f"{base}/counter/hot", args.seconds, args.connections, str(scripts / "one.lua")))
            spread.append(wrk(base, args.seconds, args.connections, str(scripts / "hundred.lua")))
            raw.append(raw_sqlite(args.seconds))
            print(f"round {i + 1}: one hot object {hot[-1]:,.0f} req/s   100 objects {spread[-1]:,.0f} req/s"
                  f"   raw sqlite {raw[-1]:,.0f} tx/s")
        h, s, r = statistics.median(hot), statistics.median(spread), statistics.median(raw)
        print(f"median: one hot object {h:,.0f} req/s ({h / r:.2f}x raw sqlite {r:,.0f} tx/s); "
              f"100 objects {s:,.0f} req/s ({s / r:.2f}x)")
    finally:
        proc.send_signal(2)
        proc.wait(30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()

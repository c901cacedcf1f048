"""Durable-object storage throughput: ObjectHost increments vs raw SQLite, same run.

One hot object; each op is an RPC ``increment`` doing ``get`` + ``put`` whose reply is released
only after its write is durably committed (output gate). Measured through ``ObjectHost.handle``:

- sequential: N increments, each awaited before the next;
- concurrent: N increments issued at once (group commit coalesces their writes);
- raw baseline: stdlib sqlite3, same WAL/synchronous setting, one transaction per increment
  (BEGIN; SELECT; UPSERT; COMMIT), sequential, no event loop;
- I/O driver check: one commit per increment from the event loop through (a) one hop to a
  dedicated thread (what objects.database does) and (b) aiosqlite, one await per statement.

Prints each run, then medians of the runs and the ratios to the raw baseline.

    .venv/bin/python loadtests/bench_objects_storage.py [--n 2000] [--runs 5] [--durability normal]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite
import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from objects import DurableObject, DurableObjectNamespace, ObjectHost  # noqa: E402

UPSERT = "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


class Counter(DurableObject):
    async def increment(self) -> int:
        v = (await self.ctx.storage.get("n")) or 0
        await self.ctx.storage.put("n", v + 1)
        return v + 1


def connect(path: Path, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={durability.upper()}")
    conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    return conn


def increment_txn(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT value FROM kv WHERE key = 'n'").fetchone()
    v = msgpack.unpackb(row[0]) if row else 0
    conn.execute(UPSERT, ("n", msgpack.packb(v + 1)))
    conn.execute("COMMIT")


def raw_sqlite(path: Path, n: int, durability: str) -> float:
    conn = connect(path, durability)
    start = time.perf_counter()
    for _ in range(n):
        increment_txn(conn)
    elapsed = time.perf_counter() - start
    assert msgpack.unpackb(conn.execute("SELECT value FROM kv").fetchone()[0]) == n
    conn.close()
    return n / elapsed


async def host_run(state: Path, n: int, durability: str, concurrent: bool) -> float:
    host = ObjectHost("bench", {"Counter": Counter}, None, state, durability=durability)
    ns = DurableObjectNamespace("bench", "Counter", host.handle)
    address = ns.get_by_name("hot").address
    op = {"kind": "rpc", "method": "increment", "args": [], "kwargs": {}, "idempotency_key": None}
    await host.handle(address, op)  # open the object outside the timing
    start = time.perf_counter()
    if concurrent:
        replies = await asyncio.gather(*(host.handle(address, op) for _ in range(n)))
    else:
        replies = [await host.handle(address, op) for _ in range(n)]
    elapsed = time.perf_counter() - start
    assert max(r["ok"] for r in replies) == n + 1, replies[-1]
    await host.close()
    return n / elapsed


async def thread_hop(path: Path, n: int, durability: str) -> float:
    conn = connect(path, durability)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(n):
        await loop.run_in_executor(pool, increment_txn, conn)
    elapsed = time.perf_counter() - start
    pool.shutdown()
    conn.close()
    return n / elapsed


async def aiosqlite_run(path: Path, n: int, durability: str) -> float:
    connect(path, durability).close()
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute(f"PRAGMA synchronous={durability.upper()}")
        start = time.perf_counter()
        for _ in range(n):
            await db.execute("BEGIN IMMEDIATE")
            async with db.execute("SELECT value FROM kv WHERE key = 'n'") as cur:
                row = await cur.fetchone()
            v = msgpack.unpackb(row[0]) if row else 0
            await db.execute(UPSERT, ("n", msgpack.packb(v + 1)))
            await db.execute("COMMIT")
        return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="increments per measurement")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--durability", choices=["normal", "full"], default="normal")
    args = ap.parse_args()
    names = ["raw sqlite3 (1 txn/op)", "host sequential", "host concurrent",
             "driver: thread hop", "driver: aiosqlite"]
    results: dict[str, list[float]] = {k: [] for k in names}
    for run in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="bench-objects-"))
        try:
            figures = [
                raw_sqlite(tmp / "raw.sqlite", args.n, args.durability),
                asyncio.run(host_run(tmp / "seq", args.n, args.durability, concurrent=False)),
                asyncio.run(host_run(tmp / "conc", args.n, args.durability, concurrent=True)),
                asyncio.run(thread_hop(tmp / "hop.sqlite", args.n, args.durability)),
                asyncio.run(aiosqlite_run(tmp / "aio.sqlite", args.n, args.durability)),
            ]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for k, v in zip(names, figures, strict=True):
            results[k].append(v)
        print(f"run {run + 1}: " + "; ".join(f"{k} {v:,.0f} ops/s" for k, v in zip(names, figures, strict=True)))
    med = {k: statistics.median(v) for k, v in results.items()}
    raw = med[names[0]]
    print(f"\nmedians of {args.runs} runs, n={args.n}, synchronous={args.durability.upper()}:")
    for k in names:
        print(f"  {k:<24} {med[k]:>10,.0f} ops/s   ratio to raw {med[k] / raw:5.2f}x")
    print(f"  aiosqlite / thread hop: {med[names[4]] / med[names[3]]:.2f}x")


if __name__ == "__main__":
    main()

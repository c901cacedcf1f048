"""D1 throughput: a point query through a handler against the hello route (same server, same run),
and an insert through `env.DB` against raw sqlite3 doing the same transaction.

- handler: ``edgeworks serve`` of a small app (one isolate), wrk on ``/hello`` and on ``/d1``
  (``SELECT ... WHERE id = ?`` on a 10,000-row table through ``env.DB.prepare().bind().first()``),
  alternated for ``--rounds`` rounds; prints the medians and the ratio (target >= 0.7).
- insert: N sequential ``INSERT`` through `D1Database` (``BEGIN IMMEDIATE``, ``synchronous=FULL``,
  one worker thread) against stdlib sqlite3 on the same kind of file doing ``BEGIN IMMEDIATE;
  INSERT; COMMIT`` with ``synchronous=FULL``, no event loop.

    .venv/bin/python loadtests/bench_d1.py [--rounds 3] [--seconds 5] [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from loadtests.bench_front import start_edgeworks, wait_ready, wrk  # noqa: E402
from runtime.bindings.d1 import D1Binding, D1Database  # noqa: E402
from tests.support import free_port  # noqa: E402

MANIFEST = """
[[scripts]]
name = "bench"
main = "app.py"
routes = ["/hello", "/d1"]
d1_databases = [{ binding = "DB", database_name = "bench" }]
"""

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    if request.path == "/d1":
        row = await env.DB.prepare("SELECT id, name FROM users WHERE id = ?").bind(4242).first()
        return Response(row["name"])
    return Response("Hello")
'''


def handler_ratio(tmp: Path, rounds: int, seconds: int) -> None:
    app = tmp / "app"
    app.mkdir(parents=True)
    (app / "edgeworks.toml").write_text(textwrap.dedent(MANIFEST))
    (app / "app.py").write_text(textwrap.dedent(APP))
    state = tmp / "state"
    (state / "d1").mkdir(parents=True)
    seed = sqlite3.connect(state / "d1" / "bench.sqlite")
    seed.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
    seed.executemany("INSERT INTO users VALUES (?, ?)", ((i, f"user-{i}") for i in range(10_000)))
    seed.commit()
    seed.close()
    port = free_port()
    proc = start_edgeworks(port, str(state), app)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/d1", proc)
        hello, d1 = [], []
        for r in range(rounds):
            hello.append(wrk(f"{base}/hello", seconds, 50))
            d1.append(wrk(f"{base}/d1", seconds, 50))
            print(f"round {r + 1}: hello {hello[-1]:.0f} req/s, d1 point query {d1[-1]:.0f} req/s")
        h, d = statistics.median(hello), statistics.median(d1)
        print(f"median: hello {h:.0f} req/s, d1 {d:.0f} req/s, ratio {d / h:.2f} (target >= 0.7)")
    finally:
        proc.terminate()
        proc.wait()


async def d1_inserts(path: Path, n: int) -> float:
    db = D1Database(D1Binding(binding="DB", database_name="ins"), path, path)
    await db.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    stmt = db.prepare("INSERT INTO t(v) VALUES (?)")
    started = time.perf_counter()
    for i in range(n):
        await stmt.bind(f"value-{i}").run()
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


def raw_inserts(path: Path, n: int) -> float:
    conn = sqlite3.connect(path / "raw.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    started = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"value-{i}",))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--skip-handler", action="store_true", help="only the insert comparison")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d1 = asyncio.run(d1_inserts(root / "d1", args.n))
        raw = raw_inserts(root, args.n)
        print(f"insert, synchronous=FULL: env.DB {d1:.0f}/s, raw sqlite3 {raw:.0f}/s, ratio {d1 / raw:.2f}")
        if not args.skip_handler:
            handler_ratio(root / "handler", args.rounds, args.seconds)


if __name__ == "__main__":
    main()

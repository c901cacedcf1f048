"""env.DB through a real server: migrations applied by the CLI, concurrent writers in two isolates
(never ``database is locked``), data kept across a restart, the binding-ops limit as a 503, and
SQLite's message in the handler's error."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx

from tests.support import Server, run_cli, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/add/{n}", "/count", "/pids", "/many", "/bad"]
pool_size = 2
d1_databases = [{ binding = "DB", database_name = "shop", database_id = "shop-1" }]
"""

APP = '''
import os
from workers import Response

async def fetch(request, env, ctx):
    p = request.path
    if p.startswith("/add/"):
        n = int(p.rsplit("/", 1)[1])
        stmts = [env.DB.prepare("INSERT INTO orders(isolate, n) VALUES (?, ?)").bind(os.getpid(), n + i) for i in range(5)]
        await env.DB.batch(stmts)
        return Response.json({"pid": os.getpid()})
    if p == "/count":
        return Response.json(await env.DB.prepare("SELECT count(*) AS n FROM orders").first())
    if p == "/many":
        for _ in range(1001):
            await env.DB.prepare("SELECT 1").first()
        return Response("unreachable")
    if p == "/bad":
        try:
            await env.DB.prepare("SELECT * FROM missing").all()
        except Exception as e:
            return Response(str(e), status=500)
    return Response("?", status=404)
'''

MIGRATION = "CREATE TABLE orders(id INTEGER PRIMARY KEY, isolate INTEGER, n INTEGER);\n"


def test_d1_through_the_server(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP, "migrations/0001_orders.sql": MIGRATION})
    state = tmp_path / "state"
    listed = run_cli("d1", "migrations", "list", "DB", "--app", str(app), "--state-dir", str(state))
    assert listed.returncode == 0 and "pending  0001_orders.sql" in listed.stdout, listed.stderr
    applied = run_cli("d1", "migrations", "apply", "DB", "--app", str(app), "--state-dir", str(state))
    assert applied.returncode == 0 and "applied 0001_orders.sql" in applied.stdout, applied.stderr

    with Server(app, state_dir=state) as server:
        def add(i: int) -> httpx.Response:
            return httpx.post(f"{server.url}/add/{i * 10}", timeout=30)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(add, range(60)))
        assert [r.status_code for r in answers if r.status_code != 200] == [], [r.text for r in answers][:3]
        assert len({r.json()["pid"] for r in answers}) == 2  # both isolates wrote
        assert httpx.get(f"{server.url}/count").json() == {"n": 300}

        bad = httpx.get(f"{server.url}/bad")
        assert bad.status_code == 500 and bad.text == "D1_ERROR: no such table: missing: SQLITE_ERROR"
        many = httpx.get(f"{server.url}/many")
        assert many.status_code == 503 and "binding_ops_limit" in many.text, many.text

    with Server(app, state_dir=state) as server:
        assert httpx.get(f"{server.url}/count").json() == {"n": 300}

    out = run_cli("d1", "execute", "DB", "--app", str(app), "--state-dir", str(state),
                  "--command", "SELECT count(DISTINCT isolate) AS n FROM orders", "--json")
    assert out.returncode == 0 and '"n": 2' in out.stdout, out.stderr
    assert (state / "d1" / "shop-1.sqlite").exists()

"""The D1 binding's API against Cloudflare's documented behaviour, in-process: results and meta,
first/raw/run, atomic batch, exec, D1-style errors, migrations, tenant scoping, the binding-ops
limit, the write audit, and the manifest's key-path errors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.bindings.d1 import (
    D1Binding,
    D1Database,
    D1Error,
    apply_migrations,
    database_path,
    list_migrations,
    split_statements,
)
from runtime.config import ConfigError, load_app
from runtime.isolate.context import BindingOpsLimitExceeded, RequestScope, use_scope
from runtime.protocol import Identity
from tests.support import ROOT, run_cli, write_app


@pytest.fixture
def audit() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def db(tmp_path: Path, audit: list[tuple[str, dict[str, Any]]]) -> Iterator[D1Database]:
    database = D1Database(D1Binding(binding="DB", database_name="app"), tmp_path / "state", tmp_path,
                          lambda kind, fields: audit.append((kind, fields)))
    yield database
    database.close()


async def test_all_first_raw_run_and_meta(db: D1Database) -> None:
    use_scope(RequestScope(request_id="r1"))
    await db.exec("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, ok INTEGER, pic BLOB)")
    run = await db.prepare("INSERT INTO users(name, ok, pic) VALUES (?, ?, ?)").bind("ada", True, b"\x00\x01").run()
    assert run["success"] is True and run.success is True
    assert run["meta"]["changes"] == 1 and run["meta"]["last_row_id"] == 1 and run["meta"]["changed_db"] is True
    assert run["meta"]["rows_written"] == 1 and run["meta"]["duration"] >= 0 and run["meta"]["size_after"] > 0
    await db.prepare("INSERT INTO users(name) VALUES (?)").bind("bob").run()
    res = await db.prepare("SELECT id, name, ok, pic FROM users ORDER BY id").all()
    assert res.results == [{"id": 1, "name": "ada", "ok": 1, "pic": b"\x00\x01"},
                           {"id": 2, "name": "bob", "ok": None, "pic": None}]
    assert res["meta"]["rows_read"] == 2 and res["meta"]["changes"] == 0 and res["meta"]["changed_db"] is False
    stmt = db.prepare("SELECT name FROM users WHERE id = ?")
    assert await stmt.bind(2).first() == {"name": "bob"}
    assert await stmt.bind(1).first("name") == "ada"
    assert (await stmt.bind(1).first()).name == "ada"  # rows read by attribute too, as in Python Workers
    assert await stmt.bind(99).first() is None
    with pytest.raises(D1Error, match="D1_COLUMN_NOTFOUND"):
        await stmt.bind(1).first("nope")
    assert await db.prepare("SELECT id, name FROM users ORDER BY id").raw() == [[1, "ada"], [2, "bob"]]
    assert await db.prepare("SELECT id, name FROM users ORDER BY id").raw(columnNames=True) == [
        ["id", "name"], [1, "ada"], [2, "bob"]]
    assert (await db.prepare("SELECT id FROM users ORDER BY id").raw({"columnNames": True}))[0] == ["id"]


async def test_errors_carry_sqlites_message(db: D1Database) -> None:
    with pytest.raises(D1Error, match=r"^D1_ERROR: no such table: x: SQLITE_ERROR$"):
        await db.prepare("SELECT * FROM x").all()
    with pytest.raises(D1Error, match="D1_TYPE_ERROR: Type 'list' not supported"):
        db.prepare("SELECT ?").bind([1])
    await db.exec("CREATE TABLE t(k TEXT PRIMARY KEY)")
    await db.prepare("INSERT INTO t VALUES ('a')").run()
    with pytest.raises(D1Error, match="UNIQUE constraint failed: t.k: SQLITE_CONSTRAINT"):
        await db.prepare("INSERT INTO t VALUES ('a')").run()
    with pytest.raises(D1Error, match="D1_TYPE_ERROR: integer"):
        db.prepare("SELECT ?").bind(2**64)
    await db.exec("CREATE TABLE parent(id INTEGER PRIMARY KEY); CREATE TABLE child(p INTEGER REFERENCES parent(id))")
    with pytest.raises(D1Error, match="FOREIGN KEY constraint failed: SQLITE_CONSTRAINT"):
        await db.prepare("INSERT INTO child VALUES (1)").run()
    with pytest.raises(D1Error, match=r"D1_EXEC_ERROR: Error in line 2: .*no such table: nope"):
        await db.exec("INSERT INTO t VALUES ('b'); INSERT INTO nope VALUES (1)")
    assert await db.prepare("SELECT count(*) AS n FROM t").first("n") == 1  # exec is one transaction


async def test_batch_is_all_or_nothing(db: D1Database) -> None:
    await db.exec("CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER)")
    results = await db.batch([db.prepare("INSERT INTO t VALUES (?, ?)").bind("a", 1),
                              db.prepare("INSERT INTO t VALUES (?, ?)").bind("b", 2),
                              db.prepare("SELECT k FROM t ORDER BY k")])
    assert [r["meta"]["changes"] for r in results] == [1, 1, 0]
    assert results[2]["results"] == [{"k": "a"}, {"k": "b"}]
    with pytest.raises(D1Error, match="UNIQUE constraint failed"):
        await db.batch([db.prepare("INSERT INTO t VALUES ('c', 3)"), db.prepare("INSERT INTO t VALUES ('a', 9)")])
    assert await db.prepare("SELECT k FROM t ORDER BY k").raw() == [["a"], ["b"]]
    assert await db.batch([]) == []


async def test_exec_counts_statements(db: D1Database) -> None:
    out = await db.exec("CREATE TABLE t(x TEXT);\nINSERT INTO t VALUES ('a;b');\nINSERT INTO t VALUES (2)")
    assert out["count"] == 3 and out["duration"] >= 0
    assert await db.prepare("SELECT x FROM t ORDER BY rowid").raw() == [["a;b"], ["2"]]


def test_split_statements_keeps_strings_and_triggers() -> None:
    sql = ("CREATE TABLE t(x); -- note; here\nCREATE TRIGGER g AFTER INSERT ON t BEGIN "
           "UPDATE t SET x = 'a;b'; END; INSERT INTO t VALUES (1)")
    parts = split_statements(sql)
    assert len(parts) == 3 and parts[1].endswith("END;") and parts[2] == "INSERT INTO t VALUES (1)"


async def test_writes_are_audited_without_values(db: D1Database, audit: list[tuple[str, dict[str, Any]]]) -> None:
    use_scope(RequestScope(request_id="req-7"))
    await db.exec("CREATE TABLE t(x TEXT)")
    audit.clear()
    await db.prepare("SELECT * FROM t").all()
    assert audit == []
    await db.batch([db.prepare("INSERT INTO t VALUES (?)").bind("secret-value"), db.prepare("INSERT INTO t VALUES ('b')")])
    (kind, fields), = audit
    assert kind == "d1.write" and fields["request_id"] == "req-7"
    assert fields["statements"] == 2 and fields["changes"] == 2 and fields["database"] == "app"
    assert "secret-value" not in repr(fields)


async def test_binding_ops_limit(db: D1Database) -> None:
    use_scope(RequestScope(binding_op_limit=3))
    await db.exec("CREATE TABLE t(x)")
    await db.prepare("SELECT 1").first()
    await db.batch([db.prepare("SELECT 1"), db.prepare("SELECT 2")])  # a batch is one operation
    with pytest.raises(BindingOpsLimitExceeded, match="binding_ops"):
        await db.prepare("SELECT 1").all()


async def test_tenant_scoped_databases_are_separate(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_init.sql").write_text("CREATE TABLE notes(body TEXT);")
    db = D1Database(D1Binding(binding="DB", database_name="app", tenant_scoped=True), tmp_path / "state", tmp_path)
    try:
        for tenant in ("acme", "globex"):
            use_scope(RequestScope(identity=Identity("u", tenant, (), {})))
            await db.prepare("INSERT INTO notes VALUES (?)").bind(f"from {tenant}").run()
        use_scope(RequestScope(identity=Identity("u", "acme", (), {})))
        assert await db.prepare("SELECT body FROM notes").raw() == [["from acme"]]
        use_scope(RequestScope())
        with pytest.raises(D1Error, match="tenant-scoped"):
            await db.prepare("SELECT 1").all()
    finally:
        db.close()
    assert database_path(tmp_path / "state", D1Binding(binding="DB", database_name="app"), "a/b").name == "a%2Fb.sqlite"


def test_migrations_apply_in_order_once(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0002_seed.sql").write_text("INSERT INTO users(name) VALUES ('ada');")
    (migrations / "0001_init.sql").write_text("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);")
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    assert [m.name for m in list_migrations(conn, migrations) if not m.applied] == ["0001_init.sql", "0002_seed.sql"]
    assert apply_migrations(conn, migrations) == ["0001_init.sql", "0002_seed.sql"]
    assert apply_migrations(conn, migrations) == []
    (migrations / "0003_bad.sql").write_text("INSERT INTO users(name) VALUES ('bob'); INSERT INTO nope VALUES (1);")
    with pytest.raises(D1Error, match="migration 0003_bad.sql failed: no such table: nope"):
        apply_migrations(conn, migrations)
    assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]  # the failed one left nothing
    assert [r[0] for r in conn.execute("SELECT name FROM d1_migrations ORDER BY id")] == ["0001_init.sql", "0002_seed.sql"]


def test_persists_across_reopen(tmp_path: Path) -> None:
    import asyncio

    async def write() -> None:
        db = D1Database(D1Binding(binding="DB", database_name="app", database_id="abc-1"), tmp_path, tmp_path)
        await db.exec("CREATE TABLE t(x); INSERT INTO t VALUES (42)")
        db.close()

    async def read() -> Any:
        db = D1Database(D1Binding(binding="DB", database_name="app", database_id="abc-1"), tmp_path, tmp_path)
        try:
            return await db.prepare("SELECT x FROM t").first("x")
        finally:
            db.close()

    asyncio.run(write())
    assert (tmp_path / "d1" / "abc-1.sqlite").exists()
    assert asyncio.run(read()) == 42


BATCH_WRITER = textwrap.dedent('''
    import asyncio, sys
    from pathlib import Path
    from runtime.bindings.d1 import D1Binding, D1Database

    async def main():
        db = D1Database(D1Binding(binding="DB", database_name="app"), Path(sys.argv[1]), Path(sys.argv[1]))
        await db.exec("CREATE TABLE IF NOT EXISTS t(batch INTEGER, i INTEGER)")
        print("ready", flush=True)
        n = int(sys.argv[2]) * 1_000_000
        while True:
            n += 1
            await db.batch([db.prepare("INSERT INTO t VALUES (?, ?)").bind(n, i) for i in range(200)])

    asyncio.run(main())
''')


def test_kill_9_during_batches_leaves_whole_batches(tmp_path: Path) -> None:
    for run, delay in enumerate((0.05, 0.2, 0.35)):
        with subprocess.Popen([sys.executable, "-c", BATCH_WRITER, str(tmp_path), str(run)], cwd=ROOT,
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        conn = sqlite3.connect(tmp_path / "d1" / "app.sqlite")
        sizes = [n for _, n in conn.execute("SELECT batch, count(*) FROM t GROUP BY batch")]
        conn.close()
        assert len(sizes) > run and set(sizes) == {200}, sizes  # every run committed some whole batches


async def test_cli_migrates_every_tenants_database(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", """
        [[scripts]]
        name = "main"
        main = "worker.py"
        d1_databases = [{ binding = "DB", database_name = "notes", tenant_scoped = true }]
    """, {"worker.py": "async def fetch(request, env, ctx): pass\n",
          "migrations/0001_init.sql": "CREATE TABLE notes(body TEXT);"})
    state = tmp_path / "state"
    db = D1Database(D1Binding(binding="DB", database_name="notes", tenant_scoped=True), state, app)
    for tenant in ("acme", "glo/bex"):
        use_scope(RequestScope(identity=Identity("u", tenant, (), {})))
        await db.prepare("INSERT INTO notes VALUES (?)").bind(tenant).run()
    db.close()
    (app / "migrations" / "0002_tags.sql").write_text("ALTER TABLE notes ADD COLUMN tag TEXT;")
    common = ("--app", str(app), "--state-dir", str(state))
    applied = run_cli("d1", "migrations", "apply", "DB", *common)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["tenant acme:", "applied 0002_tags.sql", "tenant glo/bex:",
                                           "applied 0002_tags.sql"]
    refused = run_cli("d1", "execute", "DB", *common, "--command", "SELECT 1")
    assert refused.returncode == 2 and "--tenant" in refused.stderr
    out = run_cli("d1", "execute", "DB", *common, "--tenant", "glo/bex", "--command", "SELECT body, tag FROM notes")
    assert out.returncode == 0 and out.stdout == "glo/bex\tNULL\n", out.stderr


CONTENDING_WRITER = textwrap.dedent('''
    import asyncio, sys, time
    from pathlib import Path
    from runtime.bindings.d1 import D1Binding, D1Database

    async def main():
        start = float(sys.argv[3])
        time.sleep(max(0.0, start - time.time()))
        db = D1Database(D1Binding(binding="DB", database_name="busy"), Path(sys.argv[1]), Path(sys.argv[1]))
        await db.exec("CREATE TABLE IF NOT EXISTS t(writer INTEGER, i INTEGER)")
        for i in range(150):
            await db.prepare("INSERT INTO t VALUES (?, ?)").bind(int(sys.argv[2]), i).run()
            await db.prepare("SELECT count(*) FROM t").first()
        db.close()

    asyncio.run(main())
''')


def test_writers_in_several_processes_never_see_database_is_locked(tmp_path: Path) -> None:
    start = time.time() + 1.5  # every process opens the new file and writes at once
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDING_WRITER, str(tmp_path), str(w), str(start)],
                              cwd=ROOT, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) for w in range(4)]
    errors = [p.communicate(timeout=90)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    conn = sqlite3.connect(tmp_path / "d1" / "busy.sqlite")
    assert conn.execute("SELECT count(*), count(DISTINCT writer) FROM t").fetchone() == (600, 4)
    conn.close()


@pytest.mark.parametrize(("entry", "problem"), [
    ('{ binding = "DB" }', "scripts[0].d1_databases[0].database_name: required"),
    ('{ binding = "1DB", database_name = "app" }', "scripts[0].d1_databases[0].binding"),
    ('{ binding = "DB", database_name = "app", databse_id = "x" }', "scripts[0].d1_databases[0].databse_id"),
])
def test_bad_manifest_entries_name_their_key_path(tmp_path: Path, entry: str, problem: str) -> None:
    app = write_app(tmp_path / "app", f'''
        [[scripts]]
        name = "main"
        main = "worker.py"
        d1_databases = [{entry}]
    ''', {"worker.py": "async def fetch(request, env, ctx): pass\n"})
    with pytest.raises(ConfigError) as info:
        load_app(app)
    assert any(problem in p for p in info.value.problems), info.value.problems

"""The storage API inside an object: KV, list, transactions, SQL, limits and errors."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from objects import (
    DurableObject,
    DurableObjectError,
    DurableObjectNamespace,
    LocalTransport,
    ObjectHost,
)


class Harness(DurableObject):
    """Runs a test-provided ``async fn(storage)`` inside the object (LocalTransport passes it)."""

    async def run(self, fn):
        return await fn(self.ctx.storage)


@pytest.fixture(params=[10_000, 0], ids=["preloaded", "lazy"])
async def harness(tmp_path, request):
    hosts = []

    def open_host(**kw):
        host = ObjectHost("app", {"Harness": Harness}, None, tmp_path, preload_rows=request.param, **kw)
        hosts.append(host)
        ns = DurableObjectNamespace("app", "Harness", LocalTransport(host))
        return host, ns.get_by_name("obj")

    yield open_host
    for h in hosts:
        await h.close()


async def test_get_put_delete_single_and_many(harness):
    _, obj = harness()

    async def fn(s):
        assert await s.get("missing") is None
        await s.put("a", 1)
        await s.put({"b": [1, 2, {"x": b"\x00"}], "c": "text"})
        assert await s.get("a") == 1
        assert await s.get(["a", "b", "nope"]) == {"a": 1, "b": [1, 2, {"x": b"\x00"}]}
        assert await s.delete("a") is True
        assert await s.delete("a") is False
        assert await s.delete(["b", "c", "nope"]) == 2
        return await s.get(["a", "b", "c"])

    assert await obj.run(fn) == {}


async def test_values_survive_a_restart_and_reads_return_copies(harness):
    host, obj = harness()

    async def write(s):
        await s.put("doc", {"list": [1, 2], "n": None, "f": 1.5, "big": 2**63 - 1})
        doc = await s.get("doc")
        doc["list"].append(3)  # mutating a read value must not change storage
        return await s.get("doc")

    assert await obj.run(write) == {"list": [1, 2], "n": None, "f": 1.5, "big": 2**63 - 1}
    await host.close()
    _, obj2 = harness()

    async def read(s):
        return await s.get("doc")

    assert await obj2.run(read) == {"list": [1, 2], "n": None, "f": 1.5, "big": 2**63 - 1}


async def test_list_orders_filters_and_limits(harness):
    host, obj = harness()
    keys = ["a", "b/1", "b/2", "b/3", "c", "é"]

    async def setup(s):
        await s.put({k: k.upper() for k in keys})

    await obj.run(setup)
    await host.close()  # make the data come from disk for the lazy variant
    _, obj = harness()

    async def fn(s):
        await s.put("b/25", "new")  # uncommitted writes are visible to list
        await s.delete("b/3")
        return [
            list(await s.list()),
            list(await s.list(prefix="b/")),
            list(await s.list(prefix="b/", reverse=True, limit=2)),
            list(await s.list(start="b/2", end="c")),
            list(await s.list(limit=2)),
            await s.list(prefix="é"),
        ]

    out = await obj.run(fn)
    assert out[0] == ["a", "b/1", "b/2", "b/25", "c", "é"]
    assert out[1] == ["b/1", "b/2", "b/25"]
    assert out[2] == ["b/25", "b/2"]
    assert out[3] == ["b/2", "b/25"]
    assert out[4] == ["a", "b/1"]
    assert out[5] == {"é": "É"}


async def test_transaction_commits_atomically(harness):
    _, obj = harness()

    async def fn(s):
        await s.put("balance", 10)

        async def move(txn):
            b = await txn.get("balance")
            await txn.put("balance", b - 3)
            await txn.put("moved", 3)
            return "done"

        assert await s.transaction(move) == "done"
        return await s.get(["balance", "moved"])

    assert await obj.run(fn) == {"balance": 7, "moved": 3}


async def test_transaction_rolls_back_on_exception_and_on_rollback(harness):
    host, obj = harness()

    async def fn(s):
        await s.put("balance", 10)
        await s.sql.exec("CREATE TABLE log (msg TEXT)")

        async def failing(txn):
            await txn.put("balance", 0)
            await txn.delete("missing")
            await s.sql.exec("INSERT INTO log VALUES ('in txn')")
            assert await txn.get("balance") == 0  # the transaction sees its own writes
            raise ValueError("abort")

        with pytest.raises(ValueError, match="abort"):
            await s.transaction(failing)

        async def rolled(txn):
            await txn.put("balance", -1)
            txn.rollback()

        await s.transaction(rolled)
        rows = (await s.sql.exec("SELECT count(*) AS n FROM log")).one()["n"]
        return await s.get("balance"), rows

    assert await obj.run(fn) == (10, 0)
    await host.close()
    _, obj2 = harness()
    assert await obj2.run(lambda s: s.get("balance")) == 10


async def test_delete_all_clears_kv_and_sql_but_keeps_the_alarm(harness):
    host, obj = harness()

    async def fn(s):
        await s.put({"a": 1, "b": 2})
        await s.sql.exec("CREATE TABLE t (x)")
        await s.set_alarm(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        await s.delete_all()
        await s.put("after", True)
        tables = (await s.sql.exec("SELECT name FROM sqlite_master WHERE name = 't'")).to_list()
        return await s.list(), tables, await s.get_alarm()

    listed, tables, alarm = await obj.run(fn)
    assert listed == {"after": True} and tables == []
    assert alarm == int(dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    await host.close()
    _, obj2 = harness()
    assert await obj2.run(lambda s: s.list()) == {"after": True}


async def test_sql_exec_and_cursor(harness):
    _, obj = harness()

    async def fn(s):
        await s.sql.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        ins = await s.sql.exec("INSERT INTO users (name) VALUES (?), (?)", "ada", "bob")
        assert ins.rows_written == 2
        cur = await s.sql.exec("SELECT id, name FROM users ORDER BY id")
        assert cur.column_names == ["id", "name"]
        assert cur.rows_read == 2
        assert cur.raw() == [(1, "ada"), (2, "bob")]
        assert list(cur) == [{"id": 1, "name": "ada"}, {"id": 2, "name": "bob"}]
        assert cur.to_list() == list(cur)
        one = (await s.sql.exec("SELECT name FROM users WHERE id = ?", 2)).one()
        await s.sync()
        return one

    assert await obj.run(fn) == {"name": "bob"}


async def test_sql_one_requires_exactly_one_row(harness):
    _, obj = harness()

    async def fn(s):
        await s.sql.exec("CREATE TABLE t (x)")
        await s.sql.exec("INSERT INTO t VALUES (1), (2)")
        errors = []
        for q in ("SELECT x FROM t WHERE x > 5", "SELECT x FROM t"):
            with pytest.raises(ValueError, match="exactly one row") as info:
                (await s.sql.exec(q)).one()
            errors.append(str(info.value))
        return errors

    assert await obj.run(fn) == [
        "expected exactly one row from the query, got 0",
        "expected exactly one row from the query, got 2",
    ]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM _ew_kv",
        "select * from _EW_KV",
        "DELETE FROM _ew_alarm",
        "UPDATE _ew_idempotency SET reply = x''",
        "DROP TABLE _ew_kv",
        "CREATE TRIGGER t AFTER INSERT ON x BEGIN DELETE FROM _ew_kv; END",
    ],
)
async def test_sql_cannot_touch_internal_tables(harness, query):
    _, obj = harness()

    async def fn(s):
        await s.sql.exec(query)

    with pytest.raises(DurableObjectError) as info:
        await obj.run(fn)
    assert info.value.type == "ValueError"
    assert "_ew_" in info.value.message


@pytest.mark.parametrize(
    "query",
    [
        "BEGIN",
        "COMMIT",
        "  rollback",
        "SAVEPOINT x",
        "PRAGMA journal_mode=DELETE",
        "ATTACH 'x' AS y",
        "/* hidden */ COMMIT",
        "-- note\n  end",
        "/* a */ -- b\n /* c */ VACUUM",
    ],
)
async def test_sql_rejects_transaction_and_connection_control(harness, query):
    _, obj = harness()

    async def fn(s):
        await s.sql.exec(query)

    with pytest.raises(DurableObjectError, match="not allowed") as info:
        await obj.run(fn)
    assert info.value.type == "ValueError"


async def test_sql_errors_propagate_and_leave_the_object_usable(harness):
    _, obj = harness()

    async def fn(s):
        await s.sql.exec("SELECT * FROM no_such_table")

    with pytest.raises(DurableObjectError, match="no such table") as info:
        await obj.run(fn)
    assert info.value.type == "OperationalError"

    async def ok(s):
        await s.put("k", 1)
        return await s.get("k")

    assert await obj.run(ok) == 1


@pytest.mark.parametrize(
    ("call", "error_type", "fragments"),
    [
        (lambda s: s.put(5, "v"), "TypeError", ["key must be a str", "int"]),
        (lambda s: s.get(None), "TypeError", ["key must be a str"]),
        (lambda s: s.put("", "v"), "ValueError", ["must not be empty"]),
        (lambda s: s.put("k" * 2049, "v"), "ValueError", ["2049 bytes", "limit is 2048 bytes"]),
        (lambda s: s.get(["ok", "é" * 1025]), "ValueError", ["2050 bytes", "2048"]),
        (lambda s: s.put("setkey", {1, 2}), "TypeError", ["'setkey'", "not msgpack-serializable", "set"]),
        (lambda s: s.put({"good": 1, "objkey": object()}), "TypeError", ["'objkey'"]),
        (lambda s: s.put("huge", 2**70), "TypeError", ["'huge'"]),
        (lambda s: s.put("bigval", "x" * 200_000), "ValueError", ["'bigval'", "limit is 131072 bytes"]),
        (lambda s: s.put("novalue"), "TypeError", ["needs a value"]),
        (lambda s: s.put("bad\ud800", 1), "ValueError", ["not valid UTF-8"]),
        (lambda s: s.put("badvalue", "\udfff"), "TypeError", ["'badvalue'"]),
        (lambda s: s.list(limit=0), "ValueError", ["positive int"]),
        (lambda s: s.list(prefix=3), "TypeError", ["prefix"]),
        (lambda s: s.set_alarm("soon"), "TypeError", ["epoch milliseconds or a datetime"]),
    ],
)
async def test_storage_errors_are_clear(harness, call, error_type, fragments):
    _, obj = harness()
    with pytest.raises(DurableObjectError) as info:
        await obj.run(call)
    assert info.value.type == error_type
    for fragment in fragments:
        assert fragment in info.value.message
    # nothing was written by a rejected multi-put
    assert await obj.run(lambda s: s.list()) == {}


async def test_value_limit_is_configurable(harness):
    _, obj = harness(max_value_bytes=100)
    with pytest.raises(DurableObjectError, match="limit is 100 bytes"):
        await obj.run(lambda s: s.put("k", "x" * 200))
    await obj.run(lambda s: s.put("k", "x" * 50))


async def test_writes_without_await_between_them_share_one_commit(harness, monkeypatch):
    from objects.database import ObjectDatabase

    _, obj = harness()
    await obj.run(lambda s: s.get("warm"))
    batches = []
    original = ObjectDatabase._commit

    def spy(self, batch):
        batches.append(sorted(batch.writes))
        return original(self, batch)

    monkeypatch.setattr(ObjectDatabase, "_commit", spy)

    async def fn(s):
        for i in range(50):
            await s.put(f"k{i:02}", i)
        await s.sync()
        await s.put("after", 1)

    await obj.run(fn)
    assert batches == [[f"k{i:02}" for i in range(50)], ["after"]]


async def test_concurrent_events_coalesce_into_group_commits(harness, monkeypatch):
    from objects.database import ObjectDatabase

    _, obj = harness()
    await obj.run(lambda s: s.get("warm"))
    commits = []
    original = ObjectDatabase._commit

    def spy(self, batch):
        commits.append(len(batch.writes))
        return original(self, batch)

    monkeypatch.setattr(ObjectDatabase, "_commit", spy)

    async def bump(s, i):
        await s.put(f"k{i}", i)

    await asyncio.gather(*(obj.run(lambda s, i=i: bump(s, i)) for i in range(200)))
    assert sum(commits) == 200
    assert len(commits) < 200


async def test_sync_inside_a_transaction_waits_for_earlier_writes_only(harness):
    _, obj = harness()

    async def fn(s):
        await s.put("before", 1)

        async def body(txn):
            await txn.put("inside", 2)
            await s.sync()  # must not deadlock on the transaction's own (uncommitted) writes
            return "ok"

        result = await s.transaction(body)
        await s.sync()
        return result, await s.get(["before", "inside"])

    assert await obj.run(fn) == ("ok", {"before": 1, "inside": 2})


async def test_sync_after_sql_inside_a_transaction_is_an_error_not_a_deadlock(harness):
    _, obj = harness()

    async def fn(s):
        await s.sql.exec("CREATE TABLE t (x)")

        async def body(txn):
            await s.sql.exec("INSERT INTO t VALUES (1)")
            await s.sync()

        await s.transaction(body)

    with pytest.raises(DurableObjectError, match="inside a transaction that has run SQL"):
        await obj.run(fn)
    cur = await obj.run(lambda s: s.sql.exec("SELECT count(*) AS n FROM t"))
    assert cur.one() == {"n": 0}


async def test_cache_is_bounded_and_evicted_entries_are_read_back(harness):
    host, obj = harness(max_cached_keys=50)

    async def fill(s):
        for i in range(200):
            await s.put(f"k{i:03}", i)
        await s.sync()
        cached = len(s._cache)
        values = [await s.get(f"k{i:03}") for i in range(200)]
        listed = await s.list(prefix="k", limit=5, reverse=True)
        many = await s.get([f"k{i:03}" for i in range(120)])  # more keys than the cache holds
        assert many == {f"k{i:03}": i for i in range(120)}
        await s.get("k000")
        return cached, values, list(listed), len(s._cache)

    cached, values, listed, cached_after = await obj.run(fill)
    assert cached <= 50 and cached_after <= 50 + 120  # bound + one multi-get
    assert values == list(range(200))
    assert listed == ["k199", "k198", "k197", "k196", "k195"]


async def test_delete_all_right_after_a_write_deletes_that_write_too(harness):
    host, obj = harness()

    async def fn(s):
        await s.put("a", 1)  # its commit is not submitted yet when delete_all starts
        await s.delete_all()
        return await s.list()

    assert await obj.run(fn) == {}
    await host.close()
    _, obj2 = harness()
    assert await obj2.run(lambda s: s.list()) == {}


class Ledger(DurableObject):
    """Written the way Cloudflare's documentation writes SQL objects: synchronous SQL, a table
    created in the constructor, rows read by attribute."""

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.sql = ctx.storage.sql
        self.sql.exec("CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, amount INTEGER)")

    def add(self, amount):
        self.sql.exec("INSERT INTO entries (amount) VALUES (?)", amount)
        return self.sql.exec("SELECT sum(amount) AS total, count(*) AS n FROM entries").one().total

    async def add_in_transaction_slowly(self, amount, started, proceed):
        async def body(txn):
            self.sql.exec("INSERT INTO entries (amount) VALUES (?)", amount)
            started.set()
            await proceed.wait()

        await self.ctx.storage.transaction(body)

    def add_now(self, amount):
        return self.sql.exec("INSERT INTO entries (amount) VALUES (?)", amount).rows_written

    async def add_when_free(self, amount):
        cursor = await self.sql.exec("INSERT INTO entries (amount) VALUES (?)", amount)
        return cursor.rows_written

    def total(self):
        row = self.sql.exec("SELECT sum(amount) AS total FROM entries").one()
        return row.total, row["total"]


def ledger(tmp_path):
    host = ObjectHost("app", {"Ledger": Ledger}, None, tmp_path)
    return host, DurableObjectNamespace("app", "Ledger", LocalTransport(host)).get_by_name("l")


async def test_sql_exec_is_synchronous_like_cloudflares(tmp_path):
    host, stub = ledger(tmp_path)
    assert await stub.add(5) == 5
    assert await stub.add(7) == 12
    await host.close()
    host, stub = ledger(tmp_path)  # the constructor's CREATE TABLE IF NOT EXISTS runs again
    assert await stub.total() == (12, 12)
    await host.close()


async def test_sql_during_another_events_transaction_must_be_awaited(tmp_path):
    host, stub = ledger(tmp_path)
    await stub.add(1)
    started, proceed = asyncio.Event(), asyncio.Event()
    slow = asyncio.ensure_future(host.handle(stub.address, {
        "kind": "rpc", "method": "add_in_transaction_slowly", "args": [10, started, proceed]}))
    await started.wait()
    actor = host._actors["Ledger", stub.id.hex]
    with pytest.raises(RuntimeError, match="await it"):  # a running event's sync call
        actor.instance.add_now(100)
    waiting = asyncio.ensure_future(actor.instance.add_when_free(100))
    await asyncio.sleep(0.02)
    assert not waiting.done()  # it waits for the transaction instead of running inside it
    proceed.set()
    assert await waiting == 1 and "ok" in await slow
    assert await stub.total() == (111, 111)
    await host.close()


async def test_cloudflares_javascript_names_are_aliases(harness):
    _, obj = harness()

    async def fn(s):
        await s.put("k", 1)
        await s.setAlarm(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        alarm = await s.getAlarm()
        await s.deleteAlarm()
        s.sql.exec("CREATE TABLE t (x)")
        s.sql.exec("INSERT INTO t VALUES (1), (2)")
        cur = s.sql.exec("SELECT x FROM t ORDER BY x")
        seen = (cur.toArray(), cur.columnNames, cur.rowsRead, cur.rowsWritten, alarm)
        await s.deleteAll()
        return seen, await s.list(), await s.getAlarm()

    seen, listed, alarm = await obj.run(fn)
    assert seen == ([{"x": 1}, {"x": 2}], ["x"], 2, 0, 4102444800000)
    assert listed == {} and alarm is None


async def test_synchronous_kv_api_shares_entries_with_the_async_one(harness):
    host, obj = harness()

    async def write(s):
        s.kv.put("a", 1)
        s.kv.put({"b": [2], "c": {"x": 3}})
        await s.put("d", 4)
        assert s.kv.get("d") == 4 and await s.get("a") == 1
        assert s.kv.delete("c") is True and s.kv.delete("nope") is False
        assert s.kv.delete(["a", "nope"]) == 1
        s.kv.put("a", 1)

    await obj.run(write)
    await host.close()
    _, obj = harness()  # lazy: keys come from SQLite through a blocking read

    async def read(s):
        return (s.kv.get("a"), s.kv.get(["a", "b", "missing"]), s.kv.get("missing"),
                s.kv.list(), s.kv.list(prefix="b"), s.kv.list(reverse=True, limit=2))

    assert await obj.run(read) == (
        1, {"a": 1, "b": [2]}, None, [("a", 1), ("b", [2]), ("d", 4)], [("b", [2])],
        [("d", 4), ("b", [2])])


class SyncKvObject(DurableObject):
    def count(self):  # a plain method using only the synchronous API, as on Cloudflare
        n = (self.ctx.storage.kv.get("n") or 0) + 1
        self.ctx.storage.kv.put("n", n)
        return n

    async def hold(self, started, proceed):
        async def body(txn):
            await txn.put("held", True)
            started.set()
            await proceed.wait()

        await self.ctx.storage.transaction(body)


async def test_synchronous_kv_writes_are_durable_and_refused_during_another_transaction(tmp_path):
    def start():
        host = ObjectHost("app", {"K": SyncKvObject}, None, tmp_path)
        return host, DurableObjectNamespace("app", "K", LocalTransport(host)).get_by_name("k")

    host, stub = start()
    assert [await stub.count() for _ in range(3)] == [1, 2, 3]
    started, proceed = asyncio.Event(), asyncio.Event()
    held = asyncio.ensure_future(host.handle(stub.address, {
        "kind": "rpc", "method": "hold", "args": [started, proceed]}))
    await started.wait()
    with pytest.raises(RuntimeError, match="cannot wait for it"):
        host._actors["K", stub.id.hex].instance.count()  # a running event's sync call
    proceed.set()
    assert "ok" in await held
    await host.close()
    host, stub = start()
    assert await stub.count() == 4
    await host.close()

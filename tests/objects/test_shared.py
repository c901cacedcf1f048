"""Shared storage (``objects.shared``): many objects in one file, group commit across objects,
moving out to an object's own database on its first SQL statement, listing by ``scan``."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from objects import DurableObject, DurableObjectNamespace, FakeClock, LocalTransport, ObjectHost
from objects.errors import DurableObjectError

from .aio import eventually

T0 = 1_700_000_000_000


class Box(DurableObject):
    shared_storage = True

    async def put(self, key, value):
        await self.ctx.storage.put(key, value)

    async def get(self, key):
        return await self.ctx.storage.get(key)

    async def items(self, prefix=None):
        return await self.ctx.storage.list(prefix=prefix)

    def sync_get(self, key):
        return self.ctx.storage.kv.get(key)

    def sync_list(self):
        return self.ctx.storage.kv.list()

    async def remove(self, key):
        return await self.ctx.storage.delete(key)

    async def clear(self):
        await self.ctx.storage.delete_all()

    async def increment(self):
        n = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", n)
        return n

    async def set_alarm(self, when):
        await self.ctx.storage.set_alarm(when)

    async def get_alarm(self):
        return await self.ctx.storage.get_alarm()

    async def alarm(self, info):
        self.env["fired"].append(self.ctx.id.hex)

    async def ledger(self, n, fail=False):
        async def body(txn):
            await txn.put("last", n)
            await self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS ledger (n INTEGER)")
            await self.ctx.storage.sql.exec("INSERT INTO ledger (n) VALUES (?)", n)
            if fail:
                raise ValueError("rolled back")

        await self.ctx.storage.transaction(body)

    async def put_then_sql(self, n):
        await self.ctx.storage.put("before", n)  # its commit is not submitted yet
        self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS t (x)")  # moves the object now
        await self.ctx.storage.put("after", n)

    async def ledger_rows(self):
        return [r["n"] for r in (await self.ctx.storage.sql.exec("SELECT n FROM ledger")).to_list()]


def make(tmp_path, env=None, **kw):
    env = {"fired": []} if env is None else env
    host = ObjectHost("app", {"Box": Box}, env, tmp_path, **kw)
    return host, DurableObjectNamespace("app", "Box", LocalTransport(host))


def shared_rows(tmp_path, table="kv"):
    conn = sqlite3.connect(tmp_path / "objects" / "app" / "_shared.sqlite")
    try:
        return list(conn.execute(f"SELECT * FROM {table}"))
    finally:
        conn.close()


def own_file(tmp_path, stub):
    return tmp_path / "objects" / "app" / "Box" / f"{stub.id.hex}.sqlite"


async def test_objects_share_one_file_and_commits_are_grouped_across_objects(tmp_path):
    host, ns = make(tmp_path)
    stubs = [ns.get_by_name(f"b{i}") for i in range(50)]
    await asyncio.gather(*(s.get("warm") for s in stubs))  # all open
    before = host._shared.transactions
    await asyncio.gather(*(s.put("v", i) for i, s in enumerate(stubs)))
    grouped = host._shared.transactions - before
    assert 1 <= grouped < 50  # fewer transactions than objects: commits were shared
    assert not (tmp_path / "objects" / "app" / "Box").exists()  # no file per object
    await host.close()

    host, ns = make(tmp_path)  # a restart reads every object back from the shared file
    assert [await ns.get_by_name(f"b{i}").get("v") for i in range(50)] == list(range(50))
    assert len(shared_rows(tmp_path)) == 50
    await host.close()


async def test_objects_do_not_see_each_other_and_keep_kv_semantics(tmp_path):
    host, ns = make(tmp_path, preload_rows=2)  # past 2 keys: read lazily from the file
    a, b = ns.get_by_name("a"), ns.get_by_name("b")
    for i in range(5):
        await a.put(f"k{i}", i)
    await b.put("k0", "b's")
    assert await a.remove("k1") is True
    assert await a.remove("k1") is False
    await host.close()

    host, ns = make(tmp_path, preload_rows=2)
    a, b = ns.get_by_name("a"), ns.get_by_name("b")
    assert await a.get("k0") == 0 and await b.get("k0") == "b's"
    assert await a.get("k1") is None
    assert await a.items(prefix="k") == {"k0": 0, "k2": 2, "k3": 3, "k4": 4}
    assert await b.items() == {"k0": "b's"}
    assert await a.sync_get("k3") == 3 and await b.sync_get("k3") is None  # blocking reads
    assert await b.sync_list() == [("k0", "b's")]
    await a.clear()
    assert await a.items() == {} and await b.items() == {"k0": "b's"}
    await host.close()


async def test_alarm_of_a_shared_object_fires_after_a_restart_when_missed(tmp_path):
    clock = FakeClock(T0)
    host, ns = make(tmp_path, clock=clock)
    stub = ns.get_by_name("a")
    await stub.set_alarm(T0 + 1000)
    assert shared_rows(tmp_path, "alarms") == [("Box", stub.id.hex, T0 + 1000)]
    await host.close()

    clock.advance(5000)  # its time passed while the host was down
    env = {"fired": []}
    host, ns = make(tmp_path, env, clock=clock)
    await host.start()
    await eventually(lambda: env["fired"] == [stub.id.hex])
    await eventually(lambda: shared_rows(tmp_path, "alarms") == [])
    await host.close()


async def test_idempotency_records_of_shared_objects_survive_a_restart(tmp_path):
    host, ns = make(tmp_path)
    once = ns.get_by_name("i").with_options(idempotency_key="req-1")
    assert await once.increment() == 1
    assert await once.increment() == 1
    await host.close()
    host, ns = make(tmp_path)
    assert await ns.get_by_name("i").with_options(idempotency_key="req-1").increment() == 1
    assert await ns.get_by_name("i").increment() == 2
    await host.close()


async def test_first_sql_moves_the_object_to_its_own_database_with_everything(tmp_path):
    clock = FakeClock(T0)
    host, ns = make(tmp_path, clock=clock)
    stub, other = ns.get_by_name("mover"), ns.get_by_name("stays")
    await stub.put("kept", {"x": 1})
    await stub.set_alarm(T0 + 60_000)
    assert await stub.with_options(idempotency_key="k").increment() == 1
    await other.put("kept", 2)
    await stub.ledger(1)
    assert own_file(tmp_path, stub).exists()
    assert {row[1] for row in shared_rows(tmp_path)} == {other.id.hex}  # its rows left
    assert shared_rows(tmp_path, "alarms") == []
    await stub.put("after", 3)  # later writes go to its own database
    await host.close()

    index = sqlite3.connect(tmp_path / "objects" / "app" / "_alarms.sqlite")
    assert list(index.execute("SELECT id, time FROM alarms")) == [(stub.id.hex, T0 + 60_000)]
    index.close()
    host, ns = make(tmp_path, clock=clock)
    stub = ns.get_by_name("mover")
    assert await stub.items() == {"kept": {"x": 1}, "after": 3, "last": 1, "n": 1}
    assert await stub.get_alarm() == T0 + 60_000
    assert await stub.with_options(idempotency_key="k").increment() == 1  # recorded reply
    assert await stub.ledger_rows() == [1]
    assert await ns.get_by_name("stays").get("kept") == 2
    await host.close()


async def test_a_failed_transaction_that_moved_the_object_rolls_back_sql_and_kv(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("t")
    await stub.put("last", 0)
    with pytest.raises(DurableObjectError, match="rolled back"):
        await stub.ledger(1, fail=True)
    assert await stub.get("last") == 0
    await stub.ledger(2)
    await host.close()
    host, ns = make(tmp_path)
    stub = ns.get_by_name("t")
    assert await stub.get("last") == 2
    assert await stub.ledger_rows() == [2]
    await host.close()


async def test_own_database_wins_over_rows_left_by_a_crash_in_the_middle_of_a_move(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("m")
    await stub.put("v", "old")
    await stub.ledger(1)  # moved
    await stub.put("v", "new")
    await host.close()
    # a crash after the rename and before the shared rows were deleted leaves them behind
    conn = sqlite3.connect(tmp_path / "objects" / "app" / "_shared.sqlite")
    conn.execute("INSERT INTO kv VALUES ('Box', ?, 'v', ?)", (stub.id.hex, b"\xa3old"))
    conn.commit()
    conn.close()
    host, ns = make(tmp_path)
    assert await ns.get_by_name("m").get("v") == "new"
    assert dict(await host.scan("Box", "v")) == {stub.id.hex: "new"}
    await host.close()


async def test_a_failing_batch_resets_only_its_object(tmp_path, monkeypatch):
    host, ns = make(tmp_path)
    good, bad = ns.get_by_name("good"), ns.get_by_name("bad")
    await asyncio.gather(good.get("x"), bad.get("x"))
    view = host._actors["Box", bad.id.hex].db
    original = view._commit

    def failing(conn, batch):
        original(conn, batch)  # its statements are undone by the savepoint rollback
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(view, "_commit", failing)
    results = await asyncio.gather(good.put("x", 1), bad.put("x", 1), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], DurableObjectError) and results[1].type == "durable_object_reset"
    monkeypatch.undo()
    assert await bad.get("x") is None  # a fresh object, built from what was committed
    await host.close()
    assert sorted(r[1:3] for r in shared_rows(tmp_path)) == [(good.id.hex, "x")]


async def test_scan_lists_a_key_of_every_object_whichever_host_owns_it(tmp_path):
    owner = {}

    def host_for(index):
        return ObjectHost("app", {"Box": Box}, {"fired": []}, tmp_path,
                          owns=lambda _c, id_hex: owner[id_hex] == index)

    ns_ids = DurableObjectNamespace("app", "Box", LocalTransport(None))
    names = [f"n{i}" for i in range(6)]
    for i, name in enumerate(names):
        owner[ns_ids.id_from_name(name).hex] = i % 2
    hosts = [host_for(0), host_for(1)]
    for i, name in enumerate(names):
        ns = DurableObjectNamespace("app", "Box", LocalTransport(hosts[i % 2]))
        await ns.get_by_name(name).put("meta", name)
    await DurableObjectNamespace("app", "Box", LocalTransport(hosts[0])).get_by_name(
        "n0").ledger(1)  # one of them has its own database
    expected = {ns_ids.id_from_name(name).hex: name for name in names}
    assert dict(await hosts[1].scan("Box", "meta")) == expected
    assert await hosts[1].scan("Box", "absent") == []
    for host in hosts:
        await host.close()


class Own(Box):
    shared_storage = False


async def test_a_corrupt_database_file_is_a_clear_error_naming_the_file(tmp_path):
    host = ObjectHost("app", {"Box": Box, "Own": Own}, {"fired": []}, tmp_path)
    root = tmp_path / "objects" / "app"
    root.mkdir(parents=True)
    (root / "_shared.sqlite").write_bytes(b"not sqlite" * 500)
    own = DurableObjectNamespace("app", "Own", LocalTransport(host)).get_by_name("x")
    (root / "Own").mkdir()
    (root / "Own" / f"{own.id.hex}.sqlite").write_bytes(b"not sqlite" * 500)
    boxed = DurableObjectNamespace("app", "Box", LocalTransport(host)).get_by_name("x")
    for stub, file in ((boxed, root / "_shared.sqlite"), (own, root / "Own" / f"{own.id.hex}.sqlite")):
        with pytest.raises(DurableObjectError) as caught:
            await stub.put("k", 1)
        assert caught.value.type == "durable_object_reset"
        assert "file is not a database" in caught.value.message and str(file) in caught.value.message
    await host.close()


async def test_synchronous_sql_moves_the_object_with_writes_not_yet_committed(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("p")
    await stub.put("first", 0)
    await stub.put_then_sql(1)
    assert own_file(tmp_path, stub).exists() and shared_rows(tmp_path) == []
    await host.close()
    host, ns = make(tmp_path)
    assert await ns.get_by_name("p").items() == {"first": 0, "before": 1, "after": 1}
    await host.close()

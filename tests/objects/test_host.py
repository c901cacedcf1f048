"""ObjectHost delivery: E-order, eviction, overload, idempotency, RPC/fetch errors, bad ops."""

from __future__ import annotations

import asyncio
import sqlite3

import msgpack
import pytest

from objects import (
    DurableObject,
    DurableObjectError,
    DurableObjectNamespace,
    FakeClock,
    LocalTransport,
    ObjectAddress,
    ObjectHost,
)

from .aio import eventually, hold_io, settle


class Counter(DurableObject):
    constructed = 0

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        type(self).constructed += 1
        self.seen: list[int] = []
        if env and env.get("gate"):
            ctx.block_concurrency_while(env["gate"].wait)

    async def increment(self, by=1):
        v = (await self.ctx.storage.get("n")) or 0
        await self.ctx.storage.put("n", v + by)
        return v + by

    async def value(self):
        return await self.ctx.storage.get("n")

    async def record(self, i):
        self.seen.append(i)  # arrival order
        await asyncio.sleep(0)
        return i

    async def seen_order(self):
        return self.seen

    async def fail_after_write(self):
        await self.ctx.storage.put("n", 999)
        raise ValueError("nope")

    def sync_method(self, x):
        return x * 2

    async def unserializable(self):
        await self.ctx.storage.put("n", -1)
        return object()

    async def sql_then_fail(self, fail):
        await self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS log (msg TEXT)")
        await self.ctx.storage.sql.exec("INSERT INTO log VALUES ('x')")
        await self.ctx.storage.put("n", 1)
        if fail:
            raise RuntimeError("after sql")
        return (await self.ctx.storage.sql.exec("SELECT count(*) AS c FROM log")).one()["c"]

    async def fetch(self, request):
        return {"status": 200, "echo": request, "n": await self.ctx.storage.get("n")}

    async def _private(self):
        return "secret"

    async def wait_for(self, event):
        await event.wait()
        return "released"

    async def keep_busy(self):
        self.ctx.wait_until(self.env["background"].wait())
        return "ok"


def make(tmp_path, env=None, **kw):
    host = ObjectHost("app", {"Counter": Counter}, env, tmp_path, **kw)
    ns = DurableObjectNamespace("app", "Counter", LocalTransport(host))
    return host, ns


async def test_calls_through_one_stub_arrive_in_call_order(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("e")
    calls = [stub.record(i) for i in range(200)]  # no await between the calls
    await asyncio.gather(*reversed(calls))  # awaiting in another order must not matter
    assert await stub.seen_order() == list(range(200))
    await host.close()


async def test_address_may_arrive_as_a_list_after_msgpack(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("l")
    op = {"kind": "rpc", "method": "increment", "args": [2], "kwargs": {}, "idempotency_key": None}
    assert await host.handle(list(stub.address), op) == {"ok": 2}
    await host.close()


async def test_fetch_uses_the_codec_and_reaches_the_object(tmp_path):
    class Codec:
        def decode_request(self, encoded):
            return {"decoded": encoded}

        def encode_response(self, response):
            return ("encoded", response)

    host, ns = make(tmp_path, codec=Codec())
    stub = ns.get_by_name("f")
    await stub.increment()
    assert await stub.fetch("http://do/x", method="POST") == (
        "encoded",
        {"status": 200, "echo": {"decoded": {"url": "http://do/x", "method": "POST"}}, "n": 1},
    )
    await host.close()


async def test_rpc_errors_are_clear(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("r")
    with pytest.raises(DurableObjectError) as info:
        await stub.no_such_method()
    assert info.value.type == "method_not_found"
    assert "no public method 'no_such_method'" in info.value.message
    for name in ("_private", "alarm", "fetch", "__init__", "ctx"):
        reply = await host.handle(stub.address, {"kind": "rpc", "method": name, "args": [], "kwargs": {}})
        assert reply["error"]["type"] == "method_not_found", name
    with pytest.raises(AttributeError, match="private"):
        stub._private()
    with pytest.raises(DurableObjectError) as info:
        await stub.fail_after_write()
    assert (info.value.type, info.value.message) == ("ValueError", "nope")
    assert await stub.value() == 999  # an exception is not a rollback (as in Workers)
    assert await stub.sync_method(21) == 42
    await host.close()


@pytest.mark.parametrize(
    ("address", "op", "fragment"),
    [
        (("other", "Counter", "0" * 64, None), {"kind": "rpc", "method": "value"}, "script 'other'"),
        (("app", "Nope", "0" * 64, None), {"kind": "rpc", "method": "value"}, "no durable object class 'Nope'"),
        (("app", "Counter", "xyz", None), {"kind": "rpc", "method": "value"}, "invalid durable object id"),
        (("app", "Counter"), {"kind": "rpc", "method": "value"}, "address must be"),
        (("app", "Counter", "0" * 64, None), {"kind": "teleport"}, "kind 'rpc' or 'fetch'"),
        (("app", "Counter", "0" * 64, None), {"kind": "rpc", "method": "value", "args": "x"}, "args must be a list"),
        (("app", "Counter", "0" * 64, None), {"kind": "rpc", "method": "value", "idempotency_key": 5}, "idempotency_key"),
    ],
)
async def test_bad_ops_get_error_replies(tmp_path, address, op, fragment):
    host, _ = make(tmp_path)
    reply = await host.handle(address, op)
    assert "error" in reply and fragment in reply["error"]["message"]
    await host.close()


async def test_idle_objects_are_evicted_and_reconstructed_with_storage_intact(tmp_path):
    Counter.constructed = 0
    clock = FakeClock()
    host, ns = make(tmp_path, clock=clock, idle_timeout_s=30)
    stub = ns.get_by_name("idle")
    await stub.increment()
    assert host.is_live("Counter", stub.id.hex)
    clock.advance(29_000)
    assert await host.evict_idle() == 0
    clock.advance(1_000)
    assert await host.evict_idle() == 1
    assert not host.is_live("Counter", stub.id.hex)
    assert await stub.increment() == 2
    assert Counter.constructed == 2
    await host.close()


async def test_the_reaper_evicts_on_the_injected_clock(tmp_path):
    events = []
    clock = FakeClock()
    host, ns = make(tmp_path, clock=clock, idle_timeout_s=10, audit=lambda e, f: events.append(e))
    stub = ns.get_by_name("idle")
    await stub.increment()
    await eventually(lambda: clock.sleepers > 0)
    clock.advance(10_000)
    await eventually(lambda: clock.sleepers > 0 and not host.is_live("Counter", stub.id.hex))
    clock.advance(5_000)  # let the reaper's next tick see the idle object
    await eventually(lambda: not host.is_live("Counter", stub.id.hex))
    assert "object_evicted" in events
    assert await stub.value() == 1
    await host.close()


async def test_wait_until_keeps_an_object_from_being_evicted(tmp_path):
    clock = FakeClock()
    background = asyncio.Event()
    host, ns = make(tmp_path, env={"background": background}, clock=clock, idle_timeout_s=1)
    stub = ns.get_by_name("busy")
    assert await stub.keep_busy() == "ok"
    clock.advance(5_000)
    assert await host.evict_idle() == 0
    background.set()
    await settle()
    clock.advance(5_000)
    assert await host.evict_idle() == 1
    await host.close()


async def test_overloaded_object_rejects_new_events_instead_of_queueing(tmp_path):
    gate = asyncio.Event()
    host, ns = make(tmp_path, env={"gate": gate}, max_queue=3)
    stub = ns.get_by_name("hot")
    queued = [stub.increment() for _ in range(3)]
    await settle()
    with pytest.raises(DurableObjectError) as info:
        await stub.increment()
    assert info.value.type == "durable_object_overloaded"
    assert "3 events already pending" in info.value.message
    gate.set()
    assert sorted(await asyncio.gather(*queued)) == [1, 2, 3]
    assert await stub.increment() == 4  # accepted again once the queue drained
    await host.close()


async def test_cancelled_call_is_withdrawn_before_delivery(tmp_path):
    gate = asyncio.Event()
    host, ns = make(tmp_path, env={"gate": gate})
    stub = ns.get_by_name("c")
    doomed = asyncio.ensure_future(host.handle(stub.address, {"kind": "rpc", "method": "increment"}))
    await settle()
    doomed.cancel()
    await settle()
    gate.set()
    assert await stub.increment() == 1
    await host.close()


def idempotency_rows(host, stub):
    conn = sqlite3.connect(host.db_path("Counter", stub.id.hex))
    try:
        return dict(conn.execute("SELECT key, reply FROM _ew_idempotency"))
    finally:
        conn.close()


async def test_idempotent_op_is_applied_once_and_replays_the_recorded_reply(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("idem")
    once = stub.with_options(idempotency_key="req-1")
    assert await once.increment(5) == 5
    assert await once.increment(5) == 5  # a retry: recorded reply, not applied again
    assert await stub.value() == 5
    rows = idempotency_rows(host, stub)
    assert msgpack.unpackb(rows["req-1"]) == {"ok": 5}
    # concurrent retries of a new key are applied once as well
    twice = stub.with_options(idempotency_key="req-2")
    assert await asyncio.gather(*(twice.increment(1) for _ in range(10))) == [6] * 10
    assert await stub.with_options(idempotency_key="req-3").increment(1) == 7
    await host.close()

    host2, ns2 = make(tmp_path)  # after a restart of the host
    stub2 = ns2.get_by_name("idem")
    assert await stub2.with_options(idempotency_key="req-1").increment(5) == 5
    assert await stub2.with_options(idempotency_key="req-2").increment(1) == 6
    assert await stub2.value() == 7
    await host2.close()


async def test_failed_idempotent_op_is_rolled_back_and_not_recorded(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("idem")
    k = stub.with_options(idempotency_key="k")
    with pytest.raises(DurableObjectError, match="nope"):
        await k.fail_after_write()
    assert await stub.value() is None  # the write of the failed op was rolled back
    with pytest.raises(DurableObjectError, match="msgpack-serializable"):
        await k.unserializable()
    assert await stub.value() is None
    assert idempotency_rows(host, stub) == {}
    assert await k.increment(3) == 3  # the key is still free
    await host.close()


async def test_idempotency_record_and_state_change_share_one_commit(tmp_path, monkeypatch):
    from objects.database import ObjectDatabase

    host, ns = make(tmp_path)
    stub = ns.get_by_name("idem")
    await stub.value()
    batches = []
    original = ObjectDatabase._commit

    def spy(self, batch):
        batches.append((sorted(batch.writes), [r[0] for r in batch.idempotency]))
        return original(self, batch)

    monkeypatch.setattr(ObjectDatabase, "_commit", spy)
    await stub.with_options(idempotency_key="k1").increment()
    assert batches == [(["n"], ["k1"])]
    await host.close()


async def test_constructor_failure_is_an_error_and_the_next_event_retries(tmp_path):
    class Fragile(DurableObject):
        attempts = 0

        def __init__(self, ctx, env):
            super().__init__(ctx, env)
            type(self).attempts += 1
            if type(self).attempts == 1:
                raise RuntimeError("cold start failed")

        async def ping(self):
            return "pong"

    host = ObjectHost("app", {"Fragile": Fragile}, None, tmp_path)
    stub = DurableObjectNamespace("app", "Fragile", LocalTransport(host)).get_by_name("x")
    with pytest.raises(DurableObjectError) as info:
        await stub.ping()
    assert info.value.type == "durable_object_reset" and "cold start failed" in info.value.message
    assert await stub.ping() == "pong"
    await host.close()


async def test_closed_host_replies_with_an_error_and_close_commits_pending_writes(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("z")
    await stub.increment()
    await host.close()
    reply = await host.handle(ObjectAddress(*stub.address), {"kind": "rpc", "method": "value"})
    assert reply["error"]["type"] == "durable_object_host_closed"
    host2, ns2 = make(tmp_path)
    assert await ns2.get_by_name("z").value() == 1
    await host2.close()


def test_host_rejects_bad_configuration(tmp_path):
    with pytest.raises(TypeError, match="must subclass DurableObject"):
        ObjectHost("app", {"X": object}, None, tmp_path)
    with pytest.raises(ValueError):
        ObjectHost("app", {"Counter": Counter}, None, tmp_path, max_queue=0)
    with pytest.raises(ValueError):
        ObjectHost("app", {"Counter": Counter}, None, tmp_path, durability="sometimes")
    with pytest.raises(ValueError):
        ObjectHost("../x", {"Counter": Counter}, None, tmp_path)


async def test_sql_of_an_idempotent_op_is_atomic_with_its_record(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("sql")
    with pytest.raises(DurableObjectError, match="after sql"):
        await stub.with_options(idempotency_key="a").sql_then_fail(True)
    assert await stub.value() is None
    assert await stub.with_options(idempotency_key="a").sql_then_fail(False) == 1
    assert await stub.with_options(idempotency_key="a").sql_then_fail(False) == 1
    assert await stub.with_options(idempotency_key="b").sql_then_fail(False) == 2
    await host.close()


async def test_cancelling_a_delivered_call_does_not_cancel_its_event(tmp_path, monkeypatch):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("c")
    await stub.value()
    entered, proceed = hold_io(monkeypatch, "_commit")
    call = asyncio.ensure_future(host.handle(stub.address, {"kind": "rpc", "method": "increment"}))
    await eventually(entered.is_set)
    call.cancel()  # the caller goes away while the reply waits on the output gate
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await stub.value() == 1  # the delivered event ran to completion and committed
    await host.close()


async def test_running_events_count_toward_the_overload_limit(tmp_path):
    host, ns = make(tmp_path, max_queue=4)
    stub = ns.get_by_name("slow")
    release = asyncio.Event()
    running = [stub.wait_for(release) for _ in range(4)]  # delivered, all waiting
    await settle()
    with pytest.raises(DurableObjectError) as info:
        await stub.value()
    assert info.value.type == "durable_object_overloaded"
    release.set()
    assert await asyncio.gather(*running) == ["released"] * 4
    assert await stub.value() is None
    await host.close()


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("full", 2)])
async def test_one_wal_database_per_object_with_the_configured_durability(tmp_path, durability, level):
    host, ns = make(tmp_path, durability=durability)
    stub = ns.get_by_name("layout")
    await stub.increment()
    path = tmp_path / "objects" / "app" / "Counter" / f"{stub.id.hex}.sqlite"
    assert host.db_path("Counter", stub.id.hex) == path and path.exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    actor = host._actors[("Counter", stub.id.hex)]
    assert actor.db.conn.execute("PRAGMA synchronous").fetchone() == (level,)
    await host.close()


class SharedCounter(Counter):
    shared_storage = True


@pytest.mark.parametrize("cls", [Counter, SharedCounter])
async def test_idempotent_replies_expire_after_the_ttl_and_are_pruned(tmp_path, cls):
    clock = FakeClock(1_700_000_000_000)

    def start():
        host = ObjectHost("app", {"Counter": cls}, None, tmp_path, clock=clock, idempotency_ttl_s=10)
        return host, DurableObjectNamespace("app", "Counter", LocalTransport(host)).get_by_name("t")

    host, stub = start()
    assert await stub.with_options(idempotency_key="old").increment(1) == 1
    clock.advance(5_000)
    assert await stub.with_options(idempotency_key="old").increment(1) == 1  # replayed
    await host.close()
    host, stub = start()  # the record is read back from SQLite with its age
    assert await stub.with_options(idempotency_key="old").increment(1) == 1
    clock.advance(6_000)  # 11 s after it was recorded: expired, applied again
    assert await stub.with_options(idempotency_key="old").increment(1) == 2
    clock.advance(11_000)
    assert await stub.with_options(idempotency_key="new").increment(1) == 3
    await host.close()
    if cls is Counter:
        keys = set(idempotency_rows(host, stub))
    else:
        conn = sqlite3.connect(tmp_path / "objects" / "app" / "_shared.sqlite")
        keys = {k for (k,) in conn.execute("SELECT key FROM idempotency")}
        conn.close()
    assert keys == {"new"}  # recording "new" pruned the expired record


async def test_replies_beyond_the_in_memory_bound_are_still_replayed_from_sqlite(tmp_path):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("many")
    await asyncio.gather(*(stub.with_options(idempotency_key=f"k{i}").increment(1) for i in range(1100)))
    assert await stub.with_options(idempotency_key="k0").increment(1) == 1  # evicted from memory
    assert await stub.value() == 1100
    await host.close()


class Named(DurableObject):
    shared_storage = False

    async def my_name(self):
        return self.ctx.id.name

    async def arm(self, when):
        await self.ctx.storage.set_alarm(when)

    async def alarm(self, info):
        self.env["fired"].append(self.ctx.id.name)


class SharedNamed(Named):
    shared_storage = True


@pytest.mark.parametrize("cls", [Named, SharedNamed])
async def test_ctx_id_name_is_the_name_callers_used_and_is_kept_for_alarms(tmp_path, cls):
    clock = FakeClock(1_700_000_000_000)
    env = {"fired": []}

    def start():
        host = ObjectHost("app", {"Named": cls}, env, tmp_path, clock=clock)
        return host, DurableObjectNamespace("app", "Named", LocalTransport(host))

    host, ns = start()
    assert await ns.get_by_name("room-42").my_name() == "room-42"
    assert await ns.get(ns.id_from_name("room-42")).my_name() == "room-42"
    assert await ns.get(ns.new_unique_id()).my_name() is None  # no name to know
    await ns.get_by_name("room-42").arm(clock.now() + 1000)
    await host.close()

    clock.advance(5000)
    host, ns = start()
    await host.start()  # the alarm constructs the object: no caller, the name is stored
    await eventually(lambda: env["fired"] == ["room-42"])
    by_string = ns.get(ns.id_from_string(str(ns.id_from_name("room-42"))))
    assert await by_string.my_name() == "room-42"
    await host.close()


async def test_a_name_that_does_not_derive_the_id_is_refused(tmp_path):
    host = ObjectHost("app", {"Named": Named}, {"fired": []}, tmp_path)
    ns = DurableObjectNamespace("app", "Named", LocalTransport(host))
    real = ns.get_by_name("alice")
    await real.my_name()
    for forged in ("mallory", "", 7):
        reply = await host.handle(real.address, {"kind": "rpc", "method": "my_name", "name": forged})
        assert reply["error"]["type"] == "bad_request", forged
    assert await real.my_name() == "alice"
    await host.close()

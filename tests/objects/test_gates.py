"""Gate behaviours: unit tests of InputGate/OutputGate and their effect on a live object."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from objects import (
    DurableObject,
    DurableObjectError,
    DurableObjectNamespace,
    LocalTransport,
    ObjectHost,
)
from objects.database import ObjectDatabase
from objects.gates import InputGate, OutputGate

from .aio import eventually, hold_io, settle


# -- InputGate ---------------------------------------------------------------------------------
async def test_input_gate_blocks_waiters_while_held_and_reopens_in_order():
    gate = InputGate()
    order: list[str] = []
    release = asyncio.Event()

    async def holder():
        async with gate.hold():
            order.append("held")
            await release.wait()
        order.append("released")

    async def waiter():
        await gate.wait_open()
        order.append("delivered")

    h = asyncio.create_task(holder())
    await settle()
    w = asyncio.create_task(waiter())
    await settle()
    assert order == ["held"] and not gate.is_open
    release.set()
    await asyncio.gather(h, w)
    assert order == ["held", "released", "delivered"]
    assert gate.is_open


async def test_input_gate_is_reentrant_inside_the_holding_context():
    gate = InputGate()
    async with gate.hold():
        assert gate.owns()
        await gate.wait_open()  # would deadlock if not re-entrant
        async with gate.hold():
            assert gate.owns()
    assert gate.is_open and not gate.owns()


async def test_input_gate_grants_lockers_fifo():
    gate = InputGate()
    order: list[int] = []

    async def locker(i: int):
        async with gate.hold():
            order.append(i)
            await asyncio.sleep(0)

    await asyncio.gather(*(locker(i) for i in range(10)))
    assert order == list(range(10))


async def test_input_gate_cancelled_waiter_does_not_take_the_gate():
    gate = InputGate()
    release = asyncio.Event()

    async def holder():
        async with gate.hold():
            await release.wait()

    async def locker():
        async with gate.hold():
            pass

    h = asyncio.create_task(holder())
    await settle()
    lock = asyncio.create_task(locker())
    await settle()
    lock.cancel()
    release.set()
    await h
    with pytest.raises(asyncio.CancelledError):
        await lock
    assert gate.is_open


async def test_critical_section_closes_the_gate_synchronously():
    gate = InputGate()
    release = asyncio.Event()
    task = gate.run_critical_section(release.wait)
    assert not gate.is_open  # closed before any await
    release.set()
    await task
    assert gate.is_open


async def test_critical_section_failure_is_reported_before_the_gate_reopens():
    gate = InputGate()
    seen: list[bool] = []

    async def boom():
        raise RuntimeError("x")

    task = gate.run_critical_section(boom, lambda exc: seen.append(gate.is_open))
    with pytest.raises(RuntimeError):
        await task
    assert seen == [False]


async def test_broken_input_gate_fails_waiters():
    gate = InputGate()
    release = asyncio.Event()
    task = gate.run_critical_section(release.wait)
    w = asyncio.create_task(gate.wait_open())
    await settle()
    gate.break_(RuntimeError("broken"))
    with pytest.raises(RuntimeError, match="broken"):
        await w
    release.set()
    await task


# -- OutputGate --------------------------------------------------------------------------------
async def test_output_gate_holds_until_the_write_epoch_is_durable():
    gate = OutputGate()
    await gate.wait()  # nothing pending: released at once
    gate.note_write(1)
    w = asyncio.create_task(gate.wait())
    await settle()
    assert not w.done()
    gate.note_write(2)  # a later write does not delay a reply produced before it
    gate.mark_durable(1)
    await w
    assert gate.pending


async def test_output_gate_break_fails_pending_and_later_waits():
    gate = OutputGate()
    gate.note_write(1)
    w = asyncio.create_task(gate.wait())
    await settle()
    gate.break_(RuntimeError("commit failed"))
    with pytest.raises(RuntimeError):
        await w
    with pytest.raises(RuntimeError):
        await gate.wait()


# -- on a live object --------------------------------------------------------------------------
class Counter(DurableObject):
    constructed = 0

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        type(self).constructed += 1

    async def increment(self):
        v = (await self.ctx.storage.get("n")) or 0
        await self.ctx.storage.put("n", v + 1)
        return v + 1

    async def increment_with_reads_between(self, i):
        v = (await self.ctx.storage.get("n")) or 0
        await self.ctx.storage.get(f"other-{i}")  # a real I/O wait (cache miss) in between
        await self.ctx.storage.put("n", v + 1)
        return v + 1

    async def value(self):
        return await self.ctx.storage.get("n")


def make(tmp_path, cls=Counter, **kw):
    host = ObjectHost("app", {cls.__name__: cls}, None, tmp_path, **kw)
    ns = DurableObjectNamespace("app", cls.__name__, LocalTransport(host))
    return host, ns


class Seeder(DurableObject):
    async def seed(self):
        await self.ctx.storage.put("seed", True)


async def make_cold(tmp_path, cls=Counter, name="hot"):
    """A host whose object has data on disk but nothing cached: every first read misses."""
    seeder = ObjectHost("app", {cls.__name__: Seeder}, None, tmp_path)
    await DurableObjectNamespace("app", cls.__name__, LocalTransport(seeder)).get_by_name(name).seed()
    await seeder.close()
    return make(tmp_path, cls=cls, preload_rows=0)


@pytest.mark.parametrize("cold", [False, True], ids=["preloaded", "cold-cache"])
async def test_no_lost_update_with_1000_concurrent_increments(tmp_path, cold):
    host, ns = await make_cold(tmp_path) if cold else make(tmp_path)
    stub = ns.get_by_name("hot")
    results = await asyncio.gather(*(stub.increment() for _ in range(1000)))
    assert sorted(results) == list(range(1, 1001))
    assert await stub.value() == 1000
    await host.close()


async def test_storage_io_between_get_and_put_does_not_lose_updates(tmp_path):
    host, ns = await make_cold(tmp_path)
    stub = ns.get_by_name("hot")
    await asyncio.gather(*(stub.increment_with_reads_between(i) for i in range(300)))
    assert await stub.value() == 300
    await host.close()


def read_disk(host: ObjectHost, ns, name: str, key: str):
    import msgpack

    path = host.db_path(ns.class_name, ns.id_from_name(name).hex)
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM _ew_kv WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else msgpack.unpackb(row[0])


async def test_output_gate_releases_the_reply_only_after_the_commit(tmp_path, monkeypatch):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("a")
    await stub.increment()
    entered, proceed = hold_io(monkeypatch, "_commit")
    call = stub.increment()
    await eventually(entered.is_set)
    await settle()
    assert not call.done()  # the method returned, but its write is not durable yet
    assert read_disk(host, ns, "a", "n") == 1
    proceed.set()
    assert await call == 2
    assert read_disk(host, ns, "a", "n") == 2  # released => on disk
    await host.close()


async def test_output_gate_drops_the_response_and_resets_when_the_commit_fails(tmp_path, monkeypatch):
    Counter.constructed = 0
    host, ns = make(tmp_path)
    stub = ns.get_by_name("a")
    assert await stub.increment() == 1
    original = ObjectDatabase._apply
    fail = {"n": 1}

    def failing_apply(self, conn, batch):
        if fail["n"]:
            fail["n"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, conn, batch)

    monkeypatch.setattr(ObjectDatabase, "_apply", failing_apply)
    with pytest.raises(DurableObjectError) as info:
        await stub.increment()
    assert info.value.type == "durable_object_reset"
    assert "disk I/O error" in info.value.message
    # the instance and its cache were dropped: the next event reconstructs from disk
    assert await stub.value() == 1
    assert Counter.constructed == 2
    assert await stub.increment() == 2
    await host.close()


async def test_commit_failure_fails_every_reply_waiting_on_it(tmp_path, monkeypatch):
    host, ns = make(tmp_path)
    stub = ns.get_by_name("a")
    await stub.value()

    def failing_apply(self, conn, batch):
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(ObjectDatabase, "_apply", failing_apply)
    results = await asyncio.gather(*(stub.increment() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, DurableObjectError) for r in results)
    assert {r.type for r in results} == {"durable_object_reset"}
    await host.close()


class Loader(DurableObject):
    constructed = 0

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        type(self).constructed += 1
        self.loaded = None
        ctx.block_concurrency_while(self._load)  # not awaited: constructors are sync

    async def _load(self):
        await self.env["release"].wait()
        if self.env.get("fail_once"):
            self.env["fail_once"] = False
            raise RuntimeError("load failed")
        self.loaded = "ready"

    async def read(self):
        return self.loaded

    async def exclusive(self, tag):
        log = self.env["log"]

        async def section():
            log.append(f"start {tag}")
            await asyncio.sleep(0.01)
            log.append(f"end {tag}")

        await self.ctx.block_concurrency_while(section)

    async def note(self, tag):
        self.env["log"].append(f"event {tag}")


async def test_block_concurrency_while_in_constructor_delays_every_event(tmp_path):
    env = {"release": asyncio.Event(), "log": []}
    host = ObjectHost("app", {"Loader": Loader}, env, tmp_path)
    ns = DurableObjectNamespace("app", "Loader", LocalTransport(host))
    stub = ns.get_by_name("x")
    calls = [stub.read() for _ in range(5)]
    await settle(50)
    assert not any(c.done() for c in calls)
    env["release"].set()
    assert await asyncio.gather(*calls) == ["ready"] * 5
    await host.close()


async def test_block_concurrency_while_blocks_other_events_until_done(tmp_path):
    env = {"release": asyncio.Event(), "log": []}
    env["release"].set()
    host = ObjectHost("app", {"Loader": Loader}, env, tmp_path)
    ns = DurableObjectNamespace("app", "Loader", LocalTransport(host))
    stub = ns.get_by_name("x")
    await stub.read()
    await asyncio.gather(stub.exclusive("a"), stub.note(1), stub.note(2))
    assert env["log"] == ["start a", "end a", "event 1", "event 2"]
    await host.close()


async def test_block_concurrency_while_failure_resets_the_object(tmp_path):
    Loader.constructed = 0
    env = {"release": asyncio.Event(), "log": [], "fail_once": True}
    env["release"].set()
    host = ObjectHost("app", {"Loader": Loader}, env, tmp_path)
    ns = DurableObjectNamespace("app", "Loader", LocalTransport(host))
    stub = ns.get_by_name("x")
    with pytest.raises(DurableObjectError) as info:
        await stub.read()
    assert info.value.type == "durable_object_reset"
    assert "load failed" in info.value.message
    assert await stub.read() == "ready"
    assert Loader.constructed == 2
    await host.close()


class Interleaver(DurableObject):
    async def hold_section(self, release):
        async def body(txn):
            await release.wait()
            await txn.put("section", "done")

        await self.ctx.storage.transaction(body)

    async def write_now(self):
        await self.ctx.storage.put("outsider", 1)
        return await self.ctx.storage.get("section")

    async def slow_read_then(self, release):
        await release.wait()  # resumed while another event's read holds the gate
        await self.ctx.storage.put("a", 1)
        await self.ctx.storage.put("b", 2)  # no suspension between: one batch
        return "ok"

    async def read_missing(self, key):
        return await self.ctx.storage.get(key)


async def test_storage_calls_of_other_events_wait_for_a_critical_section(tmp_path):
    host, ns = make(tmp_path, cls=Interleaver)
    stub = ns.get_by_name("i")
    release = asyncio.Event()
    holder = stub.hold_section(release)
    await settle()
    # delivered before the section began? no: it is queued behind the closed gate
    outsider = stub.write_now()
    await settle()
    assert not outsider.done()
    release.set()
    await holder
    assert await outsider == "done"  # ran after the transaction committed its write
    await host.close()


async def test_writes_do_not_suspend_while_another_event_reads_from_disk(tmp_path, monkeypatch):
    host, ns = await make_cold(tmp_path, cls=Interleaver, name="i")
    stub = ns.get_by_name("i")
    await stub.read_missing("warm")
    release = asyncio.Event()
    running = stub.slow_read_then(release)  # delivered, now waiting on something else
    await settle()
    entered, proceed = hold_io(monkeypatch, "_read")
    batches = []
    original_commit = ObjectDatabase.commit_soon

    def spy(self, batch):  # on the loop: the batch is formed before the read finishes
        batches.append(sorted(batch.writes))
        return original_commit(self, batch)

    monkeypatch.setattr(ObjectDatabase, "commit_soon", spy)
    reader = stub.read_missing("cold")
    await eventually(entered.is_set)
    release.set()  # the running event writes while the read holds the gate
    await eventually(lambda: batches == [["a", "b"]])
    proceed.set()
    assert await running == "ok" and await reader is None
    await host.close()


class Caller(DurableObject):
    async def write_then_call(self):
        await self.ctx.storage.put("sent", True)
        return await self.env["ns"].get_by_name("callee").receive()

    async def receive(self):
        self.env["received"].append(True)
        return "received"


async def test_output_gate_holds_outgoing_calls_until_the_write_is_durable(tmp_path, monkeypatch):
    env: dict = {"received": []}
    host = ObjectHost("app", {"Caller": Caller}, env, tmp_path)
    env["ns"] = ns = DurableObjectNamespace("app", "Caller", LocalTransport(host))
    caller = ns.get_by_name("caller")
    await ns.get_by_name("callee").receive()
    env["received"].clear()
    entered, proceed = hold_io(monkeypatch, "_commit", lambda batch: "sent" in batch.writes)
    call = caller.write_then_call()
    await eventually(entered.is_set)
    await settle()
    assert env["received"] == []  # the outgoing call waits for the caller's commit
    proceed.set()
    assert await call == "received"
    assert env["received"] == [True]
    await host.close()


class Racer(DurableObject):
    async def read_then_increment(self):
        v = (await self.ctx.storage.get("k")) or 0  # a cache miss: real I/O
        await self.ctx.storage.put("k", v + 1)
        return v + 1

    async def later_transaction(self, release):
        await release.wait()

        async def body(txn):
            await txn.put("k", ((await txn.get("k")) or 0) + 1)

        await self.ctx.storage.transaction(body)

    async def value(self):
        return await self.ctx.storage.get("k")


async def test_a_queued_critical_section_cannot_slip_between_get_and_put(tmp_path, monkeypatch):
    host, ns = await make_cold(tmp_path, cls=Racer, name="r")
    stub = ns.get_by_name("r")
    release = asyncio.Event()
    txn = stub.later_transaction(release)  # delivered first, waits for `release`
    await settle()
    entered, proceed = hold_io(monkeypatch, "_read")
    inc = stub.read_then_increment()
    await eventually(entered.is_set)
    release.set()  # the transaction queues for the gate while the read holds it
    await settle()
    proceed.set()
    assert await inc == 1
    await txn
    assert await stub.value() == 2
    await host.close()

"""Alarms: set/get/delete, firing on the injected clock, missed-while-down, retries, ownership."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import pytest

from objects import DurableObject, DurableObjectNamespace, FakeClock, LocalTransport, ObjectHost

from .aio import eventually
from .aio import settle as _settle

T0 = 1_700_000_000_000


async def settle(n: int = 30) -> None:
    await _settle(n)


class Alarmed(DurableObject):
    async def set(self, when):
        await self.ctx.storage.set_alarm(when)

    async def get(self):
        return await self.ctx.storage.get_alarm()

    async def delete(self):
        await self.ctx.storage.delete_alarm()

    async def alarm(self, info):
        fired = self.env["fired"]
        fired.append((self.ctx.id.hex, info.retry_count, info.is_retry))
        if len(fired) <= self.env.get("failures", 0):
            raise RuntimeError(f"alarm failure {len(fired)}")
        if self.env.get("rearm"):
            self.env["rearm"] -= 1
            await self.ctx.storage.set_alarm(self.env["clock"].now() + 1000)


def make(tmp_path, clock, env, **kw):
    env.setdefault("fired", [])
    env["clock"] = clock
    host = ObjectHost("app", {"Alarmed": Alarmed}, env, tmp_path, clock=clock, **kw)
    ns = DurableObjectNamespace("app", "Alarmed", LocalTransport(host))
    return host, ns


def index_rows(tmp_path):
    conn = sqlite3.connect(tmp_path / "objects" / "app" / "_alarms.sqlite")
    try:
        return list(conn.execute("SELECT class_name, id, time FROM alarms"))
    finally:
        conn.close()


async def test_set_get_delete_alarm_is_persisted_in_object_and_index(tmp_path):
    clock = FakeClock(T0)
    host, ns = make(tmp_path, clock, {})
    stub = ns.get_by_name("a")
    assert await stub.get() is None
    await stub.set(T0 + 5000)
    assert await stub.get() == T0 + 5000
    assert index_rows(tmp_path) == [("Alarmed", stub.id.hex, T0 + 5000)]
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    await stub.set(when)
    assert await stub.get() == int(when.timestamp() * 1000)
    await stub.delete()
    assert await stub.get() is None
    assert index_rows(tmp_path) == []
    await host.close()


async def test_alarm_fires_at_its_time_and_is_then_cleared(tmp_path):
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    await host.start()
    stub = ns.get_by_name("a")
    await stub.set(T0 + 1000)
    clock.advance(999)
    await settle()
    assert env["fired"] == []
    clock.advance(1)
    await eventually(lambda: len(env["fired"]) == 1)
    assert env["fired"] == [(stub.id.hex, 0, False)]
    await eventually(lambda: index_rows(tmp_path) == [])
    assert await stub.get() is None
    await host.close()


async def test_alarm_handler_can_set_the_next_alarm(tmp_path):
    clock = FakeClock(T0)
    env: dict = {"rearm": 1}
    host, ns = make(tmp_path, clock, env)
    stub = ns.get_by_name("a")
    await stub.set(T0 + 10)
    clock.advance(10)
    await eventually(lambda: len(env["fired"]) == 1)
    await eventually(lambda: index_rows(tmp_path) == [("Alarmed", stub.id.hex, T0 + 1010)])
    assert await stub.get() == T0 + 1010
    clock.advance(1000)
    await eventually(lambda: len(env["fired"]) == 2)
    await eventually(lambda: index_rows(tmp_path) == [])
    await host.close()


async def test_deleted_alarm_does_not_fire(tmp_path):
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    stub = ns.get_by_name("a")
    await stub.set(T0 + 100)
    await stub.delete()
    clock.advance(1000)
    await settle()
    assert env["fired"] == []
    await host.close()


async def test_alarm_missed_while_the_runtime_was_down_fires_at_start(tmp_path):
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    stubs = [ns.get_by_name(n) for n in ("a", "b", "c")]
    for i, s in enumerate(stubs):
        await s.set(T0 + 1000 * (i + 1))
    await host.close()
    clock.advance(2500)  # "a" and "b" are due while no host runs
    host2, _ = make(tmp_path, clock, env)
    await host2.start()
    await eventually(lambda: len(env["fired"]) == 2)
    assert not host2.is_live("Alarmed", stubs[2].id.hex)  # started from the index alone
    assert sorted(f[0] for f in env["fired"]) == sorted(s.id.hex for s in stubs[:2])
    clock.advance(500)
    await eventually(lambda: len(env["fired"]) == 3)
    await host2.close()


async def test_host_only_fires_alarms_of_objects_it_owns(tmp_path):
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    mine, theirs = ns.get_by_name("mine"), ns.get_by_name("theirs")
    await mine.set(T0 + 10)
    await theirs.set(T0 + 10)
    await host.close()
    clock.advance(100)
    host2, _ = make(tmp_path, clock, env, owns=lambda cls, id_hex: id_hex == mine.id.hex)
    await host2.start()
    await eventually(lambda: len(env["fired"]) == 1)
    await settle()
    assert env["fired"][0][0] == mine.id.hex
    assert ("Alarmed", theirs.id.hex, T0 + 10) in index_rows(tmp_path)
    await host2.close()


async def test_failing_alarm_is_retried_with_exponential_backoff_then_succeeds(tmp_path):
    clock = FakeClock(T0)
    audit: list[tuple[str, dict]] = []
    env: dict = {"failures": 2}
    host, ns = make(tmp_path, clock, env, audit=lambda e, f: audit.append((e, f)))
    stub = ns.get_by_name("a")
    await stub.set(T0)
    await eventually(lambda: len(env["fired"]) == 1)
    await eventually(lambda: clock.sleepers >= 1 and len(audit) >= 1)
    clock.advance(1999)
    await settle()
    assert len(env["fired"]) == 1
    clock.advance(1)  # first retry after 2 s
    await eventually(lambda: len(env["fired"]) == 2)
    await eventually(lambda: sum(e == "alarm_failed" for e, _ in audit) == 2)
    clock.advance(3999)
    await settle()
    assert len(env["fired"]) == 2
    clock.advance(1)  # second retry after 4 s more
    await eventually(lambda: len(env["fired"]) == 3)
    assert [(r, is_retry) for _, r, is_retry in env["fired"]] == [(0, False), (1, True), (2, True)]
    await eventually(lambda: index_rows(tmp_path) == [])
    assert await stub.get() is None
    assert [e for e, _ in audit if e.startswith("alarm")] == ["alarm_failed", "alarm_failed"]
    await host.close()


async def test_alarm_gives_up_after_six_retries_and_reports_it(tmp_path):
    clock = FakeClock(T0)
    audit: list[tuple[str, dict]] = []
    env: dict = {"failures": 100}
    host, ns = make(tmp_path, clock, env, audit=lambda e, f: audit.append((e, f)))
    stub = ns.get_by_name("a")
    await stub.set(T0)
    for attempt in range(1, 8):
        await eventually(lambda a=attempt: len(env["fired"]) == a)
        if attempt < 7:
            await eventually(lambda a=attempt: sum(e == "alarm_failed" for e, _ in audit) == a)
            clock.advance(2000 * 2 ** (attempt - 1))
    await eventually(lambda: any(e == "alarm_dropped" for e, _ in audit))
    dropped = [f for e, f in audit if e == "alarm_dropped"][0]
    assert dropped["retries"] == 6 and dropped["id"] == stub.id.hex
    assert "alarm failure 7" in dropped["error"]["message"]
    assert [r for _, r, _ in env["fired"]] == [0, 1, 2, 3, 4, 5, 6]
    await eventually(lambda: index_rows(tmp_path) == [])
    assert await stub.get() is None
    clock.advance(10**7)
    await settle()
    assert len(env["fired"]) == 7
    await host.close()


async def test_stale_index_entry_is_ignored(tmp_path):
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    stub = ns.get_by_name("a")
    await stub.set(T0 + 10)
    await host.close()
    conn = sqlite3.connect(host.db_path("Alarmed", stub.id.hex))
    conn.execute("DELETE FROM _ew_alarm")  # the object no longer has the alarm
    conn.commit()
    conn.close()
    clock.advance(100)
    host2, _ = make(tmp_path, clock, env)
    await host2.start()
    await eventually(lambda: host2.is_live("Alarmed", stub.id.hex))
    await settle()
    assert env["fired"] == []
    await host2.close()


@pytest.mark.parametrize("when", [-1, "tomorrow", True, 2**64, float("inf")])
async def test_invalid_alarm_times_are_rejected(tmp_path, when):
    from objects import DurableObjectError

    clock = FakeClock(T0)
    host, ns = make(tmp_path, clock, {})
    with pytest.raises(DurableObjectError):
        await ns.get_by_name("a").set(when)
    await host.close()


class Rescheduler(DurableObject):
    """Its alarm handler leaves a transaction running that sets the next alarm."""

    async def set(self, when):
        await self.ctx.storage.set_alarm(when)

    async def get(self):
        return await self.ctx.storage.get_alarm()

    async def alarm(self, info):
        self.env["fired"].append(info.retry_count)
        release = asyncio.Event()
        self.env["release"] = release

        async def later(txn):
            await release.wait()
            await txn.set_alarm(self.env["clock"].now() + 5000)

        self.ctx.wait_until(self.ctx.storage.transaction(later))
        await asyncio.sleep(0)  # the transaction now holds the gate


async def test_alarm_set_by_work_the_handler_started_is_not_cleared(tmp_path):
    clock = FakeClock(T0)
    env: dict = {"fired": [], "clock": clock}
    host = ObjectHost("app", {"Rescheduler": Rescheduler}, env, tmp_path, clock=clock)
    stub = DurableObjectNamespace("app", "Rescheduler", LocalTransport(host)).get_by_name("r")
    await stub.set(T0 + 10)
    clock.advance(10)
    await eventually(lambda: "release" in env)
    await settle()
    env["release"].set()
    await eventually(lambda: index_rows(tmp_path) == [("Rescheduler", stub.id.hex, T0 + 5010)])
    assert await stub.get() == T0 + 5010
    clock.advance(5000)
    await eventually(lambda: len(env["fired"]) == 2)
    env["release"].set()  # let the second handler's transaction finish too
    await host.close()


async def test_an_inactive_host_fires_no_alarm_until_activated(tmp_path):
    # A version under its deploy probe: overdue alarms and alarms set meanwhile stay stored, unfired.
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    due, later = ns.get_by_name("due"), ns.get_by_name("later")
    await due.set(T0 + 10)
    await host.close()
    clock.advance(100)
    host2, ns2 = make(tmp_path, clock, env, active=False)
    await host2.start()
    await ns2.get_by_name("later").set(T0 + 200)  # set while inactive (through a call)
    clock.advance(1000)
    await settle()
    assert env["fired"] == []
    assert {r[1] for r in index_rows(tmp_path)} == {due.id.hex, later.id.hex}
    await host2.set_active(True)
    await eventually(lambda: len(env["fired"]) == 2)
    assert sorted(f[0] for f in env["fired"]) == sorted([due.id.hex, later.id.hex])
    await host2.close()


async def test_deactivating_a_host_cancels_its_alarms_unfired_and_keeps_them_stored(tmp_path):
    # The old version after a promote: the new one's host fires what this one no longer does.
    clock = FakeClock(T0)
    env: dict = {}
    host, ns = make(tmp_path, clock, env)
    await host.start()
    stub = ns.get_by_name("a")
    await stub.set(T0 + 1000)
    await host.set_active(False)
    clock.advance(5000)
    await settle()
    assert env["fired"] == []
    assert index_rows(tmp_path) == [("Alarmed", stub.id.hex, T0 + 1000)]
    await host.close()
    host2, _ = make(tmp_path, clock, env)
    await host2.start()
    await eventually(lambda: len(env["fired"]) == 1)
    assert env["fired"][0][0] == stub.id.hex
    await host2.close()

"""Compensation, divergence, pause/resume/terminate/restart, kill switch, bounds, audit, SQL."""

from __future__ import annotations

import asyncio

import pytest

from objects.workflows import WorkflowEntrypoint, WorkflowError, WorkflowLimits
from objects.workflows.step import run_attempts

from ..aio import settle


class Saga(WorkflowEntrypoint):
    async def run(self, event, step):
        calls = self.env["calls"]
        for name in ("book-flight", "book-hotel", "book-car"):
            async def do(name=name):
                calls.append(f"do {name}")
                return f"{name}-ref"

            async def undo(result, name=name):
                calls.append(f"undo {name} {result}")
                failures = self.env.setdefault("undo_failures", {})
                if failures.get(name, 0) > 0:
                    failures[name] -= 1
                    raise RuntimeError(f"undo {name} failed")

            await step.do(name, do, compensate=undo, retries={"limit": 2, "delay": 30,
                                                               "backoff": "constant"})

        async def no_undo():
            calls.append("do notify")

        await step.do("notify", no_undo)

        async def pay():
            calls.append("do pay")
            raise RuntimeError("card declined")

        await step.do("pay", pay, retries={"limit": 0})


async def test_compensations_run_in_reverse_order(harness):
    binding = await harness.start(Saga)
    instance = await binding.create(id="saga")
    status = await harness.wait(instance, "errored")
    calls = harness.env["calls"]
    assert calls[-3:] == ["undo book-car book-car-ref", "undo book-hotel book-hotel-ref",
                          "undo book-flight book-flight-ref"]
    assert [c["step"] for c in status["compensations"]] == ["book-car#1", "book-hotel#1",
                                                            "book-flight#1"]
    assert all(c["status"] == "complete" for c in status["compensations"])
    assert "card declined" in status["error"]["message"]
    kinds = [kind for kind, _ in harness.audits]
    assert kinds.count("workflow.compensation.outcome") == 3


async def test_compensation_is_retried_durably_across_a_restart(harness):
    harness.env["undo_failures"] = {"book-hotel": 1}
    binding = await harness.start(Saga)
    instance = await binding.create(id="saga")
    status = await harness.wait(instance, "waiting")
    assert status["waiting"]["kind"] == "compensation retry"
    assert status["waiting"]["step"] == "book-hotel#1"
    await harness.stop()
    harness.advance(30)
    binding = await harness.start(Saga)
    status = await harness.wait(await binding.get("saga"), "errored")
    undo_calls = [c for c in harness.env["calls"] if c.startswith("undo")]
    assert undo_calls == ["undo book-car book-car-ref", "undo book-hotel book-hotel-ref",
                          "undo book-hotel book-hotel-ref", "undo book-flight book-flight-ref"]
    assert [(c["step"], c["attempts"]) for c in status["compensations"]] == [
        ("book-car#1", 1), ("book-hotel#1", 2), ("book-flight#1", 1)]
    do_calls = [c for c in harness.env["calls"] if c.startswith("do")]
    assert do_calls.count("do book-flight") == 1  # replay did not run completed steps again


async def test_a_compensation_that_keeps_failing_is_recorded_and_the_rest_still_run(harness):
    harness.env["undo_failures"] = {"book-car": 10}
    binding = await harness.start(Saga)
    instance = await binding.create(id="saga")
    for attempts in (1, 2):
        await harness.wait_for(instance, lambda s, n=attempts: s["status"] == "waiting"
                               and s["compensations"][0]["attempts"] == n)
        harness.advance(30)
    status = await harness.wait(instance, "errored")
    assert [(c["step"], c["status"]) for c in status["compensations"]] == [
        ("book-car#1", "failed"), ("book-hotel#1", "complete"), ("book-flight#1", "complete")]


class Branchy(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.do("a", _value(1))
        await step.do("c" if self.env.get("diverge") else "b", _value(2))
        await step.sleep("nap", 10)
        return "done"


def _value(v):
    async def fn():
        return v

    return fn


async def test_divergence_from_the_recorded_history_fails_with_both_steps(harness):
    binding = await harness.start(Branchy)
    instance = await binding.create(id="d")
    await harness.wait(instance, "waiting")
    harness.env["diverge"] = True
    harness.advance(10)
    status = await harness.wait(instance, "errored")
    assert status["error"]["type"] == "StepDivergenceError"
    assert "expected step 'b#1', got 'c#1'" in status["error"]["message"]
    assert ("consistency.divergence", {"workflow": "Branchy", "instance": "d", "position": 1, "recorded": "b#1",
                                       "called": "c#1"}) in harness.audits


async def test_a_step_whose_completion_is_recorded_run_again_is_a_consistency_defect(harness):
    binding = await harness.start(Branchy)
    instance = await binding.create(id="r")
    await harness.wait(instance, "waiting")
    engine = next(e for e in harness.definition._live if (e.meta or {}).get("id") == "r")
    rec = engine.steps["step:a#1"]
    assert rec["status"] == "complete"
    await run_attempts(engine, "step:a#1", rec, _value(1), engine.step_defaults)
    assert ("consistency.step_rerun", {"workflow": "Branchy", "instance": "r", "step": "a", "key": "step:a#1",
                                       "attempt": 2}) in harness.audits


class TwoSleeps(WorkflowEntrypoint):
    async def run(self, event, step):
        async def one():
            self.env["calls"].append("one")
            return 1

        await step.do("one", one)
        await step.sleep("nap", 100)

        async def two():
            self.env["calls"].append("two")
            return 2

        return await step.do("two", two)


async def test_pause_while_waiting_then_resume(harness):
    binding = await harness.start(TwoSleeps)
    instance = await binding.create(id="p")
    await harness.wait(instance, "waiting")
    await instance.pause()
    status = await instance.status()
    assert status["status"] == "paused" and status["alarm"] is None
    harness.advance(200)
    await asyncio.sleep(0.03)
    assert (await instance.status())["status"] == "paused"
    await instance.resume()
    status = await harness.wait(instance, "complete")
    assert harness.env["calls"] == ["one", "two"]


async def test_pause_at_the_next_step_boundary(harness):
    release = asyncio.Event()

    class Blocking(WorkflowEntrypoint):
        async def run(self, event, step):
            async def slow():
                self.env["calls"].append("slow")
                await release.wait()
                return "slow"

            await step.do("slow", slow)

            async def after():
                self.env["calls"].append("after")

            await step.do("after", after)

    binding = await harness.start(Blocking)
    instance = await binding.create(id="p")
    await harness.wait_for_calls(1)
    await instance.pause()
    release.set()
    status = await harness.wait_for(instance, lambda s: s["steps"] and s["steps"][0]["status"] == "complete")
    await asyncio.sleep(0.02)
    status = await instance.status()
    assert status["status"] == "paused" and harness.env["calls"] == ["slow"]
    await instance.resume()
    await harness.wait(instance, "complete")
    assert harness.env["calls"] == ["slow", "after"]


async def test_terminate_a_running_instance_cancels_its_step(harness):
    class Hangs(WorkflowEntrypoint):
        async def run(self, event, step):
            async def hang():
                self.env["calls"].append("hang")
                await asyncio.sleep(30)

            await step.do("hang", hang)

    binding = await harness.start(Hangs)
    instance = await binding.create(id="t")
    await harness.wait_for_calls(1)
    assert (await instance.status())["status"] == "running"
    with pytest.raises(WorkflowError) as info:
        await instance.resume()  # resuming a running instance is illegal
    assert info.value.code == "not_paused"
    await instance.terminate()
    status = await instance.status()
    assert status["status"] == "terminated" and status["alarm"] is None
    assert status["steps"] == []


async def test_restart_runs_from_scratch(harness):
    binding = await harness.start(TwoSleeps)
    instance = await binding.create(id="r")
    await harness.wait(instance, "waiting")
    await instance.restart()
    status = await harness.wait(instance, "waiting")
    assert status["restarts"] == 1
    assert harness.env["calls"] == ["one", "one"]
    harness.advance(100)
    await harness.wait(instance, "complete")
    await instance.restart()  # also allowed on a finished instance
    await harness.wait(instance, "waiting")
    assert harness.env["calls"] == ["one", "one", "two", "one"]


async def test_kill_switch_pauses_at_the_next_step_boundary(harness):
    binding = await harness.start(TwoSleeps)
    instance = await binding.create(id="k")
    await harness.wait(instance, "waiting")
    harness.killed = "incident 42"
    harness.advance(100)
    status = await harness.wait(instance, "paused")
    assert status["pause_reason"] == "kill switch: incident 42"
    assert harness.env["calls"] == ["one"]
    try:
        await instance.resume()
    except WorkflowError as exc:
        assert exc.code == "killed"
    else:
        raise AssertionError("resume must be refused while the kill switch is on")
    harness.killed = None
    await instance.resume()
    await harness.wait(instance, "complete")
    assert harness.env["calls"] == ["one", "two"]


async def test_max_concurrent_keeps_extra_instances_queued(harness):
    gates = {}

    class Gated(WorkflowEntrypoint):
        async def run(self, event, step):
            async def work():
                self.env["calls"].append(event.instance_id)
                await gates.setdefault(event.instance_id, asyncio.Event()).wait()
                return event.instance_id

            return await step.do("work", work)

    binding = await harness.start(Gated, WorkflowLimits(max_concurrent=2))
    instances = [await binding.create(id=f"i{n}") for n in range(4)]
    await harness.wait_for_calls(2)
    await asyncio.sleep(0.03)
    assert sorted(harness.env["calls"]) == ["i0", "i1"]
    assert {r["id"] for r in await binding.list(status="queued")} == {"i2", "i3"}
    queued = await instances[2].status()
    assert queued["waiting"] == {"kind": "max_concurrent", "limit": 2}  # names the bound
    gates.setdefault("i0", asyncio.Event()).set()
    await harness.wait(instances[0], "complete")
    await harness.wait_for_calls(3)
    assert harness.env["calls"][2] == "i2"
    for n in range(1, 4):
        gates.setdefault(f"i{n}", asyncio.Event()).set()
    for instance in instances:
        await harness.wait(instance, "complete")
    assert (await instances[2].status())["waiting"] is None


async def test_audit_records_states_attempts_and_outcomes(harness):
    binding = await harness.start(TwoSleeps)
    instance = await binding.create(id="a")
    await harness.wait(instance, "waiting")
    kinds = [(kind, fields.get("status") or fields.get("outcome")) for kind, fields in harness.audits]
    assert kinds == [
        ("workflow.state", "queued"), ("workflow.state", "running"),
        ("workflow.step.attempt", None), ("workflow.step.outcome", "complete"),
        ("workflow.state", "waiting"),
    ]
    assert all(fields["instance"] == "a" and fields["workflow"] == "TwoSleeps"
               for _, fields in harness.audits)


async def test_transactional_step_commits_sql_writes_with_its_result(harness):
    class Ledger(WorkflowEntrypoint):
        async def run(self, event, step):
            await step.sql.exec("CREATE TABLE IF NOT EXISTS ledger (n INTEGER)")

            async def write():
                await step.sql.exec("INSERT INTO ledger (n) VALUES (?)", 1)
                if self.env.setdefault("fail_once", [True]) and self.env["fail_once"].pop():
                    raise RuntimeError("after the write")
                return "written"

            await step.do("write", write, transactional=True, retries={"limit": 1, "delay": 0})
            rows = (await step.sql.exec("SELECT count(*) AS c FROM ledger")).to_list()
            return rows[0]["c"]

    binding = await harness.start(Ledger)
    instance = await binding.create(id="l")
    status = await harness.wait(instance, "complete")
    assert status["output"] == 1  # the failed attempt's insert was rolled back with it


async def test_the_registry_is_not_evicted_while_it_holds_slots(harness):
    gate = asyncio.Event()

    class Held(WorkflowEntrypoint):
        async def run(self, event, step):
            async def work():
                self.env["calls"].append(event.instance_id)
                await gate.wait()

            await step.do("work", work)

    binding = await harness.start(Held, WorkflowLimits(max_concurrent=1))
    first = await binding.create(id="first")
    await harness.wait_for_calls(1)
    harness.advance(3600)  # far past the host's idle timeout
    await harness.host.evict_idle()
    second = await binding.create(id="second")
    await asyncio.sleep(0.03)
    assert harness.env["calls"] == ["first"]  # the slot count survived: second stays queued
    assert (await second.status())["status"] == "queued"
    gate.set()
    await harness.wait(first, "complete")
    await harness.wait(second, "complete")


async def test_idle_instances_leave_memory_soon_and_come_back_from_disk(harness):
    class Waits(WorkflowEntrypoint):
        async def run(self, event, step):
            if event.payload == "wait":
                got = await step.wait_for_event("go", type="go")
                return got["payload"]
            return await step.do("one", lambda: 1)

    binding = await harness.start(Waits)
    done = await binding.create(id="done")
    waiting = await binding.create(id="waiting", params="wait")
    await harness.wait(done, "complete")
    await harness.wait(waiting, "waiting")
    instance_class = harness.definition.instance_class_name
    ids = {name: harness.definition.instance_stub(None, name).id.hex for name in ("done", "waiting")}
    assert all(harness.host.is_live(instance_class, i) for i in ids.values())
    await settle()  # the runs' tasks finish (their done-callbacks untrack them)
    harness.advance(3)  # past the 2 s an instance class keeps idle objects (host: 30 s)
    await harness.host.evict_idle()  # (or the host's reaper, woken by the clock, did it)
    assert not any(harness.host.is_live(instance_class, i) for i in ids.values())
    assert (await done.status())["output"] == 1  # rebuilt from its stored record
    await waiting.send_event("go", "went")
    assert (await harness.wait(waiting, "complete"))["output"] == "went"


async def test_finished_instances_are_pruned_after_their_retention(harness):
    class Short(WorkflowEntrypoint):
        limits = WorkflowLimits(retention_seconds=60)

        async def run(self, event, step):
            if event.payload == "wait":
                await step.wait_for_event("go", "go")
            return await step.do("work", lambda: {"big": "x" * 1000})

    binding = await harness.start(Short)
    done = await binding.create(id="done", params={"p": 1})
    waits = await binding.create(id="waits", params="wait")
    await harness.wait(done, "complete")
    await harness.wait(waits, "waiting")
    harness.advance(30)
    await settle()
    assert (await done.status())["pruned"] is None  # still within its retention
    harness.advance(31)  # the registry's sweep: 60 s after the first run started

    async def pruned(instance):
        for _ in range(200):
            st = await instance.status()
            if st["pruned"]:
                return st
            await asyncio.sleep(0.005)
        raise AssertionError(f"not pruned: {st}")

    st = await pruned(done)
    assert st["status"] == "complete" and st["steps"] == [] and st["output"] is None
    assert (await waits.status())["steps"][0]["name"] == "go"  # not finished: kept whole
    with pytest.raises(WorkflowError) as error:
        await binding.create(id="done")
    assert error.value.code == "duplicate_id"  # the id is never reused
    with pytest.raises(WorkflowError) as error:
        await done.restart()
    assert error.value.code == "pruned"
    await waits.send_event("go")
    await harness.wait(waits, "complete")
    harness.advance(61)
    assert (await pruned(waits))["status"] == "complete"
    assert [row["id"] for row in await binding.list()] == ["done", "waits"]  # still listed
    assert ("workflow.pruned", "done") in [(k, f["instance"]) for k, f in harness.audits]
    binding = await harness.restart(Short)  # pruned on disk, not only in memory
    st = await (await binding.get("done")).status()
    assert st["steps"] == [] and st["pruned"] and st["output"] is None

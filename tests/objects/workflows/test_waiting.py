"""Sleeps, event waits and approvals: alarms that survive a host restart, event buffering."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from objects.workflows import (
    ApprovalRejected,
    WorkflowEntrypoint,
    WorkflowLimits,
    WorkflowTimeoutError,
)


class Sleeper(WorkflowEntrypoint):
    async def run(self, event, step):
        async def before():
            self.env["calls"].append("before")
            return 1

        await step.do("before", before)
        await step.sleep("nap", "2 hours")

        async def after():
            self.env["calls"].append("after")
            return 2

        return await step.do("after", after)


async def test_sleep_survives_a_restart_and_fires_when_time_passed_while_down(harness):
    binding = await harness.start(Sleeper)
    instance = await binding.create(id="s")
    status = await harness.wait(instance, "waiting")
    start = harness.clock.now() / 1000
    assert status["waiting"] == {"kind": "sleep", "step": "nap#1", "until": start + 7200}
    assert status["alarm"] == start + 7200
    await harness.stop()
    harness.advance(3 * 3600)  # the whole sleep passes while the host is down
    binding = await harness.start(Sleeper)
    status = await harness.wait(await binding.get("s"), "complete")
    assert status["output"] == 2
    assert harness.env["calls"] == ["before", "after"]


async def test_sleep_holds_no_task_until_its_alarm(harness):
    binding = await harness.start(Sleeper)
    instance = await binding.create(id="s")
    await harness.wait(instance, "waiting")
    harness.advance(7199)
    await asyncio.sleep(0.03)
    assert (await instance.status())["status"] == "waiting"
    assert not any(obj._task_alive() for obj in harness.definition._live)
    harness.advance(1)
    await harness.wait(instance, "complete")


async def test_sleep_until_datetime_and_epoch(harness):
    now = harness.clock.now() / 1000

    class Until(WorkflowEntrypoint):
        async def run(self, event, step):
            await step.sleep_until("a", datetime.fromtimestamp(now + 60, UTC))
            await step.sleep_until("b", now + 120)
            await step.sleep_until("past", now - 5)  # already passed: no wait
            return "done"

    binding = await harness.start(Until)
    instance = await binding.create(id="u")
    assert (await harness.wait(instance, "waiting"))["waiting"]["until"] == now + 60
    harness.advance(60)
    status = await harness.wait_for(instance, lambda s: s["waiting"] and s["waiting"]["step"] == "b#1")
    assert status["alarm"] == now + 120
    harness.advance(60)
    await harness.wait(instance, "complete")


class Waiter(WorkflowEntrypoint):
    async def run(self, event, step):
        async def first():
            self.env["calls"].append("first")
            return 1

        await step.do("first", first)
        try:
            got = await step.wait_for_event("wait", type="payment", timeout="1 hour")
        except WorkflowTimeoutError as exc:
            return {"timeout": str(exc)}
        return {"payload": got["payload"], "type": got["type"]}


async def test_event_sent_before_the_wait_is_buffered(harness):
    class Late(WorkflowEntrypoint):
        async def run(self, event, step):
            await step.sleep("first", 10)
            got = await step.wait_for_event("wait", type="payment")
            second = await step.wait_for_event("wait", type="payment", timeout=5)
            return [got["payload"], second["payload"]]

    binding = await harness.start(Late)
    instance = await binding.create(id="e")
    await harness.wait(instance, "waiting")
    await instance.send_event("payment", {"n": 1})
    await instance.send_event("other", {"n": 0})
    await instance.send_event("payment", {"n": 2})
    assert (await instance.status())["pending_events"] == 3
    harness.advance(10)
    status = await harness.wait(instance, "complete")
    assert status["output"] == [{"n": 1}, {"n": 2}]
    assert status["pending_events"] == 1


async def test_event_wakes_a_waiting_instance(harness):
    binding = await harness.start(Waiter)
    instance = await binding.create(id="e")
    status = await harness.wait(instance, "waiting")
    assert status["waiting"]["kind"] == "event"
    await instance.send_event("payment", {"ok": True})
    status = await harness.wait(instance, "complete")
    assert status["output"] == {"payload": {"ok": True}, "type": "payment"}


async def test_event_timeout_across_a_restart_raises_in_the_workflow(harness):
    binding = await harness.start(Waiter)
    instance = await binding.create(id="e")
    status = await harness.wait(instance, "waiting")
    assert status["alarm"] == harness.clock.now() / 1000 + 3600
    await harness.stop()
    harness.advance(3601)
    binding = await harness.start(Waiter)
    instance = await binding.get("e")
    status = await harness.wait(instance, "complete")
    assert "timed out waiting for event 'payment'" in status["output"]["timeout"]
    assert harness.env["calls"] == ["first"]
    assert status["steps"][1]["error"]["type"] == "WorkflowTimeoutError"


async def test_event_after_timeout_is_too_late(harness):
    binding = await harness.start(Waiter)
    instance = await binding.create(id="e")
    await harness.wait(instance, "waiting")
    harness.advance(3600)
    status = await harness.wait(instance, "complete")
    assert "timeout" in status["output"]
    with pytest.raises(Exception) as info:
        await instance.send_event("payment", {})
    assert info.value.code == "instance_finished"


class Approval(WorkflowEntrypoint):
    async def run(self, event, step):
        async def reserve():
            self.env["calls"].append("reserve")
            return "r1"

        async def release(result):
            self.env["calls"].append(f"release {result}")

        await step.do("reserve", reserve, compensate=release)
        try:
            approval = await step.wait_for_approval("manager", timeout="1 day")
        except ApprovalRejected as exc:
            self.env["calls"].append(f"rejected by {exc.by}: {exc.reason}")
            raise
        return approval


async def test_approval_approve(harness):
    binding = await harness.start(Approval)
    instance = await binding.create(id="a")
    await harness.wait(instance, "waiting")
    await instance.approve("alice", "looks fine")
    status = await harness.wait(instance, "complete")
    assert status["output"] == {"approved": True, "by": "alice", "reason": "looks fine"}
    assert ("workflow.approval", {"workflow": "Approval", "instance": "a", "type": "approval",
                                  "approved": True, "by": "alice", "reason": "looks fine", "amended": False}) \
        in harness.audits


async def test_approval_with_an_amended_payload_is_what_the_run_goes_on_with(harness):
    binding = await harness.start(Approval)
    instance = await binding.create(id="a")
    await harness.wait(instance, "waiting")
    await instance.approve("alice", "smaller refund", {"amount": 40})
    status = await harness.wait(instance, "complete")
    assert status["output"] == {"approved": True, "by": "alice", "reason": "smaller refund",
                                "payload": {"amount": 40}}
    assert ("workflow.approval", {"workflow": "Approval", "instance": "a", "type": "approval",
                                  "approved": True, "by": "alice", "reason": "smaller refund", "amended": True}) \
        in harness.audits


async def test_approval_reject_raises_and_compensates(harness):
    binding = await harness.start(Approval)
    instance = await binding.create(id="a")
    await harness.wait(instance, "waiting")
    await instance.reject("bob", "too expensive")
    status = await harness.wait(instance, "errored")
    assert status["error"]["type"] == "ApprovalRejected"
    assert harness.env["calls"] == ["reserve", "rejected by bob: too expensive", "release r1"]
    assert status["compensations"] == [
        {"step": "reserve#1", "name": "reserve", "status": "complete", "attempts": 1, "error": None}]


class Hangs(WorkflowEntrypoint):
    limits = WorkflowLimits(max_recoveries=2, lease_seconds=10)

    async def run(self, event, step):
        await step.do("first", lambda: 1)
        if event.payload == "progress":  # each step is cut off once, then completes
            for i in range(3):
                async def once(i=i):
                    self.env["calls"].append(f"step{i}")
                    if self.env["calls"].count(f"step{i}") == 1:
                        await asyncio.Event().wait()
                    return i

                await step.do(f"step{i}", once)
            return "done"

        async def hang():
            self.env["calls"].append("hang")
            await asyncio.Event().wait()

        await step.do("hang", hang)


async def test_a_run_cut_off_again_and_again_fails_instead_of_looping(harness):
    binding = await harness.start(Hangs)
    await binding.create(id="h")
    await harness.wait_for_calls(1)
    for n in range(3):  # the process dies while the step runs, and the lease resumes the run
        binding = await harness.restart(Hangs)
        harness.advance(11)
        if n < 2:
            await harness.wait_for_calls(n + 2)
    st = await harness.wait(await binding.get("h"), "errored")
    assert st["error"]["type"] == "WorkflowCrashLoop"
    assert "cut off 3 times in a row" in st["error"]["message"]
    assert "max_recoveries=2" in st["error"]["message"] and st["recoveries"] == 3
    assert harness.env["calls"] == ["hang"] * 3  # not run a fourth time
    assert st["alarm"] is None


async def test_a_run_that_makes_progress_between_cut_offs_keeps_going(harness):
    binding = await harness.start(Hangs)
    await binding.create(id="p", params="progress")
    for n in range(3):  # three cut-offs in all, but a step completes after each one
        await harness.wait_for_calls(2 * n + 1)
        binding = await harness.restart(Hangs)
        harness.advance(11)
    st = await harness.wait(await binding.get("p"), "complete")
    assert st["output"] == "done" and st["recoveries"] == 0
    assert harness.env["calls"] == ["step0", "step0", "step1", "step1", "step2", "step2"]

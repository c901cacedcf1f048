"""The lease resumes a run whose call between processes failed: the runtime bounds every such
call (an answer never comes: a process was restarted, a deployment was still starting), the run
task ends with the error, and the lease alarm starts the run again."""

from __future__ import annotations

import asyncio

from objects.workflows import WorkflowEntrypoint, make_workflow_binding
from objects.workflows._objects import LocalTransport

from .conftest import Harness

NO_ANSWER = {"error": {"type": "CallTimeout", "message": "no answer within 125 s", "code": "call_timeout",
                       "status": 504}}


class UnansweredRegistry(LocalTransport):
    """Answers the first `fail` calls to the instance registry as the runtime answers a call
    between processes that got no answer within its deadline."""

    def __init__(self, host, registry_class: str, fail: int) -> None:
        super().__init__(host)
        self.registry_class, self.fail = registry_class, fail

    async def __call__(self, address, op):
        if address.class_name == self.registry_class and self.fail > 0:
            self.fail -= 1
            return NO_ANSWER
        return await super().__call__(address, op)


class Sleeper(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.sleep("nap", "1 minute")
        return await step.do("after", lambda: 2)


async def start(harness: Harness, fail: int):
    await harness.start(Sleeper)  # then rebound to a transport that can leave calls unanswered
    transport = UnansweredRegistry(harness.host, harness.definition.registry_class_name, fail)
    return make_workflow_binding("app", "Sleeper", transport, definition=harness.definition), transport


async def test_a_run_whose_registry_call_got_no_answer_is_resumed_by_its_lease(harness):
    binding, transport = await start(harness, fail=1)
    instance = await binding.create(id="w")
    await harness.wait_for(instance, lambda s: transport.fail == 0 and not any(
        obj._task_alive() for obj in harness.definition._live))  # the run gave up on the call
    assert (await instance.status())["status"] in ("queued", "running")
    harness.advance(harness.definition.limits.lease_seconds)
    await harness.wait(instance, "waiting")
    harness.advance(60)
    assert (await harness.wait(instance, "complete"))["output"] == 2


async def test_a_due_run_whose_registry_call_got_no_answer_is_woken_again(harness):
    binding, transport = await start(harness, fail=0)
    instance = await binding.create(id="w")
    await harness.wait(instance, "waiting")
    transport.fail = 1  # the nap is due, as after a restart; its first call is not answered
    harness.advance(60)
    await harness.wait_for(instance, lambda s: transport.fail == 0 and not any(
        obj._task_alive() for obj in harness.definition._live))
    await asyncio.sleep(0.01)
    harness.advance(harness.definition.limits.lease_seconds)
    assert (await harness.wait(instance, "complete"))["output"] == 2

"""Classification through a run: the params' level, raised by steps, replayed after a restart,
lowered only by a recorded and audited declassify."""

from __future__ import annotations

import contextvars
from typing import Any

import pytest

from objects.workflows import WorkflowEntrypoint, WorkflowError, make_workflow_binding
from objects.workflows._objects import LocalTransport

LEVEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("level", default=None)


class Walk(WorkflowEntrypoint):
    """Records the level each step runs at (the hook sets LEVEL, as the runtime sets its scope)."""

    async def run(self, event, step):
        async def look():
            return LEVEL.get()

        async def raise_inside():
            step.classify("restricted")
            return LEVEL.get()

        seen = [await step.do("start", look)]
        seen.append(await step.do("raised", look, classification="confidential"))
        seen.append(await step.do("classify", raise_inside))
        await step.sleep("nap", 10)
        seen.append(await step.do("after nap", look))
        await step.declassify("public", reason="anonymised by the classify step")
        seen.append(await step.do("after declassify", look))
        return seen


async def _binding(harness: Any, entry: type[WorkflowEntrypoint], level: str | None = "internal") -> Any:
    await harness.start(entry)
    harness.definition.hooks.run_at_level = LEVEL.set
    return make_workflow_binding("app", entry.__name__, LocalTransport(harness.host),
                                 definition=harness.definition, level_provider=lambda: level)


async def test_steps_raise_the_level_and_a_restart_replays_it(harness):
    binding = await _binding(harness, Walk)
    instance = await binding.create(id="w", params={"card": "4111"})
    await harness.wait(instance, "waiting")
    binding = await harness.restart(Walk)  # a new host: the run is replayed from its records
    harness.definition.hooks.run_at_level = LEVEL.set
    instance = await binding.get("w")
    harness.advance(10)
    status = await harness.wait(instance, "complete")
    assert status["output"] == ["internal", "confidential", "restricted", "restricted", "public"]
    assert status["params_level"] == "internal" and status["level"] == "restricted"  # the highest it holds
    assert [s["level"] for s in status["steps"]] == [
        "internal", "confidential", "restricted", None, "restricted", "public", "public"]
    declassified = [f for kind, f in harness.audits if kind == "classification.declassified"]
    assert len(declassified) == 1
    assert declassified[0]["previous"] == "restricted" and declassified[0]["level"] == "public"
    assert declassified[0]["reason"] == "anonymised by the classify step"
    outcomes = {f["step"]: f.get("classification") for kind, f in harness.audits if kind == "workflow.step.outcome"}
    assert outcomes == {"start": "internal", "raised": "confidential", "classify": "restricted",
                        "after nap": "restricted", "after declassify": "public"}
    states = {f["status"]: f.get("classification") for kind, f in harness.audits if kind == "workflow.state"}
    assert states["queued"] == "internal" and states["complete"] == "public"  # the run's level then


class DeclassifyInsideStep(WorkflowEntrypoint):
    async def run(self, event, step):
        async def lower():
            await step.declassify("public", reason="inside")

        await step.do("lower", lower, retries={"limit": 0})


class NoReason(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.declassify("public", reason=" ")


class UnknownLevel(WorkflowEntrypoint):
    async def run(self, event, step):
        async def noop():
            return 1

        await step.do("x", noop, classification="top-secret")


@pytest.mark.parametrize(("entry", "message"), [
    (DeclassifyInsideStep, "not inside a step function"),
    (NoReason, "needs a reason"),
    (UnknownLevel, "unknown classification level 'top-secret'"),
])
async def test_misuse_fails_the_run_with_a_clear_error(harness, entry, message):
    binding = await _binding(harness, entry)
    instance = await binding.create(id="m")
    status = await harness.wait(instance, "errored")
    assert message in status["error"]["message"]
    assert not [k for k, _ in harness.audits if k == "classification.declassified"]


async def test_an_unknown_params_level_is_refused_at_create(harness):
    binding = await _binding(harness, Walk, level="secret")
    with pytest.raises(WorkflowError) as e:
        await binding.create(id="x")
    assert e.value.code == "invalid_level"


async def test_without_a_params_level_nothing_is_tracked(harness):
    binding = await _binding(harness, Walk, level=None)
    instance = await binding.create(id="n")
    await harness.wait(instance, "waiting")
    harness.advance(10)
    status = await harness.wait(instance, "complete")
    assert status["output"] == [None, None, None, None, None]
    assert status["level"] is None and status["params_level"] is None

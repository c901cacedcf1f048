"""The binding and instance API: every call, and every illegal call with its code."""

from __future__ import annotations

import pytest

from objects.workflows import (
    STATUSES,
    WorkflowEntrypoint,
    WorkflowError,
    WorkflowLimitError,
    WorkflowLimits,
    parse_duration,
)


class Echo(WorkflowEntrypoint):
    async def run(self, event, step):
        self.env["calls"].append(("run", event.instance_id))

        async def first():
            return {"payload": event.payload, "ts": event.timestamp, "id": event.instance_id}

        seen = await step.do("first", first)

        @step.do("second")
        async def second():
            return [seen["payload"], "second"]

        second_result = await second()
        third = await step.do("third")(lambda: _const(3))
        return {"seen": seen, "second": second_result, "third": third}


async def _const(value):
    return value


class Waits(WorkflowEntrypoint):
    async def run(self, event, step):
        return await step.wait_for_event("go", type="go", timeout="1 hour")


async def test_create_runs_to_completion_with_event_fields(harness):
    binding = await harness.start(Echo)
    instance = await binding.create(id="order-1", params={"amount": 5})
    status = await harness.wait(instance, "complete")
    assert status["output"] == {
        "seen": {"payload": {"amount": 5}, "ts": harness.clock.now() / 1000, "id": "order-1"},
        "second": [{"amount": 5}, "second"],
        "third": 3,
    }
    assert [s["key"] for s in status["steps"]] == ["first#1", "second#1", "third#1"]
    assert all(len(s["attempts"]) == 1 and s["status"] == "complete" for s in status["steps"])
    assert status["error"] is None and status["alarm"] is None


async def test_create_without_id_generates_one_and_get_finds_it(harness):
    binding = await harness.start(Echo)
    instance = await binding.create(params=1)
    assert len(instance.id) == 32
    again = await binding.get(instance.id)
    assert (await harness.wait(again, "complete"))["id"] == instance.id


async def test_create_batch_and_list_with_status_filter(harness):
    binding = await harness.start(Waits)
    made = await binding.create_batch([{"id": "a"}, {"id": "b", "params": {"x": 1}}, {}])
    assert [m.id for m in made[:2]] == ["a", "b"]
    for m in made:
        await harness.wait(m, "waiting")
    await made[0].send_event("go", {"n": 1})
    await harness.wait(made[0], "complete")
    listed = await binding.list()
    assert [row["id"] for row in listed[:2]] == ["a", "b"] and len(listed) == 3
    assert [row["id"] for row in await binding.list(status="complete")] == ["a"]
    assert {row["id"] for row in await binding.list(status="waiting")} == {"b", made[2].id}


@pytest.mark.parametrize("bad", ["", "x" * 65, "has space", "slash/id", "ünï", 7])
async def test_bad_ids_are_refused(harness, bad):
    binding = await harness.start(Echo)
    with pytest.raises(WorkflowError) as info:
        await binding.create(id=bad)
    assert info.value.code == "invalid_id"
    with pytest.raises(WorkflowError) as info:
        await binding.get(bad)
    assert info.value.code == "invalid_id"


async def test_ids_are_never_reused(harness):
    binding = await harness.start(Echo)
    first = await binding.create(id="once")
    await harness.wait(first, "complete")
    with pytest.raises(WorkflowError) as info:
        await binding.create(id="once")
    assert info.value.code == "duplicate_id"
    await first.restart()  # restart keeps the id; it is not a new instance
    await harness.wait(first, "complete")
    with pytest.raises(WorkflowError) as info:
        await binding.create_batch([{"id": "x1"}, {"id": "x1"}])
    assert info.value.code == "duplicate_id"
    with pytest.raises(WorkflowError) as info:
        await binding.create_batch([{"id": "ok"}, {"id": "bad id"}])
    assert info.value.code == "invalid_id"
    assert [row["id"] for row in await binding.list()] == ["once"]  # nothing of the bad batches


async def test_get_unknown_and_list_bad_status(harness):
    binding = await harness.start(Echo)
    with pytest.raises(WorkflowError) as info:
        await binding.get("nobody")
    assert info.value.code == "not_found"
    with pytest.raises(WorkflowError) as info:
        await binding.list(status="sleeping")
    assert info.value.code == "invalid_status"
    assert "queued" in STATUSES


async def test_illegal_calls_on_finished_and_running_instances(harness):
    binding = await harness.start(Waits)
    instance = await binding.create(id="w")
    await harness.wait(instance, "waiting")
    with pytest.raises(WorkflowError) as info:
        await instance.resume()
    assert info.value.code == "not_paused"
    await instance.pause()
    with pytest.raises(WorkflowError) as info:
        await instance.pause()
    assert info.value.code == "already_paused"
    with pytest.raises(WorkflowError) as info:
        await instance.send_event("", 1)
    assert info.value.code == "invalid_event"
    with pytest.raises(WorkflowError) as info:
        await instance.send_event("go", object())
    assert info.value.code == "invalid_payload"
    await instance.terminate()
    assert (await instance.status())["status"] == "terminated"
    for call, code in [
        (instance.terminate(), "instance_finished"),
        (instance.send_event("go", 1), "instance_finished"),
        (instance.pause(), "instance_finished"),
        (instance.resume(), "instance_finished"),
    ]:
        with pytest.raises(WorkflowError) as info:
            await call
        assert info.value.code == code


async def test_payload_bounds(harness):
    binding = await harness.start(Waits, WorkflowLimits(max_payload_bytes=64))
    with pytest.raises(WorkflowLimitError) as info:
        await binding.create(params="x" * 100)
    assert info.value.code == "max_payload_bytes"
    with pytest.raises(WorkflowError) as info:
        await binding.create(params={1, 2})
    assert info.value.code == "invalid_payload"
    instance = await binding.create(id="small", params="ok")
    await harness.wait(instance, "waiting")
    with pytest.raises(WorkflowLimitError) as info:
        await instance.send_event("go", "y" * 100)
    assert info.value.code == "max_payload_bytes"


def test_parse_duration():
    assert parse_duration("10 seconds") == 10
    assert parse_duration("2 hours") == 7200
    assert parse_duration("1.5 minutes") == 90
    assert parse_duration(3) == 3.0
    for bad in ("soon", "10 fortnights", -1, True, ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


async def test_tenant_scoped_instances_are_separate_per_tenant(harness):
    from objects import LocalTransport
    from objects.workflows import make_workflow_binding

    await harness.start(Waits)
    current = {"tenant": "acme"}
    binding = make_workflow_binding(
        "app", "Waits", LocalTransport(harness.host), lambda: current["tenant"],
        definition=harness.definition, tenant_scoped=True)
    acme = await binding.create(id="same")
    await harness.wait(acme, "waiting")
    current["tenant"] = "globex"
    with pytest.raises(WorkflowError) as info:
        await binding.get("same")
    assert info.value.code == "not_found"
    assert await binding.list() == []
    globex = await binding.create(id="same")  # the same id in another tenant is another instance
    await globex.send_event("go", "globex")
    assert (await harness.wait(globex, "complete"))["output"]["payload"] == "globex"
    current["tenant"] = "acme"
    assert (await acme.status())["status"] == "waiting"
    assert [row["id"] for row in await binding.list()] == ["same"]


async def test_cloudflare_binding_forms(harness):
    binding = await harness.start(Waits)
    instance = await binding.create({"id": "cf", "params": {"n": 1}})
    batch = await binding.createBatch([{"id": "cf2"}])
    await harness.wait(instance, "waiting")
    await instance.sendEvent({"type": "go", "payload": {"ok": True}})
    assert (await harness.wait(instance, "complete"))["output"]["payload"] == {"ok": True}
    assert [b.id for b in batch] == ["cf2"]
    with pytest.raises(WorkflowError) as bad:
        await binding.create({"id": "x", "parms": 1})
    assert bad.value.code == "invalid_options"
    with pytest.raises(WorkflowError) as bad:
        await batch[0].sendEvent({"kind": "go"})
    assert bad.value.code == "invalid_event"

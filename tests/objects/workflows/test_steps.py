"""step.do: retries with each backoff (alarm times), NonRetryableError, timeouts, results."""

from __future__ import annotations

import asyncio

import pytest

from objects.workflows import (
    NonRetryableError,
    RetryPolicy,
    StepConfig,
    StepFailedError,
    WorkflowEntrypoint,
    WorkflowLimits,
)
from objects.workflows.options import StepConfig as StepConfigModel


def flaky(fail_times: int, retries: dict | None = None):
    class Flaky(WorkflowEntrypoint):
        async def run(self, event, step):
            async def attempt():
                calls = self.env["calls"]
                calls.append(self.env["now"]())
                if len(calls) <= fail_times:
                    raise RuntimeError(f"boom {len(calls)}")
                return "ok"

            return await step.do("charge", attempt, retries=retries)

    return Flaky


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        ("constant", [10, 10, 10]),
        ("linear", [10, 20, 30]),
        ("exponential", [10, 20, 40]),
    ],
)
async def test_retry_alarm_times_follow_the_backoff(harness, backoff, delays):
    harness.env["now"] = lambda: harness.clock.now() / 1000
    binding = await harness.start(flaky(3, {"limit": 5, "delay": "10 seconds", "backoff": backoff}))
    instance = await binding.create(id="r")
    start = harness.clock.now() / 1000
    expected = start
    for attempt, delay in enumerate(delays, start=1):
        status = await harness.wait(instance, "waiting")
        expected += delay
        assert status["waiting"] == {"kind": "retry", "step": "charge#1", "until": expected}
        assert status["alarm"] == expected
        assert len(status["steps"][0]["attempts"]) == attempt
        harness.advance(delay - 1)
        await asyncio.sleep(0.02)
        assert len(harness.env["calls"]) == attempt  # not before the alarm time
        harness.advance(1)
        await harness.wait_for_calls(attempt + 1)
    status = await harness.wait(instance, "complete")
    assert status["output"] == "ok"
    attempts = status["steps"][0]["attempts"]
    assert [a["error"]["message"] if a["error"] else None for a in attempts] == [
        "boom 1", "boom 2", "boom 3", None]


async def test_default_retry_policy_mirrors_cloudflare():
    config = StepConfigModel()
    assert config.retries == RetryPolicy(limit=5, delay=10, backoff="exponential")
    assert config.timeout == 600
    assert [config.retries.delay_after(n) for n in (1, 2, 3)] == [10, 20, 40]


async def test_exhausted_retries_fail_the_instance(harness):
    harness.env["now"] = lambda: 0
    binding = await harness.start(flaky(10, {"limit": 1, "delay": 0, "backoff": "constant"}))
    instance = await binding.create(id="x")
    status = await harness.wait(instance, "errored")
    assert len(harness.env["calls"]) == 2
    assert status["error"]["type"] == "StepFailedError"
    assert "step 'charge' failed after 2 attempt(s): RuntimeError: boom 2" in status["error"]["message"]
    assert status["steps"][0]["status"] == "failed"


async def test_class_step_defaults_apply(harness):
    class Defaults(WorkflowEntrypoint):
        step_defaults = StepConfig(retries=RetryPolicy(limit=2, delay=0))

        async def run(self, event, step):
            async def fail():
                self.env["calls"].append(1)
                raise RuntimeError("no")

            await step.do("s", fail)

    binding = await harness.start(Defaults)
    instance = await binding.create(id="d")
    await harness.wait(instance, "errored")
    assert len(harness.env["calls"]) == 3


async def test_non_retryable_error_fails_at_once(harness):
    class Strict(WorkflowEntrypoint):
        async def run(self, event, step):
            async def refuse():
                self.env["calls"].append(1)
                raise NonRetryableError("card declined")

            try:
                await step.do("charge", refuse)
            except StepFailedError as exc:
                return {"caught": exc.error_type, "message": exc.error_message}

    binding = await harness.start(Strict)
    instance = await binding.create(id="n")
    status = await harness.wait(instance, "complete")
    assert status["output"] == {"caught": "NonRetryableError", "message": "card declined"}
    assert len(harness.env["calls"]) == 1


async def test_step_timeout_is_a_failed_attempt(harness):
    class Slow(WorkflowEntrypoint):
        async def run(self, event, step):
            async def hang():
                self.env["calls"].append(1)
                await asyncio.sleep(30)

            await step.do("hang", hang, timeout=0.05, retries={"limit": 1, "delay": 0})

    binding = await harness.start(Slow)
    instance = await binding.create(id="t")
    status = await harness.wait(instance, "errored")
    assert len(harness.env["calls"]) == 2
    errors = [a["error"] for a in status["steps"][0]["attempts"]]
    assert [e["type"] for e in errors] == ["StepTimeoutError", "StepTimeoutError"]
    assert "step 'hang' exceeded its timeout of 0.05 s" in errors[0]["message"]


async def test_unserializable_result_names_the_step(harness):
    class Bad(WorkflowEntrypoint):
        async def run(self, event, step):
            async def make():
                self.env["calls"].append(1)
                return object()

            await step.do("make-thing", make)

    binding = await harness.start(Bad)
    instance = await binding.create(id="b")
    status = await harness.wait(instance, "errored")
    assert len(harness.env["calls"]) == 1  # not retried
    assert "result of step 'make-thing' is not msgpack/JSON-serializable" in status["error"]["message"]


async def test_result_size_bound(harness):
    class Big(WorkflowEntrypoint):
        async def run(self, event, step):
            async def big():
                return "x" * 500

            await step.do("big", big)

    binding = await harness.start(Big, WorkflowLimits(max_step_result_bytes=100))
    instance = await binding.create(id="big")
    status = await harness.wait(instance, "errored")
    assert "over max_step_result_bytes=100" in status["error"]["message"]


async def test_max_steps_bound(harness):
    class Many(WorkflowEntrypoint):
        async def run(self, event, step):
            for i in range(10):
                await step.do("s", lambda i=i: _const(i))

    binding = await harness.start(Many, WorkflowLimits(max_steps=3))
    instance = await binding.create(id="m")
    status = await harness.wait(instance, "errored")
    assert status["error"]["type"] == "WorkflowLimitError"
    assert "max_steps=3" in status["error"]["message"]
    assert len(status["steps"]) == 3


async def test_repeated_names_are_counted_and_replayed_without_rerun(harness):
    class Loop(WorkflowEntrypoint):
        async def run(self, event, step):
            total = 0
            for i in range(3):
                async def add(i=i):
                    self.env["calls"].append(i)
                    return i * 10

                total += await step.do("add", add)
            await step.sleep("nap", 5)
            return total

    binding = await harness.start(Loop)
    instance = await binding.create(id="loop")
    await harness.wait(instance, "waiting")
    harness.advance(5)
    status = await harness.wait(instance, "complete")
    assert status["output"] == 30
    assert harness.env["calls"] == [0, 1, 2]  # the replay after the sleep ran none again
    assert [s["key"] for s in status["steps"]] == ["add#1", "add#2", "add#3", "nap#1"]


async def _const(value):
    return value


async def test_plain_functions_are_steps_too_and_compensations_get_the_result(harness):
    class Plain(WorkflowEntrypoint):
        async def run(self, event, step):
            calls = self.env["calls"]
            value = await step.do("plain", lambda: 41 + 1)
            for name in ("a", "b"):
                await step.do(name, lambda name=name: name.upper(),
                              compensate=lambda result, name=name: calls.append((name, result)))
            await step.do("no-arg", lambda: "x", compensate=lambda: calls.append("no-arg"))

            async def defaulted(flag=True):
                calls.append(("defaulted", flag))

            await step.do("defaulted", lambda: 1, compensate=defaulted)
            await step.do("fail", _fail, retries={"limit": 0})
            return value

    binding = await harness.start(Plain)
    instance = await binding.create(id="p")
    status = await harness.wait(instance, "errored")
    assert status["steps"][0]["status"] == "complete"
    assert harness.env["calls"] == [("defaulted", True), "no-arg", ("b", "B"), ("a", "A")]


async def _fail():
    raise RuntimeError("no")


async def test_cloudflare_python_workflow_api(harness):
    calls = harness.env["calls"]

    class PyStyle(WorkflowEntrypoint):
        async def run(self, event, step):
            @step.do()  # named after the function
            async def fetch_files():
                calls.append("fetch_files")
                return ["a.pdf", "b.pdf"]

            @step.do("count files", config={"retries": {"limit": 2, "delay": 0}, "timeout": "1 minute"})
            async def count(fetch_files, ctx):  # fetch_files' result is injected
                calls.append(("count", ctx.attempt))
                if ctx.attempt == 1:
                    raise RuntimeError("flaky")
                return {"n": len(fetch_files), "step": ctx.step.name, "count": ctx.step.count,
                        "timeout": ctx.config["timeout"]}

            @step.do(depends=[count], concurrent=True)
            async def summary(count):
                return f"{count['n']} files"

            got = await step.wait_for_event("approval", event_type="go", timeout="1 hour")
            return {"payload": event["payload"], "id": event["instanceId"], "count": await count(),
                    "summary": await summary(), "files": await fetch_files(), "go": got["payload"]}

    binding = await harness.start(PyStyle)
    instance = await binding.create(id="py", params={"x": 1})
    await harness.wait(instance, "waiting")
    await instance.send_event("go", "yes")
    st = await harness.wait(instance, "complete")
    assert st["output"] == {
        "payload": {"x": 1}, "id": "py", "summary": "2 files", "files": ["a.pdf", "b.pdf"],
        "count": {"n": 2, "step": "count files", "count": 1, "timeout": 60.0}, "go": "yes"}
    assert [s["name"] for s in st["steps"]] == ["approval", "fetch_files", "count files", "summary"]
    # each step ran once, across the replays that the retry and the event wait caused
    assert calls == ["fetch_files", ("count", 1), ("count", 2)]


async def test_cloudflare_style_step_misuse_is_a_clear_error(harness):
    class Misused(WorkflowEntrypoint):
        async def run(self, event, step):
            if event.payload == "config":
                step.do("x", config={"retry": {}})
            if event.payload == "unnamed":
                await step.do(None, lambda: 1)
            await step.wait_for_event("w", timeout=1)

    binding = await harness.start(Misused)
    for case, message in (("config", "config takes the keys retries and timeout"),
                          ("unnamed", "needs a name"), ("event", "event_type must be a non-empty str")):
        st = await harness.wait(await binding.create(id=case, params=case), "errored")
        assert message in st["error"]["message"], st["error"]

"""CronScheduler on a fake clock: which (script, expression, slot) firings it asks the front for."""

import asyncio
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from runtime.config import AppConfig
from runtime.front import cron
from runtime.front.cron import CronScheduler

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()  # a whole hour, so slots are round numbers
_real_sleep = asyncio.sleep


class Clock:
    """The time the scheduler sees; only the test moves it."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


class FakeFront:
    """What the scheduler needs: deployments (`current.app.scripts`) and a `fire_scheduled`."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.current: Any = deployment(scripts)
        self.fired: list[tuple[str, str, float]] = []
        self.failing: set[str] = set()

    async def fire_scheduled(self, script: str, expr: str, scheduled_ms: float) -> dict[str, Any]:
        self.fired.append((script, expr, scheduled_ms))
        if script in self.failing:
            raise RuntimeError(f"{script} is broken")
        return {"ok": True}


def deployment(scripts: dict[str, list[str]]) -> types.SimpleNamespace:
    app = AppConfig.model_validate(
        {"scripts": [{"name": name, "main": f"{name}.py", "crons": crons} for name, crons in scripts.items()]}
    )
    return types.SimpleNamespace(app=app)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """Replace the cron module's clock and sleep: sleeping only yields, time moves when the test says."""
    c = Clock(T0 + 0.5)

    class FakeDatetime:
        @staticmethod
        def now(tz: Any) -> datetime:
            return datetime.fromtimestamp(c.now, tz)

    async def sleep(_seconds: float) -> None:
        await _real_sleep(0)

    monkeypatch.setattr(cron, "time", types.SimpleNamespace(time=c.time))
    monkeypatch.setattr(cron, "datetime", FakeDatetime)
    monkeypatch.setattr(cron, "asyncio", types.SimpleNamespace(sleep=sleep, ensure_future=asyncio.ensure_future))
    yield c


async def settle(rounds: int = 20) -> None:
    """Let the scheduler loop and the firings it started run for a few turns of the event loop."""
    for _ in range(rounds):
        await _real_sleep(0)


@pytest.fixture
async def running(clock: Clock) -> Any:
    """Start a scheduler for a front made by the test (call the returned function), stop it after."""
    started: list[CronScheduler] = []

    def start(front: FakeFront) -> CronScheduler:
        s = CronScheduler(front, front.fire_scheduled)
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
    await settle()


def ms(minutes: float) -> float:
    return (T0 + minutes * 60) * 1000


def test_schedule_has_one_entry_per_script_and_expression(clock: Clock):
    front = FakeFront({"a": ["* * * * *", "*/5 * * * *"], "b": ["* * * * *"]})
    entries = CronScheduler(front, front.fire_scheduled)._schedule()
    assert sorted((script, expr, when) for when, script, expr, _ in entries) == [
        ("a", "* * * * *", T0 + 60),
        ("a", "*/5 * * * *", T0 + 300),
        ("b", "* * * * *", T0 + 60),
    ]


def test_schedule_is_empty_without_a_deployment(clock: Clock):
    front = FakeFront({"a": ["* * * * *"]})
    front.current = None
    assert CronScheduler(front, front.fire_scheduled)._schedule() == []


async def test_nothing_fires_before_the_first_slot(clock: Clock, running: Any):
    front = FakeFront({"a": ["* * * * *"]})
    running(front)
    await settle()
    clock.now = T0 + 59.9
    await settle()
    assert front.fired == []


async def test_fires_each_slot_with_its_scheduled_time(clock: Clock, running: Any):
    front = FakeFront({"a": ["* * * * *"]})
    running(front)
    await settle()
    clock.now = T0 + 60
    await settle()
    assert front.fired == [("a", "* * * * *", ms(1))]
    clock.now = T0 + 120.3
    await settle()
    assert front.fired == [("a", "* * * * *", ms(1)), ("a", "* * * * *", ms(2))]


async def test_late_firing_runs_once_not_once_per_missed_slot(clock: Clock, running: Any):
    front = FakeFront({"a": ["* * * * *"]})
    running(front)
    await settle()
    clock.now = T0 + 10 * 60 + 30  # asleep through ten slots
    await settle()
    assert front.fired == [("a", "* * * * *", ms(1))]
    clock.now = T0 + 10 * 60 + 59  # the missed slots are not caught up later either
    await settle()
    assert len(front.fired) == 1
    clock.now = T0 + 11 * 60
    await settle()
    assert front.fired[1:] == [("a", "* * * * *", ms(11))]


async def test_each_expression_fires_on_its_own_slots(clock: Clock, running: Any):
    front = FakeFront({"a": ["* * * * *", "*/5 * * * *"], "b": ["*/2 * * * *"]})
    running(front)
    await settle()
    for minute in range(1, 6):
        clock.now = T0 + minute * 60
        await settle()
    assert sorted(front.fired) == sorted([
        *(("a", "* * * * *", ms(m)) for m in range(1, 6)),
        ("a", "*/5 * * * *", ms(5)),
        ("b", "*/2 * * * *", ms(2)),
        ("b", "*/2 * * * *", ms(4)),
    ])


async def test_reload_rebuilds_the_triggers(clock: Clock, running: Any):
    front = FakeFront({"a": ["* * * * *"]})
    running(front)
    await settle()
    clock.now = T0 + 60
    await settle()
    assert front.fired == [("a", "* * * * *", ms(1))]

    front.current = deployment({"b": ["*/5 * * * *"]})
    clock.now = T0 + 90
    await settle()
    for minute in (2, 3, 4, 5):
        clock.now = T0 + minute * 60
        await settle()
    assert front.fired == [("a", "* * * * *", ms(1)), ("b", "*/5 * * * *", ms(5))]


async def test_reload_to_no_crons_stops_firing(clock: Clock, running: Any):
    front = FakeFront({"a": ["* * * * *"]})
    running(front)
    await settle()
    front.current = deployment({"a": []})
    await settle()
    clock.now = T0 + 5 * 60
    await settle()
    assert front.fired == []


async def test_a_failing_firing_does_not_stop_the_others(clock: Clock, running: Any):
    front = FakeFront({"bad": ["* * * * *"], "good": ["* * * * *"]})
    front.failing.add("bad")
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        scheduler = running(front)
        await settle()
        for minute in (1, 2, 3):
            clock.now = T0 + minute * 60
            await settle()
        assert sorted(f for f in front.fired if f[0] == "good") == [("good", "* * * * *", ms(m)) for m in (1, 2, 3)]
        assert sorted(f for f in front.fired if f[0] == "bad") == [("bad", "* * * * *", ms(m)) for m in (1, 2, 3)]
        assert scheduler.task is not None and not scheduler.task.done()
    finally:
        loop.set_exception_handler(None)


async def test_fire_scheduled_raising_before_it_returns_is_logged_and_the_loop_goes_on(
    clock: Clock, running: Any, monkeypatch: pytest.MonkeyPatch
):
    logged: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(cron, "log", lambda event, **fields: logged.append((event, fields)))
    front = FakeFront({"bad": ["* * * * *"], "good": ["* * * * *"]})
    good_fire = front.fire_scheduled

    def fire_scheduled(script: str, expr: str, scheduled_ms: float) -> Any:
        if script == "bad":
            raise LookupError("no script named 'bad'")
        return good_fire(script, expr, scheduled_ms)

    front.fire_scheduled = fire_scheduled  # type: ignore[method-assign]
    scheduler = running(front)
    await settle()
    for minute in (1, 2):
        clock.now = T0 + minute * 60
        await settle()
    assert front.fired == [("good", "* * * * *", ms(1)), ("good", "* * * * *", ms(2))]
    assert [(event, fields["script"], fields["cron"]) for event, fields in logged] == [
        ("cron_error", "bad", "* * * * *"),
        ("cron_error", "bad", "* * * * *"),
    ]
    assert "no script named" in logged[0][1]["error"]
    assert scheduler.task is not None and not scheduler.task.done()


async def test_stop_cancels_the_task(clock: Clock):
    front = FakeFront({"a": ["* * * * *"]})
    scheduler = CronScheduler(front, front.fire_scheduled)
    scheduler.start()
    await settle()
    task = scheduler.task
    assert task is not None and not task.done()
    scheduler.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    clock.now = T0 + 5 * 60
    await settle()
    assert front.fired == []


def test_stop_before_start_is_harmless():
    front = FakeFront({"a": ["* * * * *"]})
    CronScheduler(front, front.fire_scheduled).stop()

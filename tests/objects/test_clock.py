"""The injectable clocks."""

from __future__ import annotations

import asyncio

import pytest

from objects import FakeClock, SystemClock


async def test_fake_clock_wakes_sleepers_in_deadline_order_only_when_advanced():
    clock = FakeClock(1000)
    woke: list[int] = []

    async def sleeper(t: int) -> None:
        await clock.sleep_until(t)
        woke.append(t)

    tasks = [asyncio.create_task(sleeper(t)) for t in (3000, 2000, 2500)]
    await asyncio.sleep(0)
    assert clock.sleepers == 3
    clock.advance(999)
    await asyncio.sleep(0)
    assert woke == []
    clock.set(2500)
    await asyncio.sleep(0)
    assert woke == [2000, 2500]
    clock.advance(10_000)
    await asyncio.gather(*tasks)
    assert woke == [2000, 2500, 3000]
    await clock.sleep_until(0)  # a past deadline returns at once
    with pytest.raises(ValueError):
        clock.set(0)


async def test_cancelled_fake_sleeper_is_forgotten():
    clock = FakeClock(0)
    task = asyncio.create_task(clock.sleep_until(10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    clock.advance(100)


async def test_system_clock_sleeps_until_the_deadline():
    clock = SystemClock()
    target = clock.now() + 20
    await clock.sleep_until(target)
    assert clock.now() >= target

"""CPU metering per request and the watchdog's limit enforcement (in-process parts)."""

import asyncio
import time

import pytest

from runtime.isolate.meter import CpuLimitExceeded, Meter, metered


def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_meter_counts_only_the_requests_own_steps():
    async def busy():
        burn(0.03)
        await asyncio.sleep(0.05)  # waiting is not CPU
        burn(0.03)
        return "done"

    async def other():
        burn(0.05)

    m = Meter("r1", limit_s=10)
    result, _ = await asyncio.gather(metered(busy(), m), other())
    assert result == "done"
    assert 0.055 <= m.cpu < 0.1  # both bursts, not the sleep nor the other request's burn


async def test_driver_stops_a_request_whose_steps_add_up_over_the_limit():
    steps = 0

    async def many_short_steps():
        nonlocal steps
        while True:
            burn(0.01)
            steps += 1
            await asyncio.sleep(0)

    m = Meter("r2", limit_s=0.05)
    with pytest.raises(CpuLimitExceeded):
        await metered(many_short_steps(), m)
    assert 4 <= steps <= 8


async def test_cancellation_reaches_the_metered_coroutine():
    cleaned = []

    async def waits():
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    m = Meter("r3", limit_s=1)
    task = asyncio.ensure_future(metered(waits(), m))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_exceptions_propagate_unchanged():
    async def fails():
        await asyncio.sleep(0)
        raise KeyError("k")

    with pytest.raises(KeyError):
        await metered(fails(), Meter("r4", 1))

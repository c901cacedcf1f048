"""Injectable time for durable objects: alarms, retries and idle eviction read it.

A clock has two operations:

- ``now()`` -> current time in epoch milliseconds (int);
- ``await sleep_until(when_ms)`` -> returns once ``now() >= when_ms`` (at once if already past).
  Cancelling the sleeper cancels only that wait.

``SystemClock`` follows wall time. ``FakeClock`` only moves when a test calls ``advance`` or
``set``; sleepers whose deadline is reached are woken in deadline order (ties in arrival order).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> int: ...

    async def sleep_until(self, when_ms: int) -> None: ...


class SystemClock:
    """Wall-clock time; ``sleep_until`` re-checks after waking so clock drift cannot fire early."""

    def now(self) -> int:
        return int(time.time() * 1000)

    async def sleep_until(self, when_ms: int) -> None:
        while True:
            delay = (when_ms - self.now()) / 1000
            if delay <= 0:
                return
            await asyncio.sleep(delay)


class FakeClock:
    """A clock that moves only when told to; for tests of alarms, backoff and eviction."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = int(start_ms)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> int:
        return self._now

    async def sleep_until(self, when_ms: int) -> None:
        if when_ms <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (int(when_ms), next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """Number of pending (not cancelled) sleepers."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, ms: int) -> None:
        self.set(self._now + int(ms))

    def set(self, now_ms: int) -> None:
        if now_ms < self._now:
            raise ValueError("FakeClock cannot go backwards")
        self._now = int(now_ms)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

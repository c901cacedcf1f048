"""Waiting helpers for tests that drive a live ObjectHost on the running event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from objects.database import ObjectDatabase


async def settle(n: int = 20) -> None:
    """Let `n` rounds of ready callbacks run (deliveries, commits handed back by I/O threads)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def eventually(pred: Callable[[], object], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def hold_io(
    monkeypatch: Any, method: str, when: Callable[..., bool] = lambda *args: True
) -> tuple[threading.Event, threading.Event]:
    """Make ``ObjectDatabase.<method>`` (run on an I/O thread) wait, for calls where
    ``when(*args)`` holds, until the returned ``proceed`` is set; ``entered`` is set when one
    does."""
    entered, proceed = threading.Event(), threading.Event()
    original = getattr(ObjectDatabase, method)

    def held(self: ObjectDatabase, *args: Any) -> Any:
        if when(*args):
            entered.set()
            proceed.wait(10)
        return original(self, *args)

    monkeypatch.setattr(ObjectDatabase, method, held)
    return entered, proceed

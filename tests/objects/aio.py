"""Waiting helpers for tests that drive a live ObjectHost on the running event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


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

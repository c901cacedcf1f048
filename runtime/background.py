"""`Background`: the one asyncio task a front component runs beside the request path (a flush
loop, an evaluation loop), started once and cancelled and awaited on stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Background"]


class Background:
    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, loop: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run `loop()` as a task, unless one is already running."""
        if self._task is None:
            self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

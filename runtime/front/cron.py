"""Cron triggers: one timer per (script, expression) of the current deployment, fired in UTC.

A firing that is late (the loop was busy, the machine slept) runs once, not once per missed
slot, like Workers' cron triggers.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from runtime.logs import log

__all__ = ["CronScheduler"]


class CronScheduler:
    """Fires each cron trigger of the current deployment (`deployments.current`, which a reload
    replaces) through `fire(script, expression, scheduled_ms)`."""

    def __init__(self, deployments: Any, fire: Callable[[str, str, float], Awaitable[Any]]):
        self.deployments = deployments
        self.fire = fire
        self.task: asyncio.Task[None] | None = None
        self._firing: set[asyncio.Future[Any]] = set()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _schedule(self) -> list[tuple[float, str, str, Any]]:
        dep = self.deployments.current
        now = datetime.now(UTC)
        out = []
        for s in dep.app.scripts if dep else ():
            for expr in s.crons:
                it = croniter(expr, now)
                out.append((it.get_next(float), s.name, expr, it))
        return out

    async def _run(self) -> None:
        dep = None
        entries: list[tuple[float, str, str, Any]] = []
        while True:
            if self.deployments.current is not dep:  # a reload changes the set of triggers
                dep = self.deployments.current
                entries = self._schedule()
            if not entries:
                await asyncio.sleep(1.0)
                continue
            entries.sort(key=lambda e: e[0])
            when, script, expr, it = entries[0]
            delay = when - time.time()
            if delay > 0:
                await asyncio.sleep(min(delay, 1.0))
                continue
            entries[0] = (it.get_next(float), script, expr, it)
            while entries[0][0] <= time.time():  # skip slots missed while late
                nxt = entries[0]
                entries[0] = (nxt[3].get_next(float), script, expr, nxt[3])
            try:
                task = asyncio.ensure_future(self.fire(script, expr, when * 1000))
            except Exception as e:  # never let one trigger stop the others
                log("cron_error", script=script, cron=expr, error=str(e))
                continue
            self._firing.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(functools.partial(self._fired, script, expr))

    def _fired(self, script: str, expr: str, task: asyncio.Future[Any]) -> None:
        self._firing.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log("cron_error", script=script, cron=expr, error=f"{type(e).__name__}: {e}")

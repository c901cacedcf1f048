"""Base classes handler modules subclass: `WorkerEntrypoint` (fetch, scheduled and RPC methods)."""

from __future__ import annotations

from typing import Any

__all__ = ["ScheduledController", "WorkerEntrypoint"]


class WorkerEntrypoint:
    """`class Default(WorkerEntrypoint): async def fetch(self, request)`; `self.env`, `self.ctx`.

    Public async methods other than fetch/scheduled are callable by RPC from service bindings.
    """

    def __init__(self, ctx: Any, env: Any):
        self.ctx = ctx
        self.env = env


class ScheduledController:
    """What a `scheduled` handler receives: the cron expression and the scheduled time (ms)."""

    def __init__(self, cron: str, scheduled_time: float):
        self.cron = cron
        self.scheduled_time = scheduled_time

    def no_retry(self) -> None:
        """Accepted for compatibility; cron events are not retried locally."""

    def __repr__(self) -> str:
        return f"<ScheduledController cron={self.cron!r} time={self.scheduled_time}>"

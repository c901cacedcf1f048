"""The per-class registry: a durable object granting running slots and pruning old instances.

It stores only its tenant and its alarm: the alarm sweeps, every ``limits.sweep_seconds``, the
finished instances past ``retention_seconds`` and asks each to prune itself (an instance's
storage is only ever written by the instance). The alarm is set by the first slot granted and
re-armed while instances exist. Ids are kept unique by the instance objects themselves (an instance refuses a
second creation of its id, and its record is never deleted), and instances are listed from
their committed records (``WorkflowDefinition.list_instances``). Running slots are *not* durable: after a
restart every unfinished instance re-acquires its slot when its lease alarm resumes it, so the
count of instances that hold a slot is at most ``limit``. While any slot is held the registry
keeps itself resident (``ctx.wait_until``), so idle eviction cannot forget the slots. A refused
instance is queued (FIFO); ``release`` returns the queued ids that may now take a slot, for the
caller to wake (queued instances also poll with their alarm, so a lost wake-up only delays
them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from ._objects import AlarmInfo, DurableObject, DurableObjectState
from .types import FINAL_STATUSES

if TYPE_CHECKING:
    from .definition import WorkflowDefinition

__all__ = ["WorkflowRegistryObject"]


class WorkflowRegistryObject(DurableObject):
    shared_storage = True  # many classes x tenants: one file for all registries
    definition: ClassVar[WorkflowDefinition]

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        self.definition.track_registry(self)
        self._running: set[str] = set()
        self._queue: deque[str] = deque()
        self._limit = 1
        self._resident: asyncio.Future[None] | None = None

    async def acquire(self, instance_id: str, limit: int, tenant: str | None = None) -> bool:
        self._limit = limit
        if await self.ctx.storage.get_alarm() is None:  # cached: no I/O after the first
            await self.ctx.storage.put("tenant", tenant)
            await self._arm_sweep()
        if instance_id in self._running or len(self._running) < limit:
            self._running.add(instance_id)
            self._stay_resident()
            if instance_id in self._queue:
                self._queue.remove(instance_id)
            return True
        if instance_id not in self._queue:
            self._queue.append(instance_id)
        return False

    async def release(self, instance_id: str) -> list[str]:
        self._running.discard(instance_id)
        if not self._running and self._resident is not None:
            self._resident.set_result(None)
            self._resident = None
        free = self._limit - len(self._running)
        return [self._queue[i] for i in range(min(free, len(self._queue)))]

    def forget_slots(self) -> None:
        """Drop every slot (the host is closing; instances re-acquire when they resume)."""
        self._running.clear()
        if self._resident is not None:
            self._resident.set_result(None)
            self._resident = None

    def _stay_resident(self) -> None:
        keep_alive = getattr(self.ctx, "wait_until", None)
        if self._resident is None and keep_alive is not None:
            self._resident = asyncio.get_running_loop().create_future()
            keep_alive(self._resident)

    async def running(self) -> list[str]:
        return sorted(self._running)

    async def _arm_sweep(self) -> None:
        hooks, limits = self.definition.hooks, self.definition.limits
        await self.ctx.storage.set_alarm((hooks.now() + limits.sweep_seconds) * 1000.0)

    async def alarm(self, info: AlarmInfo | None = None) -> None:
        """Ask every finished instance past its retention to prune itself."""
        tenant = await self.ctx.storage.get("tenant")
        cutoff = self.definition.hooks.now() - self.definition.limits.retention_seconds
        unpruned = False
        for meta in await self.definition.list_instances(tenant):
            if meta.get("pruned"):
                continue
            ended = meta.get("ended")
            if meta["status"] in FINAL_STATUSES and ended is not None and ended < cutoff:
                stub = self.definition.instance_stub(tenant, meta["id"])
                await stub.prune(cutoff)
            else:
                unpruned = True
        if unpruned:  # otherwise the next slot granted arms it again
            await self._arm_sweep()

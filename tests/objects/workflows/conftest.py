"""Harness: a workflow class hosted on an ObjectHost with a fake clock, restartable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from objects.clock import FakeClock
from objects.workflows import (
    WorkflowDefinition,
    WorkflowEntrypoint,
    WorkflowHooks,
    WorkflowInstance,
    WorkflowLimits,
    make_workflow_binding,
)
from objects.workflows._objects import LocalTransport, ObjectHost


class Harness:
    def __init__(self, state_dir: Path, clock: FakeClock) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.audits: list[tuple[str, dict[str, Any]]] = []
        self.killed: str | None = None
        self.env: dict[str, Any] = {"calls": []}
        self.host: Any = None
        self.definition: WorkflowDefinition | None = None

    def hooks(self) -> WorkflowHooks:
        return WorkflowHooks(
            clock=self.clock,
            audit=lambda kind, fields: self.audits.append((kind, fields)),
            is_killed=lambda: self.killed,
        )

    async def start(self, entry: type[WorkflowEntrypoint], limits: WorkflowLimits | None = None):
        self.definition = WorkflowDefinition(entry, hooks=self.hooks(), limits=limits)
        self.host = ObjectHost("app", self.definition.object_classes(), self.env,
                               self.state_dir, clock=self.clock)
        await self.host.start()
        self.binding = make_workflow_binding(
            "app", entry.__name__, LocalTransport(self.host), definition=self.definition)
        return self.binding

    async def stop(self) -> None:
        if self.host is not None:
            assert self.definition is not None
            await self.definition.close()
            await self.host.close()
            self.host = None

    async def restart(self, entry: type[WorkflowEntrypoint], limits: WorkflowLimits | None = None):
        await self.stop()
        return await self.start(entry, limits)

    async def wait(
        self, instance: WorkflowInstance, *statuses: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        return await wait_for(instance, lambda s: s["status"] in statuses, timeout)

    async def wait_for(self, instance: WorkflowInstance, predicate, timeout: float = 10.0):
        return await wait_for(instance, predicate, timeout)

    async def wait_for_calls(self, count: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.env["calls"]) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{len(self.env['calls'])} calls, expected {count}")
            await asyncio.sleep(0.005)

    def advance(self, seconds: float) -> None:
        self.clock.advance(int(seconds * 1000))


async def wait_for(
    instance: WorkflowInstance, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await instance.status()
        if predicate(status):
            return status
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached; last status: {status}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def harness(tmp_path: Path):
    h = Harness(tmp_path, FakeClock())
    yield h
    await h.stop()

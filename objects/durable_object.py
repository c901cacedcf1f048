"""The user-facing classes: ``DurableObject`` (subclass it) and its ``ctx``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from objects.errors import contain_exit

if TYPE_CHECKING:
    from objects.alarms import AlarmInfo
    from objects.gates import InputGate
    from objects.ids import DurableObjectId
    from objects.storage import Storage

__all__ = ["DurableObject", "DurableObjectState"]

T = TypeVar("T")


class DurableObjectState:
    """``self.ctx`` of a durable object: its id, its storage and concurrency controls."""

    def __init__(
        self,
        id: DurableObjectId,
        storage: Storage,
        input_gate: InputGate,
        *,
        on_section_failed: Callable[[BaseException], None],
        track: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        self.id = id
        self.storage = storage
        self._gate = input_gate
        self._on_section_failed = on_section_failed
        self._track = track

    def block_concurrency_while(self, fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Deliver no other event until ``fn()`` finishes; if it raises, the object is reset.

        Closes the input gate before returning, so it may be called (without awaiting) from
        ``__init__``. Returns the task running ``fn``; awaiting it gives ``fn``'s result.
        """
        task = self._gate.run_critical_section(fn, self._on_section_failed)
        task.add_done_callback(_consume)
        return task

    def wait_until(self, aw: Awaitable[Any]) -> None:
        """Keep the object alive (not evicted) until ``aw`` finishes; failures are audited."""
        self._track(asyncio.ensure_future(contain_exit(aw)))

    # Cloudflare's (JavaScript) names, which Python Workers code calls through its JS proxies.
    blockConcurrencyWhile = block_concurrency_while  # noqa: N815
    waitUntil = wait_until  # noqa: N815


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class DurableObject:
    """Base class of user durable objects.

    Override ``fetch(request)`` and ``alarm(info)`` and add public async methods: every method
    whose name does not start with ``_`` (other than ``fetch`` and ``alarm``) is callable by RPC.

    ``shared_storage = True`` keeps the storage of the class's objects in the script's shared
    database (one file, one group commit for many objects) until an object first runs SQL, when
    it moves to a database of its own (``objects.shared``): for many small, short-lived objects.
    """

    shared_storage: ClassVar[bool] = False
    #: Evict an object of this class after this long without events, if shorter than the
    #: host's ``idle_timeout_s``.
    idle_timeout_s: ClassVar[float | None] = None

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement fetch()")

    async def alarm(self, info: AlarmInfo) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement alarm()")
